"""Value parsers: one per kind of setting, shared by the flags and the config file (nas.settings), and by the
subcommands' own flags (nas.commands.common). Each turns a flag's text into a value or raises
argparse.ArgumentTypeError. Nothing here imports torch."""

from __future__ import annotations

import argparse
from pathlib import Path


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
positive_float = _positive(float, "number")


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def share(text: str) -> float:
    """A share in [0, 1]."""
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}")
    return value


def out_dir(text: str) -> str:
    """An output path; an empty one (`--out ''`, an unset shell variable) would silently mean the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path; name the output, e.g. --out results/my-run")
    return text


def ray_storage_path(value: str) -> str:
    """--storage-path: a URI Ray Train writes to (s3://, gs://, ...) as given, or a folder made absolute
    (on a cluster it must be the same shared folder on every node)."""
    if "://" in value:
        return value
    return str(Path(value).expanduser().resolve())


def kendall_tau_target(text: str) -> float:
    """A reachable Kendall tau target: -1 <= tau <= 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between -1 and 1, got {text!r}") from None
    if not -1 <= value <= 1:
        raise argparse.ArgumentTypeError(
            f"expected a Kendall tau between -1 and 1 (a tau above 1 is unreachable), got {text!r}"
        )
    return value


def local_threads(text: str) -> int:
    """A CPU thread count this machine has cores for."""
    import os

    value = positive_int(text)
    cores = os.cpu_count() or 1
    if value > cores:
        raise argparse.ArgumentTypeError(
            f"{value} threads on a machine with {cores} core(s): timing would measure the oversubscription; "
            f"use at most {cores}"
        )
    return value
