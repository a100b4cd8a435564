"""`nas train`, `nas latency`, `nas select`, `nas export` (`nas verify` is in nas.commands.verify)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nas.commands.common import (
    STORAGE_PATH_HELP,
    add_compute_options,
    add_fit_options,
    add_runtime,
    add_target_device,
    fit_of,
    float_list,
    local_threads,
    non_negative_int,
    out_path,
    positive_float,
    positive_int,
    ray_storage_path,
    str_list,
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
    p = commands.add_parser(
        "latency",
        help="build and validate a device's latency lookup table",
        description="Measure every block configuration of a search space on a device (resuming a partial table in "
        "--out), fit a linear calibration on a few whole models, and validate the predictor on held-out archs.",
    )
    p.add_argument("--space", default="digits-tiny", help="search space name or YAML path (default: digits-tiny)")
    add_device_options(p)
    p.add_argument(
        "--calibrate",
        type=non_negative_int,
        default=10,
        help="whole archs measured for the linear calibration, 0 for none (default: %(default)s)",
    )
    p.add_argument(
        "--validate",
        type=non_negative_int,
        default=50,
        help="held-out archs measured to validate, 0 to skip (default: %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the calibration / validation archs (default: %(default)s)"
    )
    add_fit_options(p)
    p.add_argument(
        "--ray-address",
        default=None,
        help="measure in a Ray profiler actor: 'local' starts a local Ray, 'auto' or an address joins a cluster (default: in this process)",
    )
    p.add_argument(
        "--accelerator-type",
        default=None,
        help="with --ray-address: place the profiler on a node with this Ray accelerator type",
    )
    p.add_argument("--out", type=out_path, required=True, help="the table's JSON file")
    p.set_defaults(func=run_latency, on_stop="same")


def add_device_options(p: argparse.ArgumentParser) -> None:
    add_target_device(p, "cpu", "device whose latency is measured: cpu, cuda or cuda:<index> (default: cpu)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="default: %(default)s")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="default: fp32")
    add_runtime(p)
    p.add_argument(
        "--threads",
        type=local_threads,
        default=None,
        help="CPU threads, at most this machine's cores (default: torch's default)",
    )


def make_profiler(args: argparse.Namespace):
    import torch

    from nas.latency.profiler import Profiler

    threads = args.threads or torch.get_num_threads()
    address = getattr(args, "ray_address", None)
    if address is None:
        if getattr(args, "accelerator_type", None):
            raise NasError("--accelerator-type needs --ray-address")
        return Profiler(args.device, args.dtype, args.batch_size, args.backend, threads)
    from workers.cluster import init_ray
    from workers.profiler import RemoteProfiler

    init_ray(None if address == "local" else address)
    return RemoteProfiler(args.device, args.dtype, args.batch_size, args.backend, threads, args.accelerator_type)


def run_latency(args: argparse.Namespace) -> int:
    from nas.latency import table as lut
    from nas.preflight import check_out_file
    from nas.space_file import load_space
    from nas.stages import latency_stage

    check_out_file(args.out)
    if 0 < args.calibrate < 3:
        raise NasError("--calibrate needs at least 3 archs to fit a line (or 0 for none)")
    space = load_space(args.space)
    profiler = make_profiler(args)
    fp = profiler.fingerprint()
    total = len(list(lut.probe_archs(space)))
    print(
        f"nas latency: {space.name} on {fp.device_name} ({fp.device_type}, {fp.dtype}, batch {fp.batch_size}, {fp.backend}"
        f"{f', {fp.threads} threads' if fp.threads else ''}): {total} measurements (blocks, stem+head per width) -> {args.out}",
        flush=True,
    )
    table = latency_stage(
        space,
        profiler,
        args.out,
        args.calibrate,
        args.validate,
        args.seed,
        progress=lambda line: print(line, flush=True),
        revalidate=True,
        fit=fit_of(args),
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
    p = commands.add_parser(
        "export",
        help="a found arch as a standalone model (safetensors, ONNX, TorchScript)",
        description="Write arch.json, model.safetensors, model.onnx, model.pt and metadata.json for one "
        "trial of a run, or for the best one under a budget.",
    )
    p.add_argument("--run", type=Path, required=True, help="run directory")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, help="trial number")
    which.add_argument("--budget-ms", type=positive_float, help="export the most accurate arch within this budget")
    p.add_argument(
        "--out", type=out_path, required=True, help="export directory (refused if it exists, unless --overwrite)"
    )
    p.add_argument(
        "--format",
        type=str_list,
        default=("safetensors", "onnx", "torchscript"),
        help="default: safetensors,onnx,torchscript",
    )
    p.add_argument(
        "--finetune-epochs",
        type=non_negative_int,
        default=0,
        help="fine-tune the standalone model on the run's data first (default: 0)",
    )
    add_target_device(p, None, "the device the run's latencies were measured on, to export for it from another machine")
    add_compute_options(p, loading=False)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from nas import api

    meta = api.export(
        args.run,
        args.out,
        trial=args.trial,
        budget_ms=args.budget_ms,
        formats=tuple(args.format),
        finetune_epochs=args.finetune_epochs,
        overwrite=args.overwrite,
        compute_device=args.compute_device,
        precision=args.precision,
        target_device=args.device,
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
