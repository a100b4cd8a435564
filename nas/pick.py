"""`nas run`'s last stages: the pick among the feasible trials (verified standalone by nas.verify, or measured
again against the budget), the result record in manifest.json, and the pick's export into exports/best."""

from __future__ import annotations

import time

from nas.budget import no_feasible_trial
from nas.config import RunConfig
from nas.rundir import EXPORTS, Manifest, RunDir


def pick_and_export(
    config: RunConfig,
    run: RunDir,
    space,
    dataset,
    manifest: Manifest,
    profiler,
    table,
    budget: float,
    study,
    trials: list,
    failed: list,
    storage: str,
    progress,
    compute,
) -> dict:
    """The pick, its result (manifest.json's result section, returned) and its export."""
    from nas import feasibility, report
    from nas.evaluate import accuracy
    from nas.selection import pick_within_budget

    # the pick: the most accurate feasible arch whose model, measured again now, meets the budget
    feasible = [t for t in trials if t.state.name == "COMPLETE" and feasibility.feasible(t)]
    if not feasible:
        manifest.data["result"] = None
        manifest.save()
        raise no_feasible_trial(study, budget)
    previous = manifest.data.get("result") or {}
    if (
        manifest.done("export")
        and previous.get("export")
        and previous.get("trials_seen") == len(trials)
        and previous.get("verify") == config.verify
    ):
        return previous  # an interrupted run resumed after its export: nothing changed
    candidates = [candidate_of(t, space) for t in feasible]
    verification = None
    if config.verify:
        from nas.standalone import Recipe
        from nas.verify import VerifyConfig, verify

        started = time.perf_counter()
        progress(f"== verify: the best of {len(feasible)} feasible trial(s), measured again and trained standalone")
        manifest.record("verify", 0.0, False)
        verify_config = VerifyConfig(
            candidates=config.verify,
            recipe=Recipe(epochs=config.verify_epochs),
            seed=config.seed,
            jobs=config.evaluators,
            device=str(compute.device),
        )
        try:
            verification = verify(
                run, candidates, profiler.measure_models, budget, verify_config, config.data, dataset, progress
            )
        finally:
            manifest.record("verify", time.perf_counter() - started, False)
        manifest.record(
            "verify",
            0.0,
            True,
            candidates=len(verification["candidates"]),
            train_seconds=verification["train_seconds"],
            pick=verification["pick"]["trial"],
            inherited_pick=verification["inherited_pick"]["trial"],
        )
        if run.owns_storage(storage):
            report.mark_verified(run.root, run.verified())
        chosen = next(c for c in candidates if c.trial == verification["pick"]["trial"])
        measured_ms, checked = verification["pick"]["measured_ms"], verification["measured"]
    else:
        progress(f"re-measuring the most accurate of {len(feasible)} feasible trial(s) against the budget...")
        chosen, measured_ms, checked = pick_within_budget(
            candidates, profiler.measure_models, budget, progress=progress
        )
    best = next(t for t in feasible if t.number == chosen.trial)
    arch = chosen.arch
    result = {
        "trial": best.number,
        "arch": arch.to_dict(),
        "digest": arch.digest,
        "val_accuracy": best.values[0],
        "test_accuracy": accuracy(run.supernet(space).to(compute.device), arch, dataset, "test", compute=compute),
        "predicted_latency_ms": best.user_attrs.get("predicted_ms", table.predict(arch)),
        "search_latency_ms": best.values[1],
        "measured_latency_ms": measured_ms,
        "latency_source": best.user_attrs.get("latency_source", "predicted"),
        "budget_ms": budget,
        "pick": checked,
        "verify": config.verify,
        "verified": None
        if verification is None
        else {
            "val_accuracy": verification["pick"]["verified_accuracy"],
            "epochs": verification["pick"]["verified_epochs"],
            "inherited_pick": {
                k: verification["inherited_pick"][k]
                for k in ("trial", "inherited_accuracy", "verified_accuracy", "verified_epochs")
            },
        },
        "trials_seen": len(trials),
        "failed_trials": [t.number for t in failed],
    }
    verified_line = (
        ""
        if verification is None
        else f", verified standalone val top-1 {verification['pick']['verified_accuracy']:.4f}"
    )
    progress(
        f"best feasible arch (trial {best.number}): inherited test top-1 {result['test_accuracy']:.4f}{verified_line}, measured again "
        f"{measured_ms:.4f} ms <= budget {budget} ms (search {best.values[1]:.4f} ms {result['latency_source']}, prior "
        f"{result['predicted_latency_ms']:.4f} ms)"
    )
    if (
        manifest.done("export")
        and previous.get("trial") == best.number
        and previous.get("export")
        and previous.get("verify") == config.verify
    ):
        result["export"] = previous["export"]  # exports/best already holds this trial
        if result["verified"] is not None and "test_accuracy" in (previous.get("verified") or {}):
            result["verified"]["test_accuracy"] = previous["verified"]["test_accuracy"]
    manifest.data["result"] = result
    manifest.save()

    # 4. export (again when an extended search found a better arch than the one exported)
    if "export" not in result:
        _export(run, best, result, verification, measured_ms, checked, budget, manifest, progress, compute)
    return result


def _export(
    run: RunDir,
    best,
    result: dict,
    verification,
    measured_ms: float,
    checked,
    budget: float,
    manifest,
    progress,
    compute,
) -> None:
    """The pick into exports/best; its figures into `result`, saved in the manifest."""
    from nas.stages import export_stage

    started = time.perf_counter()
    progress(f"== export: the best feasible arch (trial {best.number}) -> {EXPORTS}/best")
    manifest.record("export", 0.0, False)
    meta = export_stage(
        run,
        best.number,
        run.path(EXPORTS) / "best",
        progress=progress,
        overwrite=True,
        compute=compute,
        budget_ms=budget,
        measured_ms=measured_ms,
        pick=checked,
        verified=None if verification is None else verification["pick"],
    )
    result["export"] = {
        "dir": "exports/best",
        "trial": best.number,
        "predicted_ms": meta["latency"]["predicted_ms"],
        "measured_ms": meta["latency"]["measured_ms"],
        "weights": meta["accuracy"]["exported_weights"],
    }
    if verification is not None:
        result["verified"]["test_accuracy"] = meta["accuracy"]["verified"]["test"]
    manifest.record(
        "export", time.perf_counter() - started, True, trial=best.number, latency=meta["latency"]["measured_ms"]
    )
    manifest.data["result"] = result
    manifest.save()


def candidate_of(trial, space):
    """A feasible trial as a selection candidate (its search latency: measured, or predicted)."""
    from nas.selection import Candidate
    from nas.study_trials import arch_of

    return Candidate(
        trial.number,
        trial.values[0],
        trial.values[1],
        trial.user_attrs["macs"],
        trial.user_attrs["params"],
        arch_of(trial, space),
    )
