"""`nas run`, `nas search`, `nas report`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from nas.commands.common import (out_path, add_compute_options, add_connection_options, add_runtime, add_target_device, non_negative_int,
                                 positive_float, positive_int, ray_storage_path, STORAGE_PATH_HELP)


def add_latency_source(p) -> None:
    p.add_argument("--latency", default="measured", choices=["measured", "predicted"],
                   help="what decides each trial's latency: its whole model measured on the target device (the table is the prior "
                   "and pre-filter), or the table's prediction alone (default: %(default)s)")
from nas.errors import NasError


def add_run(commands: argparse._SubParsersAction) -> None:
    from nas.pipeline import RunConfig

    d = RunConfig()
    p = commands.add_parser(
        "run",
        help="the whole pipeline: latency table, supernet training, search, export (default: odd-one-out on this CPU)",
        description="Build and validate the device's latency table, train the supernet, and run the Optuna search "
        "on local Ray (or a cluster), writing everything into --out.",
    )
    p.add_argument("--space", default=d.space, help="search space name or YAML path (default: %(default)s)")
    p.add_argument("--data", default=None, help="CIFAR-10 python folder or ImageFolder root (default: the space's embedded dataset)")
    add_target_device(p, d.device, "device whose latency is optimised: cpu, cuda or cuda:<i> (default: cpu)")
    p.add_argument("--dtype", default=d.dtype, choices=["fp32", "bf16", "fp16"], help="inference dtype of the latency measurement (default: fp32)")
    add_runtime(p)
    add_compute_options(p)
    p.add_argument("--val-images", type=positive_int, default=None, help="score each search trial on this many validation images (a fixed sample; default: all)")
    p.add_argument("--gpus-per-evaluator", type=positive_float, default=None, help="with a CUDA compute device: GPUs each evaluator asks "
                   "Ray for, fractions allowed (default: a whole GPU when there is one per evaluator, else a share of one)")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="inference batch size for latency (default: %(default)s)")
    p.add_argument("--budget-ms", type=positive_float, default=None, help="latency budget in ms (default: the median predicted latency of 2,000 random archs: about half the space is feasible)")
    p.add_argument("--budget-quantile", type=positive_float, default=None, help="instead of --budget-ms: the budget admits about "
                   f"this share of random archs (0-1; 1 admits all; default: {d.budget_quantile})")
    p.add_argument("--trials", type=positive_int, default=d.trials, help="default: %(default)s")
    p.add_argument("--epochs", type=positive_int, default=None, help="supernet training epochs (default: the space's)")
    p.add_argument("--workers", type=positive_int, default=d.workers, help="Ray Train workers for the supernet; 1 trains in this process (default: %(default)s)")
    p.add_argument("--evaluators", type=positive_int, default=d.evaluators, help="Ray evaluator actors (default: %(default)s)")
    p.add_argument("--sampler", default=d.sampler, choices=["tpe", "nsga2", "random", "gp"], help="tpe (multivariate, grouped), nsga2, random or gp (Gaussian process; default: %(default)s)")
    p.add_argument("--calibrate", type=non_negative_int, default=d.calibrate, help="whole models for the latency calibration (default: %(default)s)")
    p.add_argument("--validate", type=non_negative_int, default=d.validate, help="held-out whole models to validate the latency table (default: %(default)s)")
    add_latency_source(p)
    p.add_argument("--verify", type=non_negative_int, default=d.verify, help="after the search, train this many of the best candidates "
                   "under the budget standalone (successive halving) and pick by verified accuracy; 0: pick by inherited accuracy "
                   "(default: %(default)s)")
    p.add_argument("--ray-address", default=None, help="'auto' or an address to join a Ray cluster (default: start a local Ray)")
    p.add_argument("--storage-path", type=ray_storage_path, default=None, help=STORAGE_PATH_HELP)
    add_connection_options(p, "sqlite in --out")
    p.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    p.add_argument("--out", type=out_path, default=None, help="run directory (default: results/run-<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.set_defaults(func=run_run, on_stop="resume")


def run_run(args: argparse.Namespace) -> int:
    from datetime import datetime

    from nas.pipeline import RunConfig, run

    if args.resume and args.out is None:
        raise NasError("--resume needs --out: the run directory to continue")
    if args.budget_ms is not None and args.budget_quantile is not None:
        raise NasError(f"--budget-ms {args.budget_ms} and --budget-quantile {args.budget_quantile}: pass one; the quantile only "
                       "sets the budget when no --budget-ms is given")
    if args.storage_path is not None and args.workers == 1:
        raise NasError("--storage-path: only Ray Train's workers (--workers > 1) write there; with --workers 1 the supernet "
                       "trains in this process into --out. Drop --storage-path or pass --workers 2 or more")
    from nas.storage import check_study_name, resolve

    out = args.out or Path("results") / datetime.now().strftime("run-%Y%m%d-%H%M%S")
    storage, source = resolve(args.storage)
    config = RunConfig(
        space=args.space, data=args.data, device=args.device, dtype=args.dtype, batch_size=args.batch_size, runtime=args.backend,
        budget_ms=args.budget_ms, budget_quantile=RunConfig.budget_quantile if args.budget_quantile is None else args.budget_quantile, trials=args.trials, epochs=args.epochs, workers=args.workers, evaluators=args.evaluators,
        sampler=args.sampler, seed=args.seed, ray_address=args.ray_address, storage=storage,
        calibrate=args.calibrate, validate=args.validate, latency=args.latency, connect_timeout=args.connect_timeout, compute_device=args.compute_device,
        precision=args.precision, loader_workers=args.loader_workers, randaugment=args.randaugment, val_images=args.val_images,
        gpus_per_evaluator=args.gpus_per_evaluator, storage_path=args.storage_path, verify=args.verify,
        study_name=None if args.study_name is None else check_study_name(args.study_name),
    )
    started = time.perf_counter()
    print(f"nas run: {config.space} -> {out}" + (f" (storage from {source})" if source == "NAS_STORAGE_URL" else ""), flush=True)
    result = run(config, out, args.resume, progress=lambda line: print(line, flush=True))
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min; run directory {out}")
    if not result:
        print("no feasible arch was found under the budget")
    return 0


def add_search(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "search",
        help="Optuna search over a trained supernet (Ray evaluator actors)",
        description="Search a run directory that holds a trained supernet and a latency table (nas train, nas latency "
        "--out <run>/latency_table.json); writes study.db (or --storage), trials.csv, pareto.csv, pareto.png.",
    )
    p.add_argument("--run", type=Path, required=True, help="run directory")
    p.add_argument("--table", type=Path, default=None, help="latency table (default: <run>/latency_table.json)")
    add_latency_source(p)
    p.add_argument("--accept-poor-fit", action="store_true", help="with --latency predicted: search on a table that failed its validation anyway")
    add_compute_options(p, loading=False)
    p.add_argument("--val-images", type=positive_int, default=None, help="score each trial on this many validation images (a fixed sample; default: all)")
    p.add_argument("--gpus-per-evaluator", type=positive_float, default=None, help="with a CUDA compute device: GPUs each evaluator asks "
                   "Ray for, fractions allowed (default: a whole GPU when there is one per evaluator, else a share of one)")
    p.add_argument("--budget-ms", type=positive_float, default=None, help="latency budget (default: none, the whole front)")
    p.add_argument("--trials", type=positive_int, default=100, help="default: %(default)s")
    p.add_argument("--sampler", default="tpe", choices=["tpe", "nsga2", "random", "gp"], help="tpe (multivariate, grouped), nsga2, random or gp (Gaussian process; default: %(default)s)")
    p.add_argument("--third-objective", default=None, choices=["params", "macs"], help="also minimise params or MACs")
    p.add_argument("--evaluators", type=positive_int, default=2, help="Ray evaluator actors (default: %(default)s)")
    p.add_argument("--batch", type=positive_int, default=None, help="trials asked per round (default: 2 × evaluators)")
    p.add_argument("--ray-address", default=None, help="'auto' or an address to join a Ray cluster (default: local Ray)")
    add_connection_options(p, "sqlite:///<run>/study.db")
    p.add_argument("--report-dir", type=out_path, default=None, help="where trials.csv and pareto.* go (default: the run, for the run's own study; "
                   "required for a study in another --storage)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--resume", action="store_true", help="continue the study")
    p.set_defaults(func=run_search_command, on_stop="resume")


def run_search_command(args: argparse.Namespace) -> int:
    from nas import report, search
    from nas.compute import Compute
    from nas.latency.table import LatencyTable
    from nas.pipeline import resolve_budget
    from nas.rundir import TABLE, WEIGHTS, RunDir
    from nas.stages import Fit, check_connections, check_fit, check_out_dir, search_stage, trial_profiler
    from nas.storage import redact, resolve

    run = RunDir(args.run)
    study_name = run.study_name(args.study_name)  # a bad --study-name is refused before any work
    space, _ = run.space_and_data()
    storage = resolve(args.storage)[0] or run.default_storage()
    report_dir = run.report_dir(storage, args.report_dir)  # refused before any work when the study is not the run's
    check_out_dir(report_dir, "--report-dir")
    table_path = args.table or run.path(TABLE)
    if not table_path.is_file():
        raise NasError(f"{table_path} does not exist; build it with nas latency --space ... --out {table_path}")
    table = LatencyTable.load(table_path, space)
    profiler = None
    if args.latency == "predicted":
        check_fit(table, table_path, Fit.stored_with(table, args.accept_poor_fit))
    else:
        profiler = trial_profiler(table, table_path)
    compute = Compute.parse(args.compute_device, args.precision)
    scoring = {"device": str(compute.device), "precision": compute.precision, "val_images": args.val_images}
    if not run.has(WEIGHTS):
        raise NasError(f"{args.run} holds no {WEIGHTS}; train the supernet first (nas train --out {args.run})")
    if args.val_images is not None and args.val_images > run.split_size("val"):
        raise NasError(f"--val-images {args.val_images}: the run's validation split holds only {run.split_size('val')} images; "
                       f"use at most {run.split_size('val')}, or leave it out to score on all of them")
    budget = resolve_budget(space, table, args.budget_ms) if args.budget_ms is not None else None
    config = search.SearchConfig(
        trials=args.trials, batch=args.batch or 2 * args.evaluators, sampler=args.sampler, seed=args.seed,
        budget_ms=budget, third_objective=args.third_objective,
    )
    progress = lambda line: print(line, flush=True)  # noqa: E731
    check_connections(args.ray_address, storage, args.connect_timeout, progress)
    print(f"nas search: {space.name}, {config.trials} trials ({config.sampler}), {args.evaluators} evaluator(s) on {compute.device} "
          f"({compute.precision}), budget {budget if budget is not None else 'none'}, storage {redact(storage)}, study {study_name}", flush=True)
    study, front, _ = search_stage(run, space, table, config, storage, args.resume, args.evaluators, args.ray_address,
                                   progress=progress, report_dir=report_dir, scoring=scoring, gpus_each=args.gpus_per_evaluator,
                                   measure=(lambda archs: profiler.measure_models(archs, profiler.protocol.for_trials())) if profiler else None,
                                   study_name=study_name)
    print(report.format_front(front))
    print(f"wrote {report_dir}/trials.csv, pareto.csv, pareto.png")
    if budget is not None and not front:
        from nas.pipeline import no_feasible_trial

        raise no_feasible_trial(study, budget)
    return 0


def add_report(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("report", help="redraw a run's Pareto plot and tables from its study; list a storage's studies",
                            description="Re-read a run's Optuna study and rewrite trials.csv, pareto.csv and pareto.png; print the front. "
                                        "Without --run: list the studies in --storage (or NAS_STORAGE_URL).")
    p.add_argument("--run", type=Path, default=None, help="run directory (without it: list the studies in --storage)")
    add_connection_options(p, "sqlite:///<run>/study.db")
    p.add_argument("--report-dir", type=out_path, default=None, help="where trials.csv and pareto.* go (default: the run, for the run's own study; "
                   "required for a study in another --storage)")
    p.add_argument("--budget-ms", type=positive_float, default=None, help="budget line to draw (default: the run's)")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    import optuna

    from nas import report
    from nas.rundir import STUDY, RunDir
    from nas.stages import check_out_dir
    from nas.storage import check, normalize, redact, resolve, sqlite_study_names, study_not_found

    flag = resolve(args.storage)[0]
    if args.run is None:
        if flag is None:
            raise NasError("nas report: pass --run RUN (a run's study) or --storage URL (or NAS_STORAGE_URL) to list the studies it holds")
        return list_studies(flag, args.connect_timeout)
    run = RunDir(args.run)
    study_name = run.study_name(args.study_name)  # a bad --study-name is refused before the storage is opened
    storage = flag or run.default_storage()
    if flag is None and not run.has(STUDY):
        raise NasError(f"{args.run} holds no study.db; pass --storage if the study lives elsewhere")
    report_dir = run.report_dir(storage, args.report_dir)
    check_out_dir(report_dir, "--report-dir")
    # A report only reads the study: an SQLite file is opened read-only (Optuna would write its schema into an empty one).
    names = sqlite_study_names(storage) if storage.startswith("sqlite:///") else check(storage, args.connect_timeout)
    if study_name not in names:
        raise study_not_found(storage, study_name, names)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=normalize(storage))
    except Exception as error:  # noqa: BLE001 — a corrupt database raises SQLAlchemy / sqlite errors
        raise NasError(f"{redact(storage)}: cannot read the study ({type(error).__name__}); the file may be corrupt") from None
    budget = args.budget_ms if args.budget_ms is not None else run.budget()
    front = report.write_outputs(study, report_dir, budget, run.verified() if run.owns_storage(storage) else None)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    print(f"study {study_name}: {len(states)} trials ({', '.join(f'{states.count(s)} {s.lower()}' for s in sorted(set(states)))}); feasible front:")
    print(report.format_front(front, run.verified() if run.owns_storage(storage) else None))
    print(f"wrote {report_dir}/trials.csv, pareto.csv, pareto.png")
    return 0


def list_studies(storage: str, connect_timeout: float) -> int:
    """`nas report --storage URL`: one line per study (name, trials by state, when it started)."""
    import optuna

    from nas.storage import check, normalize, redact, sqlite_study_names

    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file():
        raise NasError(f"--storage {storage}: no such file")
    names = sqlite_study_names(storage) if storage.startswith("sqlite:///") else check(storage, connect_timeout)
    print(f"{redact(storage)}: {len(names)} stud{'y' if len(names) == 1 else 'ies'}")
    if not names:
        return 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for summary in sorted(optuna.get_all_study_summaries(normalize(storage), include_best_trial=False), key=lambda s: s.study_name):
        states = [t.state.name.lower() for t in optuna.load_study(study_name=summary.study_name, storage=normalize(storage)).get_trials(deepcopy=False)]
        counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) or "no trials"
        started = summary.datetime_start.strftime("%Y-%m-%d %H:%M") if summary.datetime_start else "-"
        print(f"  {summary.study_name}: {len(states)} trials ({counts}), started {started}")
    return 0
