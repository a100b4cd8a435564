"""`nas bench search`, `nas bench fidelity`: is the search's answer true?"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from nas.commands.common import (
    command_line,
    int_list,
    int_list_any,
    out_path,
    positive_float,
    positive_int,
    str_list,
)  # noqa: F401
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


def add_bench_fidelity(sub: argparse._SubParsersAction) -> None:
    from nas.bench.fidelity import FidelityConfig, Schedule

    d, s = FidelityConfig(), Schedule()
    p = sub.add_parser(
        "fidelity",
        help="does the supernet rank archs as standalone training does? (Kendall tau, per-kernel bias)",
        description="Train K archs of a run (stratified over predicted latency and kernel mix, with the largest and "
        "the smallest) standalone from scratch with S seeds, and compare their validation accuracy with the "
        "supernet's inherited accuracy: Kendall tau and Spearman rho with bootstrap 90%% intervals, seed noise, "
        "bias by kernel / width / depth. Writes fidelity_<space>.{csv,json,png} under --out.",
    )
    p.add_argument(
        "--run", type=Path, required=True, help="run directory with a trained supernet (and latency_table.json)"
    )
    p.add_argument(
        "--archs", type=positive_int, default=d.archs, help="archs to train standalone (default: %(default)s)"
    )
    p.add_argument("--seeds", type=positive_int, default=d.seeds, help="seeds per arch (default: %(default)s)")
    p.add_argument(
        "--steps", type=positive_int, default=s.steps, help="standalone training steps (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=positive_int, default=s.batch_size, help="default: %(default)s")
    p.add_argument("--lr", type=positive_float, default=s.lr, help="default: %(default)s")
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=d.jobs,
        help="parallel standalone runs, one thread each (default: %(default)s)",
    )
    p.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="an earlier fidelity JSON: reuse its standalone results for the same archs and schedule",
    )
    p.add_argument(
        "--seed", type=int, default=d.seed, help="seeds the choice of archs and the bootstrap (default: %(default)s)"
    )
    p.add_argument(
        "--truth",
        type=Path,
        default=None,
        help="a ground-truth file of `nas bench truth`: score the supernet against "
        "its archs and standalone accuracies instead of training (--archs, --seeds, --steps, --jobs, --reuse unused)",
    )
    p.add_argument("--tag", default=None, help="appended to the output names: fidelity_<space>_<tag>.* (default: none)")
    p.add_argument("--out", type=out_path, default=Path("results/bench"), help="output folder (default: results/bench)")
    p.set_defaults(func=run_bench_fidelity)


def run_bench_fidelity(args: argparse.Namespace) -> int:
    import torch

    from nas.bench import fidelity
    from nas.latency import describe_device
    from nas.rundir import RunDir

    if args.reuse is not None and not args.reuse.is_file():
        raise NasError(f"--reuse {args.reuse}: no such file")
    if args.truth is not None and args.reuse is not None:
        raise NasError("--truth and --reuse: pass one; a truth file already holds the standalone accuracies")
    if args.tag is not None and (not args.tag or any(c in args.tag for c in "/\\ ")):
        raise NasError(f"--tag {args.tag!r}: use a short name without spaces or slashes, e.g. seed1")
    space, _ = RunDir(args.run).space_and_data()
    schedule = fidelity.Schedule(steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    config = fidelity.FidelityConfig(
        archs=args.archs, seeds=args.seeds, schedule=schedule, jobs=args.jobs, seed=args.seed
    )
    started = time.perf_counter()
    progress = lambda line: print(line, flush=True)  # noqa: E731
    if args.truth is not None:
        rows, summary = fidelity.score_against_truth(args.run, args.truth, config, progress=progress)
    else:
        rows, summary = fidelity.run(args.run, config, args.reuse, progress=progress)
    print(fidelity.format_summary(summary))
    paths = fidelity.write(
        rows, summary, config, space.name, args.out, command_line(), describe_device(torch.device("cpu")), args.tag
    )
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min; wrote {', '.join(map(str, paths))}")
    return 0


def add_bench_zoo(sub: argparse._SubParsersAction) -> None:
    from nas.bench.zoo import ZooConfig

    d = ZooConfig()
    p = sub.add_parser(
        "zoo",
        help="per-kernel trade-off table: standalone accuracy of uniform archs, MACs, params, CPU layer latency",
        description="For each kernel choice and kernel variant of a space, train its uniform arch (the largest, every "
        "layer that kernel) standalone from scratch with one fixed short schedule and S seeds on the space's "
        "embedded task; report validation accuracy, MACs, params and the CPU latency of one layer at 196 and 1024 "
        "tokens. The angular rows are also trained with Castling-ViT's annealed auxiliary branch (+aux). Writes "
        "zoo_<space>.{csv,json} under --out.",
    )
    p.add_argument("--space", default="digits-tiny", help="search space name or YAML path (default: digits-tiny)")
    p.add_argument("--seeds", type=positive_int, default=d.seeds, help="seeds per arch (default: %(default)s)")
    p.add_argument(
        "--steps", type=positive_int, default=d.schedule.steps, help="standalone training steps (default: %(default)s)"
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=d.jobs,
        help="parallel standalone runs, one thread each (default: %(default)s)",
    )
    p.add_argument(
        "--tokens",
        type=int_list,
        default=list(d.tokens),
        help="square token counts of the latency columns (default: 196,1024)",
    )
    p.add_argument("--no-ablation", action="store_true", help="skip the angular rows with the auxiliary branch")
    p.add_argument("--out", type=out_path, default=Path("results/bench"), help="output folder (default: results/bench)")
    p.set_defaults(func=run_bench_zoo)


def run_bench_zoo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import torch

    from nas.bench import zoo
    from nas.latency import describe_device
    from nas.space import load_space

    space = load_space(args.space)
    bad = [t for t in args.tokens if round(t**0.5) ** 2 != t]
    if bad:
        raise NasError(
            f"--tokens {bad[0]}: the latency columns use square token grids; use e.g. 196 (14x14) or 1024 (32x32)"
        )
    d = zoo.ZooConfig()
    config = zoo.ZooConfig(
        seeds=args.seeds,
        schedule=replace(d.schedule, steps=args.steps),
        jobs=args.jobs,
        tokens=tuple(args.tokens),
        ablation=not args.no_ablation,
    )
    started = time.perf_counter()
    rows = zoo.run(space, config, progress=lambda line: print(line, flush=True))
    print(zoo.format_table(rows))
    seconds = time.perf_counter() - started
    paths = zoo.write(rows, config, space.name, args.out, command_line(), describe_device(torch.device("cpu")), seconds)
    print(f"done in {seconds / 60:.1f} min; wrote {', '.join(map(str, paths))}")
    return 0


def add_bench_truth(sub: argparse._SubParsersAction) -> None:
    from nas.bench.truth import Recipe, TruthConfig

    d, r = TruthConfig(), Recipe()
    p = sub.add_parser(
        "truth",
        help="the ground truth of the accuracy axis: stratified archs trained standalone, a curve per run",
        description="Train a stratified set of archs of a space standalone from scratch (each kernel choice alone at "
        "the middle widths, the largest, the smallest, and mixed archs over the MACs range), one recipe, validation "
        "accuracy after every epoch; a second seed for some archs gives the noise ceiling. Appends one JSON line per "
        "(arch, seed) to --out and continues a stopped run (the same command). `nas bench fidelity --truth FILE` scores "
        "a supernet against the file. Hours on 2 cores for the default space.",
    )
    p.add_argument("--space", default="odd-one-out", help="search space name or YAML path (default: %(default)s)")
    p.add_argument("--data", default=None, help="dataset (default: the space's own, e.g. odd-one-out)")
    p.add_argument(
        "--mixed",
        type=positive_int,
        default=d.mixed,
        help="mixed archs beside the single-kernel, largest and smallest ones (default: %(default)s)",
    )
    p.add_argument(
        "--second-seeds",
        type=positive_int,
        default=d.second_seeds,
        help="archs that also train a second seed (default: %(default)s)",
    )
    p.add_argument(
        "--epochs", type=positive_int, default=r.epochs, help="standalone training epochs (default: %(default)s)"
    )
    p.add_argument("--lr", type=positive_float, default=r.lr, help="default: %(default)s")
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=d.jobs,
        help="parallel standalone runs, one thread each (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the choice of mixed archs (default: %(default)s)")
    p.add_argument(
        "--out", type=out_path, default=None, help="the JSON-lines file (default: results/bench/truth_<space>.jsonl)"
    )
    p.add_argument("--summary", action="store_true", help="only summarise what --out holds (no training)")
    p.set_defaults(func=run_bench_truth, on_stop="same")


def run_bench_truth(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import torch

    from nas.bench import truth
    from nas.io import write_json
    from nas.latency import describe_device
    from nas.preflight import check_out_file
    from nas.space import load_space

    space = load_space(args.space)
    data = args.data or space.data
    out = args.out or Path("results/bench") / f"truth_{space.name}.jsonl"
    check_out_file(out)  # the default path (an explicit --out was checked before the command)
    d = truth.TruthConfig()
    config = replace(
        d,
        mixed=args.mixed,
        second_seeds=args.second_seeds,
        jobs=args.jobs,
        seed=args.seed,
        recipe=replace(d.recipe, epochs=args.epochs, lr=args.lr),
    )
    started = time.perf_counter()
    if args.summary:
        records, cut = truth.read(out)
        print(f"{out}: {len(records)} runs" + (f" ({cut} cut line(s) ignored)" if cut else ""))
    else:
        records = truth.run(space, data, out, config, progress=lambda line: print(line, flush=True))
    if not records:
        raise NasError(f"{out}: holds no finished run to summarise")
    summary = truth.summarize(records)
    print(truth.format_summary(summary))
    summary_path = out.with_name(out.stem + "_summary.json")
    write_json(
        summary_path,
        {
            "command": command_line(),
            "machine": describe_device(torch.device("cpu")),
            "file": out.name,
            "config": {"mixed": config.mixed, "second_seeds": config.second_seeds, "seed": config.seed},
            "recipe": records[0]["recipe"] if records else None,
            "summary": summary,
        },
    )
    print(
        f"done in {(time.perf_counter() - started) / 60:.1f} min; {out} holds {len(records)} runs; wrote {summary_path}"
    )
    return 0


def add_bench_blockwise(sub: argparse._SubParsersAction) -> None:
    from nas.bench.blockwise import BlockwiseConfig

    d = BlockwiseConfig()
    p = sub.add_parser(
        "blockwise",
        help="the block-wise estimator (local distillation from standalone parents) scored against the ground truth",
        description="Train one standalone softmax parent per embed dim of a space (the ground truth's recipe), then for "
        "each parent layer one student block per kernel choice (widths entangled) to reproduce the parent block's "
        "output from its input; score the parent with each block replaced (or skipped) on the validation split, and "
        "predict every arch of a ground-truth file as parent accuracy plus its replacements' changes: Kendall tau, bias "
        "by kernel. Appends one JSON line per (embed dim, layer) to --table and continues a stopped run (the same "
        "command); parents' states under --work. Writes fidelity_<space>_truth-blockwise.{csv,json,png} under --out.",
    )
    p.add_argument("--space", default="odd-one-out", help="search space name or YAML path (default: %(default)s)")
    p.add_argument("--data", default=None, help="dataset (default: the space's own)")
    p.add_argument(
        "--truth", type=Path, default=None, help="ground-truth file (default: results/bench/truth_<space>.jsonl)"
    )
    p.add_argument(
        "--local-epochs",
        type=positive_int,
        default=d.local.epochs,
        help="local distillation epochs per layer (default: %(default)s)",
    )
    p.add_argument(
        "--jobs", type=positive_int, default=d.jobs, help="parallel processes, one thread each (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the parents and the students (default: %(default)s)")
    p.add_argument(
        "--table", type=out_path, default=None, help="the JSON-lines table (default: <out>/blockwise_<space>.jsonl)"
    )
    p.add_argument(
        "--work", type=Path, default=None, help="parents' saved states (default: /tmp/nas-blockwise-<space>)"
    )
    p.add_argument(
        "--tag", default="truth-blockwise", help="output names: fidelity_<space>_<tag>.* (default: %(default)s)"
    )
    p.add_argument("--out", type=out_path, default=Path("results/bench"), help="output folder (default: results/bench)")
    p.set_defaults(func=run_bench_blockwise, on_stop="same")


def run_bench_blockwise(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import torch

    from nas.bench import blockwise, fidelity
    from nas.bench.truth import split_digest
    from nas.data import load_dataset
    from nas.latency import describe_device
    from nas.preflight import check_out_file
    from nas.space import load_space

    space = load_space(args.space)
    data = args.data or space.data
    truth_path = args.truth or Path("results/bench") / f"truth_{space.name}.jsonl"
    if not truth_path.is_file():
        raise NasError(f"--truth {truth_path}: no such file; make one with `nas bench truth --space {space.name}`")
    if not args.tag or any(c in args.tag for c in "/\\ "):
        raise NasError(f"--tag {args.tag!r}: use a short name without spaces or slashes")
    table_path = args.table or args.out / f"blockwise_{space.name}.jsonl"
    check_out_file(table_path)  # an explicit --out was checked before the command; the table may lie elsewhere
    work = args.work or Path("/tmp") / f"nas-blockwise-{space.name}"
    d = blockwise.BlockwiseConfig()
    config = replace(d, jobs=args.jobs, seed=args.seed, local=replace(d.local, epochs=args.local_epochs))
    started = time.perf_counter()
    split = split_digest(load_dataset(data, space.image_size, space.in_chans).split)
    blockwise.read_truth(
        space, truth_path, split, data
    )  # a truth of another space, data or split: refused before the work
    say = lambda line: print(line, flush=True)  # noqa: E731
    table = blockwise.run(space, data, split, table_path, work, config, progress=say)
    rows, summary = blockwise.score_against_truth(table, space, truth_path, split, data)
    print(fidelity.format_summary(summary))
    paths = fidelity.write(
        rows,
        summary,
        fidelity.FidelityConfig(),
        space.name,
        args.out,
        command_line(),
        describe_device(torch.device("cpu")),
        args.tag,
        xlabel="predicted accuracy (block-wise table, val)",
    )
    print(
        f"done in {(time.perf_counter() - started) / 60:.1f} min; {table_path} complete; wrote {', '.join(map(str, paths))}"
    )
    return 0


def add_bench_pick(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pick",
        help="a run's verified pick against the best ground-truth arch under its budget",
        description="Measure every arch of a ground-truth file (nas bench truth) on this machine with the run's profiler, keep "
        "those within the run's budget, and report the best of them beside the run's verified pick (nas verify / nas run) and "
        "the pick by inherited accuracy alone (trained on to the whole recipe if the halving stopped it). Writes "
        "pick_<space>.json under --out.",
    )
    p.add_argument("--run", type=Path, required=True, help="a verified run directory")
    p.add_argument("--truth", type=Path, required=True, help="the ground-truth file of the run's space and data")
    p.add_argument("--jobs", type=positive_int, default=2, help="training processes (default: %(default)s)")
    p.add_argument("--out", type=out_path, default=Path("results/bench"), help="output folder (default: results/bench)")
    p.set_defaults(func=run_bench_pick, on_stop="same")


def run_bench_pick(args: argparse.Namespace) -> int:
    import torch

    from nas.bench import pick
    from nas.io import write_json
    from nas.latency import describe_device
    from nas.rundir import RunDir

    started = time.perf_counter()
    result = pick.run(args.run, args.truth, args.jobs, progress=lambda line: print(line, flush=True))
    print(pick.format_result(result))
    space, _ = RunDir(args.run).space_and_data()
    path = args.out / f"pick_{space.name}.json"
    write_json(
        path,
        {
            "command": command_line(),
            "machine": describe_device(torch.device("cpu")),
            **result,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min; wrote {path}")
    return 0
