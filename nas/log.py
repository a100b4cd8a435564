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


class _Progressed(logging.Filter):
    """Notes whether a record at INFO or above (a console line) went through."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        self.seen = self.seen or record.levelno >= logging.INFO
        return True


@contextmanager
def to_file(path: Path) -> Iterator[logging.Logger]:
    """Records the `nas` and `optuna` loggers into `path` (appended: a resumed run goes on in the same file)
    while the block runs; an exception leaving the block is recorded with its traceback. A user error
    (NasError) before the first console line leaves the file as it was: a refused command writes nothing."""
    from nas.errors import NasError

    path = Path(path)
    size = path.stat().st_size if path.exists() else None
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(logging.DEBUG)
    progressed = _Progressed()
    handler.addFilter(progressed)
    loggers = [logging.getLogger(name) for name in CAPTURED]
    for logger in loggers:
        logger.addHandler(handler)
    level = loggers[0].level
    loggers[0].setLevel(logging.DEBUG)  # optuna's level stays its own (nas.study keeps it at WARNING)
    refused = False
    try:
        yield loggers[0]
    except NasError:
        refused = not progressed.seen
        if not refused:
            loggers[0].debug("stopped by NasError", exc_info=True)
        raise
    except BaseException as error:
        loggers[0].debug("stopped by %s", type(error).__name__, exc_info=True)
        raise
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        loggers[0].setLevel(level)
        handler.close()
        if refused and path.exists():
            if size is None:
                path.unlink()
            else:
                with path.open("r+b") as handle:
                    handle.truncate(size)


def tee(progress: Callable[[str], None]) -> Callable[[str], None]:
    """`progress`, each line also logged at INFO."""
    logger = logging.getLogger(LOGGER)

    def line(text: str) -> None:
        logger.info(text)
        progress(text)

    return line
