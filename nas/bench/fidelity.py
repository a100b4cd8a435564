"""`nas bench fidelity`: does the supernet rank archs as standalone training does?

K archs of a run's space, stratified over predicted latency (the run's table) and
kernel mix, always with the largest and the smallest, are each trained standalone from
scratch with the ground truth's recipe (`nas.standalone.Recipe`) and S seeds, on the run's own training split, and
scored on its validation split — the split the search ranks archs on with inherited
weights. Reported: Kendall τ and Spearman ρ between inherited and standalone accuracy
(mean over seeds) with bootstrap 90 % intervals (archs resampled), the seed noise (the
standard deviation of one arch's standalone accuracy across seeds), the span of the
standalone accuracies, and the bias (inherited − standalone) by kernel, width and depth.

Standalone runs are independent: they run in `jobs` processes of one thread each. A
previous result (`reuse`) supplies the standalone accuracies of archs it already trained
with the same recipe, so two supernets can be compared on the same standalone figures.
The result files, plot and summary lines are written by nas.bench.fidelity_report.

Against a ground truth (`nas bench truth`), `score_against_truth` scores a run's supernet without training, and
`rescore_against_truth` scores the inherited accuracies such a scoring recorded against another truth file of the
same archs (a longer schedule, more seeds), so a supernet no longer on disk can be judged by a better truth.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nas.arch import Arch
from nas.bench.ranking import rank_statistics
from nas.errors import NasError
from nas.pools import spawn_pool
from nas.space import SearchSpace
from nas.standalone import Recipe, train


@dataclass(frozen=True)
class FidelityConfig:
    archs: int = 16
    seeds: int = 2
    recipe: Recipe = Recipe()  # the ground truth's (nas bench truth), so both score the same standalone figures
    jobs: int = 2
    bootstrap: int = 2000
    seed: int = 0


# ---- choosing archs ----------------------------------------------------------------------------


def stratified_archs(
    space: SearchSpace, latency: Callable[[Arch], float], count: int, seed: int, pool: int = 2000
) -> list[Arch]:
    """The largest, the smallest, then one arch per predicted-latency quantile bin of a random
    pool, each bin favouring a different kernel (the arch with the largest share of layers
    using that kernel), so that kernels, widths and latencies are all covered."""
    rng = random.Random(f"fidelity:{seed}")
    chosen = [space.largest(), space.smallest()]
    candidates = sorted({a.digest: a for a in (space.sample(rng) for _ in range(pool))}.values(), key=latency)
    labels = [spec.label for spec in space.kernel_choices()]
    bins = max(0, count - len(chosen))
    taken = {a.digest for a in chosen}
    for i in range(bins):
        part = candidates[i * len(candidates) // bins : (i + 1) * len(candidates) // bins]
        label = labels[i % len(labels)]
        share = lambda a, label=label: sum(layer.kernel_spec.label == label for layer in a.layers) / a.depth  # noqa: E731
        best = max((a for a in part if a.digest not in taken), key=lambda a: (share(a), -abs(latency(a))), default=None)
        if best is not None:
            chosen.append(best)
            taken.add(best.digest)
    return chosen[:count]


# ---- standalone training -------------------------------------------------------------------------

_DATASET = None


def _init_worker(data: str, image_size: int, in_chans: int, split: dict) -> None:
    global _DATASET
    from nas.data import load_dataset

    torch.set_num_threads(1)
    _DATASET = load_dataset(data, image_size, in_chans)
    _DATASET.split = split  # exactly the run's split


def train_standalone(arch_json: str, seed: int, recipe: Recipe, dataset=None) -> dict:
    """Train `arch` from scratch with `recipe` (nas.standalone.train, in a worker: its dataset);
    its final validation top-1 and the seconds spent."""
    out = train(Arch.from_json(arch_json), seed, recipe, dataset or _DATASET)
    return {"accuracy": out["curve"][-1], "seconds": out["seconds"], "final_loss": out["train_loss"][-1]}


# ---- statistics ----------------------------------------------------------------------------------


def bias_tables(rows: list[dict]) -> dict:
    """Mean (inherited − standalone) in points: by kernel (each arch weighted by its share of
    layers using the kernel), by embed_dim and by depth."""
    by_kernel: dict[str, list[float]] = {}
    weights: dict[str, float] = {}
    by_embed: dict[str, list[float]] = {}
    by_depth: dict[str, list[float]] = {}
    for row in rows:
        arch = Arch.from_json(row["arch"])
        gap = 100 * (row["inherited"] - row["standalone"])
        for layer in arch.layers:
            label = layer.kernel_spec.label
            by_kernel.setdefault(label, []).append(gap / arch.depth)
            weights[label] = weights.get(label, 0.0) + 1 / arch.depth
        by_embed.setdefault(str(arch.embed_dim), []).append(gap)
        by_depth.setdefault(str(arch.depth), []).append(gap)
    return {
        "kernel": {
            k: {"bias_points": sum(v) / weights[k], "weight_archs": round(weights[k], 3)}
            for k, v in sorted(by_kernel.items())
        },
        "embed_dim": {
            k: {"bias_points": statistics.fmean(v), "archs": len(v)}
            for k, v in sorted(by_embed.items(), key=lambda kv: int(kv[0]))
        },
        "depth": {
            k: {"bias_points": statistics.fmean(v), "archs": len(v)}
            for k, v in sorted(by_depth.items(), key=lambda kv: int(kv[0]))
        },
    }


def summarize(rows: list[dict], config: FidelityConfig) -> dict:
    inherited = [r["inherited"] for r in rows]
    standalone = [r["standalone"] for r in rows]
    per_arch_sd = [statistics.stdev(r["seeds"]) for r in rows if len(r["seeds"]) > 1]
    span = max(standalone) - min(standalone)
    noise = statistics.fmean(per_arch_sd) if per_arch_sd else math.nan
    return {
        **rank_statistics(inherited, standalone, config.bootstrap, config.seed),
        "archs": len(rows),
        "standalone_span_points": 100 * span,
        "seed_sd_points": 100 * noise,
        "seed_sd_over_span": noise / span if span > 0 else math.nan,
        "bias": bias_tables(rows),
    }


# ---- the bench -----------------------------------------------------------------------------------


def reusable(path: Path | None, recipe: Recipe) -> dict[tuple[str, int], float]:
    """(digest, seed) -> standalone accuracy from an earlier fidelity JSON with the same recipe."""
    if path is None:
        return {}
    data = json.loads(Path(path).read_text())
    if data.get("config", {}).get("recipe") != asdict(recipe):
        return {}
    return {
        (row["digest"], int(seed)): acc for row in data["archs"] for seed, acc in zip(row["seed_ids"], row["seeds"])
    }


def run(
    run_dir: Path, config: FidelityConfig, reuse: Path | None = None, progress: Callable[[str], None] = print
) -> tuple[list[dict], dict]:
    from nas.evaluate import accuracy
    from nas.rundir import TABLE, RunDir

    run = RunDir(run_dir)
    space, data = run.space_and_data()
    dataset = run.dataset(space, data)
    net = run.supernet(space)
    table = run.table(space) if run.has(TABLE) else None
    if table is None:
        from nas import flops

        progress(f"note: {run_dir} has no {TABLE}; archs are stratified by MACs instead of predicted latency")
    latency = table.predict if table else (lambda arch: float(flops.count(arch).macs))
    archs = stratified_archs(space, latency, config.archs, config.seed)
    known = reusable(reuse, config.recipe)
    jobs = [(a, s) for a in archs for s in range(config.seeds) if (a.digest, s) not in known]
    progress(
        f"fidelity: {len(archs)} archs x {config.seeds} seed(s), {config.recipe.epochs} epochs of batch "
        f"{config.recipe.batch_size} each; {len(jobs)} standalone run(s) in {config.jobs} process(es)"
        + (f", {len(archs) * config.seeds - len(jobs)} reused" if known else "")
    )
    results = dict(known)
    started = time.perf_counter()
    with spawn_pool(config.jobs, _init_worker, (data, space.image_size, space.in_chans, dataset.split)) as ex:
        futures = {ex.submit(train_standalone, a.to_json(), s, config.recipe): (a, s) for a, s in jobs}
        for done, future in enumerate(futures, 1):
            arch, seed = futures[future]
            out = future.result()
            results[(arch.digest, seed)] = out["accuracy"]
            eta = (time.perf_counter() - started) / done * (len(jobs) - done)
            progress(
                f"[{done}/{len(jobs)}] {arch!r} seed {seed}: standalone {out['accuracy']:.4f} ({out['seconds']:.0f} s; ETA {eta / 60:.1f} min)"
            )
    rows = []
    for arch in archs:
        seeds = [results[(arch.digest, s)] for s in range(config.seeds)]
        rows.append(
            {
                "digest": arch.digest,
                "arch": arch.to_json(indent=None),
                "latency": latency(arch),
                "inherited": accuracy(net, arch, dataset, "val"),
                "standalone": statistics.fmean(seeds),
                "seeds": seeds,
                "seed_ids": list(range(config.seeds)),
            }
        )
    return rows, summarize(rows, config)


def _truth_records(truth_path: Path) -> tuple[list[dict], int]:
    from nas.bench import truth

    records, cut = truth.read(truth_path)
    if not records:
        raise NasError(f"--truth {truth_path}: holds no finished run yet")
    return records, cut


def _truth_rows(final: dict[str, dict], inherited: Callable[[str, dict], tuple[str, float, float]]) -> list[dict]:
    """One row per arch of the truth (`truth.by_arch`): `inherited(digest, arch dict)` gives its (arch JSON,
    inherited accuracy, predicted latency)."""
    rows = []
    for digest, entry in final.items():
        seeds = sorted(entry["seeds"])
        accuracies = [entry["seeds"][s][-1] for s in seeds]
        arch_json, score, latency = inherited(digest, entry["arch"])
        rows.append(
            {
                "digest": digest,
                "arch": arch_json,
                "latency": latency,
                "inherited": score,
                "standalone": statistics.fmean(accuracies),
                "seeds": accuracies,
                "seed_ids": seeds,
            }
        )
    return rows


def score_against_truth(
    run_dir: Path, truth_path: Path, config: FidelityConfig, progress: Callable[[str], None] = print
) -> tuple[list[dict], dict]:
    """Score a run's supernet against a ground-truth file (`nas bench truth`) without training:
    inherited accuracy of each of its archs against their standalone accuracy (mean over seeds
    after the full schedule), plus the truth's own noise ceiling."""
    from nas.bench import truth
    from nas.evaluate import accuracy
    from nas.rundir import TABLE, RunDir

    records, cut = _truth_records(truth_path)
    run = RunDir(run_dir)
    space, data = run.space_and_data()
    dataset = run.dataset(space, data)
    first = records[0]
    if first["space"] != space.name or first["data"] != data:
        raise NasError(
            f"--truth {truth_path}: made on space {first['space']} / data {first['data']}, but {run_dir} searched "
            f"{space.name} / {data}; use a truth file of the same space and data"
        )
    if first["split"] != truth.split_digest(dataset.split):
        raise NasError(
            f"--truth {truth_path}: its training/validation split differs from {run_dir}'s split.json; "
            "the accuracies are not comparable"
        )
    net = run.supernet(space)
    table = run.table(space) if run.has(TABLE) else None
    final = truth.by_arch(records)
    progress(
        f"fidelity against {truth_path}: {len(final)} archs, {len(records)} standalone runs"
        + (f" ({cut} cut line(s) ignored)" if cut else "")
    )

    def inherited(digest: str, arch_dict: dict) -> tuple[str, float, float]:
        arch = space.validate(Arch.from_json(json.dumps(arch_dict)))
        latency = table.predict(arch) if table else math.nan
        return arch.to_json(indent=None), accuracy(net, arch, dataset, "val"), latency

    rows = _truth_rows(final, inherited)
    summary = summarize(rows, config)
    summary["truth"] = {"file": str(truth_path), **truth.summarize(records)}
    return rows, summary


