"""Argument types and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


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


def str_list(text: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return values


def _positive(cast, what: str):
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {what}, got {text!r}") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive finite {what}, got {text!r}")
        return value

    parse.__name__ = f"positive_{cast.__name__}"
    return parse


positive_int = _positive(int, "integer")


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value
positive_float = _positive(float, "number")


def float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one budget")
    return values


def command_line() -> str | None:
    """The command as typed, for the JSON sidecars (None when not run as `nas`)."""
    from nas.storage import redact_text

    return redact_text(shlex.join(["nas", *sys.argv[1:]])) if Path(sys.argv[0]).name == "nas" else None


def add_fit_options(p) -> None:
    """The validation targets a latency table must meet: nas latency and nas run refuse a
    table that misses them unless --accept-poor-fit."""
    p.add_argument("--max-mape", type=positive_float, default=0.10, help="largest mean absolute percentage error of the table's predictions on held-out archs (default: %(default)s)")
    p.add_argument("--min-tau", type=float, default=0.85, help="smallest Kendall tau between predicted and measured latency (default: %(default)s)")
    p.add_argument("--accept-poor-fit", action="store_true", help="use a table that misses those targets anyway (it stays marked as failed)")


def fit_of(args):
    from nas.stages import Fit

    return Fit(max_mape=args.max_mape, min_tau=args.min_tau, accept_poor=args.accept_poor_fit)


def add_connection_options(p, storage_default: str) -> None:
    """--storage (or NAS_STORAGE_URL) and --connect-timeout."""
    p.add_argument("--storage", default=None, help=f"Optuna storage URL, e.g. postgresql://user@host/db; better: put it, with its password, "
                   f"in the environment variable NAS_STORAGE_URL, so it is not in the process list (default: {storage_default})")
    from nas.storage import CONNECT_TIMEOUT_S

    p.add_argument("--connect-timeout", type=positive_float, default=CONNECT_TIMEOUT_S, help="seconds to reach --storage and --ray-address before any work (default: %(default)s)")
