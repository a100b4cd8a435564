"""The latency that decides a search trial: its whole model measured on the target device.

The lookup table is the prior. It predicts every arch at once; an arch the prior puts over
the budget by more than the prior's own measured error (`margin`) is not measured, nor
trained or scored: its trial is infeasible with the predicted figure. Every other arch's
standalone model is measured end to end (`measure`: a profiler's `measure_models`, whose
passes are interleaved with a fixed reference model, a chunk measured while the reference
ran slow being measured again), and that measured figure decides its feasibility and its
place on the front.

The margin is the 95th percentile of the prior's relative error |predicted − measured| /
measured over the table's held-out validation models and the trials measured so far in this
search, never below `MIN_MARGIN`: a table that predicts badly on this machine skips fewer
archs, and one that predicts well skips more, without a gate that stops the run.

Without `measure` the prediction decides (`nas search --latency predicted`, benchmarks).
This module needs neither Optuna nor Ray.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from nas.arch import Arch

MIN_MARGIN = 0.05  # the pre-filter never skips an arch predicted within 5 % over the budget
SOURCES = ("measured", "predicted")  # nas run / nas search --latency


@dataclass(frozen=True)
class Judgement:
    """One arch's latency as the search records it."""

    predicted_ms: float
    measured_ms: float | None  # None: not measured (the prior's verdict decided, or no profiler)
    latency_ms: float  # what decides: measured when there is a measurement, else predicted
    skipped: str | None  # why it is not scored (over the budget), or None

    def attrs(self) -> dict:
        out = {
            "latency_ms": self.latency_ms,
            "predicted_ms": self.predicted_ms,
            "latency_source": "predicted" if self.measured_ms is None else "measured",
        }
        if self.measured_ms is not None:
            out["measured_ms"] = self.measured_ms
        if self.skipped:
            out["skipped"] = self.skipped
        return out


class TrialLatency:
    """Judges the archs of a search: `judge(archs)` -> one `Judgement` each, in order."""

    def __init__(
        self, table, measure: Callable[[list[Arch]], list[float]] | None = None, budget_ms: float | None = None
    ) -> None:
        self.table, self.measure, self.budget_ms = table, measure, budget_ms
        self.known: dict[str, float] = {}  # digest -> measured ms (each arch is measured once per search)
        self.errors: list[float] = [
            abs(p["predicted_ms"] - p["measured_ms"]) / p["measured_ms"]
            for p in ((getattr(table, "validation", None) or {}).get("points") or [])
            if p.get("measured_ms")
        ]
        self.seconds = 0.0  # spent measuring
        self.measured = 0  # models measured
        self.prefiltered = 0  # archs skipped on the prior's verdict

    def margin(self) -> float:
        """The prior's relative error bound: the 95th percentile of its errors (see the module docstring)."""
        if len(self.errors) < 2:
            return max([MIN_MARGIN, *self.errors])
        return max(MIN_MARGIN, statistics.quantiles(self.errors, n=20, method="inclusive")[-1])

    def remember(self, digest: str, predicted_ms: float, measured_ms: float) -> None:
        """A measurement from an earlier run of this study (a resumed search measures it not again)."""
        self.known[digest] = measured_ms
        self.errors.append(abs(predicted_ms - measured_ms) / measured_ms)

    def judge(self, archs: list[Arch]) -> list[Judgement]:
        predicted = [self.table.predict(arch) for arch in archs]
        budget = self.budget_ms
        if self.measure is None:
            return [Judgement(p, None, p, _over(p, budget, "predicted")) for p in predicted]
        margin = self.margin()
        prior_skips = {i for i, p in enumerate(predicted) if budget is not None and p > budget * (1 + margin)}
        todo = {
            archs[i].digest: (archs[i], predicted[i])
            for i in range(len(archs))
            if i not in prior_skips and archs[i].digest not in self.known
        }
        if todo:
            started = time.perf_counter()
            for (arch, p), ms in zip(todo.values(), self.measure([arch for arch, _ in todo.values()])):
                self.known[arch.digest] = ms
                self.errors.append(abs(p - ms) / ms)
            self.seconds += time.perf_counter() - started
            self.measured += len(todo)
        out = []
        for i, (arch, p) in enumerate(zip(archs, predicted)):
            if i in prior_skips and arch.digest not in self.known:
                self.prefiltered += 1
                out.append(
                    Judgement(
                        p,
                        None,
                        p,
                        f"predicted {p:.4f} ms is over the budget {budget} ms by more than the prior's error "
                        f"({margin:.0%}): not measured, not scored",
                    )
                )
            else:
                ms = self.known[arch.digest]
                out.append(Judgement(p, ms, ms, _over(ms, budget, "measured")))
        return out

    def summary(self) -> str:
        if self.measure is None:
            return "trial latencies: predicted by the table (not measured)"
        return (
            f"trial latencies: {self.measured} whole model(s) measured in {self.seconds:.1f} s, {self.prefiltered} arch(s) "
            f"skipped on the prior's verdict (margin {self.margin():.1%})"
        )


def _over(ms: float, budget: float | None, source: str) -> str | None:
    if budget is None or ms <= budget:
        return None
    return f"{source} {ms:.4f} ms is over the budget {budget} ms: not scored"
