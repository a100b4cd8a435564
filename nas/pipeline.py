"""`nas run`: the stages of nas.stages over one run directory, with a manifest.

Stages, each writing its files into the run directory that the next reads:
  1. latency  — the device's lookup table (latency_table.json), calibrated and validated;
                it comes first so that an infeasible budget is refused before training;
  2. train    — the supernet (supernet.safetensors + training state), in this process or,
                with --workers K > 1, on Ray Train;
  3. search   — the Optuna study (study.db) over Ray evaluator actors; trials.csv,
                pareto.csv, pareto.png;
  4. verify   — the best candidates under the budget, measured again and trained standalone
                with successive halving (nas.verify; --verify 0: off); the pick is the most
                accurate by verified accuracy (verify/verify.json; pareto.csv's verified_* columns);
  5. export   — the pick as a standalone model in exports/best/ (safetensors, ONNX,
                TorchScript, metadata.json), with its verified weights.
manifest.json records versions, the device fingerprint, the seed, the settings, and the
wall time and completion of each stage.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from nas.config import RunConfig
from nas.errors import NasError
from nas.resume import resume_changes, settings_record
from nas.rundir import MANIFEST, STUDY, TABLE, Manifest, RunDir
from nas.settings import dump
from nas.stages import latency_stage, resumable_training, search_stage, train_stage


def run(config: RunConfig, run_dir: Path, resume: bool, progress=print) -> dict:
    """The whole pipeline; returns the manifest's result section."""
    from nas.compute import Compute
    from nas.data import load_dataset
    from nas.preflight import check_connections, check_out_dir
    from nas.space_file import load_space
    from workers.cluster import check_local_capacity, require_ray

    check_out_dir(run_dir)
    given = config
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise NasError(
            f"{run_dir} already exists and is not empty; pass --resume to continue that run or choose another --out"
        )
    if resume and not (run_dir / MANIFEST).exists():
        raise NasError(f"--resume: {run_dir} holds no run (no {MANIFEST})")
    if (
        config.workers < 1
        or config.evaluators < 1
        or config.trials < 1
        or (config.epochs is not None and config.epochs < 1)
    ):
        raise NasError("--workers, --evaluators, --trials and --epochs must be >= 1")
    if config.verify < 0:
        raise NasError(f"--verify must be >= 0 (0 turns the verification off), got {config.verify}")
    if not 0 < config.budget_quantile <= 1:
        raise NasError(f"--budget-quantile must be in (0, 1], got {config.budget_quantile}")
    from nas.latency.trials import SOURCES
    from nas.training import check_config

    check_config(config.train_config(), config.workers)

    if config.latency not in SOURCES:
        raise NasError(f"--latency {config.latency!r}: use one of {', '.join(SOURCES)}")
    from nas.latency.device import resolve_device
    from nas.latency.runtime import check_runtime, resolve_kernels

    target = resolve_device(config.device)
    check_runtime(config.runtime, target, config.dtype)  # before any work
    resolve_kernels(config.kernels, target, config.runtime)
    check_local_capacity(config.ray_address, workers=config.workers, evaluators=config.evaluators)
    if config.workers > 1:
        require_ray(f"--workers {config.workers}: distributed training", "ray[train]", ", or train with --workers 1")
    space = load_space(config.space)
    config = replace(
        config,
        data=config.data or space.data,
        epochs=config.epochs or space.epochs,
        study_name=RunDir(run_dir).study_name(config.study_name),
    )  # resolved once, recorded in manifest.json
    changes = {}
    if resume:
        previous = RunDir(run_dir).manifest_data()
        stages = previous.get("stages", {})
        changes = resume_changes(
            previous.get("settings", {}),
            settings_record(config),
            trained=bool(stages.get("train", {}).get("completed")),
            searched="search" in stages,
        )
    check_connections(config.ray_address, config.storage, config.connect_timeout, progress)
    compute = Compute.parse(config.compute_device, config.precision)
    dataset = load_dataset(
        config.data, space.image_size, space.in_chans, config.randaugment, config.loader_workers
    )  # validates --data before any work
    if config.val_images is not None and config.val_images > dataset.size("val"):
        raise NasError(
            f"--val-images {config.val_images}: the validation split holds only {dataset.size('val')} images; "
            f"use at most {dataset.size('val')}, or leave it out to score on all of them"
        )
    if config.train.batch_size > dataset.size("train"):
        raise NasError(
            f"--train.batch-size {config.train.batch_size}: the training split holds only {dataset.size('train')} images; "
            f"use at most {dataset.size('train')}"
        )
    if dataset.num_classes != space.num_classes:
        space = space.with_num_classes(dataset.num_classes)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    run = RunDir(run_dir)
    run.write_run_config(given)
    from nas import log
    from nas.rundir import LOG, TENSORBOARD, versions

    scalars = None
    try:
        if config.tensorboard:
            from nas.tensorboard import Scalars

            scalars = Scalars(run.path(TENSORBOARD))
        with log.to_file(run.path(LOG)) as logger:
            logger.debug("nas run %s in %s; versions %s", "resumed" if resume else "started", run_dir, versions())
            logger.debug("settings:\n%s", dump(replace(config, storage=settings_record(config)["storage"])))
            return _stages(config, run, space, dataset, resume, changes, log.tee(progress), compute, scalars)
    except NasError as error:
        # A user error before any work leaves nothing behind; a measured latency table (minutes of work) is kept,
        # e.g. when the budget is refused as unreachable: --resume with another budget continues from it.
        if created and not resumable_training(run):
            if not run.has(TABLE):
                import shutil

                shutil.rmtree(run_dir, ignore_errors=True)
            elif not manifest_has_search(run):
                raise NasError(
                    f"{error}. The latency table measured so far is kept: run again with --resume --out {run_dir} "
                    "and another budget to continue from it"
                ) from None
        raise
    finally:
        if scalars is not None:
            scalars.close()


