"""`nas bench truth`: the ground truth the accuracy axis is measured against.

A stratified set of archs of a space — each kernel choice alone at the middle widths, the
largest, the smallest, then mixed archs spread over the MACs range — is trained standalone
from scratch with one stated recipe (`Recipe`), and each run's validation accuracy after
every epoch is kept as its curve. Every arch trains seed 0; `second_seeds` of them, evenly
spread over the list, also seed 1, which gives the noise ceiling: the Kendall τ between two
seeds' rankings is as close as any estimator can get to "the" ranking.

The dataset is a JSON-lines file, one line per (arch, seed), appended as each run finishes:
a stopped benchmark keeps what finished and continues where it stopped (the same command),
a cut last line is dropped and run again. Every line names the space, the data, the
validation split's digest and the recipe, so a file is never mixed with runs of another
recipe, and `nas bench fidelity --truth FILE` scores a supernet against it without training.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from nas.arch import Arch
from nas.errors import NasError
from nas.io import append_line, drop_cut_tail, read_lines
from nas.pools import spawn_pool
from nas.space import SearchSpace
from nas.standalone import Recipe, train

FORMAT = 1


@dataclass(frozen=True)
class TruthConfig:
    mixed: int = 22  # mixed archs beyond the single-kernel, largest and smallest ones
    second_seeds: int = 12  # archs (evenly spread over the stratified order) that also train seed 1
    recipe: Recipe = Recipe()
    jobs: int = 2
    seed: int = 0  # seeds the choice of mixed archs
    pool: int = 400  # random archs whose MACs quantiles the mixed archs are drawn from


# ---- choosing archs ----------------------------------------------------------------------------


def middle(values: tuple) -> object:
    return sorted(values)[(len(values) - 1) // 2]


def truth_archs(space: SearchSpace, mixed: int, seed: int, pool: int = 400) -> list[Arch]:
    """Each kernel choice alone at the middle embed_dim, depth, heads and MLP ratio; the largest
    and the smallest; then `mixed` random archs, one drawn from each MACs quantile bin of a
    seeded pool, so widths, depths and kernel mixes across the whole cost range are covered.
    Deterministic for (space, mixed, seed)."""
    from nas import flops

    chosen = [space.largest(), space.smallest()]
    depth, embed, heads, ratio = (
        middle(space.depth),
        middle(space.embed_dim),
        middle(space.heads),
        middle(space.mlp_ratio),
    )
    for spec in space.kernel_choices():
        chosen.append(space.make_arch(embed, [space.make_layer(spec, heads, ratio) for _ in range(depth)]))
    taken = {a.digest for a in chosen}
    rng = random.Random(f"truth:{seed}")
    candidates = {}
    for _ in range(pool):
        arch = space.sample(rng)
        if arch.digest not in taken:
            candidates.setdefault(arch.digest, arch)
    macs = {d: flops.count(a).macs for d, a in candidates.items()}
    ordered = sorted(candidates.values(), key=lambda a: (macs[a.digest], a.digest))
    for i in range(mixed):
        part = ordered[i * len(ordered) // mixed : (i + 1) * len(ordered) // mixed]
        if part:
            chosen.append(rng.choice(part))
    return chosen


def seeds_of(index: int, count: int, config: TruthConfig) -> list[int]:
    """Seed 0 for every arch; seed 1 too for `second_seeds` archs evenly spread over the `count`."""
    twice = {round(k * count / config.second_seeds) for k in range(min(config.second_seeds, count))}
    return [0, 1] if index in twice else [0]


# ---- standalone training with curves -------------------------------------------------------------

_DATASET = None


def _init_worker(data: str, image_size: int, in_chans: int) -> None:
    global _DATASET
    from nas.data import load_dataset

    torch.set_num_threads(1)
    _DATASET = load_dataset(data, image_size, in_chans)


def train_curve(arch_json: str, seed: int, recipe: Recipe, dataset=None) -> dict:
    """Train `arch` from scratch with `recipe` (nas.standalone.train, in a worker: its dataset)."""
    return train(Arch.from_json(arch_json), seed, recipe, dataset or _DATASET)


# ---- the dataset file ----------------------------------------------------------------------------


def split_digest(split: dict) -> str:
    """Which training and validation images: a run's split must equal the truth's to be scored on it."""
    text = json.dumps({"train": list(split["train"]), "val": list(split["val"])}, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read(path: Path) -> tuple[list[dict], int]:
    """The records of a truth file and how many cut lines (an interrupted append) were dropped.
    A line that parses but lacks a field is a damaged file: one NasError line naming it."""
    if not path.is_file():
        raise NasError(f"{path}: no such truth file; make one with `nas bench truth`")
    records, cut, bad = read_lines(path)
    if bad is not None:
        raise NasError(f"{path}: line {bad} is not JSON; the file is damaged")
    for number, record in enumerate(records, 1):
        missing = [
            k
            for k in ("format", "space", "data", "split", "recipe", "digest", "arch", "seed", "curve")
            if not isinstance(record, dict) or k not in record
        ]
        if missing:
            raise NasError(f"{path}: record {number} lacks {', '.join(missing) or 'its fields'}; not a truth file")
        if (
            not isinstance(record["curve"], list)
            or not record["curve"]
            or not all(isinstance(v, (int, float)) for v in record["curve"])
        ):
            raise NasError(f"{path}: record {number}: 'curve' must be a non-empty list of accuracies")
    return records, cut


def archs_of(path: Path, space: SearchSpace) -> list[Arch]:
    """The archs of an existing truth file, in the order the run that made it chose them (its records' index):
    a truth of another schedule or more seeds trains the same archs, whatever `truth_archs` chooses today."""
    records, _ = read(path)
    by_index: dict[int, dict] = {}
    for record in records:
        if "index" not in record:
            raise NasError(f"{path}: record of {record['digest']} lacks 'index'; not a file of `nas bench truth`")
        by_index.setdefault(int(record["index"]), record)
    if sorted(by_index) != list(range(len(by_index))):
        missing = sorted(set(range(max(by_index) + 1)) - set(by_index))
        raise NasError(f"{path}: holds no run of arch #{missing[0]}; it was stopped before its first seeds finished")
    try:
        return [space.validate(Arch.from_dict(by_index[i]["arch"])) for i in range(len(by_index))]
    except (NasError, ValueError, KeyError, TypeError) as e:
        raise NasError(f"{path}: its archs are not of space {space.name} ({e})") from None


def run(
    space: SearchSpace,
    data: str,
    out: Path,
    config: TruthConfig,
    progress: Callable[[str], None] = print,
    archs: list[Arch] | None = None,
) -> list[dict]:
    """Train every (arch, seed) of the ground truth that `out` does not hold yet; the records.
    `archs`: these archs, in this order (`archs_of` another truth file), instead of `truth_archs`' choice."""
    from nas.data import load_dataset

    dataset = load_dataset(data, space.image_size, space.in_chans)
    key = {"space": space.name, "data": data, "split": split_digest(dataset.split), "recipe": asdict(config.recipe)}
    done: dict[tuple[str, int], dict] = {}
    if out.exists():
        records, cut = read(out)
        for record in records:
            other = {k: record[k] for k in key}
            if other != key:
                differs = [k for k in key if record[k] != key[k]]
                raise NasError(
                    f"{out}: holds runs of another {', '.join(differs)} ({differs[0]}: {record[differs[0]]}); "
                    "pass another --out or the same settings"
                )
            done[(record["digest"], record["seed"])] = record
        if cut:  # the tail after the last newline: cut off, so that the next record starts its own line
            drop_cut_tail(out)
            progress(f"{out}: dropped {cut} cut line(s) of an interrupted run; they are trained again")
    if archs is None:
        archs = truth_archs(space, config.mixed, config.seed, config.pool)
    chosen = {a.digest for a in archs}
    strangers = sorted({(r["index"], d) for (d, _), r in done.items() if d not in chosen})
    if strangers:
        index, digest = strangers[0]
        raise NasError(
            f"{out}: holds runs of {len(strangers)} arch(s) this truth does not choose (e.g. #{index} {digest}): the "
            f"choice of archs has changed since they were trained (the space or the MACs count); to continue it, pass "
            f"--archs-from {out}"
        )
    jobs = [
        (i, a, s) for i, a in enumerate(archs) for s in seeds_of(i, len(archs), config) if (a.digest, s) not in done
    ]
    jobs.sort(key=lambda job: (job[2], job[0]))  # every arch's first seed before any second seed
    total = sum(len(seeds_of(i, len(archs), config)) for i in range(len(archs)))
    progress(
        f"truth: {len(archs)} archs of {space.name}, {total} runs of {config.recipe.epochs} epochs on {data} "
        f"({dataset.size('train')} training images); {total - len(jobs)} done, {len(jobs)} to train in {config.jobs} process(es)"
    )
    if jobs:
        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with spawn_pool(config.jobs, _init_worker, (data, space.image_size, space.in_chans)) as pool:
            pending = {pool.submit(train_curve, a.to_json(), s, config.recipe): (i, a, s) for i, a, s in jobs}
            finished = 0
            while pending:
                ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in ready:
                    index, arch, seed = pending.pop(future)
                    result = future.result()
                    record = {
                        "format": FORMAT,
                        **key,
                        "index": index,
                        "digest": arch.digest,
                        "arch": arch.to_dict(),
                        "seed": seed,
                        **result,
                        "threads": 1,
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    }
                    append_line(out, record)
                    done[(arch.digest, seed)] = record
                    finished += 1
                    eta = (time.perf_counter() - started) / finished * (len(jobs) - finished) / 60
                    progress(
                        f"[{finished}/{len(jobs)}] #{index} {arch!r} seed {seed}: val {result['curve'][-1]:.4f} "
                        f"(half {result['curve'][len(result['curve']) // 2 - 1]:.4f}; {result['seconds']:.0f} s; ETA {eta:.0f} min)"
                    )
    return [
        done[(a.digest, s)]
        for i, a in enumerate(archs)
        for s in seeds_of(i, len(archs), config)
        if (a.digest, s) in done
    ]


# ---- what the ground truth says about itself -----------------------------------------------------


def by_arch(records: list[dict]) -> dict[str, dict]:
    """digest -> {"arch": dict, "seeds": {seed: curve}}, in file order."""
    archs: dict[str, dict] = {}
    for record in records:
        entry = archs.setdefault(record["digest"], {"arch": record["arch"], "seeds": {}})
        entry["seeds"][int(record["seed"])] = record["curve"]
    return archs


def standalone(records: list[dict]) -> dict[str, float]:
    """digest -> final validation accuracy, mean over its seeds: the truth a supernet is scored against."""
    return {d: statistics.fmean(c[-1] for c in e["seeds"].values()) for d, e in by_arch(records).items()}


def summarize(records: list[dict]) -> dict:
    """Has the ranking settled (τ between half and full schedule, seed 0), what is the noise
    ceiling (τ between seed 0 and seed 1 where both exist) and the per-arch seed sd."""
    archs = by_arch(records)
    first = [e["seeds"][0] for e in archs.values() if 0 in e["seeds"]]
    half = [c[len(c) // 2 - 1] for c in first if len(c) >= 2]
    full = [c[-1] for c in first]
    pairs = [(e["seeds"][0][-1], e["seeds"][1][-1]) for e in archs.values() if 0 in e["seeds"] and 1 in e["seeds"]]
    sds = [statistics.stdev([c[-1] for c in e["seeds"].values()]) for e in archs.values() if len(e["seeds"]) > 1]
    from nas.bench.ranking import rank_statistics  # Kendall τ with its bootstrap 90 % interval (archs resampled)

    summary = {
        "archs": len(archs),
        "runs": len(records),
        "epochs": len(first[0]) if first else 0,
        "accuracy_min": min(full) if full else math.nan,
        "accuracy_max": max(full) if full else math.nan,
        "half_vs_full_tau": math.nan,
        "seed_pairs": len(pairs),
        "seed_tau": math.nan,
        "seed_sd_points": 100 * statistics.fmean(sds) if sds else math.nan,
    }
    if len(half) >= 3 and len(half) == len(full):
        ranks = rank_statistics(half, full)
        summary["half_vs_full_tau"], summary["half_vs_full_tau_90"] = ranks["kendall_tau"], ranks["kendall_tau_90"]
    if len(pairs) >= 3:
        ranks = rank_statistics([p[0] for p in pairs], [p[1] for p in pairs])
        summary["seed_tau"], summary["seed_tau_90"] = ranks["kendall_tau"], ranks["kendall_tau_90"]
        summary.update(modelled_ceiling(list(standalone(records).values()), [(a - b) / math.sqrt(2) for a, b in pairs]))
    return summary


def modelled_ceiling(figures: list[float], deviations: list[float], draws: int = 1000, seed: int = 0) -> dict:
    """The noise ceiling over every arch of the truth, not only over those with two seeds.

    The seed pairs are few and chosen spread over the list, so their τ says little about archs a point or two apart,
    where most of a space's archs lie. Model: an arch's figure in one run is its figure here (`figures`, the mean over
    its seeds) plus a deviation resampled from the observed ones (each pair's (a − b) / √2, with a random sign).
    Drawn `draws` times: `all_archs_seed_tau` is τ between two such runs of every arch — what two trainings of the
    whole set agree on — and `expected_vs_one_seed_tau` is τ between the figures themselves and one such run — what an
    estimator that knew each arch's expected accuracy would score against a one-seed truth. Median and 90 % range.
    The resampling spreads every pair's deviation over all archs (a plateau-prone arch's large one included); the
    figures themselves carry seed noise, which widens their spread and so, if anything, raises both ceilings.
    """
    import numpy as np
    from scipy.stats import kendalltau

    rng = np.random.default_rng(seed)
    base, dev = np.asarray(figures, dtype=float), np.asarray(deviations, dtype=float)

    def run() -> np.ndarray:
        return base + rng.choice(dev, len(base)) * rng.choice((-1.0, 1.0), len(base))

    both, oracle = [], []
    for _ in range(draws):
        one = run()
        both.append(kendalltau(one, run()).statistic)
        oracle.append(kendalltau(base, one).statistic)

    def spread(values: list[float]) -> tuple[float, list[float]]:
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        return float(np.median(v)), [float(np.quantile(v, 0.05)), float(np.quantile(v, 0.95))]

    (seed_tau, seed_90), (expected_tau, expected_90) = spread(both), spread(oracle)
    return {
        "all_archs_seed_tau": seed_tau,
        "all_archs_seed_tau_90": seed_90,
        "expected_vs_one_seed_tau": expected_tau,
        "expected_vs_one_seed_tau_90": expected_90,
    }


def format_summary(summary: dict) -> str:
    def interval(name: str) -> str:
        lo, hi = summary.get(name, [math.nan, math.nan])
        return f"90% CI {lo:.3f}..{hi:.3f}"

    return (
        f"{summary['archs']} archs, {summary['runs']} runs of {summary['epochs']} epochs; final val accuracy "
        f"{summary['accuracy_min']:.4f}..{summary['accuracy_max']:.4f}\n"
        f"ranking settled? Kendall tau half vs full schedule {summary['half_vs_full_tau']:.3f} ({interval('half_vs_full_tau_90')})\n"
        f"noise ceiling: seed-to-seed Kendall tau {summary['seed_tau']:.3f} ({interval('seed_tau_90')}) over "
        f"{summary['seed_pairs']} archs with two seeds; per-arch seed sd {summary['seed_sd_points']:.2f} points"
        + (
            f"\nmodelled over all {summary['archs']} archs (their figures plus the pairs' deviations, resampled): two "
            f"seeds agree at tau {summary['all_archs_seed_tau']:.3f} ({interval('all_archs_seed_tau_90')}); the "
            f"expected figures vs one seed: tau {summary['expected_vs_one_seed_tau']:.3f} "
            f"({interval('expected_vs_one_seed_tau_90')})"
            if "all_archs_seed_tau" in summary
            else ""
        )
    )
