"""`nas train`, `nas latency`, `nas select`, `nas export` (`nas verify` is in nas.commands.verify)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nas.commands.common import (
    STORAGE_PATH_HELP,
    add_compute_options,
    add_target_device,
    float_list,
    out_path,
    positive_float,
    positive_int,
    ray_storage_path,
)
from nas.errors import NasError


def add_train(commands: argparse._SubParsersAction) -> None:
    from nas import config as config_tree
    from nas import settings

    p = commands.add_parser(
        "train",
        help="train a weight-sharing supernet (sandwich rule, in-place distillation)",
        description="Train the supernet of a search space on a dataset and write supernet.safetensors, its training "
        "state, the data split and config.yaml into --out. Prints held-out test accuracy of the largest and "
        "smallest subnets at the end. The training settings are the fields of nas.config.TrainConfig (nas run sets "
        "them as --train.<name>).",
    )
    p.add_argument("--space", default="digits-tiny", help="search space name or YAML path (default: digits-tiny)")
    p.add_argument(
        "--data",
        default=None,
        help="CIFAR-10 python folder or ImageFolder root (default: the space's embedded dataset)",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="default: the space's `epochs` field (its YAML; 100 when absent)",
    )
    settings.add_flags(p, config_tree.TrainConfig, exclude=("epochs", "precision"))
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's default)")
    add_compute_options(p)
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="Ray Train workers (one GPU each on CUDA); 1 trains in this process (default: %(default)s)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="with --workers > 1: 'auto' or an address to join a Ray cluster (default: local Ray)",
    )
    p.add_argument("--storage-path", type=ray_storage_path, default=None, help=STORAGE_PATH_HELP)
    p.add_argument("--out", type=out_path, required=True, help="run directory, e.g. results/<run>")
    p.add_argument("--resume", action="store_true", help="continue the supernet checkpoint in --out")
    p.set_defaults(func=run_train, on_stop="resume")


def run_train(args: argparse.Namespace) -> int:
    import torch

    from nas import api, settings
    from nas import config as config_tree
    from nas.rundir import STATE_JSON

    config = settings.from_args(config_tree.TrainConfig, args, config_tree.TrainConfig(precision=args.precision))
    config = settings.with_values(config, {"epochs": args.epochs or 0})  # 0: the space's
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        summary = api.train(
            args.out,
            config,
            space=args.space,
            data=args.data,
            compute_device=args.compute_device,
            randaugment=args.randaugment,
            loader_workers=args.loader_workers,
            workers=args.workers,
            ray_address=args.ray_address,
            storage_path=args.storage_path,
            resume=args.resume,
            progress=lambda line: print(line, flush=True),
        )
    except (NasError, KeyboardInterrupt):
        if not args.resume and not (args.out / STATE_JSON).exists():
            args.on_stop = "again"  # nothing to --resume from
        raise
    print(
        f"done: test top-1 largest {summary['test_largest']:.4f}, smallest {summary['test_smallest']:.4f} "
        f"({summary['train_seconds_this_run'] / 60:.1f} min); wrote {args.out}/supernet.safetensors"
    )
    return 0


def add_latency(commands: argparse._SubParsersAction) -> None:
    from nas import settings
    from nas.commands.common import refuse_device_flag
    from nas.config_stages import LatencySettings

    p = commands.add_parser(
        "latency",
        help="build and validate a device's latency lookup table",
        description="Measure every block configuration of a search space on a device (resuming a partial table in "
        "--out), fit a linear calibration on a few whole models, and validate the predictor on held-out archs. "
        "The settings are the fields of nas.config_stages.LatencySettings.",
    )
    p.add_argument("--out", type=out_path, required=True, help="the table's JSON file")
    settings.add_flags(p, LatencySettings)
    refuse_device_flag(p)
    p.set_defaults(func=run_latency, on_stop="same")


def make_profiler(config):
    """The profiler of a LatencySettings: in this process, or in a Ray actor with `ray_address`."""
    import torch

    from nas.latency.profiler import Profiler

    threads = config.threads or torch.get_num_threads()
    if config.ray_address is None:
        if config.accelerator_type:
            raise NasError("--accelerator-type needs --ray-address")
        return Profiler(config.device, config.dtype, config.batch_size, config.runtime, threads, kernels=config.kernels)
    from workers.cluster import init_ray
    from workers.profiler import RemoteProfiler

    init_ray(None if config.ray_address == "local" else config.ray_address)
    return RemoteProfiler(
        config.device,
        config.dtype,
        config.batch_size,
        config.runtime,
        threads,
        config.accelerator_type,
        kernels=config.kernels,
    )


def run_latency(args: argparse.Namespace) -> int:
    from nas import settings
    from nas.config_stages import LatencySettings
    from nas.latency import table as lut
    from nas.preflight import check_out_file
    from nas.space_file import load_space
    from nas.stages import Fit, latency_stage

    config = settings.from_args(LatencySettings, args)
    check_out_file(args.out)
    if 0 < config.calibrate < 3:
        raise NasError("--calibrate needs at least 3 archs to fit a line (or 0 for none)")
    space = load_space(config.space)
    profiler = make_profiler(config)
    fp = profiler.fingerprint()
    total = len(list(lut.probe_archs(space)))
    print(
        f"nas latency: {space.name} on {fp.device_name} ({fp.setting()}): {total} measurements (blocks, stem+head per width) -> {args.out}",
        flush=True,
    )
    table = latency_stage(
        space,
        profiler,
        args.out,
        config.calibrate,
        config.validate,
        config.seed,
        progress=lambda line: print(line, flush=True),
        revalidate=True,
        fit=Fit(max_mape=config.max_mape, min_tau=config.min_tau, accept_poor=config.accept_poor_fit),
    )
    print(f"table complete: {len(table.entries)} entries, {table.build_seconds:.0f} s of measuring; wrote {args.out}")
    return 0


def add_select(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "select",
        help="the most accurate archs of a run under latency budgets",
        description="Print the most accurate feasible arch(s) of a finished run under each budget, with "
        "latency (as the search recorded it), validation accuracy, MACs, params and the arch JSON.",
    )
    p.add_argument("--run", type=Path, required=True, help="run directory (with trials.csv and latency_table.json)")
    p.add_argument(
        "--budget-ms", type=float_list, required=True, help="one budget or several, comma-separated (e.g. 0.6,0.8,1)"
    )
    p.add_argument("--top", type=positive_int, default=1, help="archs per budget (default: %(default)s)")
    add_target_device(p, None, "the device the run's latencies were measured on, to select for it from another machine")
    p.set_defaults(func=run_select)


def run_select(args: argparse.Namespace) -> int:
    import json

    from nas.selection import check_device, load_candidates, select

    fp, _ = check_device(args.run, args.device)
    candidates = load_candidates(args.run)
    print(
        f"nas select: {len(candidates)} complete trials of {args.run}; latencies on {fp.device_name} ({fp.dtype}, batch {fp.batch_size})"
    )
    for budget in args.budget_ms:
        chosen = select(candidates, budget, args.top)
        print(f"\nbudget {budget} ms:")
        for rank, c in enumerate(chosen, 1):
            print(
                f"  #{rank} trial {c.trial}: val top-1 {c.accuracy:.4f}, latency {c.latency_ms:.4f} ms, "
                f"{c.macs / 1e6:.2f} MMACs, {c.params} params, arch {c.arch.digest}"
            )
            print("     " + json.dumps(c.arch.to_dict(), separators=(",", ":")))
    return 0


def add_export(commands: argparse._SubParsersAction) -> None:
    from nas import settings
    from nas.commands.common import refuse_device_flag
    from nas.config_stages import ExportSettings

    p = commands.add_parser(
        "export",
        help="a found arch as a standalone model (safetensors, ONNX, TorchScript)",
        description="Write arch.json, model.safetensors, model.onnx, model.pt, config.json (timm) and metadata.json "
        "for one trial of a run, or for the best one under a budget. The settings are the fields of "
        "nas.config_stages.ExportSettings.",
    )
    p.add_argument("--run", type=Path, required=True, help="run directory")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, help="trial number")
    which.add_argument("--budget-ms", type=positive_float, help="export the most accurate arch within this budget")
    p.add_argument(
        "--out", type=out_path, required=True, help="export directory (refused if it exists, unless --overwrite)"
    )
    settings.add_flags(p, ExportSettings)
    refuse_device_flag(p)
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from nas import api, settings
    from nas.config_stages import ExportSettings

    meta = api.export(
        args.run,
        args.out,
        settings.from_args(ExportSettings, args),
        trial=args.trial,
        budget_ms=args.budget_ms,
        progress=lambda line: print(line, flush=True),
    )
    latency = meta["latency"]
    measured = (
        f"{latency['measured_ms']:.4f} ms measured ({latency['error']:+.1%})"
        if latency["measured_ms"]
        else latency["note"]
    )
    print(f"latency: {latency['predicted_ms']:.4f} ms predicted, {measured}")
    print(f"wrote {', '.join(sorted(p.name for p in args.out.iterdir()))} into {args.out}")
    return 0
