"""Datasets: digits split, ImageFolder (generated images), CIFAR-10 python folder, clear errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from nas.data import load_dataset
from nas.errors import NasError
from nas.imagefolder import ImageFiles


def test_digits_split_is_fixed_and_disjoint():
    a, b = load_dataset(None, 32, 1), load_dataset("digits", 32, 1)
    assert a.split == b.split
    train, val, test = (set(a.split[k]) for k in ("train", "val", "test"))
    assert not (train & val or train & test or val & test) and len(train | val | test) == 1797
    x, y = a.batch("train", [0, 1, 2])
    assert x.shape == (3, 1, 32, 32) and y.dtype == torch.int64
    assert abs(a.batch("train", list(range(a.size("train"))))[0].mean().item()) < 0.05  # normalised


def test_the_digits_read_from_scikit_learns_file_are_load_digits_and_it_is_the_fallback(monkeypatch):
    from sklearn.datasets import load_digits

    from nas import digits

    expected = load_digits()
    assert digits._data_file() is not None  # the fast path is the one taken where scikit-learn is installed
    for found in (digits._data_file(), None):
        monkeypatch.setattr(digits, "_data_file", lambda found=found: found)
        images, targets = digits.digits()
        assert images.dtype == np.float64 and targets.dtype == np.int64
        assert np.array_equal(images, expected.images) and np.array_equal(targets, expected.target)


def make_image_folder(root, mode="RGB", size=(10, 12), classes=("cat", "dog"), per_class=6, suffix="png"):
    """Generated images: each class its own colour, with a little per-image noise."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            base = np.full((size[1], size[0], 3 if mode == "RGB" else 1), 40 + 160 * label, dtype=np.int16)
            pixels = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels.squeeze(), mode).save(root / name / f"{i}.{suffix}")
    return root


def test_image_folder_is_streamed_and_resized_to_the_space(tmp_path):
    data = load_dataset(str(make_image_folder(tmp_path / "imgs")), 16, 3)
    assert isinstance(data, ImageFiles) and data.classes == ["cat", "dog"]
    assert sum(data.size(s) for s in ("train", "val", "test")) == 12
    x, y = data.batch("val", [0])
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert not hasattr(data, "images")  # only paths are held


def test_imagenet_layout_uses_val_as_test_and_holds_out_a_tenth_of_train(tmp_path):
    make_image_folder(tmp_path / "in" / "train", per_class=20, suffix="jpg")
    make_image_folder(tmp_path / "in" / "val", per_class=3, suffix="jpg")
    data = load_dataset(str(tmp_path / "in"), 16, 3)
    assert (data.size("train"), data.size("val"), data.size("test")) == (36, 4, 6)
    test_paths = {data.samples[i][0] for i in data.split["test"]}
    assert all("/val/" in path for path in test_paths)
    assert not set(data.split["val"]) & set(data.split["train"])


@pytest.mark.parametrize("workers", [0, 2])
def test_an_augmented_batch_depends_only_on_its_seed(tmp_path, workers):
    data = load_dataset(str(make_image_folder(tmp_path / "imgs")), 16, 3, workers=workers)
    plan = [(torch.tensor([0, 1, 2]), 7), (torch.tensor([3, 4]), 8), (torch.tensor([0, 1, 2]), 9)]
    first = list(data.batches("train", plan))
    again = list(data.batches("train", plan))  # a second pass over the same (persistent) workers
    serial = list(load_dataset(str(tmp_path / "imgs"), 16, 3, workers=0).batches("train", plan))
    for (a, ya), (b, yb), (c, _) in zip(first, again, serial):
        assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(ya, yb)
    assert not torch.equal(first[0][0], first[2][0])  # another seed, other crops
    plain = [(torch.tensor([0, 1, 2]), None)]
    assert torch.equal(next(iter(data.batches("train", plain)))[0], next(iter(data.batches("train", plain)))[0])


def test_val_images_caps_the_images_scored(tmp_path):
    data = load_dataset(str(make_image_folder(tmp_path / "imgs", per_class=20)), 16, 3)
    seen = []

    def forward(x):
        seen.append(len(x))
        return torch.zeros(len(x), 2)

    data.top1(forward, "val", batch_size=4, limit=5)
    assert sum(seen) == 5
    seen.clear()
    data.top1(forward, "val", batch_size=4)
    assert sum(seen) == data.size("val") == 6
    seen.clear()
    load_dataset(None, 8, 1).top1(forward, "val", limit=10)
    assert sum(seen) == 10


def test_an_image_folder_with_persistent_workers_is_freed_without_the_garbage_collector(tmp_path):
    """Its loaders must not hold it: freed by the garbage collector, a cycle through a DataLoader with persistent
    workers left each worker waiting 5 s for its stop message (10 s with 2 workers, at an arbitrary moment)."""
    import gc
    import weakref

    data = load_dataset(str(make_image_folder(tmp_path / "imgs")), 16, 3, workers=2)
    list(data.batches("train", [(torch.tensor([0, 1, 2]), 7)]))  # a training pass: persistent workers
    freed = weakref.ref(data)
    gc.disable()
    try:
        del data
        assert freed() is None, "the ImageFiles is kept alive by a reference cycle"
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "case, match",
    [
        ("no class folders", "needs one sub-folder per class"),
        ("corrupt image", "cannot read"),
        ("wrong channels", r"has 1 channel\(s\) \(L\), but the search space takes in_chans=3"),
        ("val class not in train", "are not in the train folder"),
    ],
)
def test_bad_image_folders_fail_when_scanned_in_one_line(tmp_path, case, match):
    root = tmp_path / "data"
    if case == "no class folders":
        root.mkdir()
        Image.new("RGB", (8, 8)).save(root / "lonely.png")
    elif case == "corrupt image":
        make_image_folder(root)
        (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")
    elif case == "wrong channels":
        make_image_folder(root, mode="L")
    else:
        make_image_folder(root / "train")
        make_image_folder(root / "val", classes=("cat", "cow"))
    with pytest.raises(NasError, match=match) as error:
        load_dataset(str(root), 16, 3)
    assert "\n" not in str(error.value)


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
    with pytest.raises(
        NasError, match=r"refusing to load \S*print from a dataset file"
    ):  # Ray, once started, swaps builtins.print
        load_dataset(str(root), 32, 3)


def test_bad_paths_and_channel_mismatch(tmp_path):
    with pytest.raises(NasError, match="no such directory"):
        load_dataset(str(tmp_path / "nope"), 32, 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NasError, match="the directory is empty"):
        load_dataset(str(tmp_path / "empty"), 32, 1)
    with pytest.raises(NasError, match=r"images have 1 channel\(s\), but the search space takes in_chans=3"):
        load_dataset(None, 224, 3)
