"""The verified final choice: a run's best candidates under the budget, trained standalone with
successive halving, and the pick by verified accuracy instead of inherited accuracy.

1. Candidates: the feasible Pareto front under the budget, spread evenly over its latency range
   (the most accurate by inherited accuracy always among them), then the most accurate other
   feasible trials; one per arch. Each is measured again on the target device (as the pick of
   an unverified run is) and one over the budget is replaced by the next.
2. Successive halving: every candidate trains the first rung's epochs of the ground truth's
   recipe (nas.standalone: the same loop, seed and split, so a verified accuracy is comparable
   with the ground truth's); the better half by validation top-1 goes on to the next rung, with
   twice the epochs, trained on from where it stopped (the same cosine schedule, not
   restarted), until the last rung trains the finalist through the whole recipe. A short
   standalone run ranks archs better than the supernet does, so the first rung is broad and
   short; the recipe is the ground truth's settled one (24 epochs, --verify-epochs): a 12-epoch
   recipe, whose first rungs were 2 and 3 epochs, ranked how fast an arch starts, and dropped the
   front's deeper archs, which start slowest (results/bench/verified_pick/pick_24-epochs.log).
3. Every candidate's state is saved after every epoch (verify/<digest>-seed<k>.pt, atomic), so a
   stopped verification continues where it stopped and retrains no finished epoch; verify.json
   records the candidates, every rung's figures and the pick.

Multi-objective Optuna studies cannot prune, so the halving is ours. Training runs in local
processes (`jobs`, spawned) on the machine that runs the stage, not on Ray.

This module holds the settings, the choice of candidates, the halving and the stage; the resumable
training of the candidates (their saved states, the process pool) is nas.verify_training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nas.arch import Arch
from nas.config import VERIFY_CANDIDATES as CANDIDATES  # nas run's --verify: 8 × 3 epochs, 4 × 6, 2 × 12, 1 × 24
from nas.config import VERIFY_EPOCHS
from nas.errors import NasError
from nas.standalone import Recipe
from nas.verify_training import Trainer, state_path


@dataclass(frozen=True)
class VerifyConfig:
    candidates: int = CANDIDATES
    rungs: tuple[float, ...] | None = (
        None  # shares of the recipe's epochs at which candidates are compared (None: halving's)
    )
    keep: float = 0.5  # share of a rung's candidates that go on to the next (successive halving, η = 2)
    recipe: Recipe = field(default_factory=lambda: Recipe(epochs=VERIFY_EPOCHS))
    seed: int = 0
    jobs: int = 2  # training processes
    device: str = "cpu"

    def epochs(self) -> list[int]:
        """The rungs in epochs: increasing, at least 1, the last the whole recipe. By default
        successive halving's: each rung doubles the epochs as it halves the candidates, so every
        rung costs about the same, and the last trains the one finalist through the recipe
        (8 candidates, 24 epochs: 3, 6, 12, 24)."""
        shares = self.rungs
        if shares is None:
            count = math.ceil(math.log2(max(1, self.candidates))) + 1
            shares = tuple(1 / 2 ** (count - 1 - k) for k in range(count))
        out: list[int] = []
        for share in shares:
            epochs = min(self.recipe.epochs, max(1, round(share * self.recipe.epochs)))
            if not out or epochs > out[-1]:
                out.append(epochs)
        if out[-1] != self.recipe.epochs:
            out.append(self.recipe.epochs)
        return out


# ---- choosing candidates -------------------------------------------------------------------------


def preference(candidates: Sequence, n: int) -> list:
    """All `candidates` (nas.selection.Candidate, already within the budget) in the order they are
    tried: `n` front members spread evenly over the front's latency range, the most accurate
    first, then the other archs by inherited accuracy. One entry per arch digest."""
    by_accuracy = sorted(candidates, key=lambda c: (-c.accuracy, c.latency_ms, c.trial))
    unique, seen = [], set()
    for c in by_accuracy:
        if c.arch.digest not in seen:
            seen.add(c.arch.digest)
            unique.append(c)
    front, best = [], -math.inf
    for c in sorted(
        unique, key=lambda c: (c.latency_ms, -c.accuracy, c.trial)
    ):  # the feasible Pareto front, fastest first
        if c.accuracy > best:
            front.append(c)
            best = c.accuracy
    front.reverse()  # the most accurate (and slowest) first
    if len(front) > n > 1:
        spread = [front[round(i * (len(front) - 1) / (n - 1))] for i in range(n)]
    else:
        spread = front[:n]
    first = {c.arch.digest for c in spread}
    return spread + [c for c in unique if c.arch.digest not in first]


def measured_candidates(
    ordered: Sequence, measure: Callable[[list[Arch]], list[float]], budget_ms: float, n: int, progress=print
) -> tuple[list[tuple[object, float]], list[dict]]:
    """The first `n` of `ordered` whose models measure within `budget_ms` now, with their measured
    latency, and every measurement taken ({trial, search_ms, measured_ms}). A NasError if none does."""
    chosen: list[tuple[object, float]] = []
    checked: list[dict] = []
    position = 0
    while len(chosen) < n and position < len(ordered):
        group = list(ordered[position : position + n - len(chosen)])
        position += len(group)
        for candidate, ms in zip(group, measure([c.arch for c in group])):
            checked.append({"trial": candidate.trial, "search_ms": candidate.latency_ms, "measured_ms": ms})
            if ms <= budget_ms:
                chosen.append((candidate, ms))
    over = [c for c in checked if c["measured_ms"] > budget_ms]
    if over:
        progress(
            f"!! {len(over)} candidate(s) measured over the budget {budget_ms} ms on re-measurement and were replaced ("
            + ", ".join(
                f"trial {c['trial']}: {c['measured_ms']:.4f} ms, {c['search_ms']:.4f} ms in the search"
                for c in over[:3]
            )
            + ")"
        )
    if not chosen:
        fastest = min(checked, key=lambda c: c["measured_ms"])
        raise NasError(
            f"no candidate measured within the budget {budget_ms} ms on re-measurement: the fastest of {len(checked)} was "
            f"trial {fastest['trial']} at {fastest['measured_ms']:.4f} ms; raise the budget or run on a quieter machine"
        )
    return chosen, checked


# ---- successive halving --------------------------------------------------------------------------


def successive_halving(
    names: Sequence[str],
    train_to: Callable[[list[str], int], dict[str, list[float]]],
    rungs: Sequence[int],
    keep: float,
    tie: Callable[[str], float] = lambda name: 0.0,
    progress=print,
) -> tuple[str, list[dict]]:
    """Train every name to `rungs[0]` epochs, keep the best `keep` share (at least one) by the
    accuracy after that many epochs, train those to the next rung, and so on. `train_to(names,
    epochs)` returns each name's curve (accuracy after each epoch, at least `epochs` long); ties
    go to the smaller `tie`. Returns the winner and each rung's {epochs, scores, kept}."""
    alive = list(names)
    history = []
    for number, epochs in enumerate(rungs):
        curves = train_to(alive, epochs)
        scores = {name: curves[name][epochs - 1] for name in alive}
        ranked = sorted(alive, key=lambda name: (-scores[name], tie(name), name))
        last = number == len(rungs) - 1
        kept = ranked[:1] if last else ranked[: max(1, math.ceil(len(alive) * keep))]
        history.append({"epochs": epochs, "scores": scores, "kept": kept})
        progress(
            f"rung {number + 1}/{len(rungs)} ({epochs} epochs): "
            + ", ".join(f"{name} {scores[name]:.4f}" for name in ranked)
            + ("" if last else f"; {len(kept)} go on")
        )
        alive = kept
    return alive[0], history


