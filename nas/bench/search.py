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

Issue 26's targets are judged per seed: TPE's share of the reference hypervolume at 50 trials
(`checkpoints`), and NSGA-II's and GP's hypervolume against random search's of the same seed at
the full trial count. Resumable: the scores (`search_<space>_scores.jsonl`, by the supernet's
and the split's digest) and the finished studies (`search_<space>_studies.jsonl`, each trial's
accuracy and latency, by the scores', the table's and the budget's identity) are kept one per
line; a stopped bench scores nothing twice and reruns no finished study.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import optuna

from nas import study as search
from nas.errors import NasError
from nas.io import append_line, read_lines, write_json, write_text
from nas.report import front_of, hypervolume  # noqa: F401  (bench callers use them from here)


@dataclass(frozen=True)
class SearchBenchConfig:
    trials: int = 100
    seeds: tuple[int, ...] = (0, 1, 2)
    samplers: tuple[str, ...] = ("tpe", "nsga2", "gp", "random")
    checkpoints: tuple[int, ...] = (50,)  # trial counts at which the hypervolume is also reported (besides `trials`)
    ref_accuracy: float | None = None  # None: the median accuracy of the feasible reference archs
    reference_archs: int = 1000
    throughput_archs: int = 16


class CachedEvaluate:
    """`evaluate(archs)` that scores each distinct arch once (by digest) on a pool; with `log`, the
    scores are appended to that JSON-lines file under `key` (the supernet's identity) and read back
    from it, so that a restarted bench scores nothing twice."""

    def __init__(self, pool, log: Path | None = None, key: str | None = None) -> None:
        self.pool, self.cache, self.scored, self.log, self.key = pool, {}, 0, log, key
        if log is not None:
            records, _, bad = read_lines(log)
            if bad is not None:
                raise NasError(f"{log}: line {bad} is not JSON; the file is damaged (delete it to score again)")
            for r in records:
                if isinstance(r, dict) and r.get("key") == key and "digest" in r:
                    self.cache[r["digest"]] = {k: r[k] for k in ("accuracy", "macs", "params")}

    def __call__(self, archs):
        todo = list({a.digest: a for a in archs if a.digest not in self.cache}.values())
        for arch, result in zip(todo, self.pool.evaluate(todo) if todo else []):
            if not isinstance(result, BaseException):
                self.cache[arch.digest] = result
                if self.log is not None:
                    append_line(
                        self.log,
                        {
                            "key": self.key,
                            "digest": arch.digest,
                            **{k: result[k] for k in ("accuracy", "macs", "params")},
                        },
                    )
            else:
                self.cache.setdefault(arch.digest, result)
        self.scored += len(todo)
        return [self.cache[a.digest] for a in archs]


def file_digest(*paths: Path) -> str:
    """The identity of what the files hold (16 hex digits of their SHA-256)."""
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


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
        progress(
            f"reference: {min(start + 100, len(archs))}/{len(archs)} random archs scored ({time.perf_counter() - started:.0f} s)"
        )
    return points


def study_points(trials) -> list[list]:
    """Each trial's [accuracy, latency_ms] in trial order: accuracy None for a trial that was not
    scored (over the budget, or failed), latency None where it has none."""
    points = []
    for t in sorted(trials, key=lambda t: t.number):
        done = t.state == optuna.trial.TrialState.COMPLETE
        latency = t.values[1] if done else t.user_attrs.get("latency_ms")
        points.append([t.values[0] if done else None, latency])
    return points


def hypervolume_after(points: list[list], count: int, ref_accuracy: float, budget: float) -> float:
    """Hypervolume of the feasible front of the first `count` trials."""
    scored = [(a, ms) for a, ms in points[:count] if a is not None and ms is not None and ms <= budget]
    return hypervolume(front_of(scored, budget), ref_accuracy, budget)


def run_samplers(
    space,
    table,
    pool,
    budget: float,
    config: SearchBenchConfig,
    ref_accuracy: float,
    reference_hv: float,
    evaluate=None,
    progress=print,
    log: Path | None = None,
    key: dict | None = None,
) -> list[dict]:
    """One study per (sampler, seed); with `log`, each finished study is appended there (its points
    under `key`) and a study already there under the same key is read back instead of run."""
    evaluate = evaluate or CachedEvaluate(pool)
    done = {}
    if log is not None:
        records, _, bad = read_lines(log)
        if bad is not None:
            raise NasError(f"{log}: line {bad} is not JSON; the file is damaged (delete it to run the studies again)")
        done = {
            (r["sampler"], r["seed"]): r
            for r in records
            if isinstance(r, dict) and r.get("key") == key and r.get("trials") == config.trials and "points" in r
        }
    rows = []
    checkpoints = sorted({c for c in config.checkpoints if c < config.trials} | {config.trials})
    for sampler in config.samplers:
        for seed in config.seeds:
            record = done.get((sampler, seed))
            if record is None:
                study = search.open_study_in_memory(search.SearchConfig(sampler=sampler, seed=seed))
                started = time.perf_counter()
                run = search.SearchConfig(
                    trials=config.trials, batch=2 * len(pool.actors), sampler=sampler, seed=seed, budget_ms=budget
                )
                search.run_search(study, space, table, evaluate, run, progress=lambda line: None)
                record = {
                    "key": key,
                    "sampler": sampler,
                    "seed": seed,
                    "trials": config.trials,
                    "seconds": time.perf_counter() - started,
                    "points": study_points(study.get_trials(deepcopy=False)),
                }
                if log is not None:
                    append_line(log, record)
            points = record["points"]
            row = {"sampler": sampler, "seed": seed, "trials": config.trials}
            for count in checkpoints:
                hv = hypervolume_after(points, count, ref_accuracy, budget)
                suffix = "" if count == config.trials else f"_at_{count}"
                row[f"hypervolume{suffix}"] = hv
                row[f"share_of_reference{suffix}"] = hv / reference_hv if reference_hv > 0 else float("nan")
            feasible = [(a, ms) for a, ms in points if a is not None and ms is not None and ms <= budget]
            front = front_of(feasible, budget)
            row.update(
                {
                    "front": len(front),
                    "feasible_trials": len(feasible),
                    "scored_over_budget": sum(
                        1 for a, ms in points if a is not None and ms is not None and ms > budget
                    ),
                    "best_accuracy": max((a for a, _ in front), default=None),
                    "seconds": record["seconds"],
                }
            )
            rows.append(row)
            early = "".join(
                f", {row[f'share_of_reference_at_{c}']:.1%} at {c} trials" for c in checkpoints if c != config.trials
            )
            progress(
                f"{sampler:7s} seed {seed}: hypervolume {row['hypervolume']:.5f} ({row['share_of_reference']:.1%} of the reference"
                f"{early}), front {len(front)}, best {row['best_accuracy']}, {row['feasible_trials']} feasible trials"
                + (" (from the log)" if (sampler, seed) in done else "")
            )
    return rows


def targets(rows: list[dict], config: SearchBenchConfig) -> dict:
    """Issue 26's targets, per seed: TPE at ≥ 95 % of the reference hypervolume after 50 trials;
    NSGA-II and GP above random search (same seed) at the full trial count."""
    out = {}
    by = {(r["sampler"], r["seed"]): r for r in rows}
    if 50 in config.checkpoints and 50 < config.trials and any(s == "tpe" for s, _ in by):
        shares = {seed: by[("tpe", seed)]["share_of_reference_at_50"] for seed in config.seeds}
        out["tpe_share_at_50_trials_at_least_0.95"] = {
            "per_seed": shares,
            "met": all(v >= 0.95 for v in shares.values()),
        }
    for sampler in ("nsga2", "gp"):
        if sampler in config.samplers and "random" in config.samplers:
            margin = {
                seed: by[(sampler, seed)]["hypervolume"] - by[("random", seed)]["hypervolume"] for seed in config.seeds
            }
            out[f"{sampler}_above_random_at_{config.trials}_trials"] = {
                "hypervolume_minus_random_per_seed": margin,
                "met": all(v > 0 for v in margin.values()),
            }
    return out


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
        mine = [r for r in rows if r["sampler"] == sampler]
        values = [r["hypervolume"] for r in mine]
        shares = [r["share_of_reference"] for r in mine]
        out[sampler] = {
            "mean": statistics.fmean(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
            "share_mean": statistics.fmean(shares),
            "share_min": min(shares),
            "share_max": max(shares),
            "share_stdev": statistics.stdev(shares) if len(shares) > 1 else 0.0,
        }
        for key in (k for k in mine[0] if k.startswith("share_of_reference_at_")):
            at = [r[key] for r in mine]
            out[sampler][key.replace("share_of_reference", "share")] = {
                "mean": statistics.fmean(at),
                "min": min(at),
                "max": max(at),
            }
    return out


def write_results(
    rows,
    summary,
    rates,
    config,
    space_name: str,
    budget: float,
    out_dir: Path,
    command: str | None,
    reference: dict | None = None,
    machine: dict | None = None,
    goals: dict | None = None,
) -> list[Path]:
    stem = out_dir / f"search_{space_name}"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(stem.with_suffix(".csv"), buffer.getvalue())
    write_json(
        stem.with_suffix(".json"),
        {
            "benchmark": "nas bench search",
            "command": command,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": asdict(config),
            "budget_ms": budget,
            "machine": machine,
            "reference_point": {
                "accuracy": reference["ref_accuracy"] if reference else config.ref_accuracy,
                "latency_ms": budget,
            },
            "reference_front": reference,
            "hypervolume": summary,
            "targets": goals,
            "throughput_archs_per_second": {f"{k}_evaluators": v for k, v in rates.items()},
        },
    )
    return [stem.with_suffix(".csv"), stem.with_suffix(".json")]
