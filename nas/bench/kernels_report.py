"""`nas bench kernels`' output: the printed latency, crossover and roofline tables, the CSV of every
measurement with its sidecar JSON (machine, protocol, crossovers), and the latency-against-tokens plot."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from nas.bench import roofline
from nas.bench.kernels import BASELINE, BenchRow, KernelBenchConfig, crossovers
from nas.io import atomic_path, write_json, write_text
from nas.latency import describe_device
from nas.latency.device import device_tag


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