# ---- the stage -------------------------------------------------------------------------------------


def verify(
    run,
    candidates: Sequence,
    measure: Callable[[list[Arch]], list[float]],
    budget_ms: float,
    config: VerifyConfig,
    data: str,
    dataset,
    progress=print,
) -> dict:
    """Choose, re-measure and train a run's candidates (nas.selection.Candidate of its complete trials);
    writes and returns the record of verify.json (the pick under "pick")."""
    from nas.io import write_json
    from nas.rundir import VERIFY, VERIFY_JSON

    if config.candidates < 1:
        raise NasError(f"--verify {config.candidates}: verify at least 1 candidate (0 turns the verification off)")
    within = [c for c in candidates if c.latency_ms <= budget_ms]
    if not within:
        raise NasError(f"no trial met the budget {budget_ms} ms in the search: nothing to verify; raise the budget")
    chosen, checked = _chosen(run, within, measure, budget_ms, config, progress)
    named = {f"trial {c.trial}": (c, ms) for c, ms in chosen}
    rungs = config.epochs()
    progress(
        f"verifying {len(named)} candidate(s) under {budget_ms} ms by standalone training ({config.recipe.epochs}-epoch recipe, "
        f"seed {config.seed}; successive halving at {', '.join(map(str, rungs))} epochs; {config.jobs} process(es)): "
        + ", ".join(f"{name} (inherited {c.accuracy:.4f}, {ms:.4f} ms)" for name, (c, ms) in named.items())
    )
    trainer = Trainer(
        run.path(VERIFY), {name: c.arch for name, (c, _) in named.items()}, config, data, dataset, progress
    )
    try:
        winner, history = successive_halving(
            list(named), trainer, rungs, config.keep, tie=lambda name: named[name][1], progress=progress
        )
    except BaseException:
        trainer.stop()  # Ctrl-C, SIGTERM, an error: the runs in flight end now; their finished epochs are saved
        raise
    trainer.close()

    def reached(name: str) -> tuple[float, int]:
        epochs = max(h["epochs"] for h in history if name in h["scores"])
        return next(h["scores"][name] for h in history if h["epochs"] == epochs), epochs

    rows = []
    for name, (c, ms) in named.items():
        accuracy, epochs = reached(name)
        rows.append(
            {
                "trial": c.trial,
                "digest": c.arch.digest,
                "arch": c.arch.to_dict(),
                "inherited_accuracy": c.accuracy,
                "search_ms": c.latency_ms,
                "measured_ms": ms,
                "verified_accuracy": accuracy,
                "verified_epochs": epochs,
                "state": f"{VERIFY}/{state_path(Path(), c.arch, config.seed).name}",
            }
        )
    row = {r["trial"]: r for r in rows}
    pick = row[named[winner][0].trial]
    inherited = row[max(named.values(), key=lambda cm: (cm[0].accuracy, -cm[0].latency_ms))[0].trial]
    record = {
        "format": 1,
        "budget_ms": budget_ms,
        "recipe": config.recipe.to_dict(),
        "seed": config.seed,
        "rungs": rungs,
        "keep": config.keep,
        "candidates": rows,
        "history": [
            {
                "epochs": h["epochs"],
                "scores": {str(named[n][0].trial): v for n, v in h["scores"].items()},
                "kept": [named[n][0].trial for n in h["kept"]],
            }
            for h in history
        ],
        "pick": pick,
        "inherited_pick": inherited,
        "measured": checked,
        "train_seconds": round(trainer.seconds, 1),
    }
    write_json(run.path(VERIFY_JSON), record)
    progress(
        f"verified pick: trial {pick['trial']}, standalone val top-1 {pick['verified_accuracy']:.4f} after {pick['verified_epochs']} "
        f"epochs, {pick['measured_ms']:.4f} ms (the pick by inherited accuracy: trial {inherited['trial']}, "
        f"{inherited['verified_accuracy']:.4f} after {inherited['verified_epochs']} epochs)"
    )
    return record


