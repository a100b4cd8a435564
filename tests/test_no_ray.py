"""Issue 27, 3: the pipeline runs in one process where Ray is not installed (a bare GPU machine has
torch without it): the search scores its archs with an in-process evaluator; what needs Ray says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_faults import REPO, tiny_space_file

WITHOUT_RAY = "import sys; sys.modules['ray'] = None; from nas.cli import main; raise SystemExit(main(sys.argv[1:]))"


def nas_without_ray(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_RAY, *args], capture_output=True, text=True, cwd=REPO, timeout=900
    )


@pytest.mark.slow
def test_nas_run_end_to_end_without_ray(tmp_path):
    out = tmp_path / "run"
    done = nas_without_ray(
        "run",
        "--space",
        str(tiny_space_file(tmp_path)),
        "--epochs",
        "1",
        "--trials",
        "4",
        "--budget-ms",
        "1000",
        "--calibrate",
        "0",
        "--validate",
        "0",
        "--verify",
        "0",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (
        "Ray is not installed: the archs are scored by one evaluator in this process (--evaluators 2 needs Ray)"
        in done.stdout
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(manifest["stages"][stage]["completed"] for stage in ("latency", "train", "search", "export"))
    trials = (out / "trials.csv").read_text().splitlines()
    assert len(trials) == 5 and "COMPLETE" in "".join(trials)
    assert any(Path(out / "exports").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "2"], "--workers 2: distributed training needs Ray, which is not installed here"),
        (["--ray-address", "auto"], "--ray-address auto: joining a cluster needs Ray, which is not installed here"),
    ],
)
def test_what_needs_ray_says_so_in_one_line(tmp_path, args, message):
    done = nas_without_ray(
        "run",
        "--space",
        str(tiny_space_file(tmp_path)),
        "--epochs",
        "1",
        "--trials",
        "2",
        "--budget-ms",
        "1000",
        "--calibrate",
        "0",
        "--validate",
        "0",
        "--out",
        str(tmp_path / "run"),
        *args,
    )
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # refused before any work


def test_finding_ray_does_not_import_it():
    """Ray reads RAY_AUTH_MODE when imported: the checks that look for it must not import it before the
    cluster token is set (a search joining a `ray start --head` cluster failed its authentication so)."""
    code = (
        "import sys; from workers.cluster import ray_available; assert ray_available(); assert 'ray' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
