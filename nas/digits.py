"""scikit-learn's handwritten digits (1,797 images of 8×8 pixels, values 0–16), the source of the embedded tasks.

Read from the file scikit-learn installs (`sklearn/datasets/data/digits.csv.gz`, what `load_digits` parses) without
importing `sklearn.datasets`, which costs about a second in every process that builds an embedded dataset;
`load_digits` itself is the fallback when the file is not where it has always been."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def digits() -> tuple[np.ndarray, np.ndarray]:
    """Images (1797, 8, 8) as float64 in [0, 16] and their classes (1797,) as int64, in scikit-learn's order."""
    path = _data_file()
    if path is None:
        from sklearn.datasets import load_digits

        data = load_digits()
        return np.asarray(data.images, dtype=np.float64), np.asarray(data.target, dtype=np.int64)
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def _data_file() -> Path | None:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None
