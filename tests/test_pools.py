"""The worker pools of the benchmarks and the verification (nas.pools): a stopped command stops its workers at once."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest

from nas.pools import spawn_pool


def test_a_pool_stopped_by_an_exception_ends_its_running_and_queued_work_at_once():
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        with spawn_pool(2) as pool:
            assert pool.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN  # Ctrl-C is the command's
            running = [pool.submit(time.sleep, 120) for _ in range(4)]  # two run, two wait
            time.sleep(1)
            raise KeyboardInterrupt
    assert time.perf_counter() - started < 60  # not the 240 s of sleeping a plain ProcessPoolExecutor waits for
    assert multiprocessing.active_children() == []  # no worker left behind
    assert all(future.done() for future in running)


def test_a_pool_that_ends_normally_returns_every_result(tmp_path):
    with spawn_pool(2, os.chdir, (str(tmp_path),)) as pool:
        assert list(pool.map(os.path.abspath, ["a", "b"])) == [str(tmp_path / "a"), str(tmp_path / "b")]  # set up
    assert multiprocessing.active_children() == []
