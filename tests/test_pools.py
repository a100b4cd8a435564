"""The worker pools of the benchmarks and the verification (nas.pools): a stopped command stops its workers at once."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import wait

import pytest

from nas.pools import spawn_pool


def _no_child_left_within(seconds: float) -> bool:
    """No live child process, allowing for the pool's own thread reaping the same workers at the same moment."""
    deadline = time.monotonic() + seconds
    while any(child.is_alive() for child in multiprocessing.active_children()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_pool_stopped_by_an_exception_ends_its_running_and_queued_work_at_once():
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        with spawn_pool(2) as pool:
            assert pool.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN  # Ctrl-C is the command's
            running = [pool.submit(time.sleep, 120) for _ in range(4)]  # two run, two wait
            time.sleep(1)
            raise KeyboardInterrupt
    assert time.perf_counter() - started < 60  # not the 240 s of sleeping a plain ProcessPoolExecutor waits for
    assert _no_child_left_within(10)  # the workers sleeping for 120 s are gone
    wait(running, timeout=10)  # the pool's thread settles the runs it lost (BrokenProcessPool) just after
    assert all(future.done() for future in running)


def test_a_pool_that_ends_normally_returns_every_result(tmp_path):
    with spawn_pool(2, os.chdir, (str(tmp_path),)) as pool:
        assert list(pool.map(os.path.abspath, ["a", "b"])) == [str(tmp_path / "a"), str(tmp_path / "b")]  # set up
    assert _no_child_left_within(10)
