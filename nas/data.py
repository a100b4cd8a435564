"""Datasets: the embedded tasks (digits, odd-one-out), a CIFAR-10 python folder, an ImageFolder.

Two kinds, one interface (`size`, `batch`, `batches`, `top1`, `mean`/`std`, `split`):

- in memory (`Dataset`): the embedded tasks and CIFAR-10 (150 MB as uint8). Images are
  kept at their stored resolution and turned into model inputs per batch: resized to the
  space's image size, normalised with the training split's per-channel mean/std, and
  (training only) lightly augmented with a random translation.
- streamed (`ImageFiles`): an ImageFolder, either `root/<class>/...` (seeded
  train/val/test split) or ImageNet's `root/train/<class>/...` + `root/val/<class>/...`
  (val is the test split; the search's validation split is a seeded tenth of train, like
  AutoFormer's sub-ImageNet). Only paths are held; images are decoded per batch by a
  `torch.utils.data.DataLoader` (`workers` processes, persistent, pinned memory on CUDA)
  with timm's transforms: random resized crop + flip + colour jitter (RandAugment with
  `randaugment`) for training, resize + centre crop for evaluation, ImageNet's mean/std
  (0.5 for one channel). Besides the list of paths, memory does not grow with the
  number of images.

The split is drawn once with a fixed seed and saved in the run directory (`split.json`,
with the normalisation), so every later stage evaluates on the same images. A batch's
augmentation depends only on the seed it is given, so a training step is reproducible
with any number of loader workers.
"""

from __future__ import annotations

