"""The `nas` command line: assembles the subcommands of nas.commands.

User mistakes raise `NasError`; `main` prints them as one line and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from nas.commands import bench as bench_commands
from nas.commands import bench_quality, models, run
from nas.errors import NasError


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`nas <command>: error: ...`), like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="nas", description="Hardware-aware architecture search for efficient Vision Transformers."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.add_run(commands)
    models.add_train(commands)
    models.add_latency(commands)
    run.add_search(commands)
    models.add_select(commands)
    models.add_export(commands)
    run.add_report(commands)
    bench = commands.add_parser("bench", help="benchmarks (results under results/bench/)", description="Benchmarks.")
    benchmarks = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    bench_commands.add_bench_kernels(benchmarks)
    bench_commands.add_bench_supernet(benchmarks)
    bench_commands.add_bench_latency(benchmarks)
    bench_quality.add_bench_search(benchmarks)
    bench_quality.add_bench_fidelity(benchmarks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except NasError as error:
        print(f"nas: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
