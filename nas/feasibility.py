"""The search's trials against the latency budget: which are feasible, how many were within and
over it, the best feasible trial, the feasible Pareto front, and the smallest latency any arch of
the space can have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna

from nas.latency.table import LatencyTable
from nas.space import SearchSpace


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return all(value <= 0 for value in trial.constraints.values())


def budget_counts(trials: Sequence[optuna.trial.FrozenTrial]) -> tuple[int, int, int]:
    """(within, judged, over) the budget: the trials judged against it are the COMPLETE ones and the
    PRUNED ones (over it, not scored) with a latency constraint. FAIL trials — interrupted (re-run on
    --resume) or broken — were never judged and are not counted (they were: "6 of 8 within")."""
    judged = [
        t
        for t in trials
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) and t.constraints
    ]
    within = sum(t.state == optuna.trial.TrialState.COMPLETE and feasible(t) for t in judged)
    return within, len(judged), sum(t.state == optuna.trial.TrialState.PRUNED for t in judged)


def best_feasible(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if feasible(t)]
    return max(complete, key=lambda t: (t.values[0], -t.values[1]), default=None)


def pareto_front(trials: Sequence[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Feasible, complete, non-dominated trials (accuracy up, latency down), by latency."""
    candidates = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and feasible(t)]

    def dominates(a, b):
        return (
            a.values[0] >= b.values[0]
            and a.values[1] <= b.values[1]
            and (a.values[0] > b.values[0] or a.values[1] < b.values[1])
        )

    front = [t for t in candidates if not any(dominates(o, t) for o in candidates)]
    unique = {}
    for t in sorted(front, key=lambda t: (t.values[1], -t.values[0], t.number)):
        unique.setdefault((t.values[0], t.values[1]), t)
    return list(unique.values())


def smallest_latency(space: SearchSpace, table: LatencyTable) -> float:
    """The lowest predicted latency of any arch of the space (blocks are independent per layer)."""
    best = math.inf
    for e in space.embed_dim:
        arch_min = min(
            table.raw(space.make_arch(e, [space.make_layer(spec, h, r)] * min(space.depth)))
            for spec in space.kernel_choices()
            for h in space.heads
            for r in space.mlp_ratio
        )
        best = min(best, arch_min)
    if table.calibration is None:
        return best
    return table.calibration["a"] * best + table.calibration["b"]  # a > 0: the calibration keeps the order
