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
from nas.compute import Compute
from nas.rundir import RunDir
from nas.train import accuracy


class Evaluator:
    """Holds one run's supernet and its validation split; `evaluate(arch)` scores an arch on
    `val_images` of them (all by default) with `device`/`precision` (see nas.compute)."""

    def __init__(self, run_dir: str | Path, threads: int | None = None, device: str = "cpu", precision: str = "fp32",
                 val_images: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.compute = Compute.parse(device, precision)
        run = RunDir(run_dir)
        self.space, data = run.space_and_data()
        self.dataset = run.dataset(self.space, data)
        self.net = run.supernet(self.space).to(self.compute.device)
        self.val_images = val_images

    def evaluate(self, arch: Arch) -> dict:
        arch = self.space.validate(arch)
        top1 = accuracy(self.net, arch, self.dataset, "val", compute=self.compute, limit=self.val_images)
        cost = flops.count(arch)
        return {"accuracy": top1 if math.isfinite(top1) else math.nan, "macs": cost.macs, "params": cost.params}
