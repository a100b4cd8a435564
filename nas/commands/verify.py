"""`nas verify`: train a run's best candidates under its budget standalone and export the verified pick."""

from __future__ import annotations

import argparse
from pathlib import Path

from nas.commands.common import out_path
from nas.errors import NasError


def add_verify(commands: argparse._SubParsersAction) -> None:
    from nas import settings
    from nas.config_stages import VerifySettings

    p = commands.add_parser(
        "verify",
        help="train a run's best candidates under its budget standalone; export the verified pick",
        description="Choose a run's best candidates under the budget (spread over the front's latency range), "
        "measure them again, train them standalone with successive halving (the ground truth's recipe), and "
        "export the most accurate by verified accuracy. Resumable: run it again to continue. The settings are the "
        "fields of nas.config_stages.VerifySettings.",
    )
    p.add_argument("--run", type=Path, required=True, help="run directory (a finished search)")
    p.add_argument(
        "--out",
        type=out_path,
        default=None,
        help="export directory of the pick (default: <run>/exports/best, replaced)",
    )
    settings.add_flags(p, VerifySettings)
    p.set_defaults(func=run_verify, on_stop="same")


def run_verify(args: argparse.Namespace) -> int:
    import time

    from nas import report, settings
    from nas.compute import Compute
    from nas.config_stages import VerifySettings
    from nas.exporter import export
    from nas.io import write_json
    from nas.preflight import check_out_dir
    from nas.rundir import EXPORTS, MANIFEST, TABLE, RunDir
    from nas.selection import by_trial, load_candidates
    from nas.stages import trial_profiler
    from nas.standalone import Recipe
    from nas.verify import VerifyConfig, verify

    options = settings.from_args(VerifySettings, args)
    run = RunDir(args.run)
    space, data = run.space_and_data()
    candidates = load_candidates(args.run)
    budget = options.budget_ms if options.budget_ms is not None else run.budget()
    if budget is None:
        raise NasError(f"{args.run} records no budget (a search without --budget-ms): pass --budget-ms")
    out = args.out or run.path(EXPORTS) / "best"
    check_out_dir(out)
    profiler = trial_profiler(
        run.table(space), run.path(TABLE)
    )  # refused in one line when this machine is not the run's device
    compute = Compute.parse(options.compute_device, options.precision)
    manifest = run.manifest_data() if run.has(MANIFEST) else None
    seed = options.seed if options.seed is not None else int((manifest or {}).get("settings", {}).get("seed", 0))
    dataset = run.dataset(space, data)
    progress = lambda line: print(line, flush=True)  # noqa: E731
    progress(
        f"nas verify: {args.run}, budget {budget} ms, {options.candidates} candidate(s), {options.jobs} process(es) on {compute.device}"
    )
    started = time.perf_counter()
    config = VerifyConfig(
        candidates=options.candidates,
        recipe=Recipe(epochs=options.epochs),
        seed=seed,
        jobs=options.jobs,
        device=str(compute.device),
    )
    record = verify(run, candidates, profiler.measure_models, budget, config, data, dataset, progress)
    report.mark_verified(run.root, run.verified())
    pick = record["pick"]
    meta = export(
        run.root,
        by_trial(candidates, pick["trial"]),
        out,
        overwrite=True,
        progress=progress,
        compute=compute,
        budget_ms=budget,
        measured_ms=pick["measured_ms"],
        pick=record["measured"],
        verified=pick,
    )
    if manifest is not None and out == run.path(EXPORTS) / "best":  # the run's own pick is now this one
        manifest.setdefault("stages", {})["verify"] = {
            "seconds": round(time.perf_counter() - started, 2),
            "completed": True,
            "candidates": len(record["candidates"]),
            "pick": pick["trial"],
            "by": "nas verify",
        }
        result = manifest.get("result") or {}
        result.update(
            trial=pick["trial"],
            digest=pick["digest"],
            arch=pick["arch"],
            val_accuracy=pick["inherited_accuracy"],
            measured_latency_ms=pick["measured_ms"],
            budget_ms=budget,
            verify=options.candidates,
            pick=record["measured"],
            verified={
                "val_accuracy": pick["verified_accuracy"],
                "epochs": pick["verified_epochs"],
                "test_accuracy": meta["accuracy"]["verified"]["test"],
                "inherited_pick": {
                    k: record["inherited_pick"][k]
                    for k in ("trial", "inherited_accuracy", "verified_accuracy", "verified_epochs")
                },
            },
            export={
                "dir": f"{EXPORTS}/best",
                "trial": pick["trial"],
                "predicted_ms": meta["latency"]["predicted_ms"],
                "measured_ms": meta["latency"]["measured_ms"],
                "weights": "verified",
            },
        )
        result.pop("test_accuracy", None)  # the inherited test figure of the previous pick
        manifest["result"] = result
        write_json(run.path(MANIFEST), manifest)
    print(
        f"exported trial {pick['trial']} with its verified weights to {out}: val top-1 {meta['accuracy']['verified']['val']:.4f}, "
        f"test {meta['accuracy']['verified']['test']:.4f}; {pick['measured_ms']:.4f} ms measured (budget {budget} ms)"
    )
    return 0
