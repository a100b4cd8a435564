"""`nas bench search`: do the model-based samplers find better fronts than random search?

For each sampler and seed, a fresh in-memory study of T trials over the same run (same
supernet, same latency table, same budget) is scored by the hypervolume of its feasible
front, with the reference point (accuracy = `ref_accuracy`, latency = budget): the area
of the (latency, accuracy) region the front dominates. Then evaluation throughput
(archs scored per second) with 1 and with 2 evaluator actors on the same archs.
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
    trials: int = 40
    seeds: tuple[int, ...] = (0, 1, 2)
    samplers: tuple[str, ...] = ("nsga2", "tpe", "random")
    ref_accuracy: float = 0.9
    throughput_archs: int = 16


def hypervolume(points: list[tuple[float, float]], ref_accuracy: float, ref_latency: float) -> float:
    """Area dominated by (accuracy ↑, latency ↓) points, bounded by the reference point."""
    useful = sorted((lat, acc) for acc, lat in points if acc > ref_accuracy and lat < ref_latency)
    area, best = 0.0, ref_accuracy
    for lat, acc in useful:  # by latency; each point adds the slab of accuracy it improves on
        if acc > best:
            area += (ref_latency - lat) * (acc - best)
            best = acc
    return area


def run_samplers(space, table, pool, budget: float, config: SearchBenchConfig, progress=print) -> list[dict]:
    rows = []
    for sampler in config.samplers:
        for seed in config.seeds:
            study = search.open_study_in_memory(search.SearchConfig(sampler=sampler, seed=seed))
            started = time.perf_counter()
            run = search.SearchConfig(trials=config.trials, batch=2 * len(pool.actors), sampler=sampler, seed=seed, budget_ms=budget)
            search.run_search(study, space, table, pool.evaluate, run, progress=lambda line: None)
            front = search.pareto_front(study.trials)
            hv = hypervolume([(t.values[0], t.values[1]) for t in front], config.ref_accuracy, budget)
            rows.append({
                "sampler": sampler, "seed": seed, "trials": config.trials, "hypervolume": hv, "front": len(front),
                "best_accuracy": max((t.values[0] for t in front), default=None), "seconds": time.perf_counter() - started,
            })
            progress(f"{sampler:7s} seed {seed}: hypervolume {hv:.5f}, front {len(front)}, best {rows[-1]['best_accuracy']}")
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
        out[sampler] = {"mean": statistics.fmean(values), "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "min": min(values), "max": max(values)}
    return out


def write_results(rows, summary, rates, config, space_name: str, budget: float, out_dir: Path, command: str | None) -> list[Path]:
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
        "reference_point": {"accuracy": config.ref_accuracy, "latency_ms": budget},
        "hypervolume": summary,
        "throughput_archs_per_second": {f"{k}_evaluators": v for k, v in rates.items()},
    })
    return [stem.with_suffix(".csv"), stem.with_suffix(".json")]

