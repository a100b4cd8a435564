"""The in-memory `Dataset` (the embedded tasks, CIFAR-10) and what both kinds of dataset share:
the seeded train/val/test split (`random_split`, drawn with `SPLIT_SEED`) and top-1 accuracy
(`top1`, also used by the streamed `nas.imagefolder.ImageFiles`).

Images are kept at their stored resolution and turned into model inputs per batch: resized
to the space's image size, normalised with the training split's per-channel mean/std, and
(training only) lightly augmented with a random translation. A batch's augmentation depends
only on the seed it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SPLIT_SEED = 0  # fixed: the split must not change with the training seed
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)


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
