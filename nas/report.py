"""Reporting a study: trials.csv (every trial), pareto.csv (the feasible front), pareto.png,
hypervolume.png (the feasible front's hypervolume after each trial), latency_fit.png (the latency
table's predictions against the models measured on the device), and the front as a printed table. Arches are read back with the one codec (`Arch.from_dict`
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
from nas.feasibility import feasible, pareto_front
from nas.io import atomic_path, write_text
from nas.rundir import HYPERVOLUME_PNG, PARETO_CSV, PARETO_PNG, TRIALS

# latency_ms decides (measured, or predicted where nothing measured: latency_source); predicted_ms is the table's prior.
# A PRUNED trial is an arch over the budget, judged but not scored (`skipped` says why).
TRIAL_COLUMNS = [
    "number",
    "state",
    "accuracy",
    "latency_ms",
    "feasible",
    "measured_ms",
    "predicted_ms",
    "latency_source",
    "macs",
    "params",
    "duration_s",
    "digest",
    "reused_from",
    "interrupted",
    "skipped",
    "failure",
    "verified_accuracy",
    "verified_epochs",
    "arch",
]
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


def write_outputs(
    study: optuna.Study, out: Path, budget_ms: float | None, verified: dict[int, dict] | None = None
) -> list[optuna.trial.FrozenTrial]:
    """trials.csv (every trial), pareto.csv (feasible front) and pareto.png in `out`; returns the front.
    `verified`: trial -> its verification (RunDir.verified), filled into the verified_* columns."""
    trials = study.get_trials(deepcopy=False)
    front = pareto_front(trials)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / TRIALS, _csv([trial_row(t, verified) for t in trials]))
    write_text(out / PARETO_CSV, _csv([trial_row(t, verified) for t in front]))
    _plot(trials, front, budget_ms, out / PARETO_PNG, verified)
    _plot_hypervolume(trials, budget_ms, out / HYPERVOLUME_PNG)
    return front


# ---- hypervolume: the area the feasible front dominates (accuracy up, latency down) ---------------------


def front_of(points: list[tuple[float, float]], budget: float) -> list[tuple[float, float]]:
    """The non-dominated (accuracy, latency) points within `budget`, by latency."""
    feasible_points = sorted({p for p in points if p[1] <= budget}, key=lambda p: (p[1], -p[0]))
    front, best = [], -1.0
    for acc, lat in feasible_points:
        if acc > best:
            front.append((acc, lat))
            best = acc
    return front


def hypervolume(points: list[tuple[float, float]], ref_accuracy: float, ref_latency: float) -> float:
    """Area dominated by (accuracy ↑, latency ↓) points, bounded by the reference point."""
    useful = sorted((lat, acc) for acc, lat in points if acc > ref_accuracy and lat < ref_latency)
    area, best = 0.0, ref_accuracy
    for lat, acc in useful:  # by latency; each point adds the slab of accuracy it improves on
        if acc > best:
            area += (ref_latency - lat) * (acc - best)
            best = acc
    return area


def hypervolume_history(trials, budget_ms: float | None) -> tuple[list[int], list[float], float]:
    """(trial numbers, the hypervolume of the feasible front of the complete trials up to each, the reference
    latency): reference point accuracy 0 and the budget (without one, the slowest complete trial)."""
    complete = sorted(
        (t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and feasible(t)), key=lambda t: t.number
    )
    ref_latency = budget_ms if budget_ms is not None else max((t.values[1] for t in complete), default=0.0)
    numbers, volumes, points = [], [], []
    for t in complete:
        points.append((t.values[0], t.values[1]))
        numbers.append(t.number)
        volumes.append(hypervolume(front_of(points, ref_latency), 0.0, ref_latency))
    return numbers, volumes, ref_latency


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


def _plot_hypervolume(trials, budget_ms: float | None, path: Path) -> None:
    numbers, volumes, ref_latency = hypervolume_history(trials, budget_ms)
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.step(numbers, volumes, where="post", color="tab:red")
    ax.set_xlabel("trial")
    ax.set_ylabel("hypervolume (accuracy × ms)")
    ax.set_title(f"feasible front's hypervolume (reference: accuracy 0, {ref_latency:.4g} ms)", fontsize=9)
    ax.grid(True, alpha=0.3)
    _save(plt, fig, path)


def plot_latency_fit(table: dict, trials, path: Path) -> int:
    """latency_fit.png: the table's predicted latency against the measured one, for its held-out validation
    models and the search's measured trials; returns the number of points drawn."""
    validation = [(p["predicted_ms"], p["measured_ms"]) for p in (table.get("validation") or {}).get("points", [])]
    measured = [
        (t.user_attrs["predicted_ms"], t.user_attrs["measured_ms"])
        for t in trials
        if t.user_attrs.get("measured_ms") is not None and t.user_attrs.get("predicted_ms") is not None
    ]
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 5))
    for points, label, color in (
        (validation, "validation models", "tab:blue"),
        (measured, "search trials", "tab:orange"),
    ):
        if points:
            ax.scatter(
                [m for _, m in points], [p for p, _ in points], s=12, color=color, label=f"{label} ({len(points)})"
            )
    everything = validation + measured
    if everything:
        low, high = min(min(p) for p in everything), max(max(p) for p in everything)
        ax.plot([low, high], [low, high], color="0.5", linestyle="--", linewidth=1, label="predicted = measured")
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    fingerprint = table.get("fingerprint", {})
    ax.set_title(
        f"latency table on {fingerprint.get('device_name', '?')} ({fingerprint.get('dtype', '?')})", fontsize=9
    )
    ax.grid(True, alpha=0.3)
    _save(plt, fig, path)
    return len(everything)


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
            row["verified_accuracy"], row["verified_epochs"] = (
                check.get("verified_accuracy", ""),
                check.get("verified_epochs", ""),
            )
        write_text(path, _csv([{k: row.get(k, "") for k in TRIAL_COLUMNS} for row in rows]))


def format_front(front: Sequence[optuna.trial.FrozenTrial], verified: dict[int, dict] | None = None) -> str:
    """The front as a table; with `verified` (RunDir.verified), a column of the candidates' standalone accuracy."""
    checked = bool(verified) and any(t.number in verified for t in front)
    lines = [
        f"{'trial':>5} {'accuracy':>9}"
        + (f" {'verified':>13}" if checked else "")
        + f" {'latency ms':>11} {'MMACs':>8} {'params':>8}  arch"
    ]
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
    plt = _figure()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    measured = any(t.user_attrs.get("latency_source") == "measured" for t in complete)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(
        [t.values[1] for t in complete],
        [t.values[0] for t in complete],
        s=12,
        color="0.7",
        label=f"trials ({len(complete)})",
    )
    if front:
        ax.plot(
            [t.values[1] for t in front],
            [t.values[0] for t in front],
            "o-",
            color="tab:red",
            markersize=4,
            label=f"feasible Pareto front ({len(front)})",
        )
    checked = [(t, verified[t.number]) for t in complete if verified and t.number in verified]
    if checked:
        ax.scatter(
            [t.values[1] for t, _ in checked],
            [v["verified_accuracy"] for _, v in checked],
            s=28,
            marker="*",
            color="tab:green",
            label=f"verified standalone ({len(checked)})",
        )
    if budget_ms is not None:
        ax.axvline(budget_ms, color="tab:blue", linestyle="--", label=f"budget {budget_ms:.3g} ms")
    ax.set_xlabel("measured latency (ms)" if measured else "predicted latency (ms)")
    ax.set_ylabel("top-1 accuracy (validation)" if checked else "top-1 accuracy (validation, inherited weights)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(plt, fig, path)
