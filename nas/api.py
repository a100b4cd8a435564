"""The Python API: each stage a function taking its config object (nas.config); `nas <command>` calls these.

    import nas
    result = nas.run(nas.RunConfig(space="digits-tiny", trials=20), out="results/my-run")
    front = nas.search("results/my-run", nas.SearchSettings(trials=40, latency="predicted"), resume=True)
    best = nas.select("results/my-run", budget_ms=0.5)[0]
    nas.export("results/my-run", "exports/fast", trial=best.trial)
    model = nas.load("exports/fast")

Errors are `nas.errors.NasError` with one line naming the setting (as its command-line flag).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from nas.config import RunConfig, SearchSettings, TrainConfig
from nas.config_stages import ExportSettings
from nas.errors import NasError


def _with(config, settings: dict, what: str):
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise NasError(
            f"{what}: unknown setting(s) {', '.join(unknown)}; the settings are the fields of {type(config).__name__}"
        )
    return dataclasses.replace(config, **settings)


def run(
    config: RunConfig | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: Callable[[str], None] = print,
    **settings,
) -> dict | None:
    """The whole pipeline (`nas run`) into the run directory `out` (default results/run-<date>-<time>); keyword
    `settings` replace fields of `config`. Returns the manifest's result: the pick's arch, its inherited and verified
    accuracies, its latencies (predicted, searched, measured again) and its export directory."""
    from datetime import datetime

    from nas.pipeline import run as run_pipeline
    from nas.storage import check_study_name, resolve

    config = _with(config or RunConfig(), settings, "nas.run")
    if config.study_name is not None:
        check_study_name(config.study_name)
    if resume and out is None:
        raise NasError("--resume needs --out: the run directory to continue")
    out = Path(out) if out is not None else Path("results") / datetime.now().strftime("run-%Y%m%d-%H%M%S")
    config = dataclasses.replace(config, storage=resolve(config.storage)[0])
    return run_pipeline(config, out, resume, progress=progress)


def train(
    out: str | Path,
    config: TrainConfig | None = None,
    *,
    space: str = "digits-tiny",
    data: str | None = None,
    compute_device: str = "auto",
    randaugment: bool = False,
    loader_workers: int = 2,
    workers: int = 1,
    ray_address: str | None = None,
    storage_path: str | None = None,
    resume: bool = False,
    progress: Callable[[str], None] = print,
) -> dict:
    """Train the supernet of `space` (`nas train`) into `out`; `config.epochs` None-like (0) takes the space's.
    Returns the summary: held-out test top-1 of the largest and smallest subnets and the training time.
    Stopped before its first checkpoint, it leaves nothing behind."""
    import shutil

    import torch

    from nas import log
    from nas.compute import Compute
    from nas.data import load_dataset
    from nas.preflight import check_connections, check_out_dir
    from nas.rundir import LOG, RunDir
    from nas.space_file import load_space
    from nas.stages import resumable_training, train_stage
    from nas.training import check_config

    out = Path(out)
    config = config or TrainConfig()
    check_config(config, workers)
    if storage_path is not None and workers == 1:
        raise NasError(
            "--storage-path: only Ray Train's workers (--workers > 1) write there; with --workers 1 the supernet "
            "trains in this process into --out. Drop --storage-path or pass --workers 2 or more"
        )
    check_out_dir(out)
    if workers > 1:
        from nas.config import CONNECT_TIMEOUT_S

        check_connections(ray_address, None, CONNECT_TIMEOUT_S, progress=progress)
    loaded = load_space(space)
    data = data or loaded.data
    compute = Compute.parse(compute_device, config.precision)
    dataset = load_dataset(data, loaded.image_size, loaded.in_chans, randaugment, loader_workers)
    if config.batch_size > dataset.size("train"):
        raise NasError(
            f"--batch-size {config.batch_size}: the training split holds only {dataset.size('train')} images; "
            f"use at most {dataset.size('train')}"
        )
    if dataset.num_classes != loaded.num_classes:
        progress(
            f"note: the data has {dataset.num_classes} classes; the space's num_classes {loaded.num_classes} is replaced"
        )
        loaded = loaded.with_num_classes(dataset.num_classes)
    config = dataclasses.replace(config, epochs=config.epochs or loaded.epochs)
    progress(
        f"nas train: space {loaded.name} ({loaded.size():.3g} archs), data {dataset.name} "
        f"(train {dataset.size('train')}, val {dataset.size('val')}, test {dataset.size('test')}), "
        f"{config.epochs} epochs on {compute.device} ({compute.precision}, {torch.get_num_threads()} threads) -> {out}"
    )
    run_dir = RunDir(out)
    created, had = not out.exists(), set(out.iterdir()) if out.is_dir() else set()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with log.to_file(run_dir.path(LOG)) as logger:
            logger.debug("nas train into %s; settings %s", out, config)
            return train_stage(
                loaded,
                data,
                dataset,
                config,
                run_dir,
                workers,
                resume,
                ray_address,
                progress=log.tee(progress),
                compute=compute,
                storage_path=storage_path,
            )
    except (NasError, KeyboardInterrupt):
        if not resume and not resumable_training(run_dir):  # stopped before the first checkpoint: leave nothing behind
            for path in [out] if created else set(out.iterdir()) - had:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        raise


def search(
    run_dir: str | Path,
    config: SearchSettings | None = None,
    *,
    resume: bool = False,
    progress: Callable[[str], None] = print,
    **settings,
) -> list:
    """The Optuna search (`nas search`) over a run directory holding a trained supernet and a latency table;
    keyword `settings` replace fields of `config`. Returns the feasible Pareto front (nas.selection.Candidate)."""
    from nas.pick import candidate_of
    from nas.rundir import RunDir
    from nas.search_run import search_run

    config = _with(config or SearchSettings(), settings, "nas.study")
    _, front, _, _ = search_run(Path(run_dir), config, resume, progress)
    space, _ = RunDir(run_dir).space_and_data()
    return [candidate_of(trial, space) for trial in front]


def select(run_dir: str | Path, budget_ms: float, top: int = 1) -> list:
    """The `top` most accurate complete trials of a run within `budget_ms` (`nas select`), most accurate first."""
    from nas.selection import load_candidates
    from nas.selection import select as choose

    return choose(load_candidates(Path(run_dir)), budget_ms, top)


def export(
    run_dir: str | Path,
    out: str | Path,
    config: ExportSettings | None = None,
    *,
    trial: int | None = None,
    budget_ms: float | None = None,
    progress: Callable[[str], None] = print,
    **settings,
) -> dict:
    """One trial of a run (or the most accurate within `budget_ms`) as a standalone model in `out` (`nas export`):
    arch.json, model.safetensors, config.json (timm), metadata.json and the other formats; keyword `settings`
    replace fields of `config` (nas.config_stages.ExportSettings; `formats` also as a tuple). Returns the metadata."""
    from nas.compute import Compute
    from nas.exporter import export as write
    from nas.preflight import check_out_dir
    from nas.selection import by_trial, load_candidates
    from nas.selection import select as choose

    if not isinstance(settings.get("formats", ""), str):
        settings["formats"] = ",".join(settings["formats"])
    config = _with(config or ExportSettings(), settings, "nas.export")
    if (trial is None) == (budget_ms is None):
        raise NasError("export: pass one of trial= and budget_ms=")
    out = Path(out)
    check_out_dir(out)
    candidates = load_candidates(Path(run_dir))
    candidate = by_trial(candidates, trial) if trial is not None else choose(candidates, budget_ms)[0]
    progress(f"nas export: trial {candidate.trial} of {run_dir} -> {out}")
    return write(
        Path(run_dir),
        candidate,
        out,
        tuple(config.formats.split(",")),
        config.finetune_epochs,
        config.overwrite,
        config.device,
        progress=progress,
        compute=Compute.parse(config.compute_device, config.precision),
        budget_ms=budget_ms,
    )


def load(directory: str | Path):
    """The standalone model exported to `directory` (arch.json + model.safetensors; no pickle), a torch.nn.Module."""
    from nas.subnet import load as load_model

    return load_model(directory)
