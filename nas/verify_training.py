"""The verification's training of its candidates (nas.verify), resumable: each candidate trains
standalone (nas.standalone) and its state is saved after every epoch (verify/<digest>-seed<k>.pt,
atomic), so a stopped verification retrains no finished epoch; `Trainer` trains several candidates
in a pool of spawned local processes, kept across the rungs of the successive halving.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from nas.arch import Arch
from nas.pools import new_pool, stop_pool
from nas.progress import Bar
from nas.standalone import Recipe, Standalone

# ---- training, resumable ---------------------------------------------------------------------------

_DATASET = None


def _init_worker(data: str, image_size: int, in_chans: int, split: dict, threads: int) -> None:
    global _DATASET
    from nas.data import load_dataset

    torch.set_num_threads(threads)
    _DATASET = load_dataset(data, image_size, in_chans, check_images=False)
    _DATASET.split = split  # exactly the run's split


def state_path(directory: Path, arch: Arch, seed: int) -> Path:
    return Path(directory) / f"{arch.digest}-seed{seed}.pt"


def read_state(path: Path) -> dict | None:
    """A saved Standalone state, or None when absent or unreadable (a damaged file is trained again)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 — a cut or foreign file: start that candidate again
        return None


def train_to(
    arch_json: str, seed: int, recipe: Recipe, epochs: int, path: str, device: str = "cpu", dataset=None
) -> dict:
    """Train (or go on training) one arch to `epochs` epochs of `recipe`, saving its state after
    each epoch to `path`; returns its curve and the seconds spent here."""
    from nas.io import atomic_path

    started = time.perf_counter()
    run = Standalone(Arch.from_json(arch_json), seed, recipe, dataset or _DATASET, device)
    state = read_state(Path(path))
    if state is not None:
        try:
            run.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError):
            run = Standalone(
                Arch.from_json(arch_json), seed, recipe, dataset or _DATASET, device
            )  # another recipe's: start over
    while run.epoch < epochs:
        run.train_epoch()
        with atomic_path(path) as tmp:
            torch.save(run.state_dict(), tmp)
    return {"curve": run.curve, "seconds": round(time.perf_counter() - started, 1)}


class Trainer:
    """`successive_halving`'s train_to over saved states: each name trains its arch (`archs`), saved
    under the arch's digest; epochs a state already holds are not trained again. Several candidates
    train in `jobs` spawned processes, one pool kept across rungs (each spawn costs seconds of imports);
    a single one, or with one job, trains in this process on all of its threads. `close()` ends the pool,
    `stop()` ends it at once.
    `config`: the verification's nas.verify.VerifyConfig (its seed, recipe, jobs and device)."""

    def __init__(self, directory: Path, archs: dict[str, Arch], config, data: str, dataset, progress=print) -> None:
        self.directory, self.archs, self.config, self.data, self.dataset, self.progress = (
            Path(directory),
            archs,
            config,
            data,
            dataset,
            progress,
        )
        self.seconds = 0.0
        self._pool: ProcessPoolExecutor | None = None
        self._pool_jobs = 0

    def curve(self, name: str) -> list[float]:
        state = read_state(state_path(self.directory, self.archs[name], self.config.seed))
        return list(state["curve"]) if state and state.get("recipe") == self.config.recipe.to_dict() else []

    def _trained(self, name: str, epochs: int, result: dict) -> None:
        self.progress(
            f"  {name} ({self.archs[name]!r}): {epochs} epochs, val top-1 {result['curve'][epochs - 1]:.4f} "
            f"({result['seconds']:.0f} s)"
        )

    def _pool_of(self, jobs: int) -> ProcessPoolExecutor:
        if self._pool is None or self._pool_jobs != jobs:
            self.close()
            threads = max(1, (os.cpu_count() or 1) // jobs)
            arch = next(iter(self.archs.values()))
            self._pool = new_pool(
                jobs, _init_worker, (self.data, arch.image_size, arch.in_chans, self.dataset.split, threads)
            )
            self._pool_jobs = jobs
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool, self._pool_jobs = None, 0

    def stop(self) -> None:
        """End the pool now, terminating the runs in flight (every epoch they finished is saved)."""
        if self._pool is not None:
            stop_pool(self._pool)
            self._pool, self._pool_jobs = None, 0

    def __call__(self, names: list[str], epochs: int) -> dict[str, list[float]]:
        curves = {name: self.curve(name) for name in names}
        todo = [name for name in names if len(curves[name]) < epochs]
        if not todo:
            return curves
        self.directory.mkdir(parents=True, exist_ok=True)
        jobs = max(1, min(self.config.jobs, len(todo)))
        started = time.perf_counter()

        def args(name: str) -> tuple:
            return (
                self.archs[name].to_json(indent=None),
                self.config.seed,
                self.config.recipe,
                epochs,
                str(state_path(self.directory, self.archs[name], self.config.seed)),
                self.config.device,
            )

        with Bar(len(todo), f"verify to {epochs} epochs", unit="arch") as bar:
            if jobs == 1:
                for name in todo:
                    result = train_to(*args(name), dataset=self.dataset)
                    curves[name] = result["curve"]
                    self._trained(name, epochs, result)
                    bar.update()
            else:
                pool = self._pool_of(jobs)
                pending = {pool.submit(train_to, *args(name)): name for name in todo}
                while pending:
                    ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in ready:
                        name = pending.pop(future)
                        result = future.result()
                        curves[name] = result["curve"]
                        self._trained(name, epochs, result)
                        bar.update()
        self.seconds += time.perf_counter() - started
        return curves
