"""`nas bench fidelity`, `nas bench zoo`: is the search's answer true? The supernet's ranking against standalone
training, and the per-kernel trade-off table of standalone accuracy."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from nas.commands.common import command_line, int_list, out_path, positive_float, positive_int
from nas.errors import NasError


def add_bench_fidelity(sub: argparse._SubParsersAction) -> None:
    from nas.bench.fidelity import FidelityConfig

    d = FidelityConfig()
    s = d.recipe
    p = sub.add_parser(
        "fidelity",
        help="does the supernet rank archs as standalone training does? (Kendall tau, per-kernel bias)",
        description="Train K archs of a run (stratified over predicted latency and kernel mix, with the largest and "
        "the smallest) standalone from scratch with S seeds, and compare their validation accuracy with the "
        "supernet's inherited accuracy: Kendall tau and Spearman rho with bootstrap 90%% intervals, seed noise, "
        "bias by kernel / width / depth. Writes fidelity_<space>.{csv,json,png} under --out.",
    )
    p.add_argument(
        "--run",
        type=Path,
        default=None,
        help="run directory with a trained supernet (and latency_table.json); required unless --rescore",
    )
    p.add_argument(
        "--archs", type=positive_int, default=d.archs, help="archs to train standalone (default: %(default)s)"
    )
    p.add_argument("--seeds", type=positive_int, default=d.seeds, help="seeds per arch (default: %(default)s)")
    p.add_argument(
        "--epochs", type=positive_int, default=s.epochs, help="standalone training epochs (default: %(default)s)"
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
        help="an earlier fidelity JSON: reuse its standalone results for the same archs and recipe",
    )
    p.add_argument(
        "--seed", type=int, default=d.seed, help="seeds the choice of archs and the bootstrap (default: %(default)s)"
    )
    p.add_argument(
        "--truth",
        type=Path,
        default=None,
        help="a ground-truth file of `nas bench truth`: score the supernet against "
        "its archs and standalone accuracies instead of training (--archs, --seeds, --epochs, --jobs, --reuse unused)",
    )
    p.add_argument(
        "--rescore",
        type=Path,
        default=None,
        help="a fidelity JSON that an earlier --truth scoring wrote: score the inherited accuracies it recorded "
        "against --truth (another truth file of the same archs: a longer schedule, more seeds) without the supernet",
    )
    p.add_argument("--tag", default=None, help="appended to the output names: fidelity_<space>_<tag>.* (default: none)")
    p.add_argument("--out", type=out_path, default=Path("results/bench"), help="output folder (default: results/bench)")
    p.set_defaults(func=run_bench_fidelity)


def run_bench_fidelity(args: argparse.Namespace) -> int:
    import torch

    from nas.bench import fidelity, fidelity_report
    from nas.latency import describe_device
    from nas.rundir import RunDir

    if args.reuse is not None and not args.reuse.is_file():
        raise NasError(f"--reuse {args.reuse}: no such file")
    if args.truth is not None and args.reuse is not None:
        raise NasError("--truth and --reuse: pass one; a truth file already holds the standalone accuracies")
    if args.tag is not None and (not args.tag or any(c in args.tag for c in "/\\ ")):
        raise NasError(f"--tag {args.tag!r}: use a short name without spaces or slashes, e.g. seed1")
    if args.rescore is not None:
        if args.truth is None:
            raise NasError("--rescore: also pass --truth FILE, the truth to score the recorded accuracies against")
        if args.run is not None:
            raise NasError("--rescore and --run: pass one; --rescore takes the inherited accuracies from its file")
        if not args.rescore.is_file():
            raise NasError(f"--rescore {args.rescore}: no such file")
    elif args.run is None:
        raise NasError("--run: required (a run directory with a trained supernet), unless --rescore FILE")
    recipe = replace(fidelity.FidelityConfig().recipe, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    config = fidelity.FidelityConfig(archs=args.archs, seeds=args.seeds, recipe=recipe, jobs=args.jobs, seed=args.seed)
    started = time.perf_counter()
    progress = lambda line: print(line, flush=True)  # noqa: E731
    if args.rescore is not None:
        rows, summary = fidelity.rescore_against_truth(args.rescore, args.truth, config, progress=progress)
        space_name = summary["space"]
    else:
        space_name = RunDir(args.run).space_and_data()[0].name
        if args.truth is not None:
            rows, summary = fidelity.score_against_truth(args.run, args.truth, config, progress=progress)
        else:
            rows, summary = fidelity.run(args.run, config, args.reuse, progress=progress)
    print(fidelity_report.format_summary(summary))
    paths = fidelity_report.write(
        rows, summary, config, space_name, args.out, command_line(), describe_device(torch.device("cpu")), args.tag
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
        "layer that kernel) standalone from scratch with the ground truth's recipe and S seeds on the space's "
        "embedded task; report validation accuracy, MACs, params and the CPU latency of one layer at 196 and 1024 "
        "tokens. The angular rows are also trained with Castling-ViT's annealed auxiliary branch (+aux). Writes "
        "zoo_<space>.{csv,json} under --out.",
    )
    p.add_argument("--space", default="digits-tiny", help="search space name or YAML path (default: digits-tiny)")
    p.add_argument("--seeds", type=positive_int, default=d.seeds, help="seeds per arch (default: %(default)s)")
    p.add_argument(
        "--epochs", type=positive_int, default=d.recipe.epochs, help="standalone training epochs (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=positive_int, default=d.recipe.batch_size, help="default: %(default)s")
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
    import torch

    from nas.bench import zoo
    from nas.latency import describe_device
    from nas.space_file import load_space

    space = load_space(args.space)
    bad = [t for t in args.tokens if round(t**0.5) ** 2 != t]
    if bad:
        raise NasError(
            f"--tokens {bad[0]}: the latency columns use square token grids; use e.g. 196 (14x14) or 1024 (32x32)"
        )
    d = zoo.ZooConfig()
    config = zoo.ZooConfig(
        seeds=args.seeds,
        recipe=replace(d.recipe, epochs=args.epochs, batch_size=args.batch_size),
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
