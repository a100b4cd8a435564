"""`nas bench fidelity`'s output: the CSV and JSON of its archs and summary, the inherited-against-standalone plot,
and the summary lines it prints (also for the block-wise table's score, `nas bench blockwise`)."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from nas.bench.fidelity import FidelityConfig
from nas.io import write_json, write_text


def write(
    rows: list[dict],
    summary: dict,
    config: FidelityConfig,
    space_name: str,
    out: Path,
    command: str | None,
    machine: dict,
    tag: str | None = None,
    xlabel: str = "inherited accuracy (supernet weights, val)",
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (f"fidelity_{space_name}" + (f"_{tag}" if tag else ""))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["digest", "latency", "inherited", "standalone", "seeds", "arch"])
    for r in rows:
        writer.writerow(
            [
                r["digest"],
                f"{r['latency']:.6g}",
                f"{r['inherited']:.4f}",
                f"{r['standalone']:.4f}",
                " ".join(f"{s:.4f}" for s in r["seeds"]),
                r["arch"],
            ]
        )
    write_text(stem.with_suffix(".csv"), buffer.getvalue())
    write_json(
        stem.with_suffix(".json"),
        {
            "command": command,
            "machine": machine,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": (
                {"truth": summary["truth"]["file"], "bootstrap": config.bootstrap, "seed": config.seed}
                if "truth" in summary
                else asdict(config)
            ),
            "summary": summary,
            "archs": rows,
        },
    )
    _plot(rows, summary, stem.with_suffix(".png"), xlabel)
    return [stem.with_suffix(s) for s in (".csv", ".json", ".png")]


def _plot(rows: list[dict], summary: dict, path: Path, xlabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nas.io import atomic_path

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for r in rows:
        ax.errorbar(
            r["inherited"],
            r["standalone"],
            yerr=[[r["standalone"] - min(r["seeds"])], [max(r["seeds"]) - r["standalone"]]],
            fmt="o",
            color="tab:blue",
            ms=4,
            capsize=2,
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("standalone accuracy (trained from scratch, val; seed range)")
    lo, hi = summary["kendall_tau_90"]
    ax.set_title(
        f"Kendall τ {summary['kendall_tau']:.2f} [{lo:.2f}, {hi:.2f}], Spearman ρ {summary['spearman_rho']:.2f}",
        fontsize=9,
    )
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


def format_summary(summary: dict) -> str:
    lo, hi = summary["kendall_tau_90"]
    rlo, rhi = summary["spearman_rho_90"]
    lines = [
        f"Kendall tau {summary['kendall_tau']:.3f} (90% CI {lo:.3f}..{hi:.3f}), Spearman rho {summary['spearman_rho']:.3f} "
        f"(90% CI {rlo:.3f}..{rhi:.3f}) over {summary['archs']} archs",
        f"standalone span {summary['standalone_span_points']:.1f} points, seed sd {summary['seed_sd_points']:.2f} points "
        f"({summary['seed_sd_over_span']:.2f} of the span)",
        "bias (inherited - standalone, points) by kernel: "
        + ", ".join(f"{k} {v['bias_points']:+.1f}" for k, v in summary["bias"]["kernel"].items()),
        "by embed_dim: "
        + ", ".join(f"{k} {v['bias_points']:+.1f}" for k, v in summary["bias"]["embed_dim"].items())
        + "; by depth: "
        + ", ".join(f"{k} {v['bias_points']:+.1f}" for k, v in summary["bias"]["depth"].items()),
    ]
    if "truth" in summary:
        t = summary["truth"]
        lines.append(
            f"the truth's noise ceiling: seed-to-seed tau {t['seed_tau']:.3f} over {t['seed_pairs']} archs"
            + (
                f" (modelled over all {t['archs']}: {t['all_archs_seed_tau']:.3f}; expected figures vs one seed "
                f"{t['expected_vs_one_seed_tau']:.3f})"
                if "all_archs_seed_tau" in t
                else ""
            )
            + f"; its ranking after half vs all of its {t['epochs']} epochs: tau {t['half_vs_full_tau']:.3f}"
        )
    return "\n".join(lines)
