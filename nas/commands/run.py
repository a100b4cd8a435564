"""`nas run`, `nas search`, `nas report`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from nas.commands.common import add_connection_options, out_path, positive_float
from nas.errors import NasError


def add_run(commands: argparse._SubParsersAction) -> None:
    from nas import config as config_tree
    from nas import settings
    from nas.commands.common import refuse_device_flag

    p = commands.add_parser(
        "run",
        help="the whole pipeline: latency table, supernet training, search, export (default: odd-one-out on this CPU)",
        description="Build and validate the device's latency table, train the supernet, search with Optuna on local Ray (or a "
        "cluster), verify the best candidates by training them standalone, and export the pick, writing everything into --out. "
        "Every setting below is a field of nas.config.RunConfig; --config FILE sets them from YAML (flags override it).",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML file of settings, as --print-config writes it; a run directory's "
        "run.yaml replays that run (flags given as well override the file)",
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the settings this command would run with, as YAML, and exit"
    )
    p.add_argument("--out", type=out_path, default=None, help="run directory (default: results/run-<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    settings.add_flags(p, config_tree.RunConfig)
    refuse_device_flag(p)
    p.set_defaults(func=run_run, on_stop="resume")


def run_config(args: argparse.Namespace):
    """The RunConfig of `nas run`'s arguments: the defaults, then --config FILE, then the flags given."""
    from nas import config as config_tree
    from nas import settings
    from nas.storage import check_study_name

    base = settings.load(config_tree.RunConfig, args.config) if args.config is not None else config_tree.RunConfig()
    given = settings.given(config_tree.RunConfig, args)
    if "budget_ms" in given and "budget_quantile" in given:
        raise NasError(
            f"--budget-ms {given['budget_ms']} and --budget-quantile {given['budget_quantile']}: pass one; the quantile only "
            "sets the budget when no --budget-ms is given"
        )
    config = settings.with_values(base, given)
    if config.storage_path is not None and config.workers == 1:
        raise NasError(
            "--storage-path: only Ray Train's workers (--workers > 1) write there; with --workers 1 the supernet "
            "trains in this process into --out. Drop --storage-path or pass --workers 2 or more"
        )
    if config.study_name is not None:
        check_study_name(config.study_name)
    return config


def run_run(args: argparse.Namespace) -> int:
    from datetime import datetime

    from nas import api
    from nas.settings import dump
    from nas.storage import resolve

    if args.resume and args.out is None:
        raise NasError("--resume needs --out: the run directory to continue")
    config = run_config(args)
    if args.print_config:
        print(dump(config), end="")
        return 0
    out = args.out or Path("results") / datetime.now().strftime("run-%Y%m%d-%H%M%S")
    source = resolve(config.storage)[1]
    started = time.perf_counter()
    print(
        f"nas run: {config.space} -> {out}" + (f" (storage from {source})" if source == "NAS_STORAGE_URL" else ""),
        flush=True,
    )
    result = api.run(config, out, resume=args.resume, progress=lambda line: print(line, flush=True))
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min; run directory {out}")
    if not result:
        print("no feasible arch was found under the budget")
    return 0


