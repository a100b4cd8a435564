"""Scoring an arch with weights inherited from a trained supernet (`accuracy`: the top-1 of one
subnet on one split, also read by supernet training after every epoch).

The supernet has LayerNorms only (no running statistics), so a subnet needs no norm
recalibration before evaluation: its accuracy is read straight off the shared weights.

`evaluation_state(run_dir)` is everything an evaluator needs, read once by the driver: the
space, the supernet's weights (safetensors bytes) and the validation split alone (images in
memory, or an ImageFolder's file list, which each node must see under the same root). It
travels to Ray's evaluator actors through the object store, so no evaluator opens the run
directory.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from nas import flops
from nas.arch import Arch
from nas.compute import CPU, Compute
from nas.dataset import Dataset
from nas.rundir import RunDir
from nas.supernet import SuperNet


def accuracy(
    net: SuperNet,
    arch: Arch,
    dataset: Dataset,
    split: str,
    batch_size: int = 256,
    compute: Compute = CPU,
    limit: int | None = None,
) -> float:
    """Top-1 of subnet `arch` with the supernet's weights (eval mode) on `split` (its first
    `limit` images of a fixed sample), computed on `compute`'s device and precision."""
    was_training = net.training
    net.eval()

    def forward(x):
        with compute.autocast():
            return net(compute.move(x), arch)

    top1 = dataset.top1(forward, split, batch_size, limit)
    net.train(was_training)
    return top1


def evaluation_state(run_dir: str | Path) -> dict:
    """The space, the supernet's weights and the validation split of a trained run."""
    from safetensors.torch import save

    run = RunDir(run_dir)
    space, data = run.space_and_data()
    net = run.supernet(space)  # a corrupt or mismatched checkpoint fails here, with one line
    return {
        "space": space,
        "weights": save({k: v.contiguous() for k, v in net.state_dict().items()}),
        "val": run.dataset(space, data).only("val"),
    }


class Evaluator:
    """Holds a supernet and a validation split (`evaluation_state`); `evaluate(arch)` scores an
    arch on `val_images` of them (all by default) with `device`/`precision` (see nas.compute)."""

    def __init__(
        self,
        state: dict,
        threads: int | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        val_images: int | None = None,
    ) -> None:
        from safetensors.torch import load

        from nas.supernet import SuperNet

        if threads is not None:
            torch.set_num_threads(threads)
        self.compute = Compute.parse(device, precision)
        self.space, self.dataset = state["space"], state["val"]
        self.net = SuperNet(self.space)
        self.net.load_state_dict(load(state["weights"]))
        self.net = self.net.to(self.compute.device).eval()
        self.val_images = val_images

    def evaluate(self, arch: Arch) -> dict:
        """{accuracy, macs, params, seconds}: `seconds`, this evaluation's own time (the search states how busy its evaluators were)."""
        started = time.perf_counter()
        arch = self.space.validate(arch)
        top1 = accuracy(self.net, arch, self.dataset, "val", compute=self.compute, limit=self.val_images)
        cost = flops.count(arch)
        return {
            "accuracy": top1 if math.isfinite(top1) else math.nan,
            "macs": cost.macs,
            "params": cost.params,
            "seconds": round(time.perf_counter() - started, 4),
        }


class LocalPool:
    """One `Evaluator` in this process, behind the interface of `workers.evaluator.EvaluatorPool`
    (`evaluate`, `actors`, `shutdown`): where Ray is not installed (a bare GPU machine), the
    search scores its archs here, one after another, with this process's threads and device.
    A failed evaluation comes back as its exception, as from the pool."""

    def __init__(self, state: dict, scoring: dict | None = None) -> None:
        self.actors = [Evaluator(state, None, **(scoring or {}))]
        self.replaced = 0

    def evaluate(self, archs) -> list:
        results = []
        for arch in archs:
            try:
                results.append(self.actors[0].evaluate(arch))
            except Exception as error:  # noqa: BLE001 — the search records the trial as failed, with this reason
                results.append(error)
        return results

    def shutdown(self) -> None:
        self.actors = []
