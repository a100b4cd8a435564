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
        writer.writerow([p["digest"], f"{p['predicted_ms']:.5g}", f"{p['measured_ms']:.5g}", f"{(p['predicted_ms'] - p['measured_ms']) / p['measured_ms']:.4f}"])
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
    ax.fill_between([low, high], [low * 0.9, high * 0.9], [low * 1.1, high * 1.1], color="tab:green", alpha=0.15, label="±10 %")
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
