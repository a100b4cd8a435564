"""Image-folder datasets, streamed from disk (`ImageFiles`): same interface as the in-memory
`nas.dataset.Dataset` (`size`, `batch`, `batches`, `top1`, `mean`/`std`, `split`).

An ImageFolder is either `root/<class>/...` (seeded train/val/test split) or ImageNet's
`root/train/<class>/...` + `root/val/<class>/...` (val is the test split; the search's
validation split is a seeded tenth of train, like AutoFormer's sub-ImageNet). Only paths are
held; images are decoded per batch by a `torch.utils.data.DataLoader` (`workers` processes,
persistent, pinned memory on CUDA) with timm's transforms: random resized crop + flip + colour
jitter (RandAugment with `randaugment`) for training, resize + centre crop for evaluation,
ImageNet's mean/std (0.5 for one channel). Besides the list of paths, memory does not grow
with the number of images. A batch's augmentation depends only on the seed it is given, so a
training step is reproducible with any number of loader workers.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import Tensor

from nas.dataset import Dataset, random_split, top1
from nas.errors import NasError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


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
            items = _Items(self.without_loaders(), split, self.transform(train))
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

    def without_loaders(self) -> ImageFiles:
        """A shallow copy without the loaders, for the loaders' own dataset: were the loaders to hold the object
        that holds them, that cycle would be freed by the garbage collector, in an order that leaves each
        persistent worker process waiting 5 s for a stop message that never comes (10 s stalls with 2 workers)."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__getstate__())
        return copy


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