import json
import pickle
import random
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
    crop_pct = 1.0  # evaluation: the whole image, resized

    def __post_init__(self) -> None:
        if self.mean is None or self.std is None:
            train = self._float(self.images[self.split["train"]])
            self.mean = train.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
            self.std = train.std(dim=(0, 2, 3)).clamp(min=1e-3).view(1, -1, 1, 1)

    def only(self, split: str) -> Dataset:
        """A copy that holds `split` alone (same positions, same normalisation): what an evaluator needs."""
        index = torch.as_tensor(self.split[split], dtype=torch.int64)
        kept = {name: [] for name in self.split} | {split: list(range(len(index)))}
        return Dataset(
            self.name,
            self.images[index].clone(),
            self.labels[index].clone(),
            self.classes,
            kept,
            self.image_size,
            self.mean,
            self.std,
            self.translate,
        )

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

    def batch(
        self, split: str, positions: Tensor | list[int], generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Inputs and labels of `split`'s samples at `positions`; with a generator, augmented."""
        index = torch.as_tensor(self.split[split])[torch.as_tensor(positions)]
        x = self._float(self.images[index])
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
        x = (x - self.mean) / self.std
        if generator is not None and self.translate:
            x = random_translate(x, max(1, self.image_size // 16), generator)
        return x, self.labels[index]

    def batches(self, split: str, plan: list[tuple[Tensor, int | None]], pin: bool = False):
        """(inputs, labels) for each (positions, augmentation seed or None) of `plan`, in order."""
        for positions, seed in plan:
            x, y = self.batch(split, positions, None if seed is None else torch.Generator().manual_seed(seed))
            yield (x.pin_memory(), y.pin_memory()) if pin else (x, y)

    def top1(self, forward, split: str, batch_size: int = 256, limit: int | None = None) -> float:
        return top1(self, forward, split, batch_size, limit)


@torch.no_grad()
def top1(dataset, forward, split: str, batch_size: int = 256, limit: int | None = None) -> float:
    """Top-1 accuracy of `forward` (CPU images -> logits on any device) on `split`, or on a
    fixed seeded sample of `limit` of its images (the same sample for every arch)."""
    positions = torch.arange(dataset.size(split))
    if limit is not None and limit < len(positions):
        positions = (
            torch.randperm(len(positions), generator=torch.Generator().manual_seed(SPLIT_SEED))[:limit].sort().values
        )
    n = len(positions)
    plan = [(positions[start : start + batch_size], None) for start in range(0, n, batch_size)]
    correct = 0
    for x, y in dataset.batches(split, plan):
        correct += (forward(x).argmax(-1).cpu() == y).sum().item()
    return correct / n


def random_translate(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Shift each image by up to `pad` pixels (zero padding = the normalised mean)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def random_split(n: int, fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> dict[str, list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    n_train, n_val = int(round(n * fractions[0])), int(round(n * fractions[1]))
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


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


def scan_image_folder(
    root: Path, in_chans: int, classes: list[str] | None = None, check_images: bool = True
) -> tuple[list[tuple[str, int]], list[str]]:
    """root/<class>/<image>: (path, label) of every image, and the class names. With
    `check_images`, each file's header is read here (not its pixels), so an unreadable file or
    a wrong channel count is one clear error before any training."""
    from PIL import Image, UnidentifiedImageError

    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(found) < 2:
        raise NasError(f"--data {root}: an ImageFolder needs one sub-folder per class (found {len(found)})")
    if classes is not None and not set(found) <= set(classes):
        raise NasError(
            f"--data {root}: class folder(s) {', '.join(sorted(set(found) - set(classes)))} are not in the train folder"
        )
    classes = classes or found
    samples = []
    for name in found:
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise NasError(
                f"--data {root}: class folder {name!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        for path in files if check_images else ():
            try:
                with Image.open(path) as image:
                    mode = image.mode
            except (OSError, UnidentifiedImageError) as error:
                raise NasError(f"--data {root}: cannot read {path} ({error})") from None
            bands = Image.getmodebands(mode)
            if bands != in_chans:
                raise NasError(
                    f"--data {root}: {path.name} in {name!r} has {bands} channel(s) ({mode}), but the search space "
                    f"takes in_chans={in_chans}; convert the images or use a space with in_chans={bands}"
                )
        label = classes.index(name)
        samples += [(str(path), label) for path in files]
    return samples, classes


HELD_OUT = 0.1  # train/val layout: the share of train held out as the search's validation split


class ImageFiles:
    """An ImageFolder read lazily; same interface as `Dataset`."""

    crop_pct = 0.875  # evaluation: resize to image_size / crop_pct, then centre crop

    def __init__(
        self,
        name: str,
        samples: list[tuple[str, int]],
        classes: list[str],
        split: dict[str, list[int]],
        image_size: int,
        in_chans: int,
        randaugment: bool = False,
        workers: int = 0,
    ) -> None:
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        self.name, self.samples, self.classes, self.split = name, samples, classes, split
        self.image_size, self.in_chans, self.randaugment, self.workers = image_size, in_chans, randaugment, workers
        mean, std = (
            (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD) if in_chans == 3 else ((0.5,) * in_chans, (0.5,) * in_chans)
        )
        self.mean, self.std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        self._loaders: dict = {}

    num_classes = Dataset.num_classes

    def size(self, split: str) -> int:
        return len(self.split[split])

    def transform(self, train: bool):
        from timm.data import create_transform

        mean, std = tuple(self.mean.flatten().tolist()), tuple(self.std.flatten().tolist())
        if train:
            return create_transform(
                self.image_size,
                is_training=True,
                mean=mean,
                std=std,
                auto_augment="rand-m9-mstd0.5-inc1" if self.randaugment else None,
            )
        return create_transform(self.image_size, is_training=False, mean=mean, std=std, crop_pct=self.crop_pct)

    def image(self, index: int):
        """Sample `index` decoded (a PIL image in the space's mode)."""
        from PIL import Image

        path = self.samples[index][0]
        try:
            with Image.open(path) as image:
                return image.convert("RGB" if self.in_chans == 3 else "L")
        except OSError as error:
            raise NasError(f"--data: cannot decode {path} ({error})") from None

    def item(self, split: str, position: int, seed: int | None, transform) -> tuple[Tensor, int]:
        """One image, decoded and transformed; with a seed, its random augmentation is that seed's
        (timm's transforms draw from Python's and torch's global RNGs: both set, then restored)."""
        index = self.split[split][position]
        image, label = self.image(index), self.samples[index][1]
        if seed is None:
            return transform(image), label
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            torch.manual_seed(seed)
            x = transform(image)
        random.setstate(state)
        return x, label

    def batch(self, split: str, positions, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Decoded here, in this process (tests, small evaluations); training uses `batches`."""
        plan = [
            (
                torch.as_tensor(positions),
                None if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator)),
            )
        ]
        return next(iter(self.batches(split, plan)))

    def batches(self, split: str, plan: list[tuple[Tensor, int | None]], pin: bool = False):
        """(inputs, labels) for each (positions, augmentation seed or None) of `plan`, decoded by
        `workers` DataLoader processes (kept between the epochs of training)."""
        train = any(seed is not None for _, seed in plan)
        key = (split, train, pin)
        if key not in self._loaders:
            from torch.utils.data import DataLoader

            sampler = _Plan()
            items = _Items(self, split, self.transform(train))
            self._loaders[key] = (
                DataLoader(
                    items,
                    batch_sampler=sampler,
                    num_workers=self.workers,
                    pin_memory=pin,
                    persistent_workers=train and self.workers > 0,
                ),
                sampler,
            )  # evaluation: once per epoch
        loader, sampler = self._loaders[key]
        sampler.keys = [
            [(int(p), None if seed is None else (seed * 1_000_003 + int(p)) % 2**62) for p in positions]
            for positions, seed in plan
        ]
        yield from loader

    def top1(self, forward, split: str, batch_size: int = 256, limit: int | None = None) -> float:
        return top1(self, forward, split, batch_size, limit)

    def only(self, split: str) -> ImageFiles:
        """A copy that holds `split`'s file list alone (same positions, same normalisation)."""
        samples = [self.samples[i] for i in self.split[split]]
        kept = {name: [] for name in self.split} | {split: list(range(len(samples)))}
        copy = ImageFiles(self.name, samples, self.classes, kept, self.image_size, self.in_chans, self.randaugment, 0)
        copy.mean, copy.std = self.mean, self.std
        return copy

    def __getstate__(self) -> dict:  # the loaders (and their processes) stay in the process that made them
        return {**self.__dict__, "_loaders": {}}


class _Plan:
    """The DataLoader's batch sampler: the lists of (position, seed) it is given before each pass."""

    keys: list = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class _Items(torch.utils.data.Dataset):
    def __init__(self, files: ImageFiles, split: str, transform) -> None:
        self.files, self.split, self.transform = files, split, transform

    def __len__(self) -> int:
        return self.files.size(self.split)

    def __getitem__(self, key: tuple[int, int | None]):
        return self.files.item(self.split, key[0], key[1], self.transform)


def load_image_folder(
    root: Path, image_size: int, in_chans: int, randaugment: bool = False, workers: int = 0, check_images: bool = True
) -> ImageFiles:
    """`root/train/<class>` + `root/val/<class>` (val = test; the validation split is a seeded
    tenth of train), or `root/<class>` (seeded train/val/test split)."""
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, classes = scan_image_folder(root / "train", in_chans, check_images=check_images)
        test, _ = scan_image_folder(root / "val", in_chans, classes, check_images)
        inner = random_split(len(train), (1 - HELD_OUT, HELD_OUT, 0.0))
        split = {"train": inner["train"], "val": inner["val"], "test": list(range(len(train), len(train) + len(test)))}
        return ImageFiles(
            f"imagefolder:{root}", train + test, classes, split, image_size, in_chans, randaugment, workers
        )
    samples, classes = scan_image_folder(root, in_chans, check_images=check_images)
    return ImageFiles(
        f"imagefolder:{root}", samples, classes, random_split(len(samples)), image_size, in_chans, randaugment, workers
    )


EMBEDDED = ("digits", "odd-one-out")  # the datasets a space may name as its default (`data:`)


def load_dataset(
    data: str | None,
    image_size: int,
    in_chans: int,
    randaugment: bool = False,
    workers: int = 0,
    check_images: bool = True,
) -> Dataset | ImageFiles:
    """`None` or "digits": the embedded digits; "odd-one-out": the embedded odd-one-out task
    (nas/odd_one_out.py); else a CIFAR-10 python folder or an ImageFolder path (streamed by
    `workers` loader processes; `randaugment` adds RandAugment to its training transform)."""
    if randaugment and in_chans != 3:
        raise NasError(f"--randaugment needs RGB images (in_chans=3); this space takes in_chans={in_chans}")
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
            return load_image_folder(root, image_size, in_chans, randaugment, workers, check_images)
        else:
            raise NasError(f"--data {data}: the directory is empty")
    if images.shape[1] != in_chans:
        raise NasError(
            f"--data {data or 'digits'}: images have {images.shape[1]} channel(s), but the search space takes "
            f"in_chans={in_chans}; use a space with in_chans={images.shape[1]}"
        )
    if randaugment:
        raise NasError(
            f"--randaugment: {name} is held in memory with its own light augmentation; RandAugment applies to ImageFolder data"
        )
    return Dataset(name, images, labels, classes, split, image_size)


def save_split(dataset: Dataset | ImageFiles, path: Path) -> None:
    normalize = {
        "mean": [round(float(v), 6) for v in dataset.mean.flatten()],
        "std": [round(float(v), 6) for v in dataset.std.flatten()],
    }
    write_json(
        path,
        {
            "dataset": dataset.name,
            "classes": dataset.classes,
            "split_seed": SPLIT_SEED,
            "normalize": normalize,
            **dataset.split,
        },
    )


def check_split(dataset: Dataset, path: Path) -> None:
    """On resume: the dataset must split exactly as it did when the run started."""
    try:
        saved = json.loads(path.read_text())
    except OSError as error:
        raise NasError(f"{path}: cannot read the run's split ({error.strerror or error})") from None
    except (ValueError, UnicodeDecodeError):
        raise NasError(
            f"{path}: not a valid split file (cut short or damaged); the run's split cannot be restored"
        ) from None
    if not isinstance(saved, dict) or not all(isinstance(saved.get(k), list) for k in ("train", "val", "test")):
        raise NasError(f"{path}: not a valid split file (it needs 'train', 'val' and 'test' index lists)")
    if saved.get("dataset") != dataset.name or any(saved.get(k) != dataset.split[k] for k in ("train", "val", "test")):
        raise NasError(
            f"{path}: the run was started on another dataset or split ({saved.get('dataset')}); resume with the same --data"
        )