def manifest_has_search(run: RunDir) -> bool:
    return run.has(MANIFEST) and "search" in run.manifest_data().get("stages", {})


def _stages(
    config: RunConfig, run: RunDir, space, dataset, resume: bool, changes: dict, progress, compute, scalars=None
) -> dict:
    from nas.pick import pick_and_export

    manifest = _open_manifest(config, run, changes, progress)
    profiler, table, budget = _latency(config, run, space, manifest, progress)
    if not manifest.done("train"):
        _train(config, run, space, dataset, manifest, progress, compute, scalars)
    study, trials, failed, storage = _search(
        config, run, space, table, budget, resume, manifest, profiler, progress, compute, scalars
    )
    return pick_and_export(
        config,
        run,
        space,
        dataset,
        manifest,
        profiler,
        table,
        budget,
        study,
        trials,
        failed,
        storage,
        progress,
        compute,
    )


def _open_manifest(config: RunConfig, run: RunDir, changes: dict, progress) -> Manifest:
    """manifest.json with the run's settings, and the settings a resumed run changed."""
    manifest = Manifest(run, settings_record(config))
    if changes:
        manifest.data.setdefault("resumed_with", []).append(
            {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changed": changes}
        )
        progress(
            "resuming with "
            + ", ".join(f"--{k.replace('_', '-')} {before!r} -> {now!r}" for k, (before, now) in changes.items())
        )
    manifest.save()
    return manifest


def _latency(config: RunConfig, run: RunDir, space, manifest: Manifest, progress):
    """1. latency: the table and the budget; returns (the profiler, the table, the budget)."""
    from nas import feasibility
    from nas.budget import resolve_budget
    from nas.latency.profiler import Profiler

    started = time.perf_counter()
    profiler = Profiler(config.device, config.dtype, config.batch_size, config.runtime, kernels=config.kernels)
    fp = profiler.fingerprint()
    manifest.data["fingerprint"] = fp.to_dict()
    progress(f"== latency: {space.name} on {fp.device_name} ({fp.setting()})")
    # The table is the prior (default budget, pre-filter): a poor fit is reported, not a stop, since the trials are measured
    # (with --latency predicted too, the pick is measured before it is exported).
    table = latency_stage(
        space, profiler, run.path(TABLE), config.calibrate, config.validate, config.seed, progress, gate=False
    )
    budget = resolve_budget(space, table, config.budget_ms, progress, config.budget_quantile)
    manifest.data["settings"]["budget_ms_resolved"] = budget
    manifest.record("latency", time.perf_counter() - started, True, entries=len(table.entries))
    progress(f"latency budget: {budget} ms (smallest achievable {feasibility.smallest_latency(space, table):.4f} ms)")
    return profiler, table, budget


def _train(config: RunConfig, run: RunDir, space, dataset, manifest: Manifest, progress, compute, scalars) -> None:
    """2. train: the supernet."""
    started = time.perf_counter()
    progress(f"== train: {config.epochs} epochs, {config.workers} worker(s) on {compute.device} ({compute.precision})")
    manifest.data["compute"] = compute.record()
    try:
        summary = train_stage(
            space,
            config.data,
            dataset,
            config.train_config(),
            run,
            config.workers,
            resumable_training(run),
            config.ray_address,
            progress,
            compute=compute,
            storage_path=config.storage_path,
            on_epoch=None if scalars is None else scalars.epoch,
        )
    finally:
        manifest.record("train", time.perf_counter() - started, False)
    manifest.record("train", 0.0, True, test_largest=summary["test_largest"], test_smallest=summary["test_smallest"])
    progress(f"supernet: test top-1 largest {summary['test_largest']:.4f}, smallest {summary['test_smallest']:.4f}")


def _search(
    config: RunConfig,
    run: RunDir,
    space,
    table,
    budget: float,
    resume: bool,
    manifest: Manifest,
    profiler,
    progress,
    compute,
    scalars,
):
    """3. search: the study; returns (the study, its trials, the failed ones, the storage)."""
    from nas import feasibility, report
    from nas import study as search
    from nas.latency.profiler import MAX_SPEED_RATIO

    started = time.perf_counter()
    search_config = search.SearchConfig(
        trials=config.trials, batch=2 * config.evaluators, sampler=config.sampler, seed=config.seed, budget_ms=budget
    )
    progress(
        f"== search: {config.trials} trials, {config.sampler}, {config.evaluators} evaluator(s), budget {budget} ms, "
        + (
            "each trial's model measured on " + profiler.fingerprint().device_name
            if config.latency == "measured"
            else "latency predicted by the table"
        )
    )
    storage = config.storage or run.default_storage()
    study_exists = run.has(STUDY) if config.storage is None else resume
    trial_protocol = profiler.protocol.for_trials()
    measure = (lambda archs: profiler.measure_models(archs, trial_protocol)) if config.latency == "measured" else None
    try:
        scoring = {"device": str(compute.device), "precision": compute.precision, "val_images": config.val_images}
        study, front, latency = search_stage(
            run,
            space,
            table,
            search_config,
            storage,
            study_exists,
            config.evaluators,
            config.ray_address,
            progress,
            scoring=scoring,
            gpus_each=config.gpus_per_evaluator,
            measure=measure,
            study_name=config.study_name,
        )
    finally:
        manifest.record("search", time.perf_counter() - started, False)
    speeds = (
        profiler.speeds
    )  # per measure_models call: the reference's best time / the table's (the machine's quiet speed)
    manifest.record(
        "search",
        0.0,
        True,
        latency_measured=latency.measured,
        latency_seconds=round(latency.seconds, 2),
        prefiltered=latency.prefiltered,
        machine_speed=[min(speeds), max(speeds)] if speeds else None,
        evaluator_busy_s=round(sum(t.user_attrs.get("eval_seconds", 0.0) for t in study.get_trials(deepcopy=False)), 2),
    )
    if speeds and not all(1 / MAX_SPEED_RATIO <= speed <= MAX_SPEED_RATIO for speed in speeds):
        progress(
            f"!! the latency reference's best time during the search was {min(speeds):.2f}-{max(speeds):.2f}x the table's: "
            f"beyond {MAX_SPEED_RATIO}x the trials' figures are left as measured, not expressed at the table's speed"
        )
    progress(report.format_front(front))
    trials = study.get_trials(deepcopy=False)
    if scalars is not None:
        scalars.search(trials, budget)
    failed = [t for t in trials if t.state.name == "FAIL" and not t.user_attrs.get("interrupted")]
    if failed:
        progress(
            f"{len(failed)} trial(s) failed and are recorded as such in trials.csv: "
            + "; ".join(f"trial {t.number}: {t.user_attrs.get('failure', '?')[:120]}" for t in failed[:5])
        )
    within, judged, over = feasibility.budget_counts(trials)
    progress(f"{within} of {judged} judged trials within the budget of {budget} ms ({over} over it, not scored)")
    return study, trials, failed, storage
