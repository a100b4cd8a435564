"""`odd-one-out`: the embedded task on which architecture choices matter.

Each 64×64 image is an 8×8 grid of 8×8 cells; three cells hold scikit-learn handwritten
digits (8×8), the rest are blank. Two of the digits are of one class (written by two
different hands) and one is of another; the label is the class that appears once. At
patch 8 every digit is one of the 64 tokens, at random places.

Why it discriminates architectures: a digit alone says only that the label is one of the
two classes present; which one needs comparing each digit with the others, wherever they
are. Attention that mixes only tokens inside local windows sees the digits apart and can
only guess between the two classes (≤ 50 % where the digits fall in different windows),
while kernels with a global receptive field can compare them; how sharply they match
(softmax vs linear feature maps), and depth and width, move accuracy further. An additive
score over local evidence (what global average pooling of local features gives) cannot
pick the class that occurs once rather than twice: that is what makes it need attention
across the image, unlike sums or maxima of the digits.

Nothing is downloaded: the digits ship with scikit-learn, and the canvases are generated
with a fixed seed. The source digits are split first (60 / 20 / 20 %), so validation and
test images are made of handwriting that training never saw; every split is balanced
over the 10 classes. Same seed → identical tensors.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

NAME = "odd-one-out"
CANVAS = 64
DIGIT = 8
DIGITS = 3
SEED = 0
SIZES = {"train": 20_000, "val": 2_000, "test": 2_000}
SOURCE_FRACTIONS = (0.6, 0.2, 0.2)  # of scikit-learn's 1,797 digits, per split


def _pick(
    rng: np.random.Generator, by_class: list[np.ndarray], classes: np.ndarray, avoid: np.ndarray | None = None
) -> np.ndarray:
    """One source digit of each requested class, uniformly; with `avoid`, a different one."""
    sizes = np.array([len(pool) for pool in by_class])[classes]
    if avoid is None:
        index = (rng.random(len(classes)) * sizes).astype(np.int64)
    else:
        index = (avoid + 1 + (rng.random(len(classes)) * (sizes - 1)).astype(np.int64)) % sizes
    return index


def generate(seed: int = SEED, sizes: dict[str, int] | None = None) -> tuple[Tensor, Tensor, dict[str, list[int]]]:
    """uint8 images (N, 1, 64, 64), labels (N,), and the split (train / val / test index lists)."""
    from nas.digits import digits

    sizes = dict(SIZES if sizes is None else sizes)
    source, targets = digits()
    pixels = np.round(source * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(targets))
    n_train, n_val = int(len(order) * SOURCE_FRACTIONS[0]), int(len(order) * SOURCE_FRACTIONS[1])
    sources = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    cells = CANVAS // DIGIT
    offsets = np.arange(DIGIT)

    images, labels, split, offset = [], [], {}, 0
    for name in ("train", "val", "test"):
        count = sizes[name]
        by_class = [sources[name][targets[sources[name]] == c] for c in range(10)]
        label = np.arange(count) % 10  # balanced classes: the digit that appears once
        twice = (label + rng.integers(1, 10, size=count)) % 10  # another class, shown twice
        first = _pick(rng, by_class, twice)
        chosen = [
            np.array([by_class[c][i] for c, i in zip(label, _pick(rng, by_class, label))]),
            np.array([by_class[c][i] for c, i in zip(twice, first)]),
            np.array([by_class[c][i] for c, i in zip(twice, _pick(rng, by_class, twice, avoid=first))]),  # another hand
        ]
        cell = np.argsort(rng.random((count, cells * cells)), axis=1)[:, :DIGITS]  # three distinct cells
        canvas = np.zeros((count, CANVAS, CANVAS), dtype=np.uint8)
        rows = np.arange(count)[:, None, None]
        for k in range(DIGITS):
            y = (cell[:, k] // cells * DIGIT)[:, None, None] + offsets[None, :, None]
            x = (cell[:, k] % cells * DIGIT)[:, None, None] + offsets[None, None, :]
            canvas[rows, y, x] = pixels[chosen[k]]
        shuffle = rng.permutation(count)
        images.append(canvas[shuffle])
        labels.append(label[shuffle])
        split[name] = list(range(offset, offset + count))
        offset += count
    stacked = torch.from_numpy(np.concatenate(images)).unsqueeze(1)
    return stacked, torch.from_numpy(np.concatenate(labels)), split
