"""Holding Ctrl-C and SIGTERM while the study's storage is written.

Both stop a run with a KeyboardInterrupt wherever it lands (nas.cli). Landing inside an Optuna
storage write, it can leave the SQLAlchemy session or the SQLite connection mid-transaction, and the
writes that mark running trials interrupted then fail (seen: StorageInternalError on commit).
Inside `deferred()` the signal is recorded instead and raised again, with the handler that was in
place, as soon as the block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run the block with Ctrl-C and SIGTERM held; a signal received meanwhile is raised at its end.

    Outside the main thread (where Python runs no signal handlers) it changes nothing. A handler that
    Python did not install (getsignal gives None) is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {number: signal.getsignal(number) for number in SIGNALS}
    try:
        for number, handler in previous.items():
            if handler is not None:
                signal.signal(number, lambda signum, frame: received.append(signum))
        yield
    finally:
        for number, handler in previous.items():
            if handler is not None:
                signal.signal(number, handler)
        if received:
            signal.raise_signal(received[0])
