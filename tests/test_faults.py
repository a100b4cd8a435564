"""Fault injection: what a user has paid for in compute is not lost, and mistakes fail cleanly.

Each test breaks one guarantee listed in README's "Reliability" section if the code does:
SIGKILL at every stage of `nas run` then --resume; dead workers; NaN/Inf; bad input with
one clear line and nothing written; atomic files; no unsafe loading; a loopback-only
dashboard; no storage password in the manifest.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from runs import FAST, make_run
from safetensors.torch import load_file

from nas.cli import main
from nas.errors import NasError
from nas.io import atomic_path, write_text
from nas.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
TINY_SPACE = {
    "name": "tiny",
    "image_size": 8,
    "patch_size": 4,
    "in_chans": 1,
    "num_classes": 10,
    "head_dim": 4,
    "embed_dim": [8, 16],
    "depth": [1, 2],
    "heads": [1, 2],
    "mlp_ratio": [1, 2],
    "kernels": ["softmax", "relu", "taylor"],
    "taylor": {"order": [1]},
}


def tiny_space_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(TINY_SPACE))
    return path


def nas_run(*args: str) -> list[str]:
    return [sys.executable, "-m", "nas.cli", "run", *args]


def kill_when(command: list[str], condition, timeout: float = 180) -> None:
    """Start `command`, SIGKILL its whole process group as soon as `condition()` holds."""
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=REPO
    )
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if process.poll() is not None:
                pytest.fail("the run finished before the fault could be injected")
            try:
                if condition():
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        pytest.fail("the condition for the fault never held")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def resume(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


# ---- 1. SIGKILL at each stage of nas run, then --resume ------------------------------------


@pytest.mark.slow
def test_kill_at_every_stage_then_resume_keeps_what_was_done(tmp_path):
    """One run, SIGKILLed in turn while its latency table is built, during training, during the search and
    during the export, each time resumed with --resume: finished table entries, the last checkpoint, every
    finished trial and a complete-or-absent export survive each kill, and the run ends as it should.
    (`nas search --resume` goes through the same search stage, nas.stages.search_stage.)"""
    import optuna

    run = tmp_path / "run"
    space = tiny_space_file(tmp_path)
    command = nas_run(
        *f"--space {space} --epochs 20 --trials 10 --evaluators 1 --calibrate 3 --validate 3 --budget-ms 1000".split(),
        *["--verify-epochs", "12"],
        *["--out", str(run)],
    )
    resumed = command + ["--resume"]
    table_path, state, exports = run / "latency_table.json", run / "train_state.json", run / "exports"
    storage = f"sqlite:///{run / 'study.db'}"

    def complete_trials() -> dict:
        study = optuna.load_study(study_name=RunDir(run).study_name(), storage=storage)
        return {t.number: t.values for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}

    # 1. while the latency table is built: the first chunk of 8 entries is saved
    kill_when(command, lambda: len(json.loads(table_path.read_text())["entries"]) >= 8, timeout=600)
    table_before = json.loads(table_path.read_text())["entries"]
    assert len(table_before) >= 8

    # 2. during training, after the table was completed by the resume
    kill_when(resumed, lambda: json.loads(state.read_text())["epochs_done"] >= 3, timeout=600)
    table_after = json.loads(table_path.read_text())["entries"]
    assert len(table_before) < len(table_after)  # killed part-way; completed by the resume
    # A finished entry is kept; the resume's checks (drift, widths: issue 25 #1) may measure it again, and then the lower figure
    # stands and the entry counts the re-measurement. Nothing else changes it.
    for key, value in table_before.items():
        after = table_after[key]
        assert after == value or (after["remeasured"] > value["remeasured"] and after["ms"] <= value["ms"]), key
    assert manifest(run)["stages"]["latency"]["completed"]
    assert json.loads(state.read_text())["epochs_done"] < 20 and not manifest(run)["stages"].get("train", {}).get(
        "completed"
    )
    assert load_file(str(run / "supernet.safetensors"))  # the checkpoint is complete (atomic), not torn

    # 3. during the search, after the training continued from its last checkpoint
    kill_when(resumed, lambda: (run / "study.db").exists() and len(complete_trials()) >= 3, timeout=600)
    history = json.loads(state.read_text())["history"]
    assert [r["epoch"] for r in history] == list(range(1, 21))  # continued, nothing repeated or skipped
    assert manifest(run)["stages"]["train"]["completed"]
    trials_before = complete_trials()

    # 4. during the export, after the search finished its trials
    tmp_export = lambda: exports.is_dir() and any(p.name.startswith(".best.tmp-") for p in exports.iterdir())  # noqa: E731
    kill_when(resumed, tmp_export, timeout=600)
    study = optuna.load_study(study_name=RunDir(run).study_name(), storage=storage)
    by_number = {t.number: t for t in study.trials}
    assert all(by_number[n].values == v for n, v in trials_before.items())
    counted = [
        t
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE
        or (t.state == optuna.trial.TrialState.FAIL and not t.user_attrs.get("interrupted"))
    ]
    assert len(counted) == 10
    # the trials the kill left RUNNING were marked interrupted (FAIL) by the resume and re-run; none is left RUNNING
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)
    assert all(t.state == optuna.trial.TrialState.FAIL for t in study.trials if t.user_attrs.get("interrupted"))
    best = exports / "best"
    if best.exists():  # renamed into place before the kill landed: then it is complete
        assert {"arch.json", "model.safetensors", "metadata.json"} <= {p.name for p in best.iterdir()}

    # 5. the last resume finishes the run
    resume(command)
    assert {"arch.json", "model.safetensors", "model.onnx", "model.pt", "metadata.json"} <= {
        p.name for p in best.iterdir()
    }
    assert all(manifest(run)["stages"][s]["completed"] for s in ("latency", "train", "search", "verify", "export"))


# ---- 2. worker faults ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.compat
def test_dead_profiler_actor_is_restarted_and_its_work_retried():
    ray = pytest.importorskip("ray")
    from nas.latency import table as lut
    from nas.space_file import parse_space
    from workers.cluster import init_ray
    from workers.profiler import RemoteProfiler

    init_ray(None, num_cpus=1)
    try:
        remote = RemoteProfiler("cpu", "fp32", 1, threads=1, protocol=FAST)
        probes = list(lut.probe_archs(parse_space(TINY_SPACE, "tiny.yaml")))[:4]
        remote.fingerprint()  # the actor is up
        pending = remote.actor.measure_probes.remote(probes)
        ray.kill(remote.actor, no_restart=False)
        entries = ray.get(pending)
        assert set(entries) == {key for key, _ in probes}
    finally:
        ray.shutdown()


# ---- 3. numerical faults -------------------------------------------------------------------


def poisoned(dataset, steps: set[int], batch_size: int):
    """Make the training batches of the given steps contain NaN."""
    original = dataset.batch
    calls = {"n": 0}

    def batch(split, positions, generator=None):
        x, y = original(split, positions, generator)
        if split == "train" and generator is not None:
            if calls["n"] in steps:
                x = torch.full_like(x, float("nan"))
            calls["n"] += 1
        return x, y

    dataset.batch = batch
    return dataset


def test_nan_loss_steps_are_skipped_and_counted(tmp_path):
    from nas.data import load_dataset
    from nas.space_file import parse_space
    from nas.training import TrainConfig, train_supernet

    space = parse_space(TINY_SPACE, "tiny.yaml")
    data = poisoned(load_dataset(None, space.image_size, space.in_chans), {1, 3}, 128)
    train_supernet(space, data, TrainConfig(epochs=1, batch_size=128, random_subnets=1), tmp_path)
    history = json.loads((tmp_path / "train_state.json").read_text())["history"]
    assert history[0]["skipped_steps"] == 2 and history[0]["loss"] == history[0]["loss"]  # finite mean loss
    assert all(torch.isfinite(t).all() for t in load_file(str(tmp_path / "supernet.safetensors")).values())


def test_persistent_nan_loss_stops_training_with_a_clear_message(tmp_path):
    from nas.data import load_dataset
    from nas.space_file import parse_space
    from nas.training import TrainConfig, train_supernet

    space = parse_space(TINY_SPACE, "tiny.yaml")
    data = poisoned(load_dataset(None, space.image_size, space.in_chans), set(range(100)), 128)
    with pytest.raises(NasError, match="5 consecutive steps with a non-finite loss .* lower --lr or check the data"):
        train_supernet(space, data, TrainConfig(epochs=1, batch_size=128), tmp_path)


# ---- 4. bad input: one clear line, non-zero exit, nothing written ---------------------------


def bad_yaml(tmp_path: Path, **changes) -> str:
    data = {**TINY_SPACE, **changes}
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(data))
    return str(path)


CASES = {
    "malformed YAML": (
        lambda t: (t / "m.yaml").write_text("name: [x\n") and ["run", "--space", str(t / "m.yaml")],
        "malformed YAML",
    ),
    "unknown space": (lambda t: ["run", "--space", "imagenet-huge"], "shipped spaces: deit-tiny, digits-tiny, hires"),
    "unknown kernel": (
        lambda t: ["run", "--space", bad_yaml(t, kernels=["softmax", "performer"])],
        "unknown kernel 'performer'",
    ),
    "inconsistent widths": (lambda t: ["run", "--space", bad_yaml(t, heads=[1, 8])], "exceeds the widest embed_dim"),
    "missing dataset": (lambda t: ["run", "--data", str(t / "nope")], "no such directory"),
    "wrong channels": (
        lambda t: ["run", "--space", "deit-tiny"],
        "images have 1 channel(s), but the search space takes in_chans=3",
    ),
    "budget <= 0": (lambda t: ["run", "--budget-ms", "-1"], "expected a positive finite number"),
    "too many workers": (lambda t: ["run", "--workers", str((os.cpu_count() or 1) + 1)], "the local Ray instance has"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_and_writes_nothing(case, tmp_path, capsys):
    make_args, message = CASES[case]
    out = tmp_path / "run"
    assert exit_code(make_args(tmp_path) + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def exit_code(args: list[str]) -> int:
    """The CLI's exit status, whether it returns it or argparse exits."""
    try:
        return main(args)
    except SystemExit as exit_:
        return int(exit_.code)


