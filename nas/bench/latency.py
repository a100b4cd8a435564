"""`nas bench latency`: how well a lookup table predicts end-to-end latency on its device.

Measures fresh held-out random archs (never the calibration ones) end to end on the
table's device and settings, prints predicted vs measured, and writes CSV, JSON and a
scatter plot (log-log, with the ±10 % band) under results/bench/.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from pathlib import Path

from nas.io import atomic_path, write_json, write_text
from nas.latency.device import device_tag
from nas.latency.table import LatencyTable


def output_stem(table: LatencyTable) -> str:
    fp = table.fingerprint
    backend = "" if fp.backend == "eager" else f"_{fp.backend}"
    return f"latency_{table.space}_{device_tag(fp.device_type, fp.device_name)}_{fp.dtype}_b{fp.batch_size}{backend}"


def format_points(validation: dict, limit: int = 60) -> str:
    lines = [f"{'arch':16} {'predicted ms':>13} {'measured ms':>12} {'error':>8}"]
    for point in validation["points"][:limit]:
        error = (point["predicted_ms"] - point["measured_ms"]) / point["measured_ms"]
        lines.append(f"{point['digest']:16} {point['predicted_ms']:13.4f} {point['measured_ms']:12.4f} {error:+8.1%}")
    return "\n".join(lines)


def write_results(table: LatencyTable, validation: dict, out_dir: Path, command: str | None) -> list[Path]:
    stem = out_dir / output_stem(table)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["arch", "predicted_ms", "measured_ms", "error"])
    for p in validation["points"]:
        writer.writerow(
            [
                p["digest"],
                f"{p['predicted_ms']:.5g}",
                f"{p['measured_ms']:.5g}",
                f"{(p['predicted_ms'] - p['measured_ms']) / p['measured_ms']:.4f}",
            ]
        )
    write_text(stem.with_suffix(".csv"), buffer.getvalue())
    write_json(
        stem.with_suffix(".json"),
        {
            "benchmark": "nas bench latency",
            "command": command,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "space": table.space,
            "fingerprint": table.fingerprint.to_dict(),
            "protocol": table.protocol,
            "calibration": None if table.calibration is None else {k: table.calibration[k] for k in ("a", "b")},
            **{k: validation[k] for k in ("archs", "mape", "within_10pct", "kendall_tau")},
            "worst": {k: validation["worst"][k] for k in ("digest", "predicted_ms", "measured_ms", "error")},
        },
    )
    _scatter(table, validation, stem.with_suffix(".png"))
    return [stem.with_suffix(s) for s in (".csv", ".json", ".png")]


def _scatter(table: LatencyTable, validation: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    predicted = [p["predicted_ms"] for p in validation["points"]]
    measured = [p["measured_ms"] for p in validation["points"]]
    low, high = min(predicted + measured) * 0.9, max(predicted + measured) * 1.1
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.fill_between(
        [low, high], [low * 0.9, high * 0.9], [low * 1.1, high * 1.1], color="tab:green", alpha=0.15, label="±10 %"
    )
    ax.plot([low, high], [low, high], color="black", linewidth=1)
    ax.scatter(measured, predicted, s=14, color="tab:blue", zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("measured end-to-end latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    fp = table.fingerprint
    ax.set_title(
        f"{table.space} on {fp.device_name} ({fp.dtype}, batch {fp.batch_size})\n"
        f"MAPE {validation['mape']:.1%}, within ±10% {validation['within_10pct']:.0%}, τ {validation['kendall_tau']:.3f}",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


def remeasure_run(run_dir: Path, count: int, seed: int, measure, command: str | None, note: str | None) -> dict:
    """Are a finished run's latencies true now? `count` of its measured trials — the exported
    pick, the front, then a seeded sample of the others — measured again (`measure`: a profiler
    with the run's fingerprint) and compared with what the run recorded: MAPE, Kendall τ, and
    the export's latency against its budget."""
    import json
    import random

    from nas.arch import Arch
    from nas.latency.validation import kendall_tau
    from nas.rundir import PARETO_CSV, TRIALS, RunDir

    run = RunDir(run_dir)
    with (Path(run_dir) / TRIALS).open() as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("measured_ms")]
    if len(rows) < 2:
        from nas.errors import NasError

        raise NasError(
            f"{run_dir}/{TRIALS} holds fewer than 2 measured trials; re-measuring needs a search with --latency measured"
        )
    result = run.manifest_data().get("result") or {}
    with (Path(run_dir) / PARETO_CSV).open() as handle:
        front = {r["number"] for r in csv.DictReader(handle)}
    by_digest: dict[str, dict] = {}
    first = [r for r in rows if str(result.get("trial")) == r["number"]] + [r for r in rows if r["number"] in front]
    rest = [r for r in rows if r not in first]
    random.Random(seed).shuffle(rest)
    for r in first + rest:
        by_digest.setdefault(r["digest"], r)
        if len(by_digest) == count:
            break
    chosen = list(by_digest.values())
    archs = [Arch.from_dict(json.loads(r["arch"])) for r in chosen]
    now = measure(archs)
    recorded = [float(r["measured_ms"]) for r in chosen]
    errors = [(old - new) / new for old, new in zip(recorded, now)]
    points = [
        {
            "trial": int(r["number"]),
            "digest": r["digest"],
            "state": r["state"],
            "recorded_ms": old,
            "remeasured_ms": new,
        }
        for r, old, new in zip(chosen, recorded, now)
    ]
    export = None
    if result.get("export") and result.get("budget_ms"):
        exported = next((p for p in points if p["trial"] == result["trial"]), None)
        if exported:
            export = {
                "trial": result["trial"],
                "budget_ms": result["budget_ms"],
                "pick_ms": result.get("measured_latency_ms"),
                "remeasured_ms": exported["remeasured_ms"],
                "ratio_to_budget": exported["remeasured_ms"] / result["budget_ms"],
            }
    return {
        "benchmark": "nas bench latency --run",
        "command": command,
        "note": note,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": str(run_dir),
        "fingerprint": run.manifest_data().get("fingerprint"),
        "archs": len(points),
        "mape": sum(abs(e) for e in errors) / len(errors),
        "within_5pct": sum(abs(e) <= 0.05 for e in errors) / len(errors),
        "kendall_tau": kendall_tau(recorded, now),
        "export": export,
        "points": points,
    }


