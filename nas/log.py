"""A run's log file, `<run>/nas.log`: the lines the console shows, and the debug detail it does not
(settings, versions, Optuna's per-trial lines, the traceback of an error), through Python `logging`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOGGER = "nas"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CAPTURED = (LOGGER, "optuna")  # the loggers the file records


@contextmanager
def to_file(path: Path) -> Iterator[logging.Logger]:
    """Records the `nas` and `optuna` loggers into `path` (appended: a resumed run goes on in the same file)
    while the block runs; an exception leaving the block is recorded with its traceback."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(name) for name in CAPTURED]
    level = loggers[0].level
    for logger in loggers:
        logger.addHandler(handler)
    loggers[0].setLevel(logging.DEBUG)  # optuna's level stays its own (nas.study keeps it at WARNING)
    try:
        yield loggers[0]
    except BaseException as error:
        loggers[0].debug("stopped by %s", type(error).__name__, exc_info=True)
        raise
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        loggers[0].setLevel(level)
        handler.close()


def tee(progress: Callable[[str], None]) -> Callable[[str], None]:
    """`progress`, each line also logged at INFO."""
    logger = logging.getLogger(LOGGER)

    def line(text: str) -> None:
        logger.info(text)
        progress(text)

    return line
