"""The latency budget: the default one (a quantile of random archs' predicted latencies), a given one checked
against the smallest latency the space reaches, and the error of a search that met no budget."""

from __future__ import annotations

from nas.errors import NasError

BUDGET_SAMPLES = 2000  # random archs whose predicted latencies define the default budget
BUDGET_QUANTILE = 0.5  # the default budget admits about this share of them


def default_budget(
    space, table, seed: int = 0, samples: int = BUDGET_SAMPLES, quantile: float = BUDGET_QUANTILE
) -> tuple[float, str]:
    """The `quantile` of the predicted latencies of `samples` random archs (the search's own
    sampling: depth, then each layer's choices uniformly), and a line saying so."""
    import random
    import statistics

    rng = random.Random(f"budget:{seed}")
    latencies = sorted(table.predict(space.sample(rng)) for _ in range(samples))
    cut = (
        statistics.quantiles(latencies, n=100, method="inclusive")[round(quantile * 100) - 1]
        if 0 < quantile < 1
        else latencies[-1]
    )
    budget = round(cut, 4)
    return budget, (
        f"default budget {budget} ms: the {quantile:.0%} quantile of the predicted latency of {samples} random archs "
        f"(range {latencies[0]:.4f}-{latencies[-1]:.4f} ms), so about {quantile:.0%} of the space is feasible"
    )


def resolve_budget(
    space, table, budget_ms: float | None, progress=lambda line: None, quantile: float = BUDGET_QUANTILE
) -> float:
    from nas.feasibility import smallest_latency

    if budget_ms is None:
        budget, line = default_budget(space, table, quantile=quantile)
        progress(line)
        return budget
    from nas.latency.trials import TrialLatency

    floor = smallest_latency(space, table)
    if budget_ms <= 0:
        raise NasError(f"--budget-ms must be > 0, got {budget_ms}")
    margin = TrialLatency(
        table
    ).margin()  # the prior's measured error: a budget within it of the floor may still be met
    if budget_ms * (1 + margin) < floor:
        raise NasError(
            f"--budget-ms {budget_ms} is below the smallest latency any arch of {space.name} reaches on this device "
            f"({floor:.4f} ms predicted, by more than the table's error of {margin:.0%}); raise the budget"
        )
    return budget_ms


def no_feasible_trial(study, budget: float) -> NasError:
    """The error of a search that ended with an empty feasible front."""
    import statistics

    judged = [t.user_attrs for t in study.get_trials(deepcopy=False) if "latency_ms" in t.user_attrs]
    if not judged:
        return NasError(f"no trial met the budget {budget} ms: no trial finished")
    fastest = min(judged, key=lambda attrs: attrs["latency_ms"])
    admit = statistics.median(attrs["latency_ms"] for attrs in judged)
    return NasError(
        f"no trial met the budget {budget} ms: the fastest trial was {fastest.get('latency_source', 'predicted')} at {fastest['latency_ms']:.4f} ms; "
        f"--budget-ms {admit:.4f} (the trials' median latency) would admit about half of them"
    )