def runtime_comparison(
    space,
    runtimes: tuple[str, ...],
    tokens: tuple[int, ...],
    embed_dim: int,
    heads: int,
    mlp_ratio: float,
    protocol,
    threads: int | None,
    progress=print,
) -> list[dict]:
    """One transformer block of every kernel choice of `space`, at each token count (a square
    grid: the image size scaled, patch size kept), timed in each runtime with the tables'
    protocol (interleaved passes over the runtimes and kernels of one token count)."""
    import dataclasses
    import math

    import torch

    from nas.latency.probe import block_unit
    from nas.latency.profiler import Profiler
    from nas.latency.robust import measure_units

    fingerprints = {runtime: Profiler("cpu", "fp32", 1, runtime, threads).fingerprint() for runtime in runtimes}
    rows = []
    for n in tokens:
        side = math.isqrt(n)
        if side * side != n:
            from nas.errors import NasError

            raise NasError(f"--tokens {n}: use square token counts (64, 256, 1024, ...)")
        scaled = dataclasses.replace(space, image_size=side * space.patch_size)
        units = {}
        for spec in scaled.kernel_choices():
            arch = scaled.make_arch(embed_dim, [scaled.make_layer(spec, heads, mlp_ratio)])
            for runtime, fp in fingerprints.items():
                units[(spec.label, runtime)] = block_unit(arch, torch.device("cpu"), fp, protocol)
        progress(f"{n} tokens: timing {len(units)} blocks ({', '.join(runtimes)})")
        entries = measure_units(units, protocol)
        for (label, runtime), entry in entries.items():
            rows.append(
                {"kernel": label, "runtime": runtime, "tokens": n, "ms": entry["ms"], "dispersion": entry["dispersion"]}
            )
    return rows


def format_runtime_rows(rows: list[dict]) -> str:
    runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
    kernels = list(dict.fromkeys(r["kernel"] for r in rows))
    tokens = sorted({r["tokens"] for r in rows})
    ms = {(r["kernel"], r["runtime"], r["tokens"]): r["ms"] for r in rows}
    header = f"{'kernel':22}" + "".join(f"{f'{rt} N={n}':>22}" for n in tokens for rt in runtimes)
    lines = [header]
    for k in kernels:
        lines.append(f"{k:22}" + "".join(f"{ms[(k, rt, n)]:19.3f} ms" for n in tokens for rt in runtimes))
    return "\n".join(lines)
