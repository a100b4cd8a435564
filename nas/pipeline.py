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

from nas import config as config_tree
from nas.config import RunConfig
from nas.errors import NasError
from nas.rundir import EXPORTS, MANIFEST, STUDY, TABLE, Manifest, RunDir
from nas.settings import BUDGET, GROWS, RESULT, SILENT, UNTIL_TRAINED, dump, flag_of, flatten, resume_rules, to_dict
from nas.stages import check_connections, check_out_dir, latency_stage, resumable_training, search_stage, train_stage


def resume_changes(previous: dict, settings: dict, trained: bool, searched: bool = True) -> dict:
    """The settings of a resumed run that differ from the run's manifest: {dotted name: (before, now)}.
    A NasError lists those that would change its results, by each setting's resume rule (nas.config):
    the budget only once the search has begun, the workers only until the supernet is trained."""
    previous, settings = flatten(previous), flatten(settings)
    rules = resume_rules(config_tree.RunConfig)  # looked up now: the tree is the one place settings are declared

    def rule(name: str) -> str:
        return rules.get(name, RESULT)

    def flag(name: str) -> str:
        return flag_of(config_tree.RunConfig, name)

    for name in (k for k in settings if rule(k) == GROWS and isinstance(previous.get(k), int)):
        if settings[name] < previous[name]:
            raise NasError(
                f"--resume {flag(name)} {settings[name]}: this run was started for {previous[name]} {name} and a "
                f"study does not shrink; resume with {flag(name)} {previous[name]} (or more, to extend it)"
            )
    fixed = {RESULT} | ({BUDGET} if searched else set()) | (set() if trained else {UNTIL_TRAINED})
    refused = {
        k: (previous[k], settings.get(k))
        for k in settings
        if rule(k) in fixed and k in previous and previous[k] != settings.get(k)
    }
    if refused:
        listed = "; ".join(f"{flag(k)} was {before!r}, now {now!r}" for k, (before, now) in refused.items())
        raise NasError(
            f"--resume with other settings would mix results: {listed}. Resume with the run's settings, or start "
            "a new run with another --out"
        )
    return {
        k: (previous[k], settings.get(k))
        for k in settings
        if k in previous and previous[k] != settings.get(k) and rule(k) != SILENT
    }


BUDGET_SAMPLES = 2000  # random archs whose predicted latencies define the default budget
BUDGET_QUANTILE = 0.5  # the default budget admits about this share of them


def default_budget(
    space, table, seed: int = 0, samples: int = BUDGET_SAMPLES, quantile: float = BUDGET_QUANTILE
) -> tuple[float, str]:
    """The `quantile` of the predicted latencies of `samples` random archs (the search's own
    sampling: depth, then each layer's choices uniformly), and a line saying so."""
    import random
    import statistics

    rng = random.Random(f"budget:{seed}")
    latencies = sorted(table.predict(space.sample(rng)) for _ in range(samples))
    cut = (
        statistics.quantiles(latencies, n=100, method="inclusive")[round(quantile * 100) - 1]
        if 0 < quantile < 1
        else latencies[-1]
    )
    budget = round(cut, 4)
    return budget, (
        f"default budget {budget} ms: the {quantile:.0%} quantile of the predicted latency of {samples} random archs "
        f"(range {latencies[0]:.4f}-{latencies[-1]:.4f} ms), so about {quantile:.0%} of the space is feasible"
    )


def resolve_budget(
    space, table, budget_ms: float | None, progress=lambda line: None, quantile: float = BUDGET_QUANTILE
) -> float:
    from nas.feasibility import smallest_latency

    if budget_ms is None:
        budget, line = default_budget(space, table, quantile=quantile)
        progress(line)
        return budget
    from nas.latency.trials import TrialLatency

    floor = smallest_latency(space, table)
    if budget_ms <= 0:
        raise NasError(f"--budget-ms must be > 0, got {budget_ms}")
    margin = TrialLatency(
        table
    ).margin()  # the prior's measured error: a budget within it of the floor may still be met
    if budget_ms * (1 + margin) < floor:
        raise NasError(
            f"--budget-ms {budget_ms} is below the smallest latency any arch of {space.name} reaches on this device "
            f"({floor:.4f} ms predicted, by more than the table's error of {margin:.0%}); raise the budget"
        )
    return budget_ms


