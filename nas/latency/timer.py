"""Timing a callable on a device: warm-up, then repeats, then robust statistics.

On CUDA each repeat is bracketed by CUDA events on the current stream and the device is
synchronised before reading them (never a host clock around asynchronous work); on CPU
`time.perf_counter` brackets each call, and the caller fixes the thread count
(`torch.set_num_threads`) and records it. With `cuda_graph=True` the call is captured
once into a CUDA graph (on the first input set, after the warm-up) and each repeat times
a graph replay: launch overhead disappears, and inputs no longer rotate.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Per-call latency in milliseconds over `repeats` timed calls."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    trimmed_mean_ms: float  # mean of the middle 80 % of the calls
    repeats: int

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms


def measure(fn: Callable[..., object], inputs: Sequence[tuple] = ((),), **options) -> Timing:
    """Time `fn(*inputs[i % len(inputs)])`: the statistics of `measure_times` (same options)."""
    return summarize(measure_times(fn, inputs, **options))


def measure_times(
    fn: Callable[..., object],
    inputs: Sequence[tuple] = ((),),
    *,
    device: torch.device | str = "cpu",
    warmup: int = 2,
    repeats: int = 20,
    min_repeats: int = 3,
    max_seconds: float = 1.0,
    cuda_graph: bool = False,
) -> list[float]:
    """The milliseconds of each timed call of `fn(*inputs[i % len(inputs)])`.

    Input sets rotate from call to call so caches do not flatter the result. The warm-up
    calls also estimate the cost of one call; the number of timed calls is then
    `repeats`, reduced so the timed part takes about `max_seconds`, but never fewer than
    `min_repeats`.
    """
    if warmup < 1 or repeats < 1 or not 1 <= min_repeats <= repeats or max_seconds <= 0 or not inputs:
        raise ValueError("measure: need warmup >= 1, 1 <= min_repeats <= repeats, max_seconds > 0 and some inputs")
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda_graph and not cuda:
        raise ValueError("measure: cuda_graph needs a CUDA device")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    sync()
    start = time.perf_counter()
    for i in range(warmup):
        fn(*inputs[i % len(inputs)])
    sync()
    per_call = (time.perf_counter() - start) / warmup
    if cuda_graph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(*inputs[0])
        inputs = [()]
        fn = graph.replay
        sync()
    count = max(min_repeats, min(repeats, int(max_seconds / max(per_call, 1e-9))))

    times_ms: list[float] = []
    if cuda:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(count)]
        for i, (begin, end) in enumerate(events):
            args = inputs[(warmup + i) % len(inputs)]
            begin.record()
            fn(*args)
            end.record()
        sync()
        times_ms = [begin.elapsed_time(end) for begin, end in events]
    else:
        for i in range(count):
            args = inputs[(warmup + i) % len(inputs)]
            begin = time.perf_counter()
            fn(*args)
            times_ms.append((time.perf_counter() - begin) * 1e3)
    return times_ms


def summarize(times_ms: Sequence[float]) -> Timing:
    ordered = sorted(times_ms)
    n = len(ordered)
    if n >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    cut = int(n * 0.1)
    middle = ordered[cut : n - cut] or ordered
    return Timing(statistics.median(ordered), q1, q3, statistics.fmean(middle), n)
