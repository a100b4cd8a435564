"""The `nas` command line: assembles the subcommands of nas.commands.

User mistakes raise `NasError`; `main` prints them as one line and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from nas.commands import bench as bench_commands
from nas.commands import bench_latency, bench_quality, bench_search, bench_truth, models, run, verify
from nas.errors import NasError
from nas.fast_exit import run_then_exit


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`nas <command>: error: ...`), like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the arguments, the benchmarks' parsers only when they name `bench` (their
    defaults import torch: `nas --help` and the other commands do without)."""
    parser = Parser(prog="nas", description="Hardware-aware architecture search for efficient Vision Transformers.")
    parser.add_argument("--version", action="version", version=f"nas (vit-nas) {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.add_run(commands)
    models.add_train(commands)
    models.add_latency(commands)
    run.add_search(commands)
    models.add_select(commands)
    models.add_export(commands)
    verify.add_verify(commands)
    run.add_report(commands)
    bench = commands.add_parser("bench", help="benchmarks (results under results/bench/)", description="Benchmarks.")
    if argv is not None and next((a for a in argv if not a.startswith("-")), None) != "bench":
        return parser
    benchmarks = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    bench_commands.add_bench_kernels(benchmarks)
    bench_commands.add_bench_supernet(benchmarks)
    bench_latency.add_bench_latency(benchmarks)
    bench_commands.add_bench_train(benchmarks)
    bench_search.add_bench_search(benchmarks)
    bench_quality.add_bench_fidelity(benchmarks)
    bench_quality.add_bench_zoo(benchmarks)
    bench_truth.add_bench_truth(benchmarks)
    bench_truth.add_bench_pick(benchmarks)
    bench_truth.add_bench_blockwise(benchmarks)
    return parser


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("vit-nas")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def hide_secrets() -> None:
    """A storage password typed on the command line: replaced by *** in this process's title (the process
    list, and the entrypoint Ray records for the job) as early as possible; NAS_STORAGE_URL avoids it entirely."""
    from nas.storage import redact_text

    line = " ".join(sys.argv)
    if redact_text(line) == line:
        return
    try:
        import ray._raylet

        ray._raylet.setproctitle(redact_text(line))
    except (ImportError, AttributeError, OSError):
        pass


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: stages stop where they can be resumed."""


# What a stopped command leaves, by its `on_stop` default: resumable with --resume (run, train, search), continued by
# the same command (latency, bench truth), or nothing to continue (the rest; `nas train` stopped before its first
# checkpoint sets "again" after removing what it had written).
STOP_ADVICE = {
    "resume": "finished work is kept (run the same command with --resume to continue)",
    "same": "finished work is kept (run the same command again to continue where it stopped)",
    "again": "nothing is kept to continue from; run the command again",
}

_received: list[int] = []  # the SIGTERMs this process got: what ends the command, whatever exception arrives


def _terminate(signum, frame) -> None:
    _received.append(signum)
    raise Terminated()


def check_bench_output(args: argparse.Namespace) -> None:
    """Every benchmark's --out is checked before its work (which can take hours): a folder, or the
    truth's file, that this process can write."""
    from nas.preflight import check_out_dir, check_out_file

    (check_out_file if args.benchmark == "truth" else check_out_dir)(args.out)


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    if argv is None:
        hide_secrets()
    args = build_parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    _received.clear()
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.command == "bench" and getattr(args, "out", None) is not None:
            check_bench_output(args)
        return func(args)
    except NasError as error:
        print(f"nas: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`nas select ... | head`): stop quietly, as other tools do
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush does not fail again
        return 0
    except KeyboardInterrupt as stop:
        # Ray turns a signal that lands inside ray.get/ray.wait into a new, plain KeyboardInterrupt: the exception's
        # type cannot tell SIGTERM from Ctrl-C, so the handler's record does (one exit-code policy: 143 and 130).
        terminated = isinstance(stop, Terminated) or bool(_received)
        why = "stopped by SIGTERM" if terminated else "interrupted"
        print(f"nas: {why}; {STOP_ADVICE[getattr(args, 'on_stop', 'again')]}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def entry(argv: list[str] | None = None) -> None:
    """The `nas` console script (and `python -m nas`): `main`, ending the process as nas.fast_exit says."""
    run_then_exit(main, argv)


if __name__ == "__main__":
    entry()