def no_feasible_trial(study, budget: float) -> NasError:
    """The error of a search that ended with an empty feasible front."""
    import statistics

    judged = [t.user_attrs for t in study.get_trials(deepcopy=False) if "latency_ms" in t.user_attrs]
    if not judged:
        return NasError(f"no trial met the budget {budget} ms: no trial finished")
    fastest = min(judged, key=lambda attrs: attrs["latency_ms"])
    admit = statistics.median(attrs["latency_ms"] for attrs in judged)
    return NasError(
        f"no trial met the budget {budget} ms: the fastest trial was {fastest.get('latency_source', 'predicted')} at {fastest['latency_ms']:.4f} ms; "
        f"--budget-ms {admit:.4f} (the trials' median latency) would admit about half of them"
    )


def settings_record(config: RunConfig) -> dict:
    """The settings as manifest.json records them: the storage URL without its password."""
    from nas.storage import redact

    return {**to_dict(config), "storage": redact(config.storage) if config.storage else None}


def run(config: RunConfig, run_dir: Path, resume: bool, progress=print) -> dict:
    """The whole pipeline; returns the manifest's result section."""
    from nas.compute import Compute
    from nas.data import load_dataset
    from nas.space import load_space
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
    from nas.latency.runtime import check_runtime

    check_runtime(config.runtime, resolve_device(config.device), config.dtype)  # before any work
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
    from nas import feasibility, report
    from nas import study as search
    from nas.evaluate import accuracy
    from nas.latency.profiler import MAX_SPEED_RATIO, Profiler
    from nas.selection import pick_within_budget

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

    # 1. latency
    started = time.perf_counter()
    profiler = Profiler(config.device, config.dtype, config.batch_size, config.runtime)
    fp = profiler.fingerprint()
    manifest.data["fingerprint"] = fp.to_dict()
    progress(
        f"== latency: {space.name} on {fp.device_name} ({fp.device_type}, {fp.dtype}, batch {fp.batch_size}, {fp.backend})"
    )
    # The table is the prior (default budget, pre-filter): a poor fit is reported, not a stop, since the trials are measured
    # (with --latency predicted too, the pick is measured before it is exported).
    table = latency_stage(
        space, profiler, run.path(TABLE), config.calibrate, config.validate, config.seed, progress, gate=False
    )
    budget = resolve_budget(space, table, config.budget_ms, progress, config.budget_quantile)
    manifest.data["settings"]["budget_ms_resolved"] = budget
    manifest.record("latency", time.perf_counter() - started, True, entries=len(table.entries))
    progress(f"latency budget: {budget} ms (smallest achievable {feasibility.smallest_latency(space, table):.4f} ms)")

    # 2. train
    if not manifest.done("train"):
        started = time.perf_counter()
        progress(
            f"== train: {config.epochs} epochs, {config.workers} worker(s) on {compute.device} ({compute.precision})"
        )
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
        manifest.record(
            "train", 0.0, True, test_largest=summary["test_largest"], test_smallest=summary["test_smallest"]
        )
        progress(f"supernet: test top-1 largest {summary['test_largest']:.4f}, smallest {summary['test_smallest']:.4f}")

    # 3. search
    started = time.perf_counter()
    search_config = search.SearchConfig(
        trials=config.trials, batch=2 * config.evaluators, sampler=config.sampler, seed=config.seed, budget_ms=budget
    )
    progress(
        f"== search: {config.trials} trials, {config.sampler}, {config.evaluators} evaluator(s), budget {budget} ms, "
        + (
            "each trial's model measured on " + fp.device_name
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

    # the pick: the most accurate feasible arch whose model, measured again now, meets the budget
    feasible = [t for t in trials if t.state.name == "COMPLETE" and feasibility.feasible(t)]
    if not feasible:
        manifest.data["result"] = None
        manifest.save()
        raise no_feasible_trial(study, budget)
    previous = manifest.data.get("result") or {}
    if (
        manifest.done("export")
        and previous.get("export")
        and previous.get("trials_seen") == len(trials)
        and previous.get("verify") == config.verify
    ):
        return previous  # an interrupted run resumed after its export: nothing changed
    candidates = [candidate_of(t, space) for t in feasible]
    verification = None
    if config.verify:
        from nas.verify import VerifyConfig, verify

        started = time.perf_counter()
        progress(f"== verify: the best of {len(feasible)} feasible trial(s), measured again and trained standalone")
        manifest.record("verify", 0.0, False)
        verify_config = VerifyConfig(
            candidates=config.verify, seed=config.seed, jobs=config.evaluators, device=str(compute.device)
        )
        try:
            verification = verify(
                run, candidates, profiler.measure_models, budget, verify_config, config.data, dataset, progress
            )
        finally:
            manifest.record("verify", time.perf_counter() - started, False)
        manifest.record(
            "verify",
            0.0,
            True,
            candidates=len(verification["candidates"]),
            train_seconds=verification["train_seconds"],
            pick=verification["pick"]["trial"],
            inherited_pick=verification["inherited_pick"]["trial"],
        )
        if run.owns_storage(storage):
            report.mark_verified(run.root, run.verified())
        chosen = next(c for c in candidates if c.trial == verification["pick"]["trial"])
        measured_ms, checked = verification["pick"]["measured_ms"], verification["measured"]
    else:
        progress(f"re-measuring the most accurate of {len(feasible)} feasible trial(s) against the budget...")
        chosen, measured_ms, checked = pick_within_budget(
            candidates, profiler.measure_models, budget, progress=progress
        )
    best = next(t for t in feasible if t.number == chosen.trial)
    arch = chosen.arch
    result = {
        "trial": best.number,
        "arch": arch.to_dict(),
        "digest": arch.digest,
        "val_accuracy": best.values[0],
        "test_accuracy": accuracy(run.supernet(space).to(compute.device), arch, dataset, "test", compute=compute),
        "predicted_latency_ms": best.user_attrs.get("predicted_ms", table.predict(arch)),
        "search_latency_ms": best.values[1],
        "measured_latency_ms": measured_ms,
        "latency_source": best.user_attrs.get("latency_source", "predicted"),
        "budget_ms": budget,
        "pick": checked,
        "verify": config.verify,
        "verified": None
        if verification is None
        else {
            "val_accuracy": verification["pick"]["verified_accuracy"],
            "epochs": verification["pick"]["verified_epochs"],
            "inherited_pick": {
                k: verification["inherited_pick"][k]
                for k in ("trial", "inherited_accuracy", "verified_accuracy", "verified_epochs")
            },
        },
        "trials_seen": len(trials),
        "failed_trials": [t.number for t in failed],
    }
    verified_line = (
        ""
        if verification is None
        else f", verified standalone val top-1 {verification['pick']['verified_accuracy']:.4f}"
    )
    progress(
        f"best feasible arch (trial {best.number}): inherited test top-1 {result['test_accuracy']:.4f}{verified_line}, measured again "
        f"{measured_ms:.4f} ms <= budget {budget} ms (search {best.values[1]:.4f} ms {result['latency_source']}, prior "
        f"{result['predicted_latency_ms']:.4f} ms)"
    )
    if (
        manifest.done("export")
        and previous.get("trial") == best.number
        and previous.get("export")
        and previous.get("verify") == config.verify
    ):
        result["export"] = previous["export"]  # exports/best already holds this trial
        if result["verified"] is not None and "test_accuracy" in (previous.get("verified") or {}):
            result["verified"]["test_accuracy"] = previous["verified"]["test_accuracy"]
    manifest.data["result"] = result
    manifest.save()

    # 4. export (again when an extended search found a better arch than the one exported)
    if "export" not in result:
        from nas.stages import export_stage

        started = time.perf_counter()
        progress(f"== export: the best feasible arch (trial {best.number}) -> {EXPORTS}/best")
        manifest.record("export", 0.0, False)
        meta = export_stage(
            run,
            best.number,
            run.path(EXPORTS) / "best",
            progress=progress,
            overwrite=True,
            compute=compute,
            budget_ms=budget,
            measured_ms=measured_ms,
            pick=checked,
            verified=None if verification is None else verification["pick"],
        )
        result["export"] = {
            "dir": "exports/best",
            "trial": best.number,
            "predicted_ms": meta["latency"]["predicted_ms"],
            "measured_ms": meta["latency"]["measured_ms"],
            "weights": meta["accuracy"]["exported_weights"],
        }
        if verification is not None:
            result["verified"]["test_accuracy"] = meta["accuracy"]["verified"]["test"]
        manifest.record(
            "export", time.perf_counter() - started, True, trial=best.number, latency=meta["latency"]["measured_ms"]
        )
        manifest.data["result"] = result
        manifest.save()
    return result


def candidate_of(trial, space):
    """A feasible trial as a selection candidate (its search latency: measured, or predicted)."""
    from nas.selection import Candidate
    from nas.study_trials import arch_of

    return Candidate(
        trial.number,
        trial.values[0],
        trial.values[1],
        trial.user_attrs["macs"],
        trial.user_attrs["params"],
        arch_of(trial, space),
    )


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
