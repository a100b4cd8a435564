"""`nas bench truth`, `nas bench blockwise`, `nas bench pick`: the ground truth of the accuracy axis (archs trained
standalone) and what is scored against it."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from nas.commands.common import command_line, out_path, positive_float, positive_int
from nas.errors import NasError


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
        "--archs-from",
        type=Path,
        default=None,
        help="train the archs of this truth file, in its order, instead of choosing them (--mixed and --seed unused): "
        "a truth with another schedule or more seeds on the same archs, or one made before the choice changed",
    )
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
    from nas.space_file import load_space

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
        archs = truth.archs_of(args.archs_from, space) if args.archs_from is not None else None
        records = truth.run(space, data, out, config, progress=lambda line: print(line, flush=True), archs=archs)
    if not records:
        raise NasError(f"{out}: holds no finished run to summarise")
    summary = truth.summarize(records)
    print(truth.format_summary(summary))
    summary_path = out.with_name(out.stem + "_summary.json")
    here = {"command": command_line(), "machine": describe_device(torch.device("cpu"))}
    if args.summary:  # no training here: keep what the last training command recorded (where the runs trained)
        try:
            before = json.loads(summary_path.read_text())
        except (OSError, ValueError):
            before = {}
        trained = {key: before.get(key) for key in ("command", "machine", "config")}
        provenance = {**trained, "summarised_by": here}
    else:
        config_used = {
            "mixed": config.mixed,
            "second_seeds": config.second_seeds,
            "seed": config.seed,
            "archs_from": None if args.archs_from is None else str(args.archs_from),
        }
        provenance = {**here, "config": config_used}
    write_json(
        summary_path,
        {**provenance, "file": out.name, "recipe": records[0]["recipe"] if records else None, "summary": summary},
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

    from nas.bench import blockwise, fidelity, fidelity_report
    from nas.bench.truth import split_digest
    from nas.data import load_dataset
    from nas.latency import describe_device
    from nas.preflight import check_out_file
    from nas.space_file import load_space

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
    print(fidelity_report.format_summary(summary))
    paths = fidelity_report.write(
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
