"""`nas bench search`: do the model-based samplers find better fronts than random search?

First a brute-force reference: `reference_archs` (1,000) random archs scored with the same
supernet and latency table; their feasible Pareto front is the best this bench knows.
Then, for each sampler and seed, a fresh in-memory study of T trials over the same run
(same supernet, table and budget) is scored by the hypervolume of its feasible front,
with the reference point (accuracy = `ref_accuracy`, latency = budget): the area of the
(latency, accuracy) region the front dominates, also given as a share of the reference
front's. By default `ref_accuracy` is the median accuracy of the feasible reference archs,
so a front scores only for beating the typical feasible arch. An arch is scored once
(its accuracy with inherited weights is deterministic) and reused by every study. Then
evaluation throughput (archs scored per second) with 1 and with 2 evaluator actors.
"""

from __future__ import annotations

import csv
import io
import random
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from nas import search
from nas.io import write_json, write_text


@dataclass(frozen=True)
class SearchBenchConfig:
    trials: int = 100
    seeds: tuple[int, ...] = (0, 1, 2)
    samplers: tuple[str, ...] = ("tpe", "nsga2", "random")
    ref_accuracy: float | None = None  # None: the median accuracy of the feasible reference archs
    reference_archs: int = 1000
    throughput_archs: int = 16


class CachedEvaluate:
    """`evaluate(archs)` that scores each distinct arch once (by digest) on a pool."""

    def __init__(self, pool) -> None:
        self.pool, self.cache, self.scored = pool, {}, 0

    def __call__(self, archs):
        todo = list({a.digest: a for a in archs if a.digest not in self.cache}.values())
        for arch, result in zip(todo, self.pool.evaluate(todo) if todo else []):
            if not isinstance(result, BaseException):
                self.cache[arch.digest] = result
            else:
                self.cache.setdefault(arch.digest, result)
        self.scored += len(todo)
        return [self.cache[a.digest] for a in archs]


def reference_points(space, table, evaluate, count: int, seed: int = 0, progress=print) -> list[tuple[float, float]]:
    """(accuracy, predicted latency) of `count` distinct random archs, scored in batches."""
    rng = random.Random(f"reference:{seed}")
    archs = list({a.digest: a for a in (space.sample(rng) for _ in range(count * 2))}.values())[:count]
    points, started = [], time.perf_counter()
    for start in range(0, len(archs), 100):
        batch = archs[start : start + 100]
        for arch, result in zip(batch, evaluate(batch)):
            if not isinstance(result, BaseException):
                points.append((result["accuracy"], table.predict(arch)))
        progress(f"reference: {min(start + 100, len(archs))}/{len(archs)} random archs scored ({time.perf_counter() - started:.0f} s)")
    return points


def front_of(points: list[tuple[float, float]], budget: float) -> list[tuple[float, float]]:
    """The feasible non-dominated (accuracy ↑, latency ↓) points."""
    feasible = sorted({p for p in points if p[1] <= budget}, key=lambda p: (p[1], -p[0]))
    front, best = [], -1.0
    for acc, lat in feasible:
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


def run_samplers(space, table, pool, budget: float, config: SearchBenchConfig, ref_accuracy: float, reference_hv: float,
                 evaluate=None, progress=print) -> list[dict]:
    evaluate = evaluate or CachedEvaluate(pool)
    rows = []
    for sampler in config.samplers:
        for seed in config.seeds:
            study = search.open_study_in_memory(search.SearchConfig(sampler=sampler, seed=seed))
            started = time.perf_counter()
            run = search.SearchConfig(trials=config.trials, batch=2 * len(pool.actors), sampler=sampler, seed=seed, budget_ms=budget)
            search.run_search(study, space, table, evaluate, run, progress=lambda line: None)
            front = search.pareto_front(study.trials)
            hv = hypervolume([(t.values[0], t.values[1]) for t in front], ref_accuracy, budget)
            rows.append({
                "sampler": sampler, "seed": seed, "trials": config.trials, "hypervolume": hv,
                "share_of_reference": hv / reference_hv if reference_hv > 0 else float("nan"), "front": len(front),
                "feasible_trials": sum(1 for t in study.trials if t.constraints and search.feasible(t)),
                "best_accuracy": max((t.values[0] for t in front), default=None), "seconds": time.perf_counter() - started,
            })
            progress(f"{sampler:7s} seed {seed}: hypervolume {hv:.5f} ({rows[-1]['share_of_reference']:.1%} of the reference), "
                     f"front {len(front)}, best {rows[-1]['best_accuracy']}, {rows[-1]['feasible_trials']} feasible trials")
    return rows


def throughput(space, pool_factory, sizes=(1, 2), archs: int = 16, seed: int = 0) -> dict[int, float]:
    """Archs scored per second by pools of each size (after one warm-up batch)."""
    rng = random.Random(seed)
    sample = [space.sample(rng) for _ in range(archs)]
    result = {}
    for size in sizes:
        pool = pool_factory(size)
        try:
            pool.evaluate(sample[: 2 * size])  # actors start and load the supernet
            started = time.perf_counter()
            pool.evaluate(sample)
            result[size] = archs / (time.perf_counter() - started)
        finally:
            pool.shutdown()
    return result


def summarize(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        values = [r["hypervolume"] for r in rows if r["sampler"] == sampler]
        shares = [r["share_of_reference"] for r in rows if r["sampler"] == sampler]
        out[sampler] = {"mean": statistics.fmean(values), "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "min": min(values), "max": max(values),
                        "share_mean": statistics.fmean(shares), "share_min": min(shares), "share_max": max(shares),
                        "share_stdev": statistics.stdev(shares) if len(shares) > 1 else 0.0}
    return out


def write_results(rows, summary, rates, config, space_name: str, budget: float, out_dir: Path, command: str | None,
                  reference: dict | None = None, machine: dict | None = None) -> list[Path]:
    stem = out_dir / f"search_{space_name}"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(stem.with_suffix(".csv"), buffer.getvalue())
    write_json(stem.with_suffix(".json"), {
        "benchmark": "nas bench search",
        "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": asdict(config),
        "budget_ms": budget,
        "machine": machine,
        "reference_point": {"accuracy": reference["ref_accuracy"] if reference else config.ref_accuracy, "latency_ms": budget},
        "reference_front": reference,
        "hypervolume": summary,
        "throughput_archs_per_second": {f"{k}_evaluators": v for k, v in rates.items()},
    })
    return [stem.with_suffix(".csv"), stem.with_suffix(".json")]

