"""`nas bench kernels`: every attention kernel against softmax SDPA over a token sweep.

Which kernel is faster is a property of the device and of N, so this measures it: for
each token count, each kernel's forward (inference, no autograd) and forward+backward
(gradients of q, k, v and the kernel's own parameters) are timed with `nas.latency`'s
timer, and for each kernel the crossover — the smallest swept N from which on it beats
softmax at every larger swept N — is reported.

`paths` are the ways a kernel runs: `eager` (its module, called as it is) and `compiled`
(the same call under `torch.compile(fullgraph=True)`: one graph, no breaks — a break is an
error —, compiled by one call before the warm-up calls, so neither the timed calls nor the warm-up's
estimate of a call's cost include compilation). Each path is
compared with softmax on the same path, and every path with the eager one (`speedup_vs_eager`).
The printed tables, result files and plot are written by nas.bench.kernels_report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from nas import kernels
from nas.bench import roofline
from nas.latency.timer import measure_times, summarize

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("fwd", "fwd+bwd")
PATHS = ("eager", "compiled", "fused")
DEFAULT_TOKENS = tuple(2**i for i in range(6, 15))  # 64 … 16384
BASELINE = "softmax"


@dataclass(frozen=True)
class KernelBenchConfig:
    device: str = "cpu"
    dtype: str = "fp32"
    head_dim: int = 32
    heads: int = 4
    batch_size: int = 1
    tokens: tuple[int, ...] = DEFAULT_TOKENS
    kernels: tuple[str, ...] = field(default_factory=lambda: tuple(spec.label for spec in kernels.variants()))
    modes: tuple[str, ...] = MODES
    paths: tuple[str, ...] = ("eager",)
    warmup: int = 3
    repeats: int = 30
    min_repeats: int = 3
    max_seconds: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class BenchRow:
    kernel: str
    mode: str
    tokens: int
    grid: tuple[int, int]
    median_ms: float
    q1_ms: float
    q3_ms: float
    repeats: int
    path: str = "eager"
    flops: int = 0  # the call's work by the kernel's formula (nas.bench.roofline.work)
    bytes: int = 0  # the least bytes the call moves


def token_grid(tokens: int) -> tuple[int, int]:
    """The most square (H, W) with H·W = tokens and H <= W."""
    height = max(h for h in range(1, math.isqrt(tokens) + 1) if tokens % h == 0)
    return height, tokens // height


def run(config: KernelBenchConfig, progress: Callable[[str], None] = print) -> list[BenchRow]:
    device = torch.device(config.device)
    dtype = DTYPES[config.dtype]
    specs = {spec.label: spec for spec in kernels.variants()}
    labels = [BASELINE] + [label for label in config.kernels if label != BASELINE]
    rows: list[BenchRow] = []
    for step, tokens in enumerate(config.tokens, 1):
        grid = token_grid(tokens)
        generator = torch.Generator(device="cpu").manual_seed(config.seed + tokens)
        shape = (config.batch_size, config.heads, tokens, config.head_dim)
        # Two random input sets, rotated between calls.
        inputs = [
            tuple(torch.randn(shape, generator=generator).to(device=device, dtype=dtype) for _ in range(3))
            for _ in range(2)
        ]
        started = time.perf_counter()
        line = []
        for label in labels:
            module = (
                specs[label]
                .build(config.head_dim, config.heads, grid=grid, embed_dim=config.heads * config.head_dim)
                .to(device=device, dtype=dtype)
            )
            timed = {}
            for mode in config.modes:
                flops, moved = roofline.work(
                    module, grid, config.heads, config.head_dim, config.batch_size, mode, dtype
                )
                for path, times in _interleaved(module, grid, mode, config, inputs, device).items():
                    timing = summarize(times)
                    timed[path, mode] = BenchRow(
                        label,
                        mode,
                        tokens,
                        grid,
                        timing.median_ms,
                        timing.q1_ms,
                        timing.q3_ms,
                        timing.repeats,
                        path,
                        flops,
                        moved,
                    )
            rows.extend(timed[path, mode] for path in config.paths for mode in config.modes)
            line.extend(
                f"{label}{'' if path == 'eager' else ' ' + path} {timed[path, config.modes[0]].median_ms:.3g}"
                for path in config.paths
            )
        progress(
            f"[{step}/{len(config.tokens)}] N={tokens} grid={grid[0]}x{grid[1]} "
            f"({time.perf_counter() - started:.1f} s), {config.modes[0]} ms: " + ", ".join(line)
        )
    return rows


ROUNDS = 3  # with several paths, each is timed in turn this many times


def _interleaved(
    module: kernels.AttentionKernel,
    grid: tuple[int, int],
    mode: str,
    config: KernelBenchConfig,
    inputs: list[tuple],
    device: torch.device,
) -> dict[str, list[float]]:
    """Each path's call times for one (kernel, mode). A compiled call is compiled before its warm-up (which
    estimates a call's cost), and with several paths they are timed in turn, `ROUNDS` times a third of the
    budget each: a shared machine's speed drifts over seconds, and the paths' ratio must not depend on it."""
    calls = {}
    for path in config.paths:
        calls[path] = _step(module, grid, mode, path)
        if path == "compiled":
            calls[path](*inputs[0])
    rounds = ROUNDS if len(calls) > 1 else 1
    times: dict[str, list[float]] = {path: [] for path in calls}
    for _ in range(rounds):
        for path, call in calls.items():
            times[path] += measure_times(
                call,
                inputs,
                device=device,
                warmup=config.warmup,
                repeats=-(-config.repeats // rounds),
                min_repeats=-(-config.min_repeats // rounds),
                max_seconds=config.max_seconds / rounds,
            )
    return times


def kernel_call(module: kernels.AttentionKernel, grid: tuple[int, int], path: str = "eager") -> Callable[..., list]:
    """The kernel, plus its residual-stream branches (L²ViT's LCM and CPE) on tokens of width h·d (v's
    elements as (B, N, h·d)) for kernels that have them, since a layer with that kernel runs them all;
    with path `compiled`, that call under torch.compile(fullgraph=True) (compiled at its first call)."""

    def run(q, k, v):
        outputs = [module(q, k, v, grid)]
        tokens = v.transpose(1, 2).reshape(v.shape[0], v.shape[2], -1)
        if module.has_residual:
            outputs.append(module.residual(tokens, grid))
        if module.has_position:
            outputs.append(module.position(tokens, grid))
        return outputs

    if path == "eager":
        return run
    if path == "fused":  # the linear kernels' core by nas.kernels.fused's Triton kernels (the others run eager)
        from nas.kernels import fused

        def run_fused(q, k, v):
            with fused.path():
                return run(q, k, v)

        return run_fused
    if path != "compiled":
        raise ValueError(f"unknown path {path!r}; use one of {', '.join(PATHS)}")
    torch._dynamo.reset()  # each module is its own graph: a fresh cache, no recompile limit shared across kernels
    return torch.compile(run, fullgraph=True, dynamic=False)


def _step(
    module: kernels.AttentionKernel, grid: tuple[int, int], mode: str, path: str = "eager"
) -> Callable[..., object]:
    """One timed call of `kernel_call`: forward under no_grad, or forward and the gradients of q, k, v and
    the kernel's parameters."""
    run = kernel_call(module, grid, path)

    if mode == "fwd":

        def forward(q, k, v):
            with torch.no_grad():
                return run(q, k, v)

        return forward
    params = list(module.parameters())

    def forward_backward(q, k, v):
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        outputs = run(q, k, v)
        return torch.autograd.grad(outputs, [q, k, v, *params], [torch.ones_like(out) for out in outputs])

    return forward_backward


def crossovers(rows: Sequence[BenchRow]) -> dict[str, dict[str, int | None]]:
    """For each kernel (and path: keys `label` on the eager path, `label (path)` on another) and mode:
    the smallest swept N from which on it is faster than softmax on the same path at every larger
    swept N, or None if it is not faster at the largest N."""
    time_of = {(r.kernel, r.path, r.mode, r.tokens): r.median_ms for r in rows}
    tokens = sorted({r.tokens for r in rows})
    result: dict[str, dict[str, int | None]] = {}
    for path in dict.fromkeys(r.path for r in rows):
        for kernel in dict.fromkeys(r.kernel for r in rows):
            if kernel == BASELINE:
                continue
            key = kernel if path == "eager" else f"{kernel} ({path})"
            result[key] = {}
            for mode in dict.fromkeys(r.mode for r in rows):
                crossover = None
                for n in reversed(tokens):
                    if time_of[(kernel, path, mode, n)] < time_of[(BASELINE, path, mode, n)]:
                        crossover = n
                    else:
                        break
                result[key][mode] = crossover
    return result
