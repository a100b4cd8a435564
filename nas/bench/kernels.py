"""`nas bench kernels`: every attention kernel against softmax SDPA over a token sweep.

Which kernel is faster is a property of the device and of N, so this measures it: for
each token count, each kernel's forward (inference, no autograd) and forward+backward
(gradients of q, k, v and the kernel's own parameters) are timed with `nas.latency`'s
timer, and for each kernel the crossover — the smallest swept N from which on it beats
softmax at every larger swept N — is reported.

`paths` are the ways a kernel runs: `eager` (its module, called as it is) and `compiled`
(the same call under `torch.compile(fullgraph=True)`: one graph, no breaks — a break is an
error —, compiled in the warm-up call, so the timed calls exclude compilation). Each path is
compared with softmax on the same path, and every path with the eager one (`speedup_vs_eager`).
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from nas import kernels
from nas.bench import roofline
from nas.io import atomic_path, write_json, write_text
from nas.latency import describe_device, measure
from nas.latency.device import device_tag

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
    warmup: int = 1
    repeats: int = 10
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
            for path in config.paths:
                for mode in config.modes:
                    flops, moved = roofline.work(
                        module, grid, config.heads, config.head_dim, config.batch_size, mode, dtype
                    )
                    timing = measure(
                        _step(module, grid, mode, path),
                        inputs,
                        device=device,
                        warmup=config.warmup,
                        repeats=config.repeats,
                        min_repeats=config.min_repeats,
                        max_seconds=config.max_seconds,
                    )
                    rows.append(
                        BenchRow(
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
                    )
                line.append(f"{label}{'' if path == 'eager' else ' ' + path} {rows[-len(config.modes)].median_ms:.3g}")
        progress(
            f"[{step}/{len(config.tokens)}] N={tokens} grid={grid[0]}x{grid[1]} "
            f"({time.perf_counter() - started:.1f} s), {config.modes[0]} ms: " + ", ".join(line)
        )
    return rows


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


def format_crossover(value: int | None, tokens: Sequence[int]) -> str:
    if value is None:
        return f"never (<= {max(tokens)})"
    return f"<= {value}" if value == min(tokens) else str(value)


def format_tables(rows: Sequence[BenchRow], peaks: roofline.Peaks | None = None) -> str:
    tokens = sorted({r.tokens for r in rows})
    kernel_labels = list(dict.fromkeys(r.kernel for r in rows))
    time_of = {(r.kernel, r.path, r.mode, r.tokens): r.median_ms for r in rows}
    out = io.StringIO()
    width = max(len(label) for label in kernel_labels) + 2
    for path in dict.fromkeys(r.path for r in rows):
        for mode in dict.fromkeys(r.mode for r in rows):
            out.write(f"\nmedian latency, {mode}, {path} (ms)\n")
            out.write("tokens".rjust(7) + "".join(label.rjust(width) for label in kernel_labels) + "\n")
            for n in tokens:
                out.write(
                    str(n).rjust(7)
                    + "".join(f"{time_of[(label, path, mode, n)]:{width}.3f}" for label in kernel_labels)
                    + "\n"
                )
    out.write("\ncrossover: smallest N from which on the kernel beats softmax (swept N only, same path)\n")
    table = crossovers(rows)
    modes = list(dict.fromkeys(r.mode for r in rows))
    width = max(len(key) for key in table) + 2 if table else width
    out.write("kernel".ljust(width) + "".join(mode.rjust(18) for mode in modes) + "\n")
    for kernel, by_mode in table.items():
        out.write(kernel.ljust(width) + "".join(format_crossover(by_mode[m], tokens).rjust(18) for m in modes) + "\n")
    if peaks is not None:
        n = tokens[-1]
        out.write(
            f"\nroofline at N={n}: share of the time the measured peaks allow ({peaks.flops_per_s / 1e12:.3g} TFLOP/s, "
            f"{peaks.bytes_per_s / 1e9:.3g} GB/s), achieved TFLOP/s, GB/s, the binding roof\n"
        )
        for r in rows:
            if r.tokens == n and r.flops:
                fit = roofline.share(r.flops, r.bytes, r.median_ms, peaks)
                out.write(
                    f"{r.kernel:>20} {r.path:>8} {r.mode:>8} {100 * fit['roofline_share']:6.1f} % {fit['tflops']:9.4f} "
                    f"{fit['gbs']:9.2f} {fit['bound']}\n"
                )
    return out.getvalue()


def output_stem(config: KernelBenchConfig) -> str:
    device = torch.device(config.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return f"kernels_{device_tag(device.type, name)}_{config.dtype}"


def write_results(
    rows: Sequence[BenchRow],
    config: KernelBenchConfig,
    out_dir: Path,
    wall_seconds: float,
    command: str | None = None,
    peaks: roofline.Peaks | None = None,
) -> list[Path]:
    """CSV of every measurement, a sidecar JSON (machine, protocol, crossovers) and a PNG plot."""
    stem = out_dir / output_stem(config)
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".json"), stem.with_suffix(".png")]

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "kernel",
            "path",
            "mode",
            "tokens",
            "grid_h",
            "grid_w",
            "median_ms",
            "q1_ms",
            "q3_ms",
            "repeats",
            "speedup_vs_softmax",
            "speedup_vs_eager",
            "gflop",
            "mbytes",
            "intensity",
            "tflops",
            "gbs",
            "bound",
            "roofline_share",
        ]
    )
    baseline = {(r.path, r.mode, r.tokens): r.median_ms for r in rows if r.kernel == BASELINE}
    eager = {(r.kernel, r.mode, r.tokens): r.median_ms for r in rows if r.path == "eager"}
    for r in rows:
        speedup = baseline[(r.path, r.mode, r.tokens)] / r.median_ms
        versus_eager = (
            eager[(r.kernel, r.mode, r.tokens)] / r.median_ms if (r.kernel, r.mode, r.tokens) in eager else ""
        )
        fit = roofline.share(r.flops, r.bytes, r.median_ms, peaks) if peaks is not None and r.flops else None
        writer.writerow(
            [
                r.kernel,
                r.path,
                r.mode,
                r.tokens,
                *r.grid,
                f"{r.median_ms:.6g}",
                f"{r.q1_ms:.6g}",
                f"{r.q3_ms:.6g}",
                r.repeats,
                f"{speedup:.4g}",
                versus_eager if versus_eager == "" else f"{versus_eager:.4g}",
                f"{r.flops / 1e9:.6g}",
                f"{r.bytes / 2**20:.6g}",
                f"{r.flops / r.bytes:.4g}" if r.bytes else "",
                *(
                    [f"{fit['tflops']:.4g}", f"{fit['gbs']:.4g}", fit["bound"], f"{fit['roofline_share']:.4g}"]
                    if fit
                    else ["", "", "", ""]
                ),
            ]
        )
    write_text(paths[0], buffer.getvalue())

    write_json(
        paths[1],
        {
            "benchmark": "nas bench kernels",
            "command": command,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(wall_seconds, 1),
            "machine": describe_device(torch.device(config.device)),
            "config": asdict(config),
            "protocol": (
                f"per (kernel, mode, N): {config.warmup} warm-up call(s), then up to {config.repeats} timed calls "
                f"(at least {config.min_repeats}, about {config.max_seconds} s); median reported with quartiles; "
                "two random input sets rotated; fwd under torch.no_grad, fwd+bwd = autograd.grad of q, k, v and "
                "the kernel's parameters; CUDA: CUDA events + synchronize, CPU: perf_counter; path compiled: "
                "torch.compile(fullgraph=True, dynamic=False), compiled in the warm-up call (not timed)"
            ),
            "crossover_tokens": crossovers(rows),
            "peaks": peaks.to_dict() if peaks is not None else None,
            "roofline_definition": roofline.__doc__.split("\n\n", 1)[1].strip(),
            "crossover_definition": "smallest swept N from which on the kernel's median beats softmax's at every larger swept N; null = not faster at the largest N",
        },
    )
    _plot(rows, config, paths[2])
    return paths


def _plot(rows: Sequence[BenchRow], config: KernelBenchConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r.mode for r in rows))
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 5), squeeze=False)
    name = describe_device(torch.device(config.device))["name"]
    for ax, mode in zip(axes[0], modes):
        for way in dict.fromkeys(r.path for r in rows):
            for kernel in dict.fromkeys(r.kernel for r in rows):
                points = sorted(
                    (r.tokens, r.median_ms) for r in rows if r.kernel == kernel and r.mode == mode and r.path == way
                )
                style = {"color": "black", "linewidth": 2.5, "zorder": 3} if kernel == BASELINE else {"linewidth": 1.2}
                if way != "eager":
                    style = {**style, "linestyle": "--"}
                ax.plot(
                    *zip(*points),
                    marker="o",
                    markersize=3,
                    label=kernel if way == "eager" else f"{kernel} ({way})",
                    **style,
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens N")
        ax.set_ylabel("median latency (ms)")
        ax.set_title(f"{mode}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(
        f"attention kernels vs softmax SDPA — {name} ({config.device}), {config.dtype}, "
        f"B={config.batch_size}, heads={config.heads}, d={config.head_dim}",
        fontsize=10,
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)
