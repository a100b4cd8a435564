"""Datasets: digits split, ImageFolder (generated images), CIFAR-10 python folder, clear errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from nas.data import load_dataset
from nas.errors import NasError


def test_digits_split_is_fixed_and_disjoint():
    a, b = load_dataset(None, 32, 1), load_dataset("digits", 32, 1)
    assert a.split == b.split
    train, val, test = (set(a.split[k]) for k in ("train", "val", "test"))
    assert not (train & val or train & test or val & test) and len(train | val | test) == 1797
    x, y = a.batch("train", [0, 1, 2])
    assert x.shape == (3, 1, 32, 32) and y.dtype == torch.int64
    assert abs(a.batch("train", list(range(a.size("train"))))[0].mean().item()) < 0.05  # normalised


def make_image_folder(root, mode="RGB", size=(10, 12)):
    for label, colour in (("cat", 40), ("dog", 200)):
        (root / label).mkdir(parents=True)
        for i in range(6):
            pixels = np.full((size[1], size[0], 3 if mode == "RGB" else 1), colour + i, dtype=np.uint8)
            Image.fromarray(pixels.squeeze(), mode).save(root / label / f"{i}.png")
    return root


def test_image_folder_is_resized_to_the_space(tmp_path):
    data = load_dataset(str(make_image_folder(tmp_path / "imgs")), 16, 3)
    assert data.classes == ["cat", "dog"] and data.images.shape == (12, 3, 16, 16)
    assert sum(data.size(s) for s in ("train", "val", "test")) == 12
    x, _ = data.batch("val", [0])
    assert x.shape == (1, 3, 16, 16)


def test_image_folder_channels_are_checked(tmp_path):
    root = make_image_folder(tmp_path / "gray", mode="L")
    with pytest.raises(NasError, match=r"has 1 channel\(s\) \(L\), but the search space takes in_chans=3"):
        load_dataset(str(root), 16, 3)


def write_cifar(root, payload=None):
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = payload or {b"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2}
        with (root / name).open("wb") as handle:
            pickle.dump(batch, handle)
    return root


def test_cifar10_python_folder(tmp_path):
    data = load_dataset(str(write_cifar(tmp_path / "cifar")), 32, 3)
    assert data.images.shape == (120, 3, 32, 32) and data.size("test") == 20 and data.num_classes == 10


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_loader_refuses_arbitrary_pickled_objects(tmp_path):
    root = write_cifar(tmp_path / "evil", payload={b"data": Exploit(), b"labels": [0]})
    with pytest.raises(NasError, match="refusing to load builtins.print"):
        load_dataset(str(root), 32, 3)


def test_bad_paths_and_channel_mismatch(tmp_path):
    with pytest.raises(NasError, match="no such directory"):
        load_dataset(str(tmp_path / "nope"), 32, 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NasError, match="the directory is empty"):
        load_dataset(str(tmp_path / "empty"), 32, 1)
    with pytest.raises(NasError, match=r"images have 1 channel\(s\), but the search space takes in_chans=3"):
        load_dataset(None, 224, 3)
