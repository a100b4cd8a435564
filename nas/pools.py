"""The worker processes of the benchmarks and of the verification, and how they stop.

Every long standalone training that runs in parallel (`nas bench truth`, `fidelity`, `zoo`, `blockwise`, `nas verify`)
runs in a `spawn_pool`: spawned workers (a forked child of a process that already ran autograd cannot run it), which
ignore Ctrl-C themselves, so a terminal's Ctrl-C reaches only the command, not every worker as a traceback. When the
command stops — Ctrl-C, SIGTERM, an error — `stop_pool` cancels the queued runs and terminates the running ones at
once: what finished was written as it finished, a run cut mid-way is trained again by the same command (the
verification continues from its last saved epoch), and nothing
waits for minutes of training whose result nobody will read (`ProcessPoolExecutor`'s own exit waits for every
queued run).
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the command stops its workers; Ctrl-C is the command's
    if initializer is not None:
        initializer(*initargs)


def new_pool(jobs: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of `jobs` spawned workers, each set up by `initializer(*initargs)`."""
    return ProcessPoolExecutor(
        jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(initializer, initargs),
    )


def stop_pool(pool: ProcessPoolExecutor, timeout: float = 10.0) -> None:
    """Cancel what is queued and terminate the workers now, then wait for them to end (SIGKILL after `timeout`)."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14's public way (it shuts down too)
    if terminate is not None:
        terminate()
        return
    workers = list((getattr(pool, "_processes", None) or {}).values())  # before shutdown() forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(timeout)
        if worker.is_alive():
            worker.kill()
            worker.join()


@contextmanager
def spawn_pool(
    jobs: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()
) -> Iterator[ProcessPoolExecutor]:
    """`new_pool` for a block: shut down normally when the block ends, stopped at once (`stop_pool`) when it raises."""
    pool = new_pool(jobs, initializer, initargs)
    try:
        yield pool
    except BaseException:
        stop_pool(pool)
        raise
    pool.shutdown(wait=True)
