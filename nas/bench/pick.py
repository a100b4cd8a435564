"""`nas bench pick`: is a run's verified pick as good as the best ground-truth arch under its budget?

The run's verification (verify/verify.json) and the ground truth (`nas bench truth`) train with one
loop, recipe, seed and split, so their figures compare directly. This bench measures every
ground-truth arch's whole model now, with the run's profiler (the run's device and setting, at the
speed of its table), keeps those within the run's budget, and reports beside the best of them:
the verified pick's standalone accuracy and the standalone accuracy of the pick by inherited
accuracy alone (trained on to the whole recipe here if the halving stopped it early). Target:
verified pick ≥ best ground-truth arch under the budget − one seed sd of the truth.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from nas.errors import NasError


def run(run_dir: Path, truth_path: Path, jobs: int = 2, progress=print) -> dict:
    from nas.bench import truth
    from nas.rundir import TABLE, VERIFY, VERIFY_JSON, RunDir
    from nas.stages import trial_profiler
    from nas.standalone import Recipe
    from nas.verify import VerifyConfig
    from nas.verify_training import Trainer

    run = RunDir(run_dir)
    if not run.has(VERIFY_JSON):
        raise NasError(
            f"{run_dir} holds no {VERIFY_JSON}: verify the run first (nas verify --run {run_dir}, or nas run with --verify)"
        )
    record = json.loads(run.path(VERIFY_JSON).read_text())
    space, data = run.space_and_data()
    dataset = run.dataset(space, data)
    records, _ = truth.read(truth_path)
    if not records:
        raise NasError(f"--truth {truth_path}: holds no finished run yet")
    first = records[0]
    if first["split"] != truth.split_digest(dataset.split) or first["data"] != data:
        raise NasError(
            f"--truth {truth_path}: made on another data or split than {run_dir}; use a truth file of the run's space and data"
        )
    if first["recipe"] != record["recipe"]:
        raise NasError(
            f"--truth {truth_path}: trained with another recipe than the run's verification ({first['recipe']} vs {record['recipe']})"
        )
    seed = record["seed"]
    archs = truth.by_arch(records)
    accuracy = {
        d: e["seeds"][seed][-1] for d, e in archs.items() if seed in e["seeds"]
    }  # the same seed as the verification
    if not accuracy:
        raise NasError(f"--truth {truth_path}: holds no run of seed {seed}, the verification's seed")
    from nas.arch import Arch

    arch_of = {d: Arch.from_dict(archs[d]["arch"]) for d in accuracy}
    profiler = trial_profiler(run.table(space), run.path(TABLE))
    budget = record["budget_ms"]
    progress(
        f"measuring the {len(arch_of)} ground-truth archs' whole models on {profiler.fingerprint().device_name} (budget {budget} ms)"
    )
    digests = list(arch_of)
    latency: dict[str, float] = {}
    for i in range(0, len(digests), 8):
        latency.update(zip(digests[i : i + 8], profiler.measure_models([arch_of[d] for d in digests[i : i + 8]])))
    within = [d for d in digests if latency[d] <= budget]
    summary = truth.summarize(records)
    sd = summary["seed_sd_points"] / 100

    inherited = record["inherited_pick"]
    if (
        inherited["verified_epochs"] < record["recipe"]["epochs"]
    ):  # stopped early by the halving: its whole-recipe figure
        progress(
            f"the pick by inherited accuracy (trial {inherited['trial']}) stopped at {inherited['verified_epochs']} epochs: its "
            f"{record['recipe']['epochs']}-epoch figure (trained on here unless a saved state holds it)"
        )
        config = VerifyConfig(recipe=Recipe(**record["recipe"]), seed=seed, jobs=jobs)
        trainer = Trainer(
            run.path(VERIFY), {"inherited": Arch.from_dict(inherited["arch"])}, config, data, dataset, progress
        )
        inherited = {
            **inherited,
            "standalone_accuracy": trainer(["inherited"], record["recipe"]["epochs"])["inherited"][-1],
        }
    else:
        inherited = {**inherited, "standalone_accuracy": inherited["verified_accuracy"]}
    pick = record["pick"]
    best = max(within, key=lambda d: accuracy[d]) if within else None
    out = {
        "run": str(run_dir),
        "truth": str(truth_path),
        "budget_ms": budget,
        "seed": seed,
        "recipe": record["recipe"],
        "truth_archs": len(digests),
        "truth_archs_within_budget": len(within),
        "seed_sd": sd,
        "verified_pick": {
            "trial": pick["trial"],
            "digest": pick["digest"],
            "standalone_accuracy": pick["verified_accuracy"],
            "measured_ms": pick["measured_ms"],
        },
        "inherited_pick": {
            "trial": inherited["trial"],
            "digest": inherited["digest"],
            "standalone_accuracy": inherited["standalone_accuracy"],
            "inherited_accuracy": inherited["inherited_accuracy"],
            "measured_ms": inherited["measured_ms"],
        },
        "best_truth_within_budget": None
        if best is None
        else {
            "digest": best,
            "arch": archs[best]["arch"],
            "standalone_accuracy": accuracy[best],
            "measured_ms": latency[best],
        },
        "truth_within_budget": sorted(
            ({"digest": d, "standalone_accuracy": accuracy[d], "measured_ms": latency[d]} for d in within),
            key=lambda r: -r["standalone_accuracy"],
        ),
        "candidates": [
            {k: c[k] for k in ("trial", "inherited_accuracy", "verified_accuracy", "verified_epochs", "measured_ms")}
            for c in record["candidates"]
        ],
    }
    out["target"] = None if best is None else accuracy[best] - sd
    out["met"] = None if best is None or math.isnan(sd) else pick["verified_accuracy"] >= accuracy[best] - sd
    return out


def format_result(out: dict) -> str:
    best = out["best_truth_within_budget"]
    lines = [
        f"budget {out['budget_ms']} ms; {out['truth_archs_within_budget']} of {out['truth_archs']} ground-truth archs measure within it"
    ]
    v, i = out["verified_pick"], out["inherited_pick"]
    lines.append(
        f"verified pick (trial {v['trial']}): standalone val top-1 {v['standalone_accuracy']:.4f} at {v['measured_ms']:.4f} ms"
    )
    lines.append(
        f"pick by inherited accuracy (trial {i['trial']}, inherited {i['inherited_accuracy']:.4f}): standalone {i['standalone_accuracy']:.4f} "
        f"at {i['measured_ms']:.4f} ms"
    )
    if best:
        lines.append(
            f"best ground-truth arch within the budget: {best['standalone_accuracy']:.4f} at {best['measured_ms']:.4f} ms; target "
            f"(minus one seed sd, {100 * out['seed_sd']:.2f} points) {out['target']:.4f}: "
            + ("met" if out["met"] else "not met" if out["met"] is not None else "no seed sd yet")
        )
    else:
        lines.append("no ground-truth arch measures within the budget")
    return "\n".join(lines)
