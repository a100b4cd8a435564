"""`nas bench search`: is the search's answer good? The samplers' hypervolume against random search and a brute-force
front; evaluator throughput."""

from __future__ import annotations

import argparse
from pathlib import Path

from nas.commands.common import command_line, int_list_any, out_path, positive_float, positive_int, str_list
from nas.errors import NasError


def add_bench_search(sub: argparse._SubParsersAction) -> None:
    from nas.bench.search import SearchBenchConfig

    d = SearchBenchConfig()
    p = sub.add_parser(
        "search",
        help="hypervolume of TPE / NSGA-II / GP vs random search; evaluator throughput",
        description="On a run with a trained supernet and latency table: run T trials per sampler and seed in fresh "
        "in-memory studies, compare the hypervolume of the feasible fronts (also after --checkpoints trials) with a "
        "brute-force front of random archs, judge issue 26's targets per seed, and time 1 vs 2 evaluator actors. "
        "Resumable: scores and finished studies are kept one per line under --out; run it again to continue.",
    )
    p.add_argument(
        "--run", type=Path, required=True, help="run directory with supernet.safetensors and latency_table.json"
    )
    p.add_argument("--trials", type=positive_int, default=d.trials, help="trials per study (default: %(default)s)")
    p.add_argument("--seeds", type=int_list_any, default=d.seeds, help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--samplers", type=str_list, default=d.samplers, help="default: " + ",".join(d.samplers))
    p.add_argument(
        "--checkpoints",
        type=int_list_any,
        default=d.checkpoints,
        help="trial counts at which the hypervolume is also reported (default: "
        + ",".join(map(str, d.checkpoints))
        + ")",
    )
    p.add_argument(
        "--budget-ms",
        type=positive_float,
        default=None,
        help="default: the run's budget (manifest), else the default rule",
    )
    p.add_argument(
        "--ref-accuracy",
        type=float,
        default=None,
        help="accuracy of the hypervolume reference point (default: the median accuracy of the feasible reference archs)",
    )
    p.add_argument(
        "--reference-archs",
        type=positive_int,
        default=d.reference_archs,
        help="random archs of the brute-force reference front (default: %(default)s)",
    )
    p.add_argument(
        "--evaluators", type=positive_int, default=2, help="evaluator actors for the searches (default: %(default)s)"
    )
    p.add_argument("--out", type=out_path, default=Path("results/bench"), help="output folder (default: results/bench)")
    p.set_defaults(func=run_bench_search)


def run_bench_search(args: argparse.Namespace) -> int:
    from nas.bench import search as bench
    from nas.budget import resolve_budget
    from nas.rundir import WEIGHTS, RunDir
    from nas.study import SAMPLERS
    from workers.cluster import init_ray, require_ray

    require_ray("nas bench search (it times 1 and 2 evaluator actors)", "ray[default]")
    from workers.evaluator import EvaluatorPool

    bad = [s for s in args.samplers if s not in SAMPLERS]
    if bad:
        raise NasError(f"--samplers: unknown {', '.join(bad)}; use {', '.join(SAMPLERS)}")
    if "random" not in args.samplers:
        raise NasError("--samplers must include random: it is the baseline")
    run = RunDir(args.run)
    space, _ = run.space_and_data()
    if not run.has(WEIGHTS):
        raise NasError(f"{args.run} holds no {WEIGHTS}; train the supernet first (nas train --out {args.run})")
    table = run.table(space)
    budget = resolve_budget(
        space,
        table,
        args.budget_ms if args.budget_ms is not None else run.budget(),
        lambda line: print(line, flush=True),
    )
    config = bench.SearchBenchConfig(
        trials=args.trials,
        seeds=tuple(args.seeds),
        samplers=tuple(args.samplers),
        checkpoints=tuple(args.checkpoints),
        ref_accuracy=args.ref_accuracy,
        reference_archs=args.reference_archs,
    )
    print(
        f"nas bench search: {space.name}, {config.trials} trials × seeds {list(config.seeds)} × {list(config.samplers)}, "
        f"budget {budget} ms, reference: {config.reference_archs} random archs",
        flush=True,
    )
    init_ray(None)
    import ray

    from nas.evaluate import evaluation_state
    from nas.rundir import SPLIT, TABLE

    state = ray.put(evaluation_state(args.run))
    scores_key = bench.file_digest(run.path(WEIGHTS), run.path(SPLIT))
    studies_key = {"scores": scores_key, "table": bench.file_digest(run.path(TABLE)), "budget_ms": budget}
    scores_log = args.out / f"search_{space.name}_scores.jsonl"
    studies_log = args.out / f"search_{space.name}_studies.jsonl"
    pool = EvaluatorPool(state, args.evaluators)
    say = lambda line: print(line, flush=True)  # noqa: E731
    try:
        evaluate = bench.CachedEvaluate(pool, scores_log, scores_key)
        if evaluate.cache:
            say(f"{len(evaluate.cache)} archs already scored with this supernet ({scores_log})")
        points = bench.reference_points(space, table, evaluate, config.reference_archs, progress=say)
        front = bench.front_of(points, budget)
        feasible = sorted(acc for acc, lat in points if lat <= budget)
        if not feasible:
            raise NasError(
                f"none of the {len(points)} reference archs is within the budget of {budget} ms; raise --budget-ms"
            )
        ref_accuracy = config.ref_accuracy if config.ref_accuracy is not None else feasible[len(feasible) // 2]
        reference_hv = bench.hypervolume(front, ref_accuracy, budget)
        print(
            f"reference front: {len(front)} archs from {len(points)} random ({len(feasible)} feasible); reference point "
            f"accuracy {ref_accuracy:.4f}; hypervolume {reference_hv:.5f}",
            flush=True,
        )
        rows = bench.run_samplers(
            space,
            table,
            pool,
            budget,
            config,
            ref_accuracy,
            reference_hv,
            evaluate,
            progress=say,
            log=studies_log,
            key=studies_key,
        )
    finally:
        pool.shutdown()
    summary = bench.summarize(rows)
    for sampler, stats in summary.items():
        print(
            f"{sampler:7s} hypervolume {stats['share_mean']:.1%} of the reference on average (min {stats['share_min']:.1%}, "
            f"max {stats['share_max']:.1%}; absolute {stats['mean']:.5f} ± {stats['stdev']:.5f})"
        )
    goals = bench.targets(rows, config)
    for name, goal in goals.items():
        figures = goal.get("per_seed") or goal.get("hypervolume_minus_random_per_seed")
        print(
            f"target {name}: {'met' if goal['met'] else 'NOT met'} ({', '.join(f'seed {k}: {v:.4g}' for k, v in figures.items())})"
        )
    rates = bench.throughput(space, lambda size: EvaluatorPool(state, size), archs=config.throughput_archs)
    print(
        "evaluation throughput: " + ", ".join(f"{size} evaluator(s) {rate:.1f} archs/s" for size, rate in rates.items())
    )
    reference = {
        "archs": len(points),
        "feasible": len(feasible),
        "ref_accuracy": ref_accuracy,
        "hypervolume": reference_hv,
        "front": [{"accuracy": a, "latency_ms": ms} for a, ms in front],
    }
    import torch

    from nas.latency import describe_device

    paths = bench.write_results(
        rows,
        summary,
        rates,
        config,
        space.name,
        budget,
        args.out,
        command_line(),
        reference,
        describe_device(torch.device("cpu")),
        goals,
    )
    print(f"wrote {', '.join(map(str, paths))}")
    return 0
