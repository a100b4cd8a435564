"""Supernet training on Ray Train: `TorchTrainer` with K workers (gloo on CPU, NCCL on GPU).

Each worker runs `nas.training.train_supernet` as one rank of a `Distributed` group: the same
subnets on every rank (the step's RNG depends only on seed and step), its shard of every
batch, gradients averaged after each sandwich step. No rank opens the run directory, which
may live on another machine: each trains in a folder of its own node's temp dir (removed at
the end), a resumed run's checkpoint reaches them through Ray's object store, and `--data`
must be readable under the same path on every node. After each epoch rank 0 reports its
checkpoint to Ray Train (kept under `storage_path`: the run directory's `ray_train/` by
default, a shared folder or a URI such as s3://bucket/path on a cluster) and sends the
checkpoint files, with every rank's epoch record, to the driver through a Ray queue; the
driver alone writes the run directory (so an interrupted run resumes from its last epoch)
and at the end restores the final files from Ray Train's result checkpoint.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from pathlib import Path

from nas.errors import NasError
from nas.io import atomic_path, write_json
from nas.rundir import CONFIG, RAY_TRAIN, SPLIT, STATE, STATE_JSON, WEIGHTS
from nas.space import SearchSpace
from nas.train_step import Distributed
from nas.training import TrainConfig, format_epoch, train_supernet

CHECKPOINT_FILES = (
    CONFIG,
    SPLIT,
    WEIGHTS,
    STATE,
    STATE_JSON,
)  # train_state.json last: it names the epoch of the others


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
    queue = settings["queue"]
    dataset = load_dataset(settings["data"], space.image_size, space.in_chans, **settings["loading"])
    compute = Compute(ray.train.torch.get_device(), settings["config"].precision) if settings["use_gpu"] else CPU

    with tempfile.TemporaryDirectory(prefix="nas-rank-") as folder:
        local = Path(folder)
        for name, blob in settings["restore"].items():
            (local / name).write_bytes(blob)

        def send(metrics: dict, record: dict | None) -> None:
            """Every rank reports (Ray Train needs all ranks to); rank 0 also sends its checkpoint."""
            queue.put({"rank": rank, "record": record})
            if rank != 0:
                ray.train.report(metrics)
                return
            files = {name: (local / name).read_bytes() for name in CHECKPOINT_FILES if (local / name).exists()}
            queue.put({"rank": 0, "files": files})
            with tempfile.TemporaryDirectory(
                prefix="nas-checkpoint-"
            ) as staging:  # Ray Train copies it into storage_path
                for name, blob in files.items():
                    (Path(staging) / name).write_bytes(blob)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(staging))

        def report(record: dict) -> None:
            send({k: v for k, v in record.items() if isinstance(v, (int, float))}, record)

        train_supernet(
            space,
            dataset,
            settings["config"],
            local,
            resume=bool(settings["restore"]),
            data_arg=settings["data"],
            progress=report,
            dist=Distributed(rank, world),
            compute=compute,
        )
        send({"done": 1}, None)  # the final checkpoint: train_state.json now holds the test accuracies


def train_distributed(
    space: SearchSpace,
    data: str | None,
    config: TrainConfig,
    run_dir: Path,
    workers: int,
    resume: bool,
    ray_address: str | None = None,
    progress=print,
    use_gpu: bool = False,
    loading: dict | None = None,
    storage_path: str | None = None,
) -> dict:
    """Train with `workers` Ray Train workers (one GPU each with `use_gpu`; NCCL then); returns the
    final summary (as `train_supernet`). `loading`: load_dataset's randaugment and workers.
    `storage_path`: where Ray Train keeps its checkpoints (default <run_dir>/ray_train); on a
    cluster, a folder every node sees or a URI (s3://, gs://, ...)."""
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from workers.cluster import init_ray, require_cpus

    run_dir = Path(run_dir).resolve()
    have = [name for name in CHECKPOINT_FILES if (run_dir / name).exists()]
    if resume and WEIGHTS not in have:
        raise NasError(f"--resume: {run_dir} holds no supernet checkpoint to continue")
    if not resume and (WEIGHTS in have or STATE_JSON in have):
        raise NasError(
            f"{run_dir} already holds a trained supernet; pass --resume to continue it or choose another --out"
        )
    init_ray(ray_address)
    for name in ("ray", "ray.train", "ray.tune", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    require_cpus("workers", workers)
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = storage_path or str(run_dir / RAY_TRAIN)
    queue = Queue(actor_options={"num_cpus": 0})
    restore = {name: (run_dir / name).read_bytes() for name in have} if resume else {}
    settings = {
        "space": space,
        "data": data,
        "config": config,
        "restore": restore,
        "queue": queue,
        "threads": 1,
        "use_gpu": use_gpu,
        "loading": loading or {},
    }
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config=settings,
        scaling_config=_scaling(ScalingConfig, workers, use_gpu),
        run_config=RunConfig(name="supernet", storage_path=storage, checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=_fit(trainer)), daemon=True)
    started = time.perf_counter()
    thread.start()
    ranks: dict[int, list] = {}
    try:
        while thread.is_alive():
            thread.join(timeout=1.0)
            _drain(queue, run_dir, ranks, progress)
        _drain(queue, run_dir, ranks, progress)
    finally:
        ray.kill(queue.actor)
    result = outcome.get("result")
    if isinstance(result, BaseException) or result is None or getattr(result, "error", None):
        error = result if isinstance(result, BaseException) else getattr(result, "error", "no result")
        raise NasError(f"distributed training failed: {error}")
    if result.checkpoint is None:
        raise NasError(f"distributed training ended without a checkpoint in {storage}")
    with result.checkpoint.as_directory() as folder:  # from storage_path, wherever it is
        for name in CHECKPOINT_FILES:
            if (Path(folder) / name).exists():
                _write(run_dir / name, (Path(folder) / name).read_bytes())
    state = json.loads((run_dir / STATE_JSON).read_text())
    if not state.get("final"):
        raise NasError(f"distributed training ended without a final summary in {run_dir / STATE_JSON}")
    progress(
        f"Ray Train: {workers} workers, {time.perf_counter() - started:.0f} s including start-up and tear-down; "
        f"checkpoints in {storage}"
    )
    return state["final"]


def _drain(queue, run_dir: Path, ranks: dict[int, list], progress) -> None:
    """What the ranks sent so far: rank 0's checkpoint files go into the run directory (the driver alone
    writes it), epoch records are printed once (rank 0's) and logged per rank under ray_train/ranks/."""
    while not queue.empty():
        item = queue.get()
        if "files" in item:
            for name, blob in item["files"].items():
                _write(run_dir / name, blob)
            continue
        record = item["record"]
        if record is None:
            continue
        ranks.setdefault(item["rank"], []).append(
            {"epoch": record["epoch"], "subnets_sha256": record["subnets_sha256"]}
        )
        write_json(run_dir / RAY_TRAIN / "ranks" / f"rank-{item['rank']}.json", ranks[item["rank"]])
        if item["rank"] == 0:
            progress(format_epoch(record))


def _write(path: Path, blob: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)


def _scaling(ScalingConfig, workers: int, use_gpu: bool):
    """K workers of one CPU each and nothing else: Ray Train before its v2 (Ray < 2.4x) also reserves a CPU for
    its trainer actor unless told not to, which would need K + 1 CPUs; v2 has no such actor and refuses the field."""
    try:
        return ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1}, trainer_resources={"CPU": 0}
        )
    except DeprecationWarning:
        return ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1})


def _fit(trainer):
    try:
        return trainer.fit()
    except Exception as error:  # noqa: BLE001 — surfaced by the driver as one clear error
        return error
