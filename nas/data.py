"""Datasets: scikit-learn's digits (embedded default), a CIFAR-10 python folder, an ImageFolder.

Images are kept in memory at their stored resolution (uint8, or float in [0, 1]) and
turned into model inputs per batch: resized to the space's image size, normalised with
the training split's per-channel mean/std, and (training only) lightly augmented with a
random translation. The train/val/test split is drawn once with a fixed seed and saved in
the run directory (`split.json`), so every later stage evaluates on the same images.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nas.errors import NasError
from nas.io import write_json

SPLIT_SEED = 0  # fixed: the split must not change with the training seed
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Dataset:
    """All images of one source plus its split; `batch` makes model inputs."""

    name: str
    images: Tensor  # (N, C, h, w), uint8 or float in [0, 1]
    labels: Tensor  # (N,), int64
    classes: list[str]
    split: dict[str, list[int]]  # train / val / test -> indices into images
    image_size: int
    mean: Tensor | None = None
    std: Tensor | None = None
    translate: bool = True  # training augmentation: random shifts (off where objects sit on the patch grid)

    def __post_init__(self) -> None:
        train = self._float(self.images[self.split["train"]])
        self.mean = train.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
        self.std = train.std(dim=(0, 2, 3)).clamp(min=1e-3).view(1, -1, 1, 1)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.images.shape[1]

    @staticmethod
    def _float(images: Tensor) -> Tensor:
        return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()

    def size(self, split: str) -> int:
        return len(self.split[split])

    def batch(self, split: str, positions: Tensor | list[int], generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Inputs and labels of `split`'s samples at `positions`; with a generator, augmented."""
        index = torch.as_tensor(self.split[split])[torch.as_tensor(positions)]
        x = self._float(self.images[index])
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        if generator is not None and self.translate:
            x = random_translate(x, max(1, self.image_size // 16), generator)
        return x, self.labels[index]


    @torch.no_grad()
    def top1(self, forward, split: str, batch_size: int = 256) -> float:
        """Top-1 accuracy of `forward` (images -> logits) on `split`."""
        correct = 0
        for start in range(0, self.size(split), batch_size):
            x, y = self.batch(split, list(range(start, min(start + batch_size, self.size(split)))))
            correct += (forward(x).argmax(-1) == y).sum().item()
        return correct / self.size(split)


def random_translate(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Shift each image by up to `pad` pixels (zero padding = the normalised mean)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def random_split(n: int, fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> dict[str, list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    n_train, n_val = int(round(n * fractions[0])), int(round(n * fractions[1]))
    return {"train": sorted(order[:n_train]), "val": sorted(order[n_train : n_train + n_val]), "test": sorted(order[n_train + n_val :])}


# ---- sources ---------------------------------------------------------------------------------


def load_digits() -> tuple[Tensor, Tensor, list[str]]:
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    return images, torch.tensor(digits.target, dtype=torch.int64), [str(c) for c in range(10)]


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR-10's python format is pickled; allow only what its batches contain."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    try:
        with path.open("rb") as handle:
            batch = _CifarUnpickler(handle, encoding="bytes").load()
        data, labels = batch[b"data"], batch[b"labels"]
        return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32), list(labels)
    except (OSError, pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as error:
        raise NasError(f"{path}: not a readable CIFAR-10 python batch ({error})") from None


def load_cifar10(root: Path) -> tuple[Tensor, Tensor, list[str], dict[str, list[int]]]:
    """A `cifar-10-batches-py` folder: data_batch_1..5 (train + val) and test_batch."""
    train_files = [root / f"data_batch_{i}" for i in range(1, 6)]
    parts = [_read_cifar_batch(path) for path in train_files + [root / "test_batch"]]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.tensor([label for p in parts for label in p[1]], dtype=torch.int64)
    n_train = sum(len(p[1]) for p in parts[:-1])
    inner = random_split(n_train, (0.9, 0.1, 0.0))
    split = {"train": inner["train"], "val": inner["val"], "test": list(range(n_train, len(labels)))}
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return images, labels, classes, split


def load_image_folder(root: Path, image_size: int, in_chans: int) -> tuple[Tensor, Tensor, list[str]]:
    """root/<class>/<image>: images resized to image_size; their channel count must be in_chans."""
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise NasError(f"--data {root}: an ImageFolder needs one sub-folder per class (found {len(classes)})")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise NasError(f"--data {root}: class folder {name!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for path in files:
            try:
                with Image.open(path) as image:
                    image.load()
                    bands = len(image.getbands())
                    if bands != in_chans:
                        raise NasError(
                            f"--data {root}: {path.name} in {name!r} has {bands} channel(s) ({image.mode}), but the search space "
                            f"takes in_chans={in_chans}; convert the images or use a space with in_chans={bands}"
                        )
                    resized = image.resize((image_size, image_size), Image.BILINEAR)
            except (OSError, UnidentifiedImageError) as error:
                raise NasError(f"--data {root}: cannot read {path} ({error})") from None
            array = np.asarray(resized, dtype=np.uint8).reshape(image_size, image_size, in_chans)
            images.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), classes


EMBEDDED = ("digits", "odd-one-out")  # the datasets a space may name as its default (`data:`)


def load_dataset(data: str | None, image_size: int, in_chans: int) -> Dataset:
    """`None` or "digits": the embedded digits; "odd-one-out": the embedded odd-one-out task
    (nas/odd_one_out.py); else a CIFAR-10 python folder or an ImageFolder path."""
    if data == "odd-one-out":
        from nas import odd_one_out

        images, labels, split = odd_one_out.generate()
        classes = [str(c) for c in range(10)]
        if image_size != odd_one_out.CANVAS or in_chans != 1:
            raise NasError(
                f"--data odd-one-out: its images are {odd_one_out.CANVAS}x{odd_one_out.CANVAS}x1, but the search space takes "
                f"{image_size}x{image_size}x{in_chans}; use --space odd-one-out"
            )
        return Dataset("odd-one-out", images, labels, classes, split, image_size, translate=False)
    if data in (None, "digits"):
        images, labels, classes = load_digits()
        split, name = random_split(len(labels)), "digits"
    else:
        root = Path(data)
        if not root.is_dir():
            raise NasError(f"--data {data}: no such directory (give a CIFAR-10 python folder or an ImageFolder root)")
        try:
            entries = list(root.iterdir())
        except OSError as error:
            raise NasError(f"--data {data}: cannot read the directory ({error.strerror})") from None
        if (root / "data_batch_1").is_file():
            images, labels, classes, split = load_cifar10(root)
            name = f"cifar10:{root}"
        elif entries:
            images, labels, classes = load_image_folder(root, image_size, in_chans)
            split, name = random_split(len(labels)), f"imagefolder:{root}"
        else:
            raise NasError(f"--data {data}: the directory is empty")
    if images.shape[1] != in_chans:
        raise NasError(
            f"--data {data or 'digits'}: images have {images.shape[1]} channel(s), but the search space takes "
            f"in_chans={in_chans}; use a space with in_chans={images.shape[1]}"
        )
    return Dataset(name, images, labels, classes, split, image_size)


def save_split(dataset: Dataset, path: Path) -> None:
    write_json(path, {"dataset": dataset.name, "classes": dataset.classes, "split_seed": SPLIT_SEED, **dataset.split})


def check_split(dataset: Dataset, path: Path) -> None:
    """On resume: the dataset must split exactly as it did when the run started."""
    saved = json.loads(path.read_text())
    if saved.get("dataset") != dataset.name or any(saved.get(k) != dataset.split[k] for k in ("train", "val", "test")):
        raise NasError(f"{path}: the run was started on another dataset or split ({saved.get('dataset')}); resume with the same --data")
