"""`nas search`: a new (or resumed) study over a run directory that already holds a trained supernet and a
latency table (the `nas run` stages before it)."""

from __future__ import annotations

from pathlib import Path

from nas.budget import resolve_budget
from nas.errors import NasError
from nas.preflight import check_connections, check_out_dir
from nas.rundir import TABLE, RunDir
from nas.stages import search_stage


def search_run(run_dir: Path, config, resume: bool = False, progress=print):
    """`nas search` (nas.config.SearchSettings) over a run directory that holds a trained supernet and a latency
    table: (the study, its Pareto front, the folder of trials.csv and pareto.*, the budget or None)."""
    from nas import study as search
    from nas.compute import Compute
    from nas.latency.table import LatencyTable
    from nas.rundir import WEIGHTS
    from nas.stages import Fit, check_fit, trial_profiler
    from nas.storage import redact, resolve

    run = RunDir(run_dir)
    study_name = run.study_name(config.study_name)  # a bad --study-name is refused before any work
    space, _ = run.space_and_data()
    storage = resolve(config.storage)[0] or run.default_storage()
    report_dir = run.report_dir(
        storage, None if config.report_dir is None else Path(config.report_dir)
    )  # before any work
    check_out_dir(report_dir, "--report-dir")
    table_path = Path(config.table) if config.table else run.path(TABLE)
    if not table_path.is_file():
        raise NasError(f"{table_path} does not exist; build it with nas latency --space ... --out {table_path}")
    table = LatencyTable.load(table_path, space)
    profiler = None
    if config.latency == "predicted":
        check_fit(table, table_path, Fit.stored_with(table, config.accept_poor_fit))
    else:
        profiler = trial_profiler(table, table_path)
    compute = Compute.parse(config.compute_device, config.precision)
    scoring = {"device": str(compute.device), "precision": compute.precision, "val_images": config.val_images}
    if not run.has(WEIGHTS):
        raise NasError(f"{run_dir} holds no {WEIGHTS}; train the supernet first (nas train --out {run_dir})")
    if config.val_images is not None and config.val_images > run.split_size("val"):
        raise NasError(
            f"--val-images {config.val_images}: the run's validation split holds only {run.split_size('val')} images; "
            f"use at most {run.split_size('val')}, or leave it out to score on all of them"
        )
    budget = resolve_budget(space, table, config.budget_ms) if config.budget_ms is not None else None
    search_config = search.SearchConfig(
        trials=config.trials,
        batch=config.batch or 2 * config.evaluators,
        sampler=config.sampler,
        seed=config.seed,
        budget_ms=budget,
        third_objective=config.third_objective,
    )
    check_connections(config.ray_address, storage, config.connect_timeout, progress)
    progress(
        f"nas search: {space.name}, {search_config.trials} trials ({search_config.sampler}), {config.evaluators} evaluator(s) on "
        f"{compute.device} ({compute.precision}), budget {budget if budget is not None else 'none'}, storage {redact(storage)}, "
        f"study {study_name}"
    )
    measure = (lambda archs: profiler.measure_models(archs, profiler.protocol.for_trials())) if profiler else None
    study, front, _ = search_stage(
        run,
        space,
        table,
        search_config,
        storage,
        resume,
        config.evaluators,
        config.ray_address,
        progress=progress,
        report_dir=report_dir,
        scoring=scoring,
        gpus_each=config.gpus_per_evaluator,
        measure=measure,
        study_name=study_name,
    )
    return study, front, report_dir, budget
