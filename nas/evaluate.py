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
from nas.rundir import RunDir
from nas.train import accuracy


class Evaluator:
    """Holds one run's supernet and its validation split; `evaluate(arch)` scores an arch."""

    def __init__(self, run_dir: str | Path, threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        run = RunDir(run_dir)
        self.space, data = run.space_and_data()
        self.dataset = run.dataset(self.space, data)
        self.net = run.supernet(self.space)

    def evaluate(self, arch: Arch) -> dict:
        arch = self.space.validate(arch)
        top1 = accuracy(self.net, arch, self.dataset, "val")
        cost = flops.count(arch)
        return {"accuracy": top1 if math.isfinite(top1) else math.nan, "macs": cost.macs, "params": cost.params}