def _chosen(
    run, within: Sequence, measure, budget_ms: float, config: VerifyConfig, progress
) -> tuple[list[tuple[object, float]], list[dict]]:
    """The candidates and their measured latency: chosen and measured once per set of feasible trials
    (verify/candidates.json), so that a resumed verification trains the same ones (a re-measurement
    would move a candidate near the budget in or out)."""
    import json

    from nas.io import write_json
    from nas.rundir import VERIFY_CANDIDATES

    key = {"budget_ms": budget_ms, "candidates": config.candidates, "trials": sorted(c.trial for c in within)}
    by_trial = {c.trial: c for c in within}
    path = run.path(VERIFY_CANDIDATES)
    try:
        saved = json.loads(path.read_text()) if path.is_file() else None
        if (
            saved
            and {k: saved[k] for k in key} == key
            and all(by_trial[r["trial"]].arch.digest == r["digest"] for r in saved["chosen"])
        ):
            progress(
                f"verification: the {len(saved['chosen'])} candidate(s) chosen and measured before (verify/candidates.json)"
            )
            return [(by_trial[r["trial"]], float(r["measured_ms"])) for r in saved["chosen"]], saved["measured"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # damaged or of an older search: chosen again
    chosen, checked = measured_candidates(
        preference(within, config.candidates), measure, budget_ms, config.candidates, progress
    )
    write_json(
        path,
        {
            **key,
            "chosen": [{"trial": c.trial, "digest": c.arch.digest, "measured_ms": ms} for c, ms in chosen],
            "measured": checked,
        },
    )
    return chosen, checked
