"""`nas bench latency --interference`: is a table built next to a noisy neighbour still true?

Per run: a table is built on a quiet machine, then another while this benchmark runs a
competing CPU load — a busy-looping subprocess it starts itself and ends by its own PID
once a third of the entries are measured (so the load covers at least the first third of
the build). Each table is calibrated (quietly) on the same archs, and both are validated
against the same end-to-end measurements of held-out archs. Reported side by side: build
time, MAPE, share within ±10 %, Kendall τ, the worst error, and what the protocol
re-measured.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from nas.latency.build import build
from nas.latency.table import probe_archs
from nas.latency.validation import calibrate, held_out_archs, validate

BUSY_LOOP = "while True:\n    pass\n"


class CompetingLoad:
    """One busy-looping Python process (one core), bounded: ended by its own PID."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.seconds = 0.0

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", BUSY_LOOP], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.started = time.perf_counter()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            self.seconds = time.perf_counter() - self.started

    def __del__(self) -> None:
        self.stop()


def build_once(
    space, profiler, path: Path, calibration_archs, load: CompetingLoad | None, progress: Callable[[str], None]
):
    """Build a fresh table at `path` (with `load` running for its first third) and calibrate it."""
    total = len(list(probe_archs(space)))
    counted = [0]

    def watch(line: str) -> None:
        if line.startswith("["):
            counted[0] = int(line[1 : line.index("/")])
            if load is not None and counted[0] * 3 >= total:
                load.stop()
        progress(line)

    if load is not None:
        load.start()
    started = time.perf_counter()
    try:
        table = build(
            space,
            profiler.fingerprint(),
            path,
            profiler.measure_probes,
            profiler.protocol,
            progress=watch,
            reference=profiler.reference,
        )
    finally:
        if load is not None:
            load.stop()
    seconds = time.perf_counter() - started
    calibrate(table, calibration_archs, profiler.measure_models(calibration_archs))
    return table, seconds


def figures(table, archs, measured, seconds: float, load_seconds: float) -> dict:
    validation = validate(table, archs, measured)
    remeasured = sum(1 for entry in table.entries.values() if entry.get("remeasured"))
    return {
        "build_seconds": round(seconds, 1),
        "load_seconds": round(load_seconds, 1),
        "mape": validation["mape"],
        "within_10pct": validation["within_10pct"],
        "kendall_tau": validation["kendall_tau"],
        "worst_error": validation["worst"]["error"],
        "entries": len(table.entries),
        "entries_remeasured": remeasured,
        "drift_events": len(table.drift),
        "width_inconsistencies": table.checks.get("width_inconsistencies"),
        "predicted_ms": [round(point["predicted_ms"], 4) for point in validation["points"]],
    }


def run(space, profiler, archs: int, seed: int, progress: Callable[[str], None] = print) -> dict:
    """One quiet and one interfered build, validated on the same held-out measurements."""
    calibration = held_out_archs(space, 10, seed, exclude=set())
    held_out = held_out_archs(space, archs, seed + 1, {a.digest for a in calibration})
    with tempfile.TemporaryDirectory() as folder:
        progress("quiet build...")
        quiet, quiet_seconds = build_once(
            space, profiler, Path(folder) / "quiet.json", calibration, None, lambda line: None
        )
        progress(f"quiet build: {quiet_seconds:.0f} s; interfered build (one busy core during the first third)...")
        load = CompetingLoad()
        loud, loud_seconds = build_once(
            space, profiler, Path(folder) / "interfered.json", calibration, load, lambda line: None
        )
        progress(
            f"interfered build: {loud_seconds:.0f} s (load ran {load.seconds:.0f} s); measuring {len(held_out)} held-out archs..."
        )
        measured = profiler.measure_models(held_out)
        return {
            "held_out": {
                "digests": [arch.digest for arch in held_out],
                "measured_ms": [round(ms, 4) for ms in measured],
            },
            "quiet": figures(quiet, held_out, measured, quiet_seconds, 0.0),
            "interfered": figures(loud, held_out, measured, loud_seconds, load.seconds),
        }


def format_run(result: dict) -> str:
    lines = [
        f"{'':11} {'build s':>8} {'load s':>7} {'MAPE':>7} {'±10%':>6} {'tau':>6} {'worst':>8} {'re-measured':>12} {'drift':>6}"
    ]
    for name in ("quiet", "interfered"):
        r = result[name]
        lines.append(
            f"{name:11} {r['build_seconds']:8.1f} {r['load_seconds']:7.1f} {r['mape']:7.1%} {r['within_10pct']:6.0%} "
            f"{r['kendall_tau']:6.3f} {r['worst_error']:+8.1%} {r['entries_remeasured']:12d} {r['drift_events']:6d}"
        )
    return "\n".join(lines)
