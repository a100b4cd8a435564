"""`nas bench kernels`, `nas bench supernet`, `nas bench train`: how fast the attention kernels, the supernet's training
step and training and evaluation run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from nas.commands.common import (
    add_compute_options,
    command_line,
    int_list,
    non_negative_int_list,
    out_path,
    positive_float,
    positive_int,
    str_list,
)
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
    from nas.bench import kernels_report
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
    print(kernels_report.format_tables(rows, peaks))
    paths = kernels_report.write_results(rows, config, args.out, wall, command_line(), peaks)
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
    from nas.space_file import load_space

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
