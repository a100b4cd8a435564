"""How a `nas` process ends: the command, then an exit that skips the interpreter's teardown of every module it
imported — about 2 s once torch, timm and torchvision are loaded, with nothing left to do by then.

The exit is an atexit handler registered before the command runs, so it runs after every handler registered during
the command (atexit runs them last-in, first-out: Ray's shutdown, multiprocessing's joins, logging's flush) and after
Python has joined the command's threads; it flushes the standard streams and ends the process with the command's
status. An exception that escapes the command is printed first and exits 1, as without it.
Handlers registered before `run_then_exit` is called would be skipped: call it before anything registers one
(importing `nas.cli` registers none).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

A = TypeVar("A")


def run_then_exit(command: Callable[[A], int], argv: A) -> None:
    """Run `command(argv)` and end the process with its status (`sys.exit`'s code when it exits that way)."""
    import atexit

    status = [1]
    atexit.register(_leave, status)
    try:
        status[0] = command(argv)
    except SystemExit as stop:  # argparse's --help, --version and usage errors
        status[0] = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        raise
    sys.exit(status[0])


def _leave(status: list[int]) -> None:
    import logging
    import os

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(status[0])
