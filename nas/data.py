"""Loading a dataset (`load_dataset`): the embedded tasks (digits, odd-one-out) and a CIFAR-10
python folder, read here (the latter with a restricted unpickler), or an ImageFolder
(`nas.imagefolder`); the run's split saved and checked (`save_split`, `check_split`).

Two kinds, one interface (`size`, `batch`, `batches`, `top1`, `mean`/`std`, `split`):

- in memory (`nas.dataset.Dataset`): the embedded tasks and CIFAR-10 (150 MB as uint8), read
  here. Images are kept at their stored resolution and turned into model inputs per batch:
  resized to the space's image size, normalised with the training split's per-channel
  mean/std, and (training only) lightly augmented with a random translation.
- streamed (`nas.imagefolder.ImageFiles`): an ImageFolder, either `root/<class>/...` (seeded
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
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nas.dataset import SPLIT_SEED, Dataset, random_split
from nas.errors import NasError
from nas.imagefolder import ImageFiles, load_image_folder
from nas.io import write_json

# ---- sources ---------------------------------------------------------------------------------


def load_digits() -> tuple[Tensor, Tensor, list[str]]:
    from nas.digits import digits

    pixels, targets = digits()
    images = torch.tensor(pixels, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    return images, torch.tensor(targets, dtype=torch.int64), [str(c) for c in range(10)]


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
