"""`nas run` and `nas search`: the stages over one run directory.

Stages of `nas run`, each writing its files into the run directory that the next reads:
  1. latency  — the device's lookup table (latency_table.json), calibrated and validated;
                it comes first so that an infeasible budget is refused before training;
  2. train    — the supernet (supernet.safetensors + training state), in this process or,
                with --workers K > 1, on Ray Train;
  3. search   — the Optuna study (study.db) over Ray evaluator actors; trials.csv,
                pareto.csv, pareto.png;
  4. export   — the best feasible arch under the budget as a standalone model in
                exports/best/ (safetensors, ONNX, TorchScript, metadata.json).
manifest.json records versions, the device fingerprint, the seed, the settings, and the
wall time and completion of each stage.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from nas.errors import NasError
from nas.io import write_json
from nas.latency.table import TABLE_FILE as TABLE

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class RunConfig:
    space: str = "digits-tiny"
    data: str | None = None
    device: str = "cpu"
    dtype: str = "fp32"
    batch_size: int = 1
    budget_ms: float | None = None  # None: halfway between the smallest achievable and the largest arch's latency
    trials: int = 100
    epochs: int = 100
    workers: int = 1
    evaluators: int = 2
    sampler: str = "nsga2"
    calibrate: int = 10
    validate: int = 50
    seed: int = 0
    ray_address: str | None = None  # None: a local Ray instance
    storage: str | None = None  # None: sqlite:///<run>/study.db


def versions() -> dict:
    names = ["torch", "timm", "optuna", "ray", "numpy", "fvcore", "vit-nas"]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return {"python": platform.python_version(), **found}


class Manifest:
    """manifest.json, rewritten (atomically) whenever a stage starts or ends."""

    def __init__(self, run_dir: Path, settings: dict) -> None:
        self.path = run_dir / MANIFEST
        previous = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.data = {
            "created": previous.get("created", datetime.now(timezone.utc).isoformat(timespec="seconds")),
            "versions": versions(),
            "settings": settings,
            "fingerprint": previous.get("fingerprint"),
            "stages": previous.get("stages", {}),
            "result": previous.get("result"),
        }

    def done(self, stage: str) -> bool:
        return bool(self.data["stages"].get(stage, {}).get("completed"))

    def record(self, stage: str, seconds: float, completed: bool, **extra) -> None:
        entry = self.data["stages"].get(stage, {"seconds": 0.0})
        entry.update(seconds=round(entry.get("seconds", 0.0) + seconds, 2), completed=completed, **extra)
        self.data["stages"][stage] = entry
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Join `address` (auto or a URL), or start a local Ray instance with no dashboard."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address is None:
        # A local instance serves nobody else: whatever dashboard/agent Ray starts listens on loopback only.
        ray.init(num_cpus=num_cpus or os.cpu_count(), dashboard_host="127.0.0.1", **kwargs)
    else:
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as error:
            raise NasError(f"--ray-address {address}: no Ray cluster there ({error})") from None


def default_storage(run_dir: Path) -> str:
    return f"sqlite:///{run_dir.resolve() / 'study.db'}"


def search_stage(run_dir: Path, space, table, config, storage: str, resume: bool, evaluators: int, ray_address: str | None, progress=print):
    """The Optuna search over Ray evaluator actors; writes trials.csv, pareto.csv, pareto.png."""
    import ray

    from nas import search
    from nas.train import check_supernet
    from workers.evaluator import EvaluatorPool

    check_supernet(run_dir, space)  # a corrupt or truncated checkpoint fails here, once, with one clear line
    init_ray(ray_address)
    available = int(ray.cluster_resources().get("CPU", 0))
    if evaluators > available:
        raise NasError(f"--evaluators {evaluators}: Ray has {available} CPU(s); use at most {available}")
    study = search.open_study(storage, config, resume)
    if resume:
        interrupted = search.recover_interrupted(study)
        if interrupted:
            progress(f"resuming: {interrupted} trial(s) interrupted by the last run are re-enqueued")
    pool = EvaluatorPool(str(run_dir), evaluators)
    try:
        search.run_search(study, space, table, pool.evaluate, config, progress)
    finally:
        pool.shutdown()
    front = search.write_outputs(study, run_dir, config.budget_ms)
    return study, front


def resolve_budget(space, table, budget_ms: float | None) -> float:
    from nas.search import smallest_latency

    floor = smallest_latency(space, table)
    if budget_ms is None:
        return round(floor + 0.5 * max(0.0, table.predict(space.largest()) - floor), 4)
    if budget_ms <= 0:
        raise NasError(f"--budget-ms must be > 0, got {budget_ms}")
    if budget_ms < floor:
        raise NasError(
            f"--budget-ms {budget_ms} is below the smallest latency any arch of {space.name} reaches on this device "
            f"({floor:.4f} ms predicted); raise the budget"
        )
    return budget_ms


def run(config: RunConfig, run_dir: Path, resume: bool, progress=print) -> dict:
    """The whole pipeline; returns the manifest's result section."""
    from nas.data import load_dataset
    from nas.space import load_space

    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise NasError(f"{run_dir} already exists and is not empty; pass --resume to continue that run or choose another --out")
    if resume and not (run_dir / MANIFEST).exists():
        raise NasError(f"--resume: {run_dir} holds no run (no {MANIFEST})")
    if config.workers < 1 or config.evaluators < 1 or config.trials < 1 or config.epochs < 1:
        raise NasError("--workers, --evaluators, --trials and --epochs must be >= 1")
    if config.ray_address is None:
        for flag, count in (("--workers", config.workers), ("--evaluators", config.evaluators)):
            if count > (os.cpu_count() or 1):
                raise NasError(f"{flag} {count}: the local Ray instance has {os.cpu_count()} CPU(s); use at most that, or join a cluster with --ray-address")
    space = load_space(config.space)
    dataset = load_dataset(config.data, space.image_size, space.in_chans)  # validates --data before any work
    if dataset.num_classes != space.num_classes:
        space = space.with_num_classes(dataset.num_classes)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _stages(config, run_dir, space, dataset, resume, progress)
    except NasError:
        # A user error before any training (e.g. an infeasible budget) leaves nothing behind.
        if created and not (run_dir / "train_state.json").exists():
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _stages(config: RunConfig, run_dir: Path, space, dataset, resume: bool, progress) -> dict:
    from nas import search
    from nas.latency import table as lut
    from nas.latency.profiler import Profiler
    from nas.train import TrainConfig, format_epoch, train_supernet

    manifest = Manifest(run_dir, {**asdict(config), "storage": search.redact(config.storage) if config.storage else None})
    manifest.save()

    # 1. latency
    started = time.perf_counter()
    profiler = Profiler(config.device, config.dtype, config.batch_size)
    fp = profiler.fingerprint()
    manifest.data["fingerprint"] = fp.to_dict()
    progress(f"== latency: {space.name} on {fp.device_name} ({fp.device_type}, {fp.dtype}, batch {fp.batch_size})")
    table = lut.build(space, fp, run_dir / TABLE, profiler.measure_probes, progress=progress)
    if config.calibrate and table.calibration is None:
        archs = lut.held_out_archs(space, config.calibrate, config.seed, exclude=set())
        lut.calibrate(table, archs, profiler.measure_models(archs))
        table.save(run_dir / TABLE)
    if config.validate and table.validation is None:
        exclude = set(table.calibration["archs"]) if table.calibration else set()
        archs = lut.held_out_archs(space, config.validate, config.seed + 1, exclude)
        lut.validate(table, archs, profiler.measure_models(archs))
        table.save(run_dir / TABLE)
    if table.validation:
        from nas.bench.latency import summary_line

        progress("latency predictor: " + summary_line(table.validation))
    budget = resolve_budget(space, table, config.budget_ms)
    manifest.data["settings"]["budget_ms_resolved"] = budget
    manifest.record("latency", time.perf_counter() - started, True, entries=len(table.entries))
    progress(f"latency budget: {budget} ms (smallest achievable {search.smallest_latency(space, table):.4f} ms)")

    # 2. train
    if not manifest.done("train"):
        started = time.perf_counter()
        train_config = TrainConfig(epochs=config.epochs, seed=config.seed)
        progress(f"== train: {config.epochs} epochs, {config.workers} worker(s)")
        train_resume = (run_dir / "train_state.json").exists()
        try:
            if config.workers > 1:
                from workers.trainer import train_distributed

                summary = train_distributed(space, config.data, train_config, run_dir, config.workers, train_resume, config.ray_address, progress)
            else:
                summary = train_supernet(space, dataset, train_config, run_dir, resume=train_resume, data_arg=config.data, progress=lambda record: progress(format_epoch(record)))
        finally:
            manifest.record("train", time.perf_counter() - started, False)
        manifest.record("train", 0.0, True, test_largest=summary["test_largest"], test_smallest=summary["test_smallest"])
        progress(f"supernet: test top-1 largest {summary['test_largest']:.4f}, smallest {summary['test_smallest']:.4f}")

    # 3. search
    started = time.perf_counter()
    search_config = search.SearchConfig(trials=config.trials, batch=2 * config.evaluators, sampler=config.sampler, seed=config.seed, budget_ms=budget)
    progress(f"== search: {config.trials} trials, {config.sampler}, {config.evaluators} evaluator(s), budget {budget} ms")
    storage = config.storage or default_storage(run_dir)
    study_exists = (run_dir / "study.db").exists() if config.storage is None else resume
    try:
        study, front = search_stage(run_dir, space, table, search_config, storage, study_exists, config.evaluators, config.ray_address, progress)
    finally:
        manifest.record("search", time.perf_counter() - started, False)
    manifest.record("search", 0.0, True)
    progress(search.format_front(front))
    failed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL" and not t.user_attrs.get("interrupted")]
    if failed:
        progress(f"{len(failed)} trial(s) failed and are recorded as such in trials.csv: "
                 + "; ".join(f"trial {t.number}: {t.user_attrs.get('failure', '?')[:120]}" for t in failed[:5]))

    # the best feasible arch under the budget, scored on the held-out test split
    from nas.train import accuracy, load_supernet

    best = max(front, key=lambda t: (t.values[0], -t.values[1])) if front else None
    result = None
    if best is not None:
        arch = search.arch_of(best, space)
        net = load_supernet(run_dir, space)
        result = {
            "trial": best.number,
            "arch": arch.to_dict(),
            "digest": arch.digest,
            "val_accuracy": best.values[0],
            "test_accuracy": accuracy(net, arch, dataset, "test"),
            "predicted_latency_ms": best.values[1],
            "budget_ms": budget,
            "failed_trials": [t.number for t in failed],
        }
        progress(
            f"best feasible arch (trial {best.number}): test top-1 {result['test_accuracy']:.4f}, "
            f"predicted {best.values[1]:.4f} ms <= budget {budget} ms"
        )
    manifest.data["result"] = result
    manifest.save()

    # 4. export
    if best is not None and not manifest.done("export"):
        from nas.export import export
        from nas.select import by_trial, load_candidates

        started = time.perf_counter()
        progress("== export: the best feasible arch -> exports/best")
        meta = export(run_dir, by_trial(load_candidates(run_dir), best.number), run_dir / "exports" / "best", overwrite=True, progress=progress)
        manifest.record("export", time.perf_counter() - started, True, latency=meta["latency"]["measured_ms"])
        result["export"] = {"dir": "exports/best", "predicted_ms": meta["latency"]["predicted_ms"], "measured_ms": meta["latency"]["measured_ms"]}
        manifest.save()
    return result or {}

