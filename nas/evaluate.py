"""Scoring an arch with weights inherited from a trained supernet.

The supernet has LayerNorms only (no running statistics), so a subnet needs no norm
recalibration before evaluation: its accuracy is read straight off the shared weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from nas import flops
from nas.arch import Arch
from nas.data import check_split, load_dataset
from nas.train import SPLIT, accuracy, load_supernet, run_space


class Evaluator:
    """Holds one run's supernet and its validation split; `evaluate(arch)` scores an arch."""

    def __init__(self, run_dir: str | Path, threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        run_dir = Path(run_dir)
        self.space, data = run_space(run_dir)
        self.dataset = load_dataset(None if data == "digits" else data, self.space.image_size, self.space.in_chans)
        check_split(self.dataset, run_dir / SPLIT)
        self.net = load_supernet(run_dir, self.space)

    def evaluate(self, arch: Arch) -> dict:
        arch = self.space.validate(arch)
        top1 = accuracy(self.net, arch, self.dataset, "val")
        cost = flops.count(arch)
        return {"accuracy": top1 if math.isfinite(top1) else math.nan, "macs": cost.macs, "params": cost.params}
