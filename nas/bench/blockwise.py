"""`nas bench blockwise`: the block-wise estimator (`nas.blockwise`) built for a space and scored against the truth.

Two phases, both resumable: the parents (one per embed dim, trained with the ground truth's recipe, their state
saved after every epoch under the work folder by `nas.verify_training.train_to`), then one job per (embed dim, layer) that
trains that layer's student blocks and scores every replacement. Each finished job appends one JSON line to the
table file; a stopped bench continues where it stopped (the same command), a cut last line is dropped and redone.
With the table complete, every arch of a ground-truth file (`nas bench truth`) is predicted and the predictions are
scored like a supernet's inherited accuracies (`nas bench fidelity --truth`): Kendall τ with its interval, bias by
kernel, width and depth.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from nas.arch import Arch
from nas.blockwise import LocalRecipe, layer_scores, parent_arch, predict, train_students
from nas.errors import NasError
from nas.io import append_line, drop_cut_tail, read_lines
from nas.pools import spawn_pool
from nas.space import SearchSpace
from nas.standalone import Recipe

FORMAT = 1


@dataclass(frozen=True)
class BlockwiseConfig:
    recipe: Recipe = Recipe()  # the parents' standalone training: the ground truth's recipe
    local: LocalRecipe = LocalRecipe()
    seed: int = 0
    jobs: int = 2


_DATASET = None


def _init_worker(data: str, image_size: int, in_chans: int) -> None:
    global _DATASET
    from nas.data import load_dataset

    torch.set_num_threads(1)
    _DATASET = load_dataset(data, image_size, in_chans)


def parent_path(work: Path, space: SearchSpace, embed_dim: int, seed: int) -> Path:
    return work / f"parent-{parent_arch(space, embed_dim).digest}-seed{seed}.pt"


def train_parent(space: SearchSpace, embed_dim: int, config: BlockwiseConfig, path: str, dataset=None) -> dict:
    """Train (or go on training) one parent to the whole recipe, its state saved after every epoch."""
    from nas.verify_training import train_to

    arch = parent_arch(space, embed_dim)
    return train_to(arch.to_json(), config.seed, config.recipe, config.recipe.epochs, path, dataset=dataset or _DATASET)


def load_parent(space: SearchSpace, embed_dim: int, config: BlockwiseConfig, path: str):
    from nas.subnet import ViT
    from nas.verify_training import read_state

    state = read_state(Path(path))
    arch = parent_arch(space, embed_dim)
    if (
        state is None
        or state.get("recipe") != config.recipe.to_dict()
        or len(state.get("curve", [])) < config.recipe.epochs
    ):
        raise NasError(f"{path}: the parent of embed dim {embed_dim} is not trained to the end; run the bench again")
    model = ViT(arch)
    model.load_state_dict(state["model"])
    return model.eval(), list(state["curve"])


def train_layer(
    space: SearchSpace, embed_dim: int, layer: int, config: BlockwiseConfig, path: str, dataset=None
) -> dict:
    """One (embed dim, layer): its students trained by local distillation, every replacement scored on val."""
    started = time.perf_counter()
    dataset = dataset or _DATASET
    parent, curve = load_parent(space, embed_dim, config, path)
    students, losses = train_students(parent, layer, space, dataset, config.local, config.seed)
    scores = layer_scores(parent, students, dataset, "val")
    return {
        "parent": curve[-1],
        "parent_curve": curve,
        "scores": scores,
        "local_loss": losses,
        "seconds": round(time.perf_counter() - started, 1),
    }


def key_of(space: SearchSpace, data: str, split: str, config: BlockwiseConfig) -> dict:
    """What a table line must agree on with the bench that reads it."""
    return {
        "space": space.name,
        "data": data,
        "split": split,
        "recipe": config.recipe.to_dict(),
        "local": config.local.to_dict(),
        "seed": config.seed,
        "choices": [c.label for c in space.kernel_choices()],
        "embed_dims": list(space.embed_dim),
        "depths": list(space.depth),
        "heads": list(space.heads),
        "mlp_ratios": list(space.mlp_ratio),
    }


def read_table(path: Path, key: dict | None = None) -> tuple[dict[tuple[int, int], dict], int]:
    """(embed_dim, layer) -> record of a table file, and how many cut lines were dropped; a record of other
    settings than `key` is a one-line error."""
    records, cut, bad = read_lines(path)
    if bad is not None:
        raise NasError(f"{path}: line {bad} is not JSON; the file is damaged")
    found = {}
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict) or any(k not in record for k in ("embed_dim", "layer", "parent", "scores")):
            raise NasError(f"{path}: record {number} lacks its fields; not a block-wise table")
        if key is not None:
            differs = [k for k in key if record.get(k) != key[k]]
            if differs:
                raise NasError(
                    f"{path}: holds a table of another {', '.join(differs)}; pass another --out or the same settings"
                )
        found[(int(record["embed_dim"]), int(record["layer"]))] = record
    return found, cut


def table_of(records: dict[tuple[int, int], dict], space: SearchSpace) -> dict[int, dict]:
    """The `nas.blockwise.predict` table of complete records."""
    table = {}
    for embed_dim in space.embed_dim:
        layers = [records[(embed_dim, i)] for i in range(max(space.depth))]
        table[embed_dim] = {"parent": layers[0]["parent"], "layers": [r["scores"] for r in layers]}
    return table


def run(
    space: SearchSpace,
    data: str,
    split: str,
    out: Path,
    work: Path,
    config: BlockwiseConfig,
    progress: Callable[[str], None] = print,
) -> dict[int, dict]:
    """Build what `out` lacks of the block-wise table of `space` on `data` (whose split digest is `split`, as
    `nas.bench.truth.split_digest` gives it; the workers load the same split); the complete table."""
    key = key_of(space, data, split, config)
    done: dict[tuple[int, int], dict] = {}
    if out.exists():
        done, cut = read_table(out, key)
        if cut:  # the tail after the last newline: cut off, so that the next record starts its own line
            drop_cut_tail(out)
            progress(f"{out}: dropped {cut} cut line(s) of an interrupted run; they are built again")
    jobs = [(e, i) for e in space.embed_dim for i in range(max(space.depth)) if (e, i) not in done]
    parents = sorted({e for e, _ in jobs}, reverse=True)
    progress(
        f"blockwise: {space.name}, {len(space.embed_dim)} parents x {max(space.depth)} layers x "
        f"{len(space.kernel_choices())} kernel choices; {len(done)} of {len(space.embed_dim) * max(space.depth)} layers done, "
        f"{len(parents)} parent(s) to load or train ({config.recipe.epochs} epochs), {len(jobs)} layer(s) to distil "
        f"({config.local.epochs} epochs each) in {config.jobs} process(es)"
    )
    if not jobs:
        return table_of(done, space)
    work.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with spawn_pool(config.jobs, _init_worker, (data, space.image_size, space.in_chans)) as pool:
        pending = {
            pool.submit(train_parent, space, e, config, str(parent_path(work, space, e, config.seed))): (
                "parent",
                e,
                None,
            )
            for e in parents
        }
        finished = 0
        while pending:
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in ready:
                kind, embed_dim, layer = pending.pop(future)
                result = future.result()
                elapsed = (time.perf_counter() - started) / 60
                if kind == "parent":
                    progress(
                        f"parent embed {embed_dim}: val {result['curve'][-1]:.4f} after {len(result['curve'])} epochs "
                        f"({result['seconds']:.0f} s here; {elapsed:.1f} min)"
                    )
                    path = str(parent_path(work, space, embed_dim, config.seed))
                    for e, i in jobs:
                        if e == embed_dim:
                            pending[pool.submit(train_layer, space, e, i, config, path)] = ("layer", e, i)
                    continue
                record = {
                    "format": FORMAT,
                    **key,
                    "embed_dim": embed_dim,
                    "layer": layer,
                    **result,
                    "threads": 1,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
                append_line(out, record)
                done[(embed_dim, layer)] = record
                finished += 1
                best = max(result["scores"].items(), key=lambda kv: kv[1])
                progress(
                    f"[{finished}/{len(jobs)}] embed {embed_dim} layer {layer}: parent {result['parent']:.4f}, "
                    f"{len(result['scores'])} replacements {min(result['scores'].values()):.4f}..{best[1]:.4f} "
                    f"({result['seconds']:.0f} s; {elapsed:.1f} min)"
                )
    return table_of(done, space)


def read_truth(space: SearchSpace, truth_path: Path, split: str, data: str) -> list[dict]:
    """The records of a ground-truth file made on `space`, `data` and `split` (checked before any training)."""
    from nas.bench import truth

    records, _ = truth.read(truth_path)
    if not records:
        raise NasError(f"--truth {truth_path}: holds no finished run yet")
    first = records[0]
    if first["space"] != space.name or first["data"] != data or first["split"] != split:
        raise NasError(
            f"--truth {truth_path}: made on space {first['space']} / data {first['data']} / another split; "
            f"use a truth file of {space.name} / {data}"
        )
    for record in records:
        space.validate(Arch.from_json(json.dumps(record["arch"])))
    return records


def score_against_truth(
    table: dict[int, dict], space: SearchSpace, truth_path: Path, split: str, data: str
) -> tuple[list[dict], dict]:
    """Every arch of a ground-truth file predicted by the table, scored as `nas bench fidelity --truth` scores a
    supernet (the prediction in the `inherited` column)."""
    from nas.bench import truth
    from nas.bench.fidelity import FidelityConfig, summarize

    records = read_truth(space, truth_path, split, data)
    rows = []
    for digest, entry in truth.by_arch(records).items():
        arch = space.validate(Arch.from_json(json.dumps(entry["arch"])))
        seeds = sorted(entry["seeds"])
        accuracies = [entry["seeds"][s][-1] for s in seeds]
        rows.append(
            {
                "digest": digest,
                "arch": arch.to_json(indent=None),
                "latency": math.nan,
                "inherited": predict(arch, table),
                "standalone": statistics.fmean(accuracies),
                "seeds": accuracies,
                "seed_ids": seeds,
            }
        )
    summary = summarize(rows, FidelityConfig())
    summary["truth"] = {"file": str(truth_path), **truth.summarize(records)}
    summary["estimator"] = "blockwise"
    return rows, summary
