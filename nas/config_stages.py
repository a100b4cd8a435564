"""The settings of the one-stage commands (`nas latency`, `nas export`, `nas verify`), declared as the
configuration tree's fields are (nas.config, nas.settings): each field's default, type, choices and help
generate the command's flags. Where a command acts (`--run`, `--out`, which trial) is not a setting and
stays a plain argument. Nothing here imports torch."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from nas.config import DTYPES, KERNEL_PATHS, KERNELS_HELP, RUNTIME_HELP, VERIFY_CANDIDATES, VERIFY_EPOCHS
from nas.parsers import kendall_tau_target, local_threads, non_negative_int, positive_float, positive_int
from nas.settings import setting

FORMATS = ("safetensors", "onnx", "torchscript")


def formats(text: str) -> str:
    """--format: a comma-separated subset of FORMATS that includes safetensors, normalised ("a,b")."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in FORMATS]
    if unknown or "safetensors" not in names:
        raise argparse.ArgumentTypeError(
            f"use a comma-separated subset of {', '.join(FORMATS)} that includes safetensors, got {text!r}"
        )
    return ",".join(dict.fromkeys(names))


@dataclass(frozen=True)
class LatencySettings:
    """`nas latency`: a device's latency lookup table, measured, calibrated and validated."""

    space: str = setting("digits-tiny", "search space name or YAML path")
    device: str = setting(
        "cpu", "device whose latency is measured: cpu, cuda or cuda:<index>", flags=("--target-device",)
    )
    batch_size: int = setting(1, "inference batch size", parse=positive_int)
    dtype: str = setting("fp32", "inference dtype", choices=DTYPES)
    runtime: str = setting("eager", RUNTIME_HELP, flags=("--runtime", "--backend"))
    kernels: str = setting("auto", KERNELS_HELP, choices=KERNEL_PATHS)
    threads: int | None = setting(
        None, "CPU threads, at most this machine's cores", parse=local_threads, default_text="torch's default"
    )
    calibrate: int = setting(10, "whole archs measured for the linear calibration, 0 for none", parse=non_negative_int)
    validate: int = setting(50, "held-out archs measured to validate, 0 to skip", parse=non_negative_int)
    seed: int = setting(0, "seed of the calibration and validation archs")
    max_mape: float = setting(
        0.10,
        "largest mean absolute percentage error of the table's predictions on held-out archs",
        parse=positive_float,
    )
    min_tau: float = setting(
        0.85, "smallest Kendall tau between predicted and measured latency", parse=kendall_tau_target
    )
    accept_poor_fit: bool = setting(False, "use a table that misses those targets anyway (it stays marked as failed)")
    ray_address: str | None = setting(
        None,
        "measure in a Ray profiler actor: 'local' starts a local Ray, 'auto' or an address joins a cluster",
        default_text="in this process",
    )
    accelerator_type: str | None = setting(
        None, "with --ray-address: place the profiler on a node with this Ray accelerator type", default_text="any"
    )


@dataclass(frozen=True)
class ExportSettings:
    """`nas export`: one trial of a run as a standalone model directory."""

    formats: str = setting(
        ",".join(FORMATS),
        "comma-separated subset of safetensors, onnx, torchscript (safetensors always)",
        parse=formats,
        flags=("--format",),
    )
    finetune_epochs: int = setting(
        0, "fine-tune the inherited weights on the run's data first (0: no)", parse=non_negative_int
    )
    device: str | None = setting(
        None,
        "the device the run's latencies were measured on, to export for it from another machine",
        flags=("--target-device",),
        default_text="this machine",
    )
    compute_device: str = setting(
        "auto", "device that fine-tunes and evaluates: auto (CUDA when available), cpu, cuda or cuda:<i>"
    )
    precision: str = setting("fp32", "autocast precision of fine-tuning and evaluation", choices=DTYPES)
    overwrite: bool = setting(False, "replace an existing --out")


@dataclass(frozen=True)
class VerifySettings:
    """`nas verify`: a run's best candidates under its budget trained standalone; the verified pick exported."""

    budget_ms: float | None = setting(None, "latency budget in ms", parse=positive_float, default_text="the run's")
    candidates: int = setting(VERIFY_CANDIDATES, "candidates trained", parse=positive_int)
    epochs: int = setting(
        VERIFY_EPOCHS, "epochs of the standalone recipe (the ground truth's; the finalist's)", parse=positive_int
    )
    jobs: int = setting(2, "training processes", parse=positive_int)
    seed: int | None = setting(None, "standalone training seed", default_text="the run's seed")
    compute_device: str = setting(
        "auto", "device that trains and evaluates: auto (CUDA when available), cpu, cuda or cuda:<i>"
    )
    precision: str = setting("fp32", "autocast precision of training and evaluation", choices=DTYPES)