def rescore_against_truth(
    scored_path: Path, truth_path: Path, config: FidelityConfig, progress: Callable[[str], None] = print
) -> tuple[list[dict], dict]:
    """Score the inherited accuracies an earlier `--truth` scoring recorded (its fidelity JSON) against another
    truth file of the same archs — a longer schedule, more seeds — without the supernet that made them."""
    from nas.bench import truth

    records, cut = _truth_records(truth_path)
    try:
        scored = json.loads(Path(scored_path).read_text())
        archs = {row["digest"]: row for row in scored["archs"]}
        truth_file = scored["config"]["truth"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise NasError(
            f"--rescore {scored_path}: not a fidelity JSON scored against a truth file ({e}); "
            "pass one that `nas bench fidelity --truth` wrote"
        ) from None
    if Path(truth_file).is_file():  # the accuracies were measured on that truth's split: the new one must share it
        before = truth.read(Path(truth_file))[0][:1]
        differs = [k for k in ("space", "data", "split") if before and before[0][k] != records[0][k]]
        if differs:
            raise NasError(
                f"--truth {truth_path}: another {', '.join(differs)} than {truth_file}, which {scored_path} was scored "
                "against; the accuracies are not comparable"
            )
    final = truth.by_arch(records)
    missing = [d for d in final if d not in archs]
    if missing:
        raise NasError(
            f"--rescore {scored_path}: lacks {len(missing)} of the archs of --truth {truth_path} (e.g. {missing[0]}); "
            f"it was scored against {truth_file}, which holds other archs"
        )
    progress(
        f"inherited accuracies of {scored_path} (scored against {truth_file}) against {truth_path}: "
        f"{len(final)} archs, {len(records)} standalone runs" + (f" ({cut} cut line(s) ignored)" if cut else "")
    )
    rows = _truth_rows(
        final,
        lambda digest, _: (
            archs[digest]["arch"],
            float(archs[digest]["inherited"]),
            math.nan if archs[digest].get("latency") is None else float(archs[digest]["latency"]),
        ),
    )
    summary = summarize(rows, config)
    summary["truth"] = {"file": str(truth_path), **truth.summarize(records)}
    summary["inherited_from"] = str(scored_path)
    summary["space"] = records[0]["space"]
    return rows, summary
