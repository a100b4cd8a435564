"""Progress within a long stage: a tqdm bar redrawn in place when the console is a terminal, nothing
otherwise: within a training epoch (its steps), the latency table (its entries), the search (its trials)
and a verification rung (its candidates). The stage's own lines (one per epoch, per chunk of the latency
table, per batch of trials, per trained candidate)
stay the plain record: they reach a pipe, a log file and `<run>/nas.log` as before."""

from __future__ import annotations

import sys
from typing import TextIO


class Bar:
    """`with Bar(total, "epoch 2/7") as bar: ... bar.update()`; a no-op unless `stream` (default
    stderr) is a terminal and tqdm imports (it comes with Optuna; a bare GPU image may lack it)."""

    def __init__(
        self, total: int, desc: str, unit: str = "step", stream: TextIO | None = None, initial: int = 0
    ) -> None:
        stream = stream or sys.stderr
        self._bar = None
        if total > 0 and _is_terminal(stream):
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(
                total=total, desc=desc, unit=unit, leave=False, file=stream, dynamic_ncols=True, initial=initial
            )

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False
