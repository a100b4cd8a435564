"""Argument types and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from nas.parsers import (  # noqa: F401
    kendall_tau_target,
    local_threads,
    non_negative_float,
    non_negative_int,
    out_dir,
    positive_float,
    positive_int,
    ray_storage_path,
)


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def int_list_any(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def non_negative_int_list(text: str) -> tuple[int, ...]:
    """Comma-separated counts (0 allowed), possibly none: e.g. DataLoader process counts."""
    values = int_list_any(text)
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected counts >= 0, got {text!r}")
    return values


def out_path(text: str) -> Path:
    """An output path (nas.parsers.out_dir: an empty one is refused), as a Path."""
    return Path(out_dir(text))


def str_list(text: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return values


def float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one budget")
    bad = [v for v in values if not 0 < v < float("inf")]  # nan, inf and non-positive budgets mean nothing
    if bad:
        raise argparse.ArgumentTypeError(
            f"expected positive finite numbers, got {', '.join(map(str, bad))} in {text!r}"
        )
    return values


STORAGE_PATH_HELP = (
    "with --workers > 1: where Ray Train keeps its checkpoints; on a cluster, a folder every node sees "
    "under that path or a URI such as s3://bucket/prefix (default: <out>/ray_train). Not --storage, the Optuna database"
)


def command_line() -> str | None:
    """The command as typed, for the JSON sidecars: `nas ...`, also when run as `python -m nas.cli`
    (None when the CLI was not the program, e.g. under pytest)."""
    from nas.storage import redact_text

    program = Path(sys.argv[0])
    if program.name == "nas" or program.parts[-2:] == ("nas", "cli.py"):
        return redact_text(shlex.join(["nas", *sys.argv[1:]]))
    return None


def add_connection_options(p, storage_default: str) -> None:
    """--storage (or NAS_STORAGE_URL), --connect-timeout and --study-name."""
    p.add_argument(
        "--storage",
        default=None,
        help=f"Optuna storage URL, e.g. postgresql://user@host/db; better: put it, with its password, "
        f"in the environment variable NAS_STORAGE_URL, so it is not in the process list (default: {storage_default})",
    )
    from nas.storage import CONNECT_TIMEOUT_S

    p.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=CONNECT_TIMEOUT_S,
        help="seconds to reach --storage and --ray-address before any work (default: %(default)s)",
    )
    p.add_argument(
        "--study-name",
        default=None,
        help="the study in the storage, so that one storage holds several searches (default: the one "
        "the run recorded, else the only study in the run's study.db, else the run directory's name)",
    )


class _Split(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.exit(
            2,
            f"nas: error: {option_string} was split in two: --target-device (the device whose latency is optimised) "
            "and --compute-device (the device that trains and evaluates)\n",
        )


def refuse_device_flag(p) -> None:
    """The old --device, refused in one line so that it is not taken for the compute device."""
    p.add_argument("--device", action=_Split, dest="old_device", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_target_device(p, default, help: str) -> None:
    """--target-device: whose latency the table measures (its fingerprint); the old --device is
    refused in one line, so that it is not taken for the compute device."""
    p.add_argument("--target-device", dest="device", default=default, help=help)
    p.add_argument("--device", action=_Split, dest="old_device", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_compute_options(p, loading: bool = True) -> None:
    """The device and precision that train and evaluate (nas.compute), and the data loading."""
    p.add_argument(
        "--compute-device",
        default="auto",
        help="device that trains and evaluates: auto (CUDA when available), cpu, cuda "
        "or cuda:<i>; independent of --target-device (default: %(default)s)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="autocast precision of training and evaluation (fp16 with a gradient scaler; default: %(default)s)",
    )
    if loading:
        p.add_argument(
            "--loader-workers",
            type=non_negative_int,
            default=2,
            help="DataLoader processes decoding ImageFolder images "
            "(embedded and CIFAR-10 data are in memory and ignore it; default: %(default)s)",
        )
        p.add_argument(
            "--randaugment",
            action="store_true",
            help="ImageFolder data: add RandAugment (m9) to the training transform",
        )
