"""Shared test helper: a tiny trained run directory (supernet + quickly measured latency table).

The run is trained and measured once per test session (pytest process) and copied for each caller:
tests may change their copy freely; none sees another's changes."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from nas.data import load_dataset
from nas.latency.build import build
from nas.latency.probe import Protocol
from nas.latency.profiler import Profiler
from nas.rundir import TABLE
from nas.space_file import load_space
from nas.training import TrainConfig, train_supernet

FAST = Protocol(warmup=1, repeats=3, min_repeats=2, max_seconds=0.01, passes=2)
_template: Path | None = None


def _build(run_dir: Path) -> Path:
    space = load_space("digits-tiny")
    dataset = load_dataset(None, space.image_size, space.in_chans)
    train_supernet(space, dataset, TrainConfig(epochs=1, batch_size=256, random_subnets=0), run_dir)
    profiler = Profiler("cpu", "fp32", 1, protocol=FAST)
    build(space, profiler.fingerprint(), run_dir / TABLE, profiler.measure_probes, FAST, progress=lambda line: None)
    return run_dir


def make_run(run_dir: Path) -> Path:
    """digits-tiny trained for one epoch, and its latency table measured with a fast protocol, at `run_dir`
    (which must not exist yet or be empty): a copy of the session's one such run."""
    global _template
    if _template is None:
        root = Path(tempfile.mkdtemp(prefix="nas-test-run-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _template = _build(root / "run")
    run_dir = Path(run_dir)
    if run_dir.exists() and not any(run_dir.iterdir()):
        run_dir.rmdir()
    shutil.copytree(_template, run_dir)
    return run_dir
