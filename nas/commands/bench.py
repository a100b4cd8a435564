"""`nas bench kernels`, `nas bench supernet`, `nas bench latency`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from nas.commands.common import (
    add_compute_options,
    add_target_device,
    command_line,
    int_list,
    non_negative_int_list,
    out_path,
    positive_float,
    positive_int,
    str_list,
)  # noqa: F401
from nas.errors import NasError


def add_bench_kernels(sub: argparse._SubParsersAction) -> None:
    from nas.bench.kernels import DEFAULT_TOKENS, DTYPES, MODES, PATHS, KernelBenchConfig

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
        "--tokens",
        type=int_list,
        default=DEFAULT_TOKENS,
        help="comma-separated token counts (default: powers of two from 64 to 16384)",
    )
    p.add_argument(
        "--kernels", type=str_list, default=defaults.kernels, help="comma-separated kernel labels (default: all)"
    )
    p.add_argument("--modes", type=str_list, default=MODES, help="fwd, fwd+bwd or both (default: both)")
    p.add_argument(
        "--paths",
        type=str_list,
        default=defaults.paths,
        help=f"how the kernels run: {', '.join(PATHS)} (compiled: torch.compile, fullgraph; fused: Triton, CUDA), comma-separated (default: eager)",
    )
    p.add_argument("--warmup", type=positive_int, default=defaults.warmup, help="warm-up calls (default: %(default)s)")
    p.add_argument(
        "--repeats", type=positive_int, default=defaults.repeats, help="most timed calls (default: %(default)s)"
    )
    p.add_argument(
        "--max-seconds",
        type=positive_float,
        default=defaults.max_seconds,
        help="time budget per measurement; at least 3 calls are timed (default: %(default)s)",
    )
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="default: %(default)s")
    p.add_argument("--out", type=out_path, default=Path("results/bench"), help="output folder (default: results/bench)")
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
    bad_paths = [path for path in args.paths if path not in bench.PATHS]
    if bad_paths:
        raise NasError(f"--paths: unknown path(s) {', '.join(bad_paths)}; valid paths: {', '.join(bench.PATHS)}")
    device = resolve_device(args.device, "--device")
    if "fused" in args.paths:
        from nas.kernels.fused import available

        why = available(device)
        if why:
            raise NasError(f"--paths fused on {device}: {why}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = bench.KernelBenchConfig(
        device=str(device),
        dtype=args.dtype,
        head_dim=args.head_dim,
        heads=args.heads,
        batch_size=args.batch_size,
        tokens=tuple(sorted(set(args.tokens))),
        kernels=tuple(args.kernels),
        modes=tuple(args.modes),
        paths=tuple(dict.fromkeys(args.paths)),
        warmup=args.warmup,
        repeats=args.repeats,
        max_seconds=args.max_seconds,
        seed=args.seed,
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
    from nas.bench import roofline

    peaks = roofline.measure_peaks(device, bench.DTYPES[config.dtype])
    print(
        f"measured peaks on {device}: {peaks.flops_per_s / 1e12:.3g} TFLOP/s ({peaks.matmul}^3 matmul), "
        f"{peaks.bytes_per_s / 1e9:.3g} GB/s (copy of {peaks.copy_bytes / 2**20:.0f} MiB)",
        flush=True,
    )
    print(bench.format_tables(rows, peaks))
    paths = bench.write_results(rows, config, args.out, wall, command_line(), peaks)
    print(f"done in {wall:.0f} s; wrote {', '.join(str(p) for p in paths)}")
    return 0


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
    p.add_argument(
        "--warmup", type=positive_int, default=defaults.warmup, help="warm-up steps per model (default: %(default)s)"
    )
    p.add_argument(
        "--repeats", type=positive_int, default=defaults.repeats, help="timed steps per model (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="default: %(default)s")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--out", type=out_path, default=Path("results/bench"), help="output folder (default: results/bench)")
    p.set_defaults(func=run_bench_supernet)


def run_bench_supernet(args: argparse.Namespace) -> int:
    import torch

    from nas.bench import supernet as bench
    from nas.space import load_space

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    space = load_space(args.space)
    config = bench.SupernetBenchConfig(
        space=space.name,
        archs=args.archs,
        batch_size=args.batch_size,
        warmup=args.warmup,
        repeats=args.repeats,
        seed=args.seed,
    )
    print(
        f"nas bench supernet: {config.archs} archs of {space.name}, batch {config.batch_size}, {torch.get_num_threads()} threads",
        flush=True,
    )
    rows = bench.run(space, config, progress=lambda line: print(line, flush=True))
    paths = bench.write_results(rows, config, args.out, command_line())
    ratios = sorted(row.ratio for row in rows)
    print(
        f"median ratio supernet / standalone: {bench.median_ratio(rows):.3f} (range {ratios[0]:.3f}-{ratios[-1]:.3f})"
    )
    print(f"wrote {', '.join(map(str, paths))}")
    return 0


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
    from nas.space import load_space

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
    profiler = Profiler(args.device or fp.device_type, fp.dtype, fp.batch_size, fp.backend, fp.threads)
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
    from nas.space import load_space

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
    from nas.space import load_space

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


def add_bench_train(sub: argparse._SubParsersAction) -> None:
    from nas.bench.train import TrainBenchConfig

    d = TrainBenchConfig()
    p = sub.add_parser(
        "train",
        help="training and evaluation throughput and peak memory on the compute device (embedded and ImageFolder data)",
        description="Time supernet sandwich steps and evaluation (images/s) on the embedded task and on a generated 224 px "
        "ImageFolder streamed with each --loader-workers count and preloaded; train one epoch on ImageFolders of each "
        "--memory-sizes and record peak RSS; write JSON under --out.",
    )
    p.add_argument(
        "--space", default=d.space, help="the embedded task's space, or the space of --data (default: %(default)s)"
    )
    p.add_argument(
        "--data",
        default=None,
        help="your dataset (CIFAR-10 folder or ImageFolder): time --space on it alone, e.g. to find the "
        "batch size that fits a GPU (default: the embedded task and generated ImageFolders)",
    )
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="default: %(default)s")
    p.add_argument(
        "--steps", type=positive_int, default=d.steps, help="timed sandwich steps per case (default: %(default)s)"
    )
    p.add_argument(
        "--images",
        type=positive_int,
        default=2000,
        help="training images of the generated ImageFolder (default: %(default)s)",
    )
    p.add_argument(
        "--loader-workers",
        type=non_negative_int_list,
        default=(0, 2),
        help="comma-separated DataLoader process counts (default: 0,2)",
    )
    p.add_argument(
        "--memory-sizes",
        type=non_negative_int_list,
        default=(2000, 8000),
        help="ImageFolder sizes for the peak-RSS epochs; empty: skip (default: 2000,8000)",
    )
    add_compute_options(p, loading=False)
    p.add_argument(
        "--work",
        type=Path,
        default=Path("results/bench/.train-data"),
        help="where the generated images go (kept for re-runs)",
    )
    p.add_argument("--out", type=out_path, default=Path("results/bench"), help="output folder (default: results/bench)")
    p.set_defaults(func=run_bench_train)


def run_bench_train(args: argparse.Namespace) -> int:
    from dataclasses import asdict
    from datetime import datetime, timezone

    from nas.bench import train as bench
    from nas.compute import Compute
    from nas.io import write_json
    from nas.latency import describe_device

    compute = Compute.parse(args.compute_device, args.precision)
    config = bench.TrainBenchConfig(
        space=args.space,
        batch_size=args.batch_size,
        steps=args.steps,
        device=str(compute.device),
        precision=compute.precision,
    )
    print(
        f"nas bench train: {compute.device} ({compute.precision}), batch {config.batch_size}, {config.steps} timed steps per case",
        flush=True,
    )
    started = time.perf_counter()
    results = bench.run_bench(
        config,
        args.work,
        args.images,
        tuple(args.loader_workers),
        tuple(args.memory_sizes),
        progress=lambda line: print(line, flush=True),
        data=args.data,
    )
    name = f"train_{compute.device.type}_{compute.precision}" + (
        f"_{Path(args.space).stem}_b{config.batch_size}" if args.data else ""
    )
    path = args.out / f"{name}.json"
    write_json(
        path,
        {
            "benchmark": "nas bench train",
            "command": command_line(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": describe_device(compute.device),
            "config": asdict(config),
            "seconds": round(time.perf_counter() - started),
            **results,
        },
    )
    for name, ratio in results.get("streamed_vs_preloaded", {}).items():
        print(f"streamed with {name}: {ratio:.0%} of the preloaded throughput")
    if "memory_growth" in results:
        print(
            f"peak RSS growth from {min(args.memory_sizes)} to {max(args.memory_sizes)} images: {results['memory_growth']:+.1%}"
        )
    print(f"wrote {path}")
    return 0
