"""The stages of a search, below the CLI: used by `nas run` and by the single commands alike.

    latency_stage   build the device's lookup table, calibrate it, validate it
    train_stage     train the supernet, in this process or on Ray Train
    search_stage    the Optuna study over Ray evaluator actors; trials.csv, pareto.*
    export_stage    a chosen arch as a standalone model (nas.exporter)

Each reads and writes the run directory through `nas.rundir`. Ray is imported only where a
stage hands work to `workers/`. The checks before any work (a writable --out, a Ray cluster and
a storage that answer) are in `nas.preflight`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nas.errors import NasError, PoorFitError
from nas.rundir import STATE_JSON, RunDir


@dataclass(frozen=True)
class Fit:
    """What a latency table must reach on its held-out validation archs to be searched on."""

    max_mape: float = 0.10
    min_tau: float = 0.85
    accept_poor: bool = False

    def misses(self, validation: dict) -> list[str]:
        out = []
        if validation["mape"] > self.max_mape:
            out.append(f"MAPE {validation['mape']:.1%} > {self.max_mape:.0%}")
        if validation["kendall_tau"] < self.min_tau:
            out.append(f"Kendall tau {validation['kendall_tau']:.3f} < {self.min_tau}")
        return out

    @classmethod
    def stored_with(cls, table, accept_poor: bool = False) -> Fit:
        """The targets the table was validated against (the defaults when it holds none)."""
        stored = (table.validation or {}).get("thresholds") or {}
        return cls(stored.get("max_mape", cls.max_mape), stored.get("min_tau", cls.min_tau), accept_poor)


def latency_stage(
    space,
    profiler,
    out: Path,
    calibrate: int,
    validate: int,
    seed: int,
    progress=print,
    revalidate: bool = False,
    fit: Fit = Fit(),
    gate: bool = True,
):
    """Build (or resume) the table at `out`, fit the calibration on `calibrate` whole models and
    validate on `validate` held-out ones (each step skipped when already done, except the
    validation with `revalidate`); returns it. A table that misses `fit` has its worst
    offenders re-measured once; if it still misses, it is refused (NasError) unless
    `fit.accept_poor` — with `gate`. Without `gate` (nas run, whose trials are measured: the
    table is only their prior) the fit is reported and the run goes on."""
    from nas.latency import validation as latency_validation
    from nas.latency.build import build

    if calibrate < 0 or validate < 0:
        raise NasError("--calibrate and --validate must be >= 0")
    if 0 < calibrate < 3:
        raise NasError("--calibrate needs at least 3 archs to fit a line (or 0 for none)")
    table = build(
        space,
        profiler.fingerprint(),
        out,
        profiler.measure_probes,
        profiler.protocol,
        progress=progress,
        reference=profiler.reference,
    )
    profiler.anchor_to(table.reference_ms)  # whole models measured from here on are expressed at the table's speed
    if calibrate and table.calibration is None:
        archs = latency_validation.held_out_archs(space, calibrate, seed, exclude=set())
        progress(f"calibrating on {len(archs)} whole models...")
        latency_validation.calibrate(table, archs, profiler.measure_models(archs))
        table.save(out)
    if table.calibration:
        progress(
            f"calibration: measured ≈ {table.calibration['a']:.4f} × sum of entries + {table.calibration['b']:.4f} ms"
            + (
                " (through the origin: the free fit had a negative slope or floor)"
                if table.calibration.get("constrained")
                else ""
            )
        )
    if validate and (table.validation is None or revalidate):
        exclude = set(table.calibration["archs"]) if table.calibration else set()
        archs = latency_validation.held_out_archs(space, validate, seed + 1, exclude)
        progress(f"validating on {len(archs)} held-out whole models...")
        measured = profiler.measure_models(archs)
        validation = latency_validation.validate(table, archs, measured)
        missed = fit.misses(validation)
        if missed:
            progress(
                f"!! the latency table misses its validation targets ({', '.join(missed)}): re-measuring the worst offenders once"
            )
            _remeasure_worst(table, space, archs, measured, profiler, progress)
            validation = latency_validation.validate(table, archs, measured)
        validation.update(
            passed=not fit.misses(validation), thresholds={"max_mape": fit.max_mape, "min_tau": fit.min_tau}
        )
        table.save(out)
    if table.validation:
        progress("latency predictor: " + latency_validation.summary_line(table.validation))
        if gate:
            check_fit(table, out, fit, progress)
        elif fit.misses(table.validation):
            progress(
                f"the table misses its validation targets ({', '.join(fit.misses(table.validation))}); it is only the prior here "
                "(default budget, pre-filter): every trial's whole model is measured, so the run goes on"
            )
    return table


def check_fit(table, path: Path, fit: Fit, progress=print) -> None:
    """Refuse (NasError) a validated table that misses `fit`; only warn when `fit.accept_poor`."""
    validation = table.validation
    if not validation:
        return
    missed = fit.misses(validation)
    if not missed:
        return
    message = f"the latency table {path} failed validation ({', '.join(missed)}): its predictions cannot be trusted for a search"
    if not fit.accept_poor:
        raise PoorFitError(
            message + "; delete it and rebuild it on a quieter machine, or pass --accept-poor-fit to use it anyway"
        )
    progress(f"!! warning: {message}; going on because of --accept-poor-fit")


def _remeasure_worst(table, space, archs: list, measured: list[float], profiler, progress, count: int = 5) -> None:
    """The `count` worst-predicted validation archs: their table entries and their whole models
    measured again (the lower figures kept on CPU, the new ones on CUDA)."""
    from nas.latency import table as lut
    from nas.latency.robust import merge

    errors = [abs(table.predict(a) - m) / m for a, m in zip(archs, measured)]
    worst = sorted(range(len(archs)), key=lambda i: -errors[i])[:count]
    keys = sorted({key for i in worst for key in lut.arch_keys(archs[i])})
    probes = {}
    for key, arch in lut.probe_archs(space):
        if key in keys or (key.startswith("stem+head|") and f"stem|{key.split('|')[1]}" in keys):
            probes[key] = arch
    entries = profiler.measure_probes(list(probes.items()))
    for key, entry in entries.items():
        table.entries[key] = merge(table.entries.get(key), entry)
    again = profiler.measure_models([archs[i] for i in worst])
    for i, ms in zip(worst, again):
        measured[i] = min(measured[i], ms)
    progress(f"re-measured {len(entries)} entries and {len(worst)} whole models")


def train_stage(
    space,
    data: str,
    dataset,
    config,
    run: RunDir,
    workers: int,
    resume: bool,
    ray_address: str | None,
    progress=print,
    compute=None,
    storage_path: str | None = None,
    on_epoch=None,
) -> dict:
    """Train (or continue) the supernet into the run directory on `compute` (nas.compute;
    default the CPU); returns the final summary. `storage_path`: Ray Train's checkpoints (workers > 1).
    `on_epoch`: called with each epoch's record (in this process; with workers > 1 the lines only)."""
    from nas.compute import CPU
    from nas.training import format_epoch, train_supernet

    compute = compute or CPU
    if workers > 1:
        from workers.cluster import require_ray

        require_ray(f"--workers {workers}: distributed training", "ray[train]", ", or train with --workers 1")
        from workers.trainer import train_distributed

        loading = {"randaugment": getattr(dataset, "randaugment", False), "workers": getattr(dataset, "workers", 0)}
        return train_distributed(
            space,
            data,
            config,
            run.root,
            workers,
            resume,
            ray_address,
            progress,
            use_gpu=compute.cuda,
            loading=loading,
            storage_path=storage_path,
        )

    def epoch(record: dict) -> None:
        if on_epoch is not None:
            on_epoch(record)
        progress(format_epoch(record))

    return train_supernet(
        space, dataset, config, run.root, resume=resume, data_arg=data, progress=epoch, compute=compute
    )


