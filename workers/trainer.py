"""Supernet training on Ray Train: `TorchTrainer` with K workers (gloo on CPU, NCCL on GPU).

Each worker runs `nas.train.train_supernet` as one rank of a `Distributed` group: the same
subnets on every rank (the step's RNG depends only on seed and step), its shard of every
batch, gradients averaged after each sandwich step. Rank 0 writes the run directory's
checkpoint each epoch and reports it to Ray Train (checkpoints under <run>/ray_train/);
every rank reports its epoch metrics, including the hash of the subnets it sampled.
The driver prints the epochs as they land and keeps Ray's own logging quiet.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path

from nas.errors import NasError
from nas.space import SearchSpace
from nas.rundir import RAY_TRAIN, STATE, STATE_JSON, WEIGHTS
from nas.train import Distributed, TrainConfig, format_epoch, train_supernet


def _worker_loop(settings: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from nas.compute import CPU, Compute

    from nas.data import load_dataset

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(settings["threads"])
    space: SearchSpace = settings["space"]
    run_dir = Path(settings["run_dir"])
    dataset = load_dataset(settings["data"], space.image_size, space.in_chans, **settings["loading"])
    compute = Compute(ray.train.torch.get_device(), settings["config"].precision) if settings["use_gpu"] else CPU
    ranks_dir = run_dir / RAY_TRAIN / "ranks"
    ranks_dir.mkdir(parents=True, exist_ok=True)
    log = []

    def report(record: dict) -> None:
        log.append({"epoch": record["epoch"], "subnets_sha256": record["subnets_sha256"]})
        (ranks_dir / f"rank-{rank}.json").write_text(json.dumps(log))
        metrics = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        if rank != 0:
            ray.train.report(metrics)
            return
        # Ray Train persists the checkpoint into storage_path during report; the staging copy is then removed.
        with tempfile.TemporaryDirectory(prefix="nas-checkpoint-") as folder:
            for name in (WEIGHTS, STATE, STATE_JSON):
                shutil.copy2(run_dir / name, Path(folder) / name)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

    train_supernet(
        space, dataset, settings["config"], run_dir, resume=settings["resume"], data_arg=settings["data"],
        progress=report, dist=Distributed(rank, world), compute=compute,
    )


def train_distributed(
    space: SearchSpace, data: str | None, config: TrainConfig, run_dir: Path, workers: int, resume: bool,
    ray_address: str | None = None, progress=print, use_gpu: bool = False, loading: dict | None = None,
) -> dict:
    """Train with `workers` Ray Train workers (one GPU each with `use_gpu`; NCCL then); returns the
    final summary (as `train_supernet`). `loading`: load_dataset's randaugment and workers."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from workers.cluster import init_ray, require_cpus

    init_ray(ray_address)
    for name in ("ray", "ray.train", "ray.tune", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    require_cpus("workers", workers)
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = {"space": space, "data": data, "config": config, "run_dir": str(run_dir), "resume": resume, "threads": 1,
                "use_gpu": use_gpu, "loading": loading or {}}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config=settings,
        scaling_config=_scaling(ScalingConfig, workers, use_gpu),
        run_config=RunConfig(name="supernet", storage_path=str(run_dir / RAY_TRAIN), checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=_fit(trainer)), daemon=True)
    started = time.perf_counter()
    thread.start()
    shown = 0
    while thread.is_alive():
        thread.join(timeout=2.0)
        shown = _show_new_epochs(run_dir, shown, progress)
    _show_new_epochs(run_dir, shown, progress)
    result = outcome.get("result")
    if isinstance(result, BaseException) or result is None or getattr(result, "error", None):
        error = result if isinstance(result, BaseException) else getattr(result, "error", "no result")
        raise NasError(f"distributed training failed: {error}")
    state = json.loads((run_dir / STATE_JSON).read_text())
    if not state.get("final"):
        raise NasError(f"distributed training ended without a final summary in {run_dir / STATE_JSON}")
    progress(f"Ray Train: {workers} workers, {time.perf_counter() - started:.0f} s including start-up and tear-down")
    return state["final"]


def _scaling(ScalingConfig, workers: int, use_gpu: bool):
    """K workers of one CPU each and nothing else: Ray Train before its v2 (Ray < 2.4x) also reserves a CPU for
    its trainer actor unless told not to, which would need K + 1 CPUs; v2 has no such actor and refuses the field."""
    try:
        return ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1}, trainer_resources={"CPU": 0})
    except DeprecationWarning:
        return ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1})


def _fit(trainer):
    try:
        return trainer.fit()
    except Exception as error:  # noqa: BLE001 — surfaced by the driver as one clear error
        return error


def _show_new_epochs(run_dir: Path, shown: int, progress) -> int:
    try:
        history = json.loads((run_dir / STATE_JSON).read_text())["history"]
    except (OSError, ValueError, KeyError):
        return shown
    for record in history[shown:]:
        progress(format_epoch(record))
    return max(shown, len(history))