def add_search(commands: argparse._SubParsersAction) -> None:
    from nas import config as config_tree
    from nas import settings

    p = commands.add_parser(
        "search",
        help="Optuna search over a trained supernet (Ray evaluator actors)",
        description="Search a run directory that holds a trained supernet and a latency table (nas train, nas latency "
        "--out <run>/latency_table.json); writes study.db (or --storage), trials.csv, pareto.csv, pareto.png. "
        "The settings are the fields of nas.config.SearchSettings.",
    )
    p.add_argument("--run", type=Path, required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the study")
    settings.add_flags(p, config_tree.SearchSettings)
    p.set_defaults(func=run_search_command, on_stop="resume")


def run_search_command(args: argparse.Namespace) -> int:
    from nas import config as config_tree
    from nas import report, settings
    from nas.search_run import search_run

    config = settings.from_args(config_tree.SearchSettings, args)
    study, front, report_dir, budget = search_run(
        args.run, config, args.resume, progress=lambda line: print(line, flush=True)
    )
    print(report.format_front(front))
    print(f"wrote {report_dir}/trials.csv, pareto.csv, pareto.png, hypervolume.png")
    if budget is not None and not front:
        from nas.budget import no_feasible_trial

        raise no_feasible_trial(study, budget)
    return 0


def add_report(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "report",
        help="redraw a run's Pareto plot and tables from its study; list a storage's studies",
        description="Re-read a run's Optuna study and rewrite trials.csv, pareto.csv, pareto.png, hypervolume.png (the "
        "feasible front's hypervolume after each trial) and latency_fit.png (the latency table's predictions "
        "against the measured models); print the front. "
        "Without --run: list the studies in --storage (or NAS_STORAGE_URL).",
    )
    p.add_argument("--run", type=Path, default=None, help="run directory (without it: list the studies in --storage)")
    add_connection_options(p, "sqlite:///<run>/study.db")
    p.add_argument(
        "--report-dir",
        type=out_path,
        default=None,
        help="where trials.csv and pareto.* go (default: the run, for the run's own study; "
        "required for a study in another --storage)",
    )
    p.add_argument("--budget-ms", type=positive_float, default=None, help="budget line to draw (default: the run's)")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    import optuna

    from nas import report
    from nas.preflight import check_out_dir
    from nas.rundir import LATENCY_FIT_PNG, STUDY, TABLE, RunDir
    from nas.storage import check, normalize, redact, resolve, sqlite_study_names, study_not_found

    flag = resolve(args.storage)[0]
    if args.run is None:
        if flag is None:
            raise NasError(
                "nas report: pass --run RUN (a run's study) or --storage URL (or NAS_STORAGE_URL) to list the studies it holds"
            )
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
        raise NasError(
            f"{redact(storage)}: cannot read the study ({type(error).__name__}); the file may be corrupt"
        ) from None
    budget = args.budget_ms if args.budget_ms is not None else run.budget()
    front = report.write_outputs(study, report_dir, budget, run.verified() if run.owns_storage(storage) else None)
    written = "trials.csv, pareto.csv, pareto.png, hypervolume.png"
    if run.has(TABLE):
        import json

        report.plot_latency_fit(
            json.loads(run.path(TABLE).read_text()), study.get_trials(deepcopy=False), report_dir / LATENCY_FIT_PNG
        )
        written += ", latency_fit.png"
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    print(
        f"study {study_name}: {len(states)} trials ({', '.join(f'{states.count(s)} {s.lower()}' for s in sorted(set(states)))}); feasible front:"
    )
    print(report.format_front(front, run.verified() if run.owns_storage(storage) else None))
    print(f"wrote {report_dir}/{written}")
    return 0


def list_studies(storage: str, connect_timeout: float) -> int:
    """`nas report --storage URL`: one line per study (name, trials by state, when it started)."""
    import optuna

    from nas.storage import check, normalize, redact, sqlite_study_names

    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///") :]).is_file():
        raise NasError(f"--storage {storage}: no such file")
    names = sqlite_study_names(storage) if storage.startswith("sqlite:///") else check(storage, connect_timeout)
    print(f"{redact(storage)}: {len(names)} stud{'y' if len(names) == 1 else 'ies'}")
    if not names:
        return 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for summary in sorted(
        optuna.get_all_study_summaries(normalize(storage), include_best_trial=False), key=lambda s: s.study_name
    ):
        states = [
            t.state.name.lower()
            for t in optuna.load_study(study_name=summary.study_name, storage=normalize(storage)).get_trials(
                deepcopy=False
            )
        ]
        counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) or "no trials"
        started = summary.datetime_start.strftime("%Y-%m-%d %H:%M") if summary.datetime_start else "-"
        print(f"  {summary.study_name}: {len(states)} trials ({counts}), started {started}")
    return 0
