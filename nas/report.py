"""Reporting a study: trials.csv (every trial), pareto.csv (the feasible front), pareto.png,
and the front as a printed table. Arches are read back with the one codec (`Arch.from_dict`
of the trial's `arch` attribute, the same JSON as the CSV column and arch.json).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import optuna

from nas.arch import Arch
from nas.io import atomic_path, write_text
from nas.rundir import PARETO_CSV, PARETO_PNG, TRIALS
from nas.study import feasible
from nas.study import pareto_front

# latency_ms decides (measured, or predicted where nothing measured: latency_source); predicted_ms is the table's prior.
# A PRUNED trial is an arch over the budget, judged but not scored (`skipped` says why).
TRIAL_COLUMNS = ["number", "state", "accuracy", "latency_ms", "feasible", "measured_ms", "predicted_ms", "latency_source", "macs", "params",
                 "duration_s", "digest", "reused_from", "interrupted", "skipped", "failure", "verified_accuracy", "verified_epochs", "arch"]
# verified_*: a candidate of the verification (nas.verify) trained standalone: its validation top-1 after that many epochs.


def trial_row(trial: optuna.trial.FrozenTrial, verified: dict[int, dict] | None = None) -> dict:
    check = (verified or {}).get(trial.number, {})
    duration = trial.duration.total_seconds() if trial.duration else None
    attrs = trial.user_attrs
    return {
        "number": trial.number,
        "state": trial.state.name,
        "accuracy": trial.values[0] if trial.values else attrs.get("accuracy"),
        "latency_ms": attrs.get("latency_ms"),
        "feasible": feasible(trial) if trial.constraints else None,
        "measured_ms": attrs.get("measured_ms"),
        "predicted_ms": attrs.get("predicted_ms"),
        "latency_source": attrs.get("latency_source", "predicted" if "latency_ms" in attrs else ""),
        "macs": attrs.get("macs"),
        "params": attrs.get("params"),
        "duration_s": None if duration is None else round(duration, 3),
        "digest": attrs.get("digest"),
        "reused_from": attrs.get("reused_from", ""),
        "interrupted": bool(attrs.get("interrupted", False)),
        "skipped": attrs.get("skipped", ""),
        "failure": attrs.get("failure", ""),
        "verified_accuracy": check.get("verified_accuracy", ""),
        "verified_epochs": check.get("verified_epochs", ""),
        "arch": _compact_json(attrs.get("arch")),
    }


def _compact_json(data) -> str:
    return "" if data is None else json.dumps(data, separators=(",", ":"))


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TRIAL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_outputs(study: optuna.Study, out: Path, budget_ms: float | None, verified: dict[int, dict] | None = None) -> list[optuna.trial.FrozenTrial]:
    """trials.csv (every trial), pareto.csv (feasible front) and pareto.png in `out`; returns the front.
    `verified`: trial -> its verification (RunDir.verified), filled into the verified_* columns."""
    trials = study.get_trials(deepcopy=False)
    front = pareto_front(trials)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / TRIALS, _csv([trial_row(t, verified) for t in trials]))
    write_text(out / PARETO_CSV, _csv([trial_row(t, verified) for t in front]))
    _plot(trials, front, budget_ms, out / PARETO_PNG, verified)
    return front


def mark_verified(out: Path, verified: dict[int, dict]) -> None:
    """Fill the verified_* columns of the trials.csv and pareto.csv already in `out` (nas verify,
    which may not reach the study's storage); other columns are kept as they are."""
    for name in (TRIALS, PARETO_CSV):
        path = out / name
        if not path.is_file():
            continue
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            check = verified.get(int(row["number"]), {})
            row["verified_accuracy"], row["verified_epochs"] = check.get("verified_accuracy", ""), check.get("verified_epochs", "")
        write_text(path, _csv([{k: row.get(k, "") for k in TRIAL_COLUMNS} for row in rows]))


def format_front(front: Sequence[optuna.trial.FrozenTrial], verified: dict[int, dict] | None = None) -> str:
    """The front as a table; with `verified` (RunDir.verified), a column of the candidates' standalone accuracy."""
    checked = bool(verified) and any(t.number in verified for t in front)
    lines = [f"{'trial':>5} {'accuracy':>9}" + (f" {'verified':>13}" if checked else "") + f" {'latency ms':>11} {'MMACs':>8} {'params':>8}  arch"]
    for t in front:
        arch = Arch.from_dict(t.user_attrs["arch"])
        kinds = ",".join(layer.kernel_spec.label for layer in arch.layers)
        column = ""
        if checked:
            v = verified.get(t.number)
            column = f" {v['verified_accuracy']:7.4f} @{v['verified_epochs']:>2}ep" if v else f" {'':>13}"
        lines.append(
            f"{t.number:5d} {t.values[0]:9.4f}{column} {t.values[1]:11.4f} {t.user_attrs['macs'] / 1e6:8.2f} {t.user_attrs['params']:8d}  "
            f"e{arch.embed_dim} d{arch.depth} [{kinds}]"
        )
    return "\n".join(lines)


def _plot(trials, front, budget_ms: float | None, path: Path, verified: dict[int, dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    measured = any(t.user_attrs.get("latency_source") == "measured" for t in complete)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter([t.values[1] for t in complete], [t.values[0] for t in complete], s=12, color="0.7", label=f"trials ({len(complete)})")
    if front:
        ax.plot([t.values[1] for t in front], [t.values[0] for t in front], "o-", color="tab:red", markersize=4, label=f"feasible Pareto front ({len(front)})")
    checked = [(t, verified[t.number]) for t in complete if verified and t.number in verified]
    if checked:
        ax.scatter([t.values[1] for t, _ in checked], [v["verified_accuracy"] for _, v in checked], s=28, marker="*", color="tab:green",
                   label=f"verified standalone ({len(checked)})")
    if budget_ms is not None:
        ax.axvline(budget_ms, color="tab:blue", linestyle="--", label=f"budget {budget_ms:.3g} ms")
    ax.set_xlabel("measured latency (ms)" if measured else "predicted latency (ms)")
    ax.set_ylabel("top-1 accuracy (validation)" if checked else "top-1 accuracy (validation, inherited weights)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)