@pytest.mark.slow
@pytest.mark.compat
def test_infeasible_budget_keeps_only_the_measured_table(tmp_path, capsys):
    """Issue 25: the refusal used to delete the run directory with the table it had just measured."""
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--space",
                bad_yaml(tmp_path),
                "--budget-ms",
                "0.000001",
                "--calibrate",
                "0",
                "--validate",
                "0",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "below the smallest latency any arch of tiny reaches" in err and "--resume" in err
    # no training, no study: the measured table, the records (manifest, log) and the settings to resume with
    assert sorted(p.name for p in out.iterdir()) == ["latency_table.json", "manifest.json", "nas.log", "run.yaml"]
    assert "below the smallest latency" in (out / "nas.log").read_text()  # the refusal is in the log


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


def copy_run(run: Path, to: Path) -> Path:
    to.mkdir()
    for path in run.iterdir():
        if path.is_file():
            (to / path.name).write_bytes(path.read_bytes())
    return to


@pytest.mark.parametrize(
    "victim, command, message",
    [
        ("supernet.safetensors", ["search", "--trials", "2"], "not a readable supernet checkpoint"),
        ("latency_table.json", ["search", "--trials", "2"], "not a valid latency table"),
        ("study.db", ["report"], "cannot read the study"),
    ],
)
def test_truncated_files_are_refused_with_one_line(trained, tmp_path, capsys, victim, command, message):
    run = copy_run(trained, tmp_path / "copy")
    if victim == "study.db":
        (run / "study.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 50)
    else:
        data = (run / victim).read_bytes()
        (run / victim).write_bytes(data[: len(data) // 2])
    before = sorted(p.name for p in run.iterdir())
    assert main([command[0], "--run", str(run), *command[1:]]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert sorted(p.name for p in run.iterdir()) == before


def test_latency_table_from_another_device_is_refused_and_kept(trained, tmp_path, capsys):
    table = json.loads((trained / "latency_table.json").read_text())
    table["fingerprint"]["device_name"] = "Some Other CPU"
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table))
    assert main(["latency", "--out", str(path), "--validate", "0", "--calibrate", "0"]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "device_name: 'Some Other CPU'" in err
    assert json.loads(path.read_text()) == table


# ---- 5. integrity --------------------------------------------------------------------------


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f.json"
    write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half of the new cont")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


# ---- 6. security -----------------------------------------------------------------------------


def test_no_unsafe_deserialisation_in_the_code():
    sources = {p: p.read_text() for d in ("nas", "workers") for p in (REPO / d).rglob("*.py")}
    for path, text in sources.items():
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert "yaml.load(" not in text and "pickle.loads(" not in text and "pickle.load(" not in text, path
        assert "Unpickler" not in text or path.name == "data.py", path  # the restricted CIFAR unpickler only


@pytest.mark.slow
@pytest.mark.compat
def test_local_ray_dashboard_listens_on_loopback_only():
    ray = pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")
    from workers.cluster import init_ray

    init_ray(None, num_cpus=1)
    try:
        url = ray._private.worker.global_worker.node.address_info.get("webui_url") or ""
        assert url == "" or url.startswith("127.0.0.1"), url
        dashboard_ports = {8265}
        exposed = [
            c
            for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
            and c.laddr.port in dashboard_ports
            and c.laddr.ip not in ("127.0.0.1", "::1")
        ]
        assert not exposed, exposed
    finally:
        ray.shutdown()


def test_storage_password_never_reaches_the_manifest(tmp_path):
    import dataclasses

    from nas.config import RunConfig
    from nas.rundir import Manifest, RunDir
    from nas.storage import redact

    config = RunConfig(storage="postgresql://nas:hunter2@db.example:5432/nas")
    Manifest(RunDir(tmp_path), {**dataclasses.asdict(config), "storage": redact(config.storage)}).save()
    text = (tmp_path / "manifest.json").read_text()
    assert "hunter2" not in text and "nas:***@db.example" in text
