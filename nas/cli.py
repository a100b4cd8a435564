"""The `nas` command line.

User mistakes raise `NasError`; `main` prints them as one line and exits 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from nas.errors import NasError


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def str_list(text: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return values


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


# ---- nas bench kernels ----------------------------------------------------------------------


def add_bench_kernels(sub: argparse._SubParsersAction) -> None:
    from nas.bench.kernels import DEFAULT_TOKENS, DTYPES, MODES, KernelBenchConfig

    defaults = KernelBenchConfig()
    p = sub.add_parser(
        "kernels",
        help="time every attention kernel against softmax SDPA over a token sweep",
        description="Time every attention kernel (forward and forward+backward) against softmax SDPA over a sweep "
        "of token counts; print tables and crossovers, write CSV, JSON and PNG under --out.",
    )
    p.add_argument("--device", default=defaults.device, help="cpu, cuda or cuda:<index> (default: cpu)")
    p.add_argument("--dtype", default=defaults.dtype, choices=list(DTYPES), help="default: fp32")
    p.add_argument("--head-dim", type=positive_int, default=defaults.head_dim, help="default: %(default)s")
    p.add_argument("--heads", type=positive_int, default=defaults.heads, help="default: %(default)s")
    p.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="default: %(default)s")
    p.add_argument(
        "--tokens", type=int_list, default=DEFAULT_TOKENS,
        help="comma-separated token counts (default: powers of two from 64 to 16384)",
    )
    p.add_argument("--kernels", type=str_list, default=defaults.kernels, help="comma-separated kernel labels (default: all)")
    p.add_argument("--modes", type=str_list, default=MODES, help="fwd, fwd+bwd or both (default: both)")
    p.add_argument("--warmup", type=positive_int, default=defaults.warmup, help="warm-up calls (default: %(default)s)")
    p.add_argument("--repeats", type=positive_int, default=defaults.repeats, help="most timed calls (default: %(default)s)")
    p.add_argument(
        "--max-seconds", type=positive_float, default=defaults.max_seconds,
        help="time budget per measurement; at least 3 calls are timed (default: %(default)s)",
    )
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="default: %(default)s")
    p.add_argument("--out", type=Path, default=Path("results/bench"), help="output folder (default: results/bench)")
    p.set_defaults(func=run_bench_kernels)


def run_bench_kernels(args: argparse.Namespace) -> int:
    import torch

    from nas import kernels
    from nas.bench import kernels as bench
    from nas.latency import resolve_device

    valid = [spec.label for spec in kernels.variants()]
    unknown = [label for label in args.kernels if label not in valid]
    if unknown:
        raise NasError(f"--kernels: unknown kernel label(s) {', '.join(unknown)}; valid labels: {', '.join(valid)}")
    bad_modes = [mode for mode in args.modes if mode not in bench.MODES]
    if bad_modes:
        raise NasError(f"--modes: unknown mode(s) {', '.join(bad_modes)}; valid modes: {', '.join(bench.MODES)}")
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = bench.KernelBenchConfig(
        device=str(device), dtype=args.dtype, head_dim=args.head_dim, heads=args.heads, batch_size=args.batch_size,
        tokens=tuple(sorted(set(args.tokens))), kernels=tuple(args.kernels), modes=tuple(args.modes),
        warmup=args.warmup, repeats=args.repeats, max_seconds=args.max_seconds, seed=args.seed,
    )
    print(
        f"nas bench kernels: {len(config.kernels)} kernels vs softmax on {device} ({config.dtype}, "
        f"B={config.batch_size}, heads={config.heads}, d={config.head_dim}, {torch.get_num_threads()} threads), "
        f"N = {', '.join(map(str, config.tokens))}",
        flush=True,
    )
    started = time.perf_counter()
    rows = bench.run(config, progress=lambda line: print(line, flush=True))
    wall = time.perf_counter() - started
    print(bench.format_tables(rows))
    paths = bench.write_results(rows, config, args.out, wall, command_line())
    print(f"done in {wall:.0f} s; wrote {', '.join(str(p) for p in paths)}")
    return 0


# ---- nas bench supernet ---------------------------------------------------------------------


def add_bench_supernet(sub: argparse._SubParsersAction) -> None:
    from nas.bench.supernet import SupernetBenchConfig

    defaults = SupernetBenchConfig()
    p = sub.add_parser(
        "supernet",
        help="training-step time of subnets inside the supernet vs extracted standalone (CPU)",
        description="For sampled archs, time one training step inside the supernet and as the extracted standalone "
        "model (same batch, alternating), print the ratio per arch and the median; write CSV and JSON under --out.",
    )
    p.add_argument("--space", default=defaults.space, help="search space name or YAML path (default: %(default)s)")
    p.add_argument("--archs", type=positive_int, default=defaults.archs, help="sampled archs (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="default: %(default)s")
    p.add_argument("--warmup", type=positive_int, default=defaults.warmup, help="warm-up steps per model (default: %(default)s)")
    p.add_argument("--repeats", type=positive_int, default=defaults.repeats, help="timed steps per model (default: %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="default: %(default)s")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--out", type=Path, default=Path("results/bench"), help="output folder (default: results/bench)")
    p.set_defaults(func=run_bench_supernet)


def run_bench_supernet(args: argparse.Namespace) -> int:
    import torch

    from nas.bench import supernet as bench
    from nas.space import load_space

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    space = load_space(args.space)
    config = bench.SupernetBenchConfig(
        space=space.name, archs=args.archs, batch_size=args.batch_size, warmup=args.warmup, repeats=args.repeats, seed=args.seed
    )
    print(f"nas bench supernet: {config.archs} archs of {space.name}, batch {config.batch_size}, {torch.get_num_threads()} threads", flush=True)
    rows = bench.run(space, config, progress=lambda line: print(line, flush=True))
    paths = bench.write_results(rows, config, args.out, command_line())
    ratios = sorted(row.ratio for row in rows)
    print(f"median ratio supernet / standalone: {bench.median_ratio(rows):.3f} (range {ratios[0]:.3f}-{ratios[-1]:.3f})")
    print(f"wrote {', '.join(map(str, paths))}")
    return 0


def command_line() -> str | None:
    """The command as typed, for the JSON sidecars (None when not run as `nas`)."""
    return shlex.join(["nas", *sys.argv[1:]]) if Path(sys.argv[0]).name == "nas" else None


# ---- nas latency ----------------------------------------------------------------------------


def add_latency(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "latency",
        help="build and validate a device's latency lookup table",
        description="Measure every block configuration of a search space on a device (resuming a partial table in "
        "--out), fit a linear calibration on a few whole models, and validate the predictor on held-out archs.",
    )
    p.add_argument("--space", default="digits-tiny", help="search space name or YAML path (default: digits-tiny)")
    add_device_options(p)
    p.add_argument("--calibrate", type=int, default=10, help="whole archs measured for the linear calibration, 0 for none (default: %(default)s)")
    p.add_argument("--validate", type=int, default=50, help="held-out archs measured to validate, 0 to skip (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration / validation archs (default: %(default)s)")
    p.add_argument("--ray-address", default=None, help="measure in a Ray profiler actor: 'local' starts a local Ray, 'auto' or an address joins a cluster (default: in this process)")
    p.add_argument("--accelerator-type", default=None, help="with --ray-address: place the profiler on a node with this Ray accelerator type")
    p.add_argument("--out", type=Path, required=True, help="the table's JSON file")
    p.set_defaults(func=run_latency)


def add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index> (default: cpu)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="default: %(default)s")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="default: fp32")
    p.add_argument("--backend", default="eager", choices=["eager", "cuda-graph"], help="default: eager")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's default)")


def make_profiler(args: argparse.Namespace):
    import torch

    from nas.latency.profiler import Profiler

    threads = args.threads or torch.get_num_threads()
    address = getattr(args, "ray_address", None)
    if address is None:
        if getattr(args, "accelerator_type", None):
            raise NasError("--accelerator-type needs --ray-address")
        return Profiler(args.device, args.dtype, args.batch_size, args.backend, threads)
    from nas.pipeline import init_ray
    from workers.profiler import RemoteProfiler

    init_ray(None if address == "local" else address)
    return RemoteProfiler(args.device, args.dtype, args.batch_size, args.backend, threads, args.accelerator_type)


def run_latency(args: argparse.Namespace) -> int:
    from nas.bench.latency import summary_line
    from nas.latency import table as lut
    from nas.space import load_space

    if args.calibrate < 0 or args.validate < 0:
        raise NasError("--calibrate and --validate must be >= 0")
    if 0 < args.calibrate < 3:
        raise NasError("--calibrate needs at least 3 archs to fit a line (or 0 for none)")
    space = load_space(args.space)
    profiler = make_profiler(args)
    fp = profiler.fingerprint()
    total = len(list(lut.probe_archs(space)))
    print(f"nas latency: {space.name} on {fp.device_name} ({fp.device_type}, {fp.dtype}, batch {fp.batch_size}, {fp.backend}"
          f"{f', {fp.threads} threads' if fp.threads else ''}): {total} measurements (blocks, stem+head per width) -> {args.out}", flush=True)
    table = lut.build(space, fp, args.out, profiler.measure_probes, progress=lambda line: print(line, flush=True))
    print(f"table complete: {len(table.entries)} entries, {table.build_seconds:.0f} s of measuring", flush=True)
    if args.calibrate and table.calibration is None:
        archs = lut.held_out_archs(space, args.calibrate, args.seed, exclude=set())
        print(f"calibrating on {len(archs)} whole models...", flush=True)
        lut.calibrate(table, archs, profiler.measure_models(archs))
        table.save(args.out)
    if table.calibration:
        print(f"calibration: measured ≈ {table.calibration['a']:.4f} × sum of entries + {table.calibration['b']:.4f} ms")
    if args.validate:
        exclude = set(table.calibration["archs"]) if table.calibration else set()
        archs = lut.held_out_archs(space, args.validate, args.seed + 1, exclude)
        print(f"validating on {len(archs)} held-out whole models...", flush=True)
        validation = lut.validate(table, archs, profiler.measure_models(archs))
        table.save(args.out)
        print("validation: " + summary_line(validation))
    print(f"wrote {args.out}")
    return 0


def add_bench_latency(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "latency",
        help="predicted vs measured latency of held-out archs for a lookup table",
        description="Measure fresh held-out archs end to end on a table's device (this machine must match its "
        "fingerprint), print predicted vs measured, write CSV, JSON and a scatter plot under --out.",
    )
    p.add_argument("--table", type=Path, required=True, help="a table built by `nas latency`")
    p.add_argument("--space", default="digits-tiny", help="the table's search space (default: digits-tiny)")
    p.add_argument("--archs", type=positive_int, default=50, help="held-out archs to measure (default: %(default)s)")
    p.add_argument("--seed", type=int, default=100, help="default: %(default)s")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:<index> (default: the table's device type)")
    p.add_argument("--out", type=Path, default=Path("results/bench"), help="output folder (default: results/bench)")
    p.set_defaults(func=run_bench_latency)


def run_bench_latency(args: argparse.Namespace) -> int:
    from nas.bench import latency as bench
    from nas.latency import table as lut
    from nas.latency.profiler import Profiler
    from nas.space import load_space

    space = load_space(args.space)
    stored = lut.LatencyTable.load(args.table, space)
    fp = stored.fingerprint
    profiler = Profiler(args.device or fp.device_type, fp.dtype, fp.batch_size, fp.backend, fp.threads)
    table = lut.LatencyTable.load(args.table, space, expect=profiler.fingerprint())
    exclude = set(table.calibration["archs"]) if table.calibration else set()
    archs = lut.held_out_archs(space, args.archs, args.seed, exclude)
    print(f"nas bench latency: {len(archs)} held-out archs of {space.name} on {fp.device_name} ({fp.dtype}, batch {fp.batch_size})", flush=True)
    validation = lut.validate(table, archs, profiler.measure_models(archs))
    print(bench.format_points(validation))
    print(bench.summary_line(validation))
    paths = bench.write_results(table, validation, args.out, command_line())
    print(f"wrote {', '.join(map(str, paths))}")
    return 0


# ---- nas run / search / report --------------------------------------------------------------


def add_run(commands: argparse._SubParsersAction) -> None:
    from nas.pipeline import RunConfig

    d = RunConfig()
    p = commands.add_parser(
        "run",
        help="the whole pipeline: latency table, supernet training, search (default: digits-tiny on this CPU)",
        description="Build and validate the device's latency table, train the supernet, and run the Optuna search "
        "on local Ray (or a cluster), writing everything into --out.",
    )
    p.add_argument("--space", default=d.space, help="search space name or YAML path (default: %(default)s)")
    p.add_argument("--data", default=None, help="CIFAR-10 python folder or ImageFolder root (default: embedded digits)")
    p.add_argument("--device", default=d.device, help="device whose latency is optimised: cpu, cuda or cuda:<i> (default: cpu)")
    p.add_argument("--dtype", default=d.dtype, choices=["fp32", "bf16", "fp16"], help="default: fp32")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="inference batch size for latency (default: %(default)s)")
    p.add_argument("--budget-ms", type=positive_float, default=None, help="latency budget in ms (default: halfway between the smallest achievable latency and the largest arch's)")
    p.add_argument("--trials", type=positive_int, default=d.trials, help="default: %(default)s")
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help="supernet training epochs (default: %(default)s)")
    p.add_argument("--workers", type=positive_int, default=d.workers, help="Ray Train workers for the supernet; 1 trains in this process (default: %(default)s)")
    p.add_argument("--evaluators", type=positive_int, default=d.evaluators, help="Ray evaluator actors (default: %(default)s)")
    p.add_argument("--sampler", default=d.sampler, choices=["nsga2", "tpe", "random"], help="default: %(default)s")
    p.add_argument("--calibrate", type=int, default=d.calibrate, help="whole models for the latency calibration (default: %(default)s)")
    p.add_argument("--validate", type=int, default=d.validate, help="held-out whole models to validate the latency table (default: %(default)s)")
    p.add_argument("--ray-address", default=None, help="'auto' or an address to join a Ray cluster (default: start a local Ray)")
    p.add_argument("--storage", default=None, help="Optuna storage URL, e.g. postgresql://user:pw@host/db (default: sqlite in --out)")
    p.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: results/run-<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.set_defaults(func=run_run)


def run_run(args: argparse.Namespace) -> int:
    from datetime import datetime

    from nas.pipeline import RunConfig, run

    if args.resume and args.out is None:
        raise NasError("--resume needs --out: the run directory to continue")
    out = args.out or Path("results") / datetime.now().strftime("run-%Y%m%d-%H%M%S")
    config = RunConfig(
        space=args.space, data=args.data, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
        budget_ms=args.budget_ms, trials=args.trials, epochs=args.epochs, workers=args.workers, evaluators=args.evaluators,
        sampler=args.sampler, seed=args.seed, ray_address=args.ray_address, storage=args.storage,
        calibrate=args.calibrate, validate=args.validate,
    )
    started = time.perf_counter()
    print(f"nas run: {config.space} -> {out}", flush=True)
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
    p.add_argument("--budget-ms", type=positive_float, default=None, help="latency budget (default: none, the whole front)")
    p.add_argument("--trials", type=positive_int, default=100, help="default: %(default)s")
    p.add_argument("--sampler", default="nsga2", choices=["nsga2", "tpe", "random"], help="default: %(default)s")
    p.add_argument("--third-objective", default=None, choices=["params", "macs"], help="also minimise params or MACs")
    p.add_argument("--evaluators", type=positive_int, default=2, help="Ray evaluator actors (default: %(default)s)")
    p.add_argument("--batch", type=positive_int, default=None, help="trials asked per round (default: 2 × evaluators)")
    p.add_argument("--ray-address", default=None, help="'auto' or an address to join a Ray cluster (default: local Ray)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///<run>/study.db)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--resume", action="store_true", help="continue the study")
    p.set_defaults(func=run_search_command)


def run_search_command(args: argparse.Namespace) -> int:
    from nas import search
    from nas.latency.table import LatencyTable
    from nas.pipeline import TABLE, default_storage, resolve_budget, search_stage
    from nas.train import WEIGHTS, run_space

    space, _ = run_space(args.run)
    if not (args.run / WEIGHTS).is_file():
        raise NasError(f"{args.run} holds no {WEIGHTS}; train the supernet first (nas train --out {args.run})")
    table_path = args.table or args.run / TABLE
    if not table_path.is_file():
        raise NasError(f"{table_path} does not exist; build it with nas latency --space ... --out {table_path}")
    table = LatencyTable.load(table_path, space)
    budget = resolve_budget(space, table, args.budget_ms) if args.budget_ms is not None else None
    config = search.SearchConfig(
        trials=args.trials, batch=args.batch or 2 * args.evaluators, sampler=args.sampler, seed=args.seed,
        budget_ms=budget, third_objective=args.third_objective,
    )
    storage = args.storage or default_storage(args.run)
    print(f"nas search: {space.name}, {config.trials} trials ({config.sampler}), {args.evaluators} evaluator(s), "
          f"budget {budget if budget is not None else 'none'}, storage {search.redact(storage)}", flush=True)
    _, front = search_stage(args.run, space, table, config, storage, args.resume, args.evaluators, args.ray_address,
                            progress=lambda line: print(line, flush=True))
    print(search.format_front(front))
    print(f"wrote {args.run}/trials.csv, pareto.csv, pareto.png")
    return 0


def add_report(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("report", help="redraw a run's Pareto plot and tables from its study",
                            description="Re-read a run's Optuna study and rewrite trials.csv, pareto.csv and pareto.png; print the front.")
    p.add_argument("--run", type=Path, required=True, help="run directory")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///<run>/study.db)")
    p.add_argument("--budget-ms", type=positive_float, default=None, help="budget line to draw (default: the run's)")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    import json

    import optuna

    from nas import search
    from nas.pipeline import MANIFEST, default_storage

    storage = args.storage or default_storage(args.run)
    if args.storage is None and not (args.run / "study.db").is_file():
        raise NasError(f"{args.run} holds no study.db; pass --storage if the study lives elsewhere")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=search.STUDY_NAME, storage=search.normalize_storage(storage))
    except KeyError:
        raise NasError(f"{search.redact(storage)} holds no study named {search.STUDY_NAME}") from None
    except Exception as error:  # noqa: BLE001 — a corrupt database raises SQLAlchemy / sqlite errors
        raise NasError(f"{search.redact(storage)}: cannot read the study ({type(error).__name__}); the file may be corrupt") from None
    budget = args.budget_ms
    manifest = args.run / MANIFEST
    if budget is None and manifest.is_file():
        budget = json.loads(manifest.read_text())["settings"].get("budget_ms_resolved")
    front = search.write_outputs(study, args.run, budget)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    print(f"{len(states)} trials ({', '.join(f'{states.count(s)} {s.lower()}' for s in sorted(set(states)))}); feasible front:")
    print(search.format_front(front))
    print(f"wrote {args.run}/trials.csv, pareto.csv, pareto.png")
    return 0


# ---- nas bench search -----------------------------------------------------------------------


def add_bench_search(sub: argparse._SubParsersAction) -> None:
    from nas.bench.search import SearchBenchConfig

    d = SearchBenchConfig()
    p = sub.add_parser(
        "search",
        help="hypervolume of NSGA-II / TPE vs random search; evaluator throughput",
        description="On a run with a trained supernet and latency table: run T trials per sampler and seed in fresh "
        "in-memory studies, compare the hypervolume of the feasible fronts, and time 1 vs 2 evaluator actors.",
    )
    p.add_argument("--run", type=Path, required=True, help="run directory with supernet.safetensors and latency_table.json")
    p.add_argument("--trials", type=positive_int, default=d.trials, help="trials per study (default: %(default)s)")
    p.add_argument("--seeds", type=int_list_any, default=d.seeds, help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--samplers", type=str_list, default=d.samplers, help="default: nsga2,tpe,random")
    p.add_argument("--budget-ms", type=positive_float, default=None, help="default: the run's budget (manifest), else the default rule")
    p.add_argument("--ref-accuracy", type=float, default=d.ref_accuracy, help="accuracy of the hypervolume reference point (default: %(default)s)")
    p.add_argument("--evaluators", type=positive_int, default=2, help="evaluator actors for the searches (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("results/bench"), help="output folder (default: results/bench)")
    p.set_defaults(func=run_bench_search)


def int_list_any(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def run_bench_search(args: argparse.Namespace) -> int:
    import json

    from nas.bench import search as bench
    from nas.latency.table import LatencyTable
    from nas.pipeline import MANIFEST, TABLE, init_ray, resolve_budget
    from nas.search import SAMPLERS
    from nas.train import WEIGHTS, run_space
    from workers.evaluator import EvaluatorPool

    bad = [s for s in args.samplers if s not in SAMPLERS]
    if bad:
        raise NasError(f"--samplers: unknown {', '.join(bad)}; use {', '.join(SAMPLERS)}")
    if "random" not in args.samplers:
        raise NasError("--samplers must include random: it is the baseline")
    space, _ = run_space(args.run)
    if not (args.run / WEIGHTS).is_file():
        raise NasError(f"{args.run} holds no {WEIGHTS}; train the supernet first (nas train --out {args.run})")
    table = LatencyTable.load(args.run / TABLE, space)
    budget = args.budget_ms
    if budget is None and (args.run / MANIFEST).is_file():
        budget = json.loads((args.run / MANIFEST).read_text())["settings"].get("budget_ms_resolved")
    budget = resolve_budget(space, table, budget)
    config = bench.SearchBenchConfig(trials=args.trials, seeds=tuple(args.seeds), samplers=tuple(args.samplers), ref_accuracy=args.ref_accuracy)
    print(f"nas bench search: {space.name}, {config.trials} trials × seeds {list(config.seeds)} × {list(config.samplers)}, "
          f"budget {budget} ms, reference point (accuracy {config.ref_accuracy}, latency {budget} ms)", flush=True)
    init_ray(None)
    pool = EvaluatorPool(str(args.run), args.evaluators)
    try:
        rows = bench.run_samplers(space, table, pool, budget, config, progress=lambda line: print(line, flush=True))
    finally:
        pool.shutdown()
    summary = bench.summarize(rows)
    for sampler, stats in summary.items():
        print(f"{sampler:7s} hypervolume mean {stats['mean']:.5f} ± {stats['stdev']:.5f} (min {stats['min']:.5f}, max {stats['max']:.5f})")
    rates = bench.throughput(space, lambda size: EvaluatorPool(str(args.run), size), archs=config.throughput_archs)
    print("evaluation throughput: " + ", ".join(f"{size} evaluator(s) {rate:.1f} archs/s" for size, rate in rates.items()))
    paths = bench.write_results(rows, summary, rates, config, space.name, budget, args.out, command_line())
    print(f"wrote {', '.join(map(str, paths))}")
    return 0


# ---- nas select / export ---------------------------------------------------------------------


def float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one budget")
    return values


def add_select(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("select", help="the most accurate archs of a run under latency budgets",
                            description="Print the most accurate feasible arch(s) of a finished run under each budget, with "
                            "predicted latency, validation accuracy, MACs, params and the arch JSON.")
    p.add_argument("--run", type=Path, required=True, help="run directory (with trials.csv and latency_table.json)")
    p.add_argument("--budget-ms", type=float_list, required=True, help="one budget or several, comma-separated (e.g. 0.6,0.8,1)")
    p.add_argument("--top", type=positive_int, default=1, help="archs per budget (default: %(default)s)")
    p.add_argument("--device", default=None, help="the device the run's latencies were measured on, to select for it from another machine")
    p.set_defaults(func=run_select)


def run_select(args: argparse.Namespace) -> int:
    import json

    from nas.select import check_device, load_candidates, select

    fp, _ = check_device(args.run, args.device)
    candidates = load_candidates(args.run)
    print(f"nas select: {len(candidates)} complete trials of {args.run}; latencies on {fp.device_name} ({fp.dtype}, batch {fp.batch_size})")
    for budget in args.budget_ms:
        chosen = select(candidates, budget, args.top)
        print(f"\nbudget {budget} ms:")
        for rank, c in enumerate(chosen, 1):
            print(f"  #{rank} trial {c.trial}: val top-1 {c.accuracy:.4f}, predicted {c.latency_ms:.4f} ms, "
                  f"{c.macs / 1e6:.2f} MMACs, {c.params} params, arch {c.arch.digest}")
            print("     " + json.dumps(c.arch.to_dict(), separators=(",", ":")))
    return 0


def add_export(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("export", help="a found arch as a standalone model (safetensors, ONNX, TorchScript)",
                            description="Write arch.json, model.safetensors, model.onnx, model.pt and metadata.json for one "
                            "trial of a run, or for the best one under a budget.")
    p.add_argument("--run", type=Path, required=True, help="run directory")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, help="trial number")
    which.add_argument("--budget-ms", type=positive_float, help="export the most accurate arch within this budget")
    p.add_argument("--out", type=Path, required=True, help="export directory (refused if it exists, unless --overwrite)")
    p.add_argument("--format", type=str_list, default=("safetensors", "onnx", "torchscript"), help="default: safetensors,onnx,torchscript")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune the standalone model on the run's data first (default: 0)")
    p.add_argument("--device", default=None, help="the device the run's latencies were measured on, to export for it from another machine")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from nas.export import export
    from nas.select import by_trial, load_candidates, select

    candidates = load_candidates(args.run)
    candidate = by_trial(candidates, args.trial) if args.trial is not None else select(candidates, args.budget_ms)[0]
    print(f"nas export: trial {candidate.trial} of {args.run} -> {args.out}", flush=True)
    meta = export(args.run, candidate, args.out, tuple(args.format), args.finetune_epochs, args.overwrite, args.device,
                  progress=lambda line: print(line, flush=True))
    latency = meta["latency"]
    measured = f"{latency['measured_ms']:.4f} ms measured ({latency['error']:+.1%})" if latency["measured_ms"] else latency["note"]
    print(f"latency: {latency['predicted_ms']:.4f} ms predicted, {measured}")
    print(f"wrote {', '.join(sorted(p.name for p in args.out.iterdir()))} into {args.out}")
    return 0


# ---- nas train ------------------------------------------------------------------------------


def add_train(commands: argparse._SubParsersAction) -> None:
    from nas.train import TrainConfig

    defaults = TrainConfig()
    p = commands.add_parser(
        "train",
        help="train a weight-sharing supernet (sandwich rule, in-place distillation)",
        description="Train the supernet of a search space on a dataset and write supernet.safetensors, its training "
        "state, the data split and config.yaml into --out. Prints held-out test accuracy of the largest and "
        "smallest subnets at the end.",
    )
    p.add_argument("--space", default="digits-tiny", help="search space name or YAML path (default: digits-tiny)")
    p.add_argument("--data", default=None, help="CIFAR-10 python folder or ImageFolder root (default: embedded digits)")
    p.add_argument("--epochs", type=positive_int, default=defaults.epochs, help="default: %(default)s")
    p.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="default: %(default)s")
    p.add_argument("--lr", type=positive_float, default=defaults.lr, help="peak AdamW learning rate (default: %(default)s)")
    p.add_argument("--random-subnets", type=int, default=defaults.random_subnets, help="random subnets per step besides largest and smallest (default: %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="default: %(default)s")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--workers", type=positive_int, default=1, help="Ray Train workers; 1 trains in this process (default: %(default)s)")
    p.add_argument("--ray-address", default=None, help="with --workers > 1: 'auto' or an address to join a Ray cluster (default: local Ray)")
    p.add_argument("--out", type=Path, required=True, help="run directory, e.g. results/<run>")
    p.add_argument("--resume", action="store_true", help="continue the supernet checkpoint in --out")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from nas.data import load_dataset
    from nas.space import load_space
    from nas.train import TrainConfig, format_epoch, train_supernet

    if args.random_subnets < 0:
        raise NasError(f"--random-subnets must be >= 0, got {args.random_subnets}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    space = load_space(args.space)
    dataset = load_dataset(args.data, space.image_size, space.in_chans)
    if dataset.num_classes != space.num_classes:
        print(f"note: the data has {dataset.num_classes} classes; the space's num_classes {space.num_classes} is replaced")
        space = space.with_num_classes(dataset.num_classes)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, random_subnets=args.random_subnets, seed=args.seed)
    print(
        f"nas train: space {space.name} ({space.size():.3g} archs), data {dataset.name} "
        f"(train {dataset.size('train')}, val {dataset.size('val')}, test {dataset.size('test')}), "
        f"{config.epochs} epochs, {torch.get_num_threads()} threads -> {args.out}",
        flush=True,
    )

    def progress(record: dict) -> None:
        remaining = (record["epochs"] - record["epoch"]) * record["seconds"]
        print(f"{format_epoch(record)}, ETA {remaining / 60:.1f} min", flush=True)

    if args.workers > 1:
        from workers.trainer import train_distributed

        summary = train_distributed(space, args.data, config, args.out, args.workers, args.resume, args.ray_address,
                                    progress=lambda line: print(line, flush=True))
    else:
        summary = train_supernet(space, dataset, config, args.out, resume=args.resume, data_arg=args.data, progress=progress)
    print(
        f"done: test top-1 largest {summary['test_largest']:.4f}, smallest {summary['test_smallest']:.4f} "
        f"({summary['train_seconds_this_run'] / 60:.1f} min); wrote {args.out}/supernet.safetensors"
    )
    return 0


# ---- entry point ----------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`nas <command>: error: ...`), like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="nas", description="Hardware-aware architecture search for efficient Vision Transformers."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run(commands)
    add_train(commands)
    add_latency(commands)
    add_search(commands)
    add_select(commands)
    add_export(commands)
    add_report(commands)
    bench = commands.add_parser("bench", help="benchmarks (results under results/bench/)", description="Benchmarks.")
    benchmarks = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    add_bench_kernels(benchmarks)
    add_bench_supernet(benchmarks)
    add_bench_latency(benchmarks)
    add_bench_search(benchmarks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except NasError as error:
        print(f"nas: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