def resumable_training(run: RunDir) -> bool:
    return run.has(STATE_JSON)


def search_stage(
    run: RunDir,
    space,
    table,
    config,
    storage: str,
    resume: bool,
    evaluators: int,
    ray_address: str | None,
    progress=print,
    report_dir: Path | None = None,
    scoring: dict | None = None,
    gpus_each: float | None = None,
    measure=None,
    study_name: str | None = None,
):
    """The Optuna search over Ray evaluator actors; writes trials.csv, pareto.csv, pareto.png into
    `report_dir` (default: the run directory). `scoring`: the evaluators' device, precision
    and val_images (nas.evaluate.Evaluator); `gpus_each`: GPUs per evaluator (EvaluatorPool). The evaluators receive the supernet and
    the validation split through Ray's object store: only this process reads the run directory. `study_name`:
    the study in `storage` (default: `run.study_name()`)."""
    from nas import report
    from nas import study as search
    from nas.evaluate import LocalPool, evaluation_state
    from nas.study_trials import recover_interrupted
    from workers.cluster import init_ray, ray_available, require_cpus, require_ray

    state = evaluation_state(run.root)  # read here, by the driver alone; a corrupt checkpoint fails here with one line
    local = not ray_available()
    if local:
        if ray_address is not None:
            require_ray(f"--ray-address {ray_address}: joining a cluster", "ray[default]")
        progress(
            "Ray is not installed: the archs are scored by one evaluator in this process"
            + (f" (--evaluators {evaluators} needs Ray)" if evaluators > 1 else "")
        )
        evaluators = 1
    else:
        init_ray(ray_address, progress=progress)
        require_cpus("evaluators", evaluators)
    study = search.open_study(storage, config, resume, study_name or run.study_name())
    if resume:
        interrupted = recover_interrupted(study)
        if interrupted:
            progress(f"resuming: {interrupted} trial(s) interrupted by the last run are re-enqueued")
    if local:
        pool = LocalPool(state, scoring=scoring)
    else:
        from workers.evaluator import EvaluatorPool

        pool = EvaluatorPool(state, evaluators, scoring=scoring, gpus_each=gpus_each)
    try:
        latency = search.run_search(
            study, space, table, pool.evaluate, config, progress, measure=measure, evaluators=evaluators, pool=pool
        )
    finally:
        pool.shutdown()
    front = report.write_outputs(
        study, report_dir or run.root, config.budget_ms, run.verified() if run.owns_storage(storage) else None
    )
    return study, front, latency


def export_stage(run: RunDir, trial: int, out: Path, progress=print, **options) -> dict:
    """Export complete trial `trial` of the run (from trials.csv) into `out`; returns the metadata."""
    from nas.exporter import export
    from nas.selection import by_trial, load_candidates

    return export(run.root, by_trial(load_candidates(run.root), trial), out, progress=progress, **options)


def trial_profiler(table, table_path):
    """A profiler on this machine with the table's fingerprint, to measure the trials; refused in one
    line when this machine is not the table's device or setting."""
    from nas.latency.profiler import Profiler
    from nas.selection import local_devices

    fp = table.fingerprint
    if fp.device_name not in local_devices():
        raise NasError(
            f"{table_path} was measured on {fp.device_name}, not on this machine: trials cannot be measured here; "
            "search on that device, or pass --latency predicted to let the table decide"
        )
    profiler = Profiler.like(fp)
    if profiler.fingerprint() != fp:
        raise NasError(
            f"{table_path}: this machine's setting differs from the table's ("
            + "; ".join(fp.differences(profiler.fingerprint()))
            + "): trials cannot be measured as the table was; "
            "rebuild the table here, or pass --latency predicted"
        )
    profiler.anchor_to(table.reference_ms)
    return profiler
