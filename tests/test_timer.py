"""The timer measures what it is given, on CPU and (GPU-marked) on CUDA."""

from __future__ import annotations

import time

import pytest
import torch

from nas.latency import measure
from nas.latency.timer import summarize


def busy_wait(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_cpu_median_of_a_known_busy_loop():
    timing = measure(lambda: busy_wait(0.005), warmup=2, repeats=15, max_seconds=5.0)
    assert timing.repeats == 15
    # A busy wait cannot end early; on a shared machine it can be descheduled (8 ms seen next to other work), so the
    # upper bound only catches wrong units (a figure in µs or s would be 1000× off), not noise.
    assert 4.9 <= timing.median_ms <= 50.0
    assert timing.q1_ms <= timing.median_ms <= timing.q3_ms


def test_time_budget_limits_repeats_but_keeps_the_minimum():
    timing = measure(lambda: busy_wait(0.02), warmup=1, repeats=100, min_repeats=3, max_seconds=0.01)
    assert timing.repeats == 3


def test_inputs_rotate_between_calls():
    seen = []
    measure(seen.append, [(0,), (1,), (2,)], warmup=2, repeats=4, max_seconds=10.0)
    assert seen == [0, 1, 2, 0, 1, 2]


def test_statistics_are_robust_to_one_outlier():
    timing = summarize([1.0] * 9 + [100.0])
    assert timing.median_ms == 1.0 and timing.trimmed_mean_ms == 1.0 and timing.repeats == 10


@pytest.mark.gpu
def test_cuda_timer_uses_events_and_synchronises(monkeypatch):
    recorded, synced = [], []
    real_event, real_sync = torch.cuda.Event, torch.cuda.synchronize

    def event(*args, **kwargs):
        e = real_event(*args, **kwargs)
        recorded.append(e)
        return e

    monkeypatch.setattr(torch.cuda, "Event", event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: (synced.append(1), real_sync(*a, **k)))
    a = torch.randn(2048, 2048, device="cuda")
    timing = measure(lambda: a @ a, device="cuda", warmup=2, repeats=10, max_seconds=5.0)
    assert len(recorded) == 2 * timing.repeats and synced
    # 2·2048³ flops cannot finish in microseconds: the events really bracket the GPU work.
    assert timing.median_ms > 0.01


@pytest.mark.gpu
def test_cuda_graph_replay_times_the_same_work():
    a = torch.randn(2048, 2048, device="cuda")
    out = torch.empty_like(a)
    eager = measure(lambda: torch.mm(a, a, out=out), device="cuda", warmup=3, repeats=20, max_seconds=5.0)
    graph = measure(
        lambda: torch.mm(a, a, out=out), device="cuda", warmup=3, repeats=20, max_seconds=5.0, cuda_graph=True
    )
    assert graph.median_ms == pytest.approx(eager.median_ms, rel=0.5)


def test_cuda_graph_needs_cuda():
    with pytest.raises(ValueError, match="cuda_graph needs a CUDA device"):
        measure(lambda: None, cuda_graph=True)
