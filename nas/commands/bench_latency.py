"""`nas bench latency`: the latency predictor against measurement (a table's held-out archs, a run's trials re-measured,
runtimes side by side, tables built quietly and under a competing load)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from nas.commands.common import add_target_device, command_line, int_list, out_path, positive_int, str_list
from nas.errors import NasError


def add_bench_latency(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "latency",
        help="predicted vs measured latency of held-out archs for a lookup table",
        description="Measure fresh held-out archs end to end on a table's device (this machine must match its "
        "fingerprint), print predicted vs measured, write CSV, JSON and a scatter plot under --out.",
    )
    p.add_argument("--table", type=Path, default=None, help="a table built by `nas latency` (not with --interference)")
    p.add_argument(
        "--run",
        type=Path,
        default=None,
        help="instead: re-measure a finished run's measured trials (the export, the front, "
        "then a sample; --archs of them) and compare with what the run recorded",
    )
    p.add_argument(
        "--note", default=None, help="with --run or --runtimes: what ran beside the measurement, stored in the JSON"
    )
    p.add_argument(
        "--runtimes",
        type=str_list,
        default=None,
        help="instead: one block of every kernel choice of --space timed in each of "
        "these runtimes (e.g. eager,onnxruntime) at --tokens, on this CPU",
    )
    p.add_argument(
        "--tokens", type=int_list, default=(64, 1024), help="with --runtimes: square token counts (default: 64,1024)"
    )
    p.add_argument(
        "--interference",
        action="store_true",
        help="build a table quietly and one next to a competing CPU load (one busy core "
        "during the first third of the build); validate both on the same held-out archs",
    )
    p.add_argument(
        "--runs",
        type=positive_int,
        default=1,
        help="with --interference: repetitions, for the spread (default: %(default)s)",
    )
    p.add_argument("--space", default="digits-tiny", help="the table's search space (default: digits-tiny)")
    p.add_argument(
        "--archs",
        type=positive_int,
        default=None,
        help="held-out archs to measure (default: 50; with --run: 30 of its trials)",
    )
    p.add_argument("--seed", type=int, default=100, help="default: %(default)s")
    add_target_device(p, None, "cpu, cuda or cuda:<index> (default: the table's device type)")
    p.add_argument("--out", type=out_path, default=Path("results/bench"), help="output folder (default: results/bench)")
    p.set_defaults(func=run_bench_latency)


def run_bench_latency(args: argparse.Namespace) -> int:
    from nas.bench import latency as bench
    from nas.latency import table as lut
    from nas.latency.profiler import Profiler
    from nas.latency.validation import held_out_archs, summary_line, validate
    from nas.space_file import load_space

    if args.interference:
        return run_bench_interference(args)
    if args.run is not None:
        return run_bench_remeasure(args)
    if args.runtimes is not None:
        return run_bench_runtimes(args)
    if args.table is None:
        raise NasError("--table is required (or pass --run or --interference)")
    space = load_space(args.space)
    stored = lut.LatencyTable.load(args.table, space)
    fp = stored.fingerprint
    profiler = Profiler.like(fp, args.device)
    table = lut.LatencyTable.load(args.table, space, expect=profiler.fingerprint())
    exclude = set(table.calibration["archs"]) if table.calibration else set()
    archs = held_out_archs(space, args.archs or 50, args.seed, exclude)
    print(
        f"nas bench latency: {len(archs)} held-out archs of {space.name} on {fp.device_name} ({fp.dtype}, batch {fp.batch_size})",
        flush=True,
    )
    validation = validate(table, archs, profiler.measure_models(archs))
    print(bench.format_points(validation))
    print(summary_line(validation))
    paths = bench.write_results(table, validation, args.out, command_line())
    print(f"wrote {', '.join(map(str, paths))}")
    return 0


def run_bench_runtimes(args: argparse.Namespace) -> int:
    import torch

    from nas.bench import latency as bench
    from nas.io import write_json
    from nas.latency.probe import Protocol
    from nas.latency.runtime import check_runtime
    from nas.space_file import load_space

    for runtime in args.runtimes:
        check_runtime(runtime, torch.device("cpu"), "fp32")
    space = load_space(args.space)
    path = args.out / f"runtimes_{space.name}_cpu_fp32_b1.json"
    args.out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    print(
        f"nas bench latency --runtimes {','.join(args.runtimes)}: one block of each kernel choice of {space.name} (embed 64, 4 heads, "
        f"MLP ratio 2) at {', '.join(map(str, args.tokens))} tokens, {threads} threads",
        flush=True,
    )
    started = time.perf_counter()
    rows = bench.runtime_comparison(
        space,
        tuple(args.runtimes),
        tuple(args.tokens),
        64,
        4,
        2,
        Protocol(),
        threads,
        progress=lambda line: print(line, flush=True),
    )
    print(bench.format_runtime_rows(rows))
    from nas.latency import describe_device

    write_json(
        path,
        {
            "benchmark": "nas bench latency --runtimes",
            "command": command_line(),
            "note": args.note,
            "device": describe_device(torch.device("cpu")),
            "threads": threads,
            "seconds": round(time.perf_counter() - started, 1),
            "block": {"embed_dim": 64, "heads": 4, "head_dim": space.head_dim, "mlp_ratio": 2},
            "rows": rows,
        },
    )
    print(f"wrote {path}")
    return 0


def run_bench_remeasure(args: argparse.Namespace) -> int:
    from nas.bench import latency as bench
    from nas.io import write_json
    from nas.latency.table import LatencyTable
    from nas.rundir import TABLE, TRIALS, RunDir
    from nas.stages import trial_profiler

    run = RunDir(args.run)
    if not run.has(TRIALS):
        raise NasError(f"{args.run} holds no {TRIALS}; run the search first")
    space, _ = run.space_and_data()
    profiler = trial_profiler(LatencyTable.load(run.path(TABLE), space), run.path(TABLE))
    archs = args.archs or 30
    print(
        f"nas bench latency --run {args.run}: re-measuring up to {archs} of its measured trials on {profiler.fingerprint().device_name}",
        flush=True,
    )
    out = bench.remeasure_run(args.run, archs, args.seed, profiler.measure_models, command_line(), args.note)
    for p in out["points"]:
        print(
            f"trial {p['trial']:4d} {p['state']:8} recorded {p['recorded_ms']:.4f} ms, now {p['remeasured_ms']:.4f} ms "
            f"({(p['recorded_ms'] - p['remeasured_ms']) / p['remeasured_ms']:+.1%})"
        )
    print(
        f"{out['archs']} archs: MAPE {out['mape']:.1%}, within ±5% {out['within_5pct']:.0%}, Kendall tau {out['kendall_tau']:.3f}"
    )
    if out["export"]:
        e = out["export"]
        print(
            f"exported trial {e['trial']}: now {e['remeasured_ms']:.4f} ms, {e['ratio_to_budget']:.3f} × its budget {e['budget_ms']} ms"
        )
    path = args.out / f"remeasure_{Path(args.run).name}.json"
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(path, out)
    print(f"wrote {path}")
    return 0


def run_bench_interference(args: argparse.Namespace) -> int:
    import statistics

    import torch

    from nas.bench import interference
    from nas.io import write_json
    from nas.latency import describe_device
    from nas.latency.profiler import Profiler
    from nas.space_file import load_space

    if args.table is not None:
        raise NasError("--interference builds its own tables: drop --table")
    space = load_space(args.space)
    profiler = Profiler(args.device or "cpu", "fp32", 1)
    print(
        f"nas bench latency --interference: {space.name} on {profiler.fingerprint().device_name}, {args.runs} run(s), "
        f"{args.archs or 50} held-out archs",
        flush=True,
    )
    results = []
    for run in range(args.runs):
        result = interference.run(
            space, profiler, args.archs or 50, args.seed + 10 * run, progress=lambda line: print(line, flush=True)
        )
        print(interference.format_run(result), flush=True)
        results.append(result)
    spread = {
        name: {
            key: {
                "min": min(r[name][key] for r in results),
                "max": max(r[name][key] for r in results),
                "median": statistics.median(r[name][key] for r in results),
            }
            for key in ("build_seconds", "mape", "within_10pct", "kendall_tau")
        }
        for name in ("quiet", "interfered")
    }
    ratio = [r["interfered"]["build_seconds"] / r["quiet"]["build_seconds"] for r in results]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"latency_interference_{space.name}_cpu_fp32_b1.json"
    write_json(
        path,
        {
            "benchmark": "nas bench latency --interference",
            "command": command_line(),
            "machine": describe_device(torch.device("cpu")),
            "protocol": profiler.protocol.to_dict(),
            "runs": results,
            "spread": spread,
            "build_time_ratio": ratio,
        },
    )
    print(f"interfered / quiet build time: {', '.join(f'{x:.2f}' for x in ratio)}; wrote {path}")
    return 0
