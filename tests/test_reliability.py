"""Resume, storage and cluster connections never corrupt a run; mistakes are one line.

One test (or parametrised case) per defect of README's "Reliability" guarantees: resume with
changed settings, extended studies, password redaction and NAS_STORAGE_URL, connection checks
with a timeout, stale Ray state, foreign studies, traceback cases, SIGTERM, Ray Train temp
files, small ones (empty study.db, dashboard constraints, export preprocessing).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from runs import make_run
from test_faults import REPO, copy_run, exit_code, nas_run, tiny_space_file

from nas import feasibility, study_trials
from nas import study as search
from nas.cli import main
from nas.rundir import RunDir

ray = pytest.importorskip("ray")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never says a word (a hung database or Ray head)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield server.getsockname()[1]
    server.close()


# ---- 1 + 2 + 3: resume with changed settings; extended studies; NAS_STORAGE_URL ------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished `nas run` whose study lives in the storage NAS_STORAGE_URL names."""
    root = tmp_path_factory.mktemp("resume")
    storage = f"sqlite:///{root / 'elsewhere.db'}"
    env = {**os.environ, "NAS_STORAGE_URL": storage}
    command = nas_run(
        "--space",
        str(tiny_space_file(root)),
        "--epochs",
        "1",
        "--trials",
        "4",
        "--evaluators",
        "1",
        "--budget-ms",
        "1000",
        "--calibrate",
        "0",
        "--validate",
        "0",
        "--tensorboard",
        "--verify",
        "0",
        "--out",
        str(root / "run"),
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return root / "run", command, env, storage


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a folder's TensorBoard event files: {tag: [(step, value), ...]} (TFRecord framing, Event protos)."""
    import struct

    from tensorboardX.proto import event_pb2

    values: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                values.setdefault(value.tag, []).append((event.step, value.simple_value))
    return values


@pytest.mark.slow
def test_a_run_writes_its_log_its_replayable_settings_and_tensorboard_scalars(finished_run):
    import yaml

    run, _, env, storage = finished_run
    log = (run / "nas.log").read_text()
    assert (
        all(stage in log for stage in ("== latency", "== train", "== search", "== export"))
        and " DEBUG nas: settings:" in log
    )
    replay = subprocess.run(
        nas_run("--config", str(run / "run.yaml"), "--print-config"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )
    assert replay.returncode == 0, replay.stderr
    assert yaml.safe_load(replay.stdout) == yaml.safe_load((run / "run.yaml").read_text())
    assert yaml.safe_load(replay.stdout)["trials"] == 4 and yaml.safe_load(replay.stdout)["tensorboard"] is True
    scalars = tensorboard_scalars(run / "tensorboard")
    assert [step for step, _ in scalars["train/loss"]] == [1] and len(scalars["train/val_largest"]) == 1
    study = optuna.load_study(study_name=RunDir(run).study_name(), storage=storage)
    complete = sorted(t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert [step for step, _ in scalars["search/accuracy"]] == complete
    volumes = [v for _, v in scalars["search/hypervolume"]]
    assert volumes and all(b >= a for a, b in zip(volumes, volumes[1:]))


@pytest.mark.slow
def test_resume_with_a_changed_budget_is_refused_and_changes_nothing(finished_run):
    run, command, env, _ = finished_run
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = subprocess.run(
        command + ["--resume", "--budget-ms", "5", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--budget-ms was 1000.0, now 5.0" in result.stderr and "--seed was 0, now 3" in result.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_extending_a_finished_run_continues_the_sampler_and_keeps_the_export_consistent(finished_run):
    run, command, env, storage = finished_run
    extended = [*command[: command.index("--trials") + 1], "8", *command[command.index("--trials") + 2 :], "--resume"]
    result = subprocess.run(extended, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    study = optuna.load_study(study_name=RunDir(run).study_name(), storage=storage)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(trials) == 8 and not (run / "study.db").exists()
    assert [t.params for t in trials[4:]] != [t.params for t in trials[:4]], "the sampler replayed its first trials"
    by_digest: dict[str, optuna.trial.FrozenTrial] = {}
    for trial in trials:  # an arch seen before reuses that result instead of being evaluated again
        digest = trial.user_attrs["digest"]
        if digest in by_digest:
            assert (
                trial.user_attrs["reused_from"] == by_digest[digest].number and trial.values == by_digest[digest].values
            )
        by_digest.setdefault(digest, trial)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["resumed_with"][-1]["changed"] == {"trials": [4, 8]}
    assert manifest["settings"]["storage"] == storage
    exported = json.loads((run / "exports" / "best" / "metadata.json").read_text())["source"]["trial"]
    assert manifest["result"]["trial"] == exported == manifest["result"]["export"]["trial"]


@pytest.mark.slow
@pytest.mark.compat
def test_an_extended_study_never_evaluates_an_arch_twice(tmp_path):
    from test_faults import TINY_SPACE

    from nas.space_file import parse_space

    space = parse_space(TINY_SPACE, "tiny.yaml")
    evaluated: list[str] = []

    def evaluate(archs):
        evaluated.extend(a.digest for a in archs)
        return [{"accuracy": random.Random(a.digest).random(), "macs": 1, "params": 1} for a in archs]

    class Table:  # a latency predictor is all the loop needs
        def predict(self, arch):
            return float(arch.embed_dim * arch.depth)

    storage = f"sqlite:///{tmp_path / 's.db'}"
    for trials, resume in ((20, False), (60, True)):
        config = search.SearchConfig(trials=trials, batch=4, sampler="random", seed=0)
        study = search.open_study(storage, config, resume, "s")
        search.run_search(study, space, Table(), evaluate, config, progress=lambda line: None)
    assert len(study.trials) == 60
    assert len(evaluated) == len(set(evaluated)), "an arch was evaluated twice"
    assert len(evaluated) < 60, "a space of 312 archs sampled 60 times repeats some: they were reused"
    first = [t.params for t in sorted(study.trials, key=lambda t: t.number)]
    assert first[20:40] != first[:20]


@pytest.mark.parametrize("where", ["ask", "predict", "evaluate", "tell"])
def test_an_interrupt_anywhere_in_a_batch_leaves_no_trial_running(tmp_path, where):
    """SIGTERM/Ctrl-C may land while trials are asked (inside `study.ask`, after the trial's row exists),
    evaluated or told: none may stay RUNNING."""
    from test_faults import TINY_SPACE

    from nas.space_file import parse_space

    space = parse_space(TINY_SPACE, "tiny.yaml")
    calls = {"ask": 0, "predict": 0, "evaluate": 0, "tell": 0}

    def maybe_stop(stage):  # in the second batch of four: its 2nd ask, 2nd predict, its evaluate, its 2nd tell
        calls[stage] += 1
        if stage == where and calls[stage] == {"ask": 6, "predict": 6, "evaluate": 2, "tell": 6}[stage]:
            raise KeyboardInterrupt

    def evaluate(archs):
        maybe_stop("evaluate")
        return [{"accuracy": random.Random(a.digest).random(), "macs": 1, "params": 1} for a in archs]

    class Table:
        def predict(self, arch):
            maybe_stop("predict")
            return float(arch.embed_dim * arch.depth)

    config = search.SearchConfig(trials=12, batch=4, sampler="random", seed=0)
    study = search.open_study(f"sqlite:///{tmp_path / 's.db'}", config, False, "s")
    tell = study.tell

    def stopping_tell(*args, **kwargs):
        maybe_stop("tell")
        return tell(*args, **kwargs)

    study.tell = stopping_tell
    before_trial = study.sampler.before_trial

    def stopping_before_trial(study_, trial):  # Optuna calls it inside `ask`, once the trial's row is RUNNING
        before_trial(study_, trial)
        maybe_stop("ask")

    study.sampler.before_trial = stopping_before_trial
    with pytest.raises(KeyboardInterrupt):
        search.run_search(study, space, Table(), evaluate, config, progress=lambda line: None)
    states = [t.state for t in study.get_trials()]
    assert optuna.trial.TrialState.RUNNING not in states
    interrupted = [t for t in study.get_trials() if t.user_attrs.get("interrupted")]
    assert interrupted and all(t.state == optuna.trial.TrialState.FAIL for t in interrupted)
    assert states.count(optuna.trial.TrialState.WAITING) == len(interrupted), "each interrupted trial is re-enqueued"
    study.tell, study.sampler.before_trial = tell, before_trial
    search.run_search(study, space, Table(), evaluate, config, progress=lambda line: None)  # the resumed run finishes
    assert sum(study_trials.counted(t) for t in study.get_trials()) == 12


def test_deferred_holds_sigterm_until_the_block_ends_then_raises_it_with_the_handler_in_place():
    from nas import interrupts
    from nas.cli import Terminated, _terminate

    previous = signal.signal(signal.SIGTERM, _terminate)
    finished = False
    try:
        with pytest.raises(Terminated):
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # a Python handler would have run by now
                finished = True
        assert finished
        assert signal.getsignal(signal.SIGTERM) is _terminate
        with pytest.raises(Terminated):  # outside the block the signal acts at once again
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("where, complete, interrupted", [("ask", 4, 4), ("tell", 8, 0)])
def test_sigterm_while_the_study_is_written_waits_for_the_writes(tmp_path, where, complete, interrupted):
    """A KeyboardInterrupt inside a storage commit can leave the SQLite connection mid-transaction (the
    recovery's own writes then failed in CI): a signal received while a batch is asked or told stops the
    search once those writes are done."""
    from test_faults import TINY_SPACE

    from nas.cli import Terminated, _terminate
    from nas.space_file import parse_space

    space = parse_space(TINY_SPACE, "tiny.yaml")
    config = search.SearchConfig(trials=12, batch=4, sampler="random", seed=0)
    study = search.open_study(f"sqlite:///{tmp_path / 's.db'}", config, False, "s")
    calls = []

    def signal_on_the_sixth(stage):  # the second of the second batch of four
        calls.append(stage)
        if stage == where and calls.count(stage) == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    class Table:
        def predict(self, arch):
            signal_on_the_sixth("ask")
            return float(arch.embed_dim * arch.depth)

    tell = study.tell

    def signalling_tell(*args, **kwargs):
        signal_on_the_sixth("tell")
        return tell(*args, **kwargs)

    study.tell = signalling_tell
    evaluate = lambda archs: [{"accuracy": random.Random(a.digest).random(), "macs": 1, "params": 1} for a in archs]  # noqa: E731
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with pytest.raises(Terminated):
            search.run_search(study, space, Table(), evaluate, config, progress=lambda line: None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    trials = study.get_trials()
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == complete
    assert sum(bool(t.user_attrs.get("interrupted")) for t in trials) == interrupted
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in trials]


def test_storage_url_from_the_environment_and_every_redacted_form(tmp_path, monkeypatch):
    from nas.config import RunConfig
    from nas.resume import settings_record
    from nas.storage import resolve

    monkeypatch.setenv("NAS_STORAGE_URL", "postgresql://nas@db/nas?password=hunter2")
    assert resolve(None) == ("postgresql://nas@db/nas?password=hunter2", "NAS_STORAGE_URL")
    assert resolve("sqlite:///x.db")[0] == "sqlite:///x.db"  # the flag wins
    for url in ("postgresql://nas:hunter2@db:5432/nas", "postgresql://nas@db/nas?sslmode=require&password=hunter2"):
        assert "hunter2" not in json.dumps(settings_record(RunConfig(storage=url)))


# ---- 4: connections checked first, with a timeout ----------------------------------------------------------


@pytest.mark.parametrize(
    "flag, address, message",
    [
        ("--ray-address", "127.0.0.1:1", "--ray-address 127.0.0.1:1: no Ray cluster answers there"),
        (
            "--storage",
            "postgresql://nas:hunter2@127.0.0.1:1/nas",
            "--storage postgresql://nas:***@127.0.0.1:1/nas: cannot open it",
        ),
        ("--ray-address", "silent", "did not accept a connection within 3 s"),
        ("--storage", "silent", "no answer within 3 s"),
    ],
)
def test_unreachable_ray_or_storage_fails_within_the_timeout_before_any_work(
    flag, address, message, silent_server, tmp_path, capsys
):
    if address == "silent":
        address = (
            f"127.0.0.1:{silent_server}"
            if flag == "--ray-address"
            else f"postgresql://nas:hunter2@127.0.0.1:{silent_server}/nas"
        )
    out = tmp_path / "run"
    started = time.perf_counter()
    code = exit_code(
        ["run", "--space", str(tiny_space_file(tmp_path)), flag, address, "--connect-timeout", "3", "--out", str(out)]
    )
    assert code == 2 and time.perf_counter() - started < 30
    err = one_line_error(capsys)
    assert message in err and "hunter2" not in err
    assert not out.exists()


CHECK_WHEN_TOLD = """
import sys, time
from pathlib import Path
from nas.storage import check
Path(sys.argv[3]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.001)
print(check(sys.argv[1]))
"""


@pytest.mark.slow
@pytest.mark.compat
def test_processes_opening_a_new_storage_at_once_all_connect(tmp_path):
    """Optuna creates its tables in a new database without a guard: of two processes that do it at the same
    moment (a search starting while optuna-dashboard or a script opens the same file), one lost with
    `table studies already exists` or a UNIQUE constraint on alembic_version (measured with Optuna's
    get_all_study_summaries alone: 12 of 15 pairs). The loser now connects again."""
    for attempt in range(3):
        url, go = f"sqlite:///{tmp_path / f'race{attempt}.db'}", tmp_path / f"go{attempt}"
        ready = [tmp_path / f"ready{attempt}-{i}" for i in range(4)]
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", CHECK_WHEN_TOLD, url, str(go), str(r)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
            for r in ready
        ]
        deadline = time.time() + 120
        while not all(r.exists() for r in ready) and time.time() < deadline:
            time.sleep(0.05)
        go.touch()  # all four open the new database within a millisecond or so
        for process in processes:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0 and out.strip() == "[]", err[-1000:]


@pytest.mark.slow
@pytest.mark.compat
def test_a_new_sqlite_study_file_appears_with_its_whole_schema(tmp_path):
    """A reader that opens the study file the moment it exists (optuna-dashboard, a script, a test
    polling the run) finds Optuna's tables complete, so it neither reads a half-made schema nor races
    to create it (CI of stop 29: a poller's own create lost to the search's, UNIQUE alembic_version)."""
    import sqlite3

    for attempt in range(3):
        path = tmp_path / f"study{attempt}.db"
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from nas.storage import check; check(sys.argv[1])",
                f"sqlite:///{path}",
            ],
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        deadline = time.time() + 120
        while not path.exists() and process.poll() is None and time.time() < deadline:
            pass  # no sleep: look as early as a fast poller would
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            versions = (
                list(connection.execute("SELECT version_num FROM alembic_version"))
                if "alembic_version" in tables
                else []
            )
        finally:
            connection.close()
        assert process.wait(timeout=120) == 0, process.stderr.read()[-1000:]
        assert {"studies", "trials", "alembic_version"} <= tables and len(versions) == 1, (attempt, sorted(tables))
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{path.name}.tmp")] == []


@pytest.mark.parametrize(
    "mode, token, expected",
    [(None, "file", "token"), (None, "env", "token"), (None, None, None), ("disabled", "file", "disabled")],
)
def test_joining_a_cluster_sends_a_token_when_one_is_at_hand(tmp_path, monkeypatch, mode, token, expected):
    """Current Ray clients send the token of a `ray start --head` cluster only with RAY_AUTH_MODE=token;
    like `ray start`, that mode is turned on when it is unset and a token exists (a user's setting stands)."""
    from workers.cluster import use_token_if_available

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(name, "")  # recorded first, so that the RAY_AUTH_MODE set below is undone after the test
        monkeypatch.delenv(name)  # (a leaked RAY_AUTH_MODE=token breaks every later local Ray start in this process)
    if mode:
        monkeypatch.setenv("RAY_AUTH_MODE", mode)
    if token == "file":
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text("x" * 32)
    elif token == "env":
        monkeypatch.setenv("RAY_AUTH_TOKEN", "x" * 32)
    use_token_if_available()
    assert os.environ.get("RAY_AUTH_MODE") == expected


# ---- 5: stale Ray state does not stop a local run ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.compat
def test_a_stale_address_file_and_a_foreign_local_instance_do_not_stop_a_local_run(tmp_path):
    foreign = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import ray, time; ray.init(address='local', num_cpus=1, include_dashboard=False); "
            "print(ray.get_runtime_context().gcs_address, flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    address_file = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    saved = address_file.read_bytes() if address_file.exists() else None
    try:
        foreign_gcs = foreign.stdout.readline().strip()
        assert foreign_gcs
        address_file.parent.mkdir(parents=True, exist_ok=True)
        address_file.write_text("127.0.0.1:1")  # left behind by a `ray start --head` killed by a signal
        probe = (
            "from workers.cluster import init_ray\nimport ray\ninit_ray(None, 1, progress=print)\n"
            "print('GCS', ray.get_runtime_context().gcs_address)\nray.shutdown()"
        )
        result = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env={**os.environ, "RAY_ADDRESS": foreign_gcs},
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert "a local Ray instance of its own" in result.stdout
        ours = next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("GCS "))
        assert ours != foreign_gcs
    finally:
        if saved is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_bytes(saved)
        os.killpg(foreign.pid, signal.SIGKILL)
        foreign.wait()


# ---- 6: another study's outputs do not replace the run's ---------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.mark.slow
@pytest.mark.compat
def test_search_in_another_storage_leaves_the_runs_outputs_alone(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "copy")
    (run / "trials.csv").write_text("the run's own\n")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert exit_code(["search", "--run", str(run), "--trials", "2", "--evaluators", "1", "--storage", other]) == 2
    assert "is not this run's own study" in one_line_error(capsys) and not (tmp_path / "other.db").exists()
    report = tmp_path / "report"
    assert (
        main(
            [
                "search",
                "--run",
                str(run),
                "--trials",
                "2",
                "--evaluators",
                "1",
                "--storage",
                other,
                "--report-dir",
                str(report),
            ]
        )
        == 0
    )
    ray.shutdown()
    assert (run / "trials.csv").read_text() == "the run's own\n"
    assert len((report / "trials.csv").read_text().splitlines()) == 3
    assert main(["report", "--run", str(run), "--storage", other, "--report-dir", str(report)]) == 0
    assert (run / "trials.csv").read_text() == "the run's own\n"


# ---- 7: one line, exit 2, nothing written -----------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _study(run: Path) -> None:
    optuna.create_study(
        storage=f"sqlite:///{run / 'study.db'}",
        study_name=RunDir(run).study_name(),
        directions=["maximize", "minimize"],
    )


READ_ONLY = "/proc/nas-read-only/out"  # nobody, root included, can create anything under /proc

CASES = {
    "run --out is a file": (
        lambda t, r: (t / "f").write_text("x") and ["run", "--out", str(t / "f")],
        "is a file, not a directory",
    ),
    "run --out read-only": (lambda t, r: ["run", "--out", READ_ONLY], "cannot write into /proc"),
    "train --out read-only": (lambda t, r: ["train", "--out", READ_ONLY], "cannot write into /proc"),
    "export --out read-only": (
        lambda t, r: ["export", "--run", str(r), "--trial", "0", "--out", READ_ONLY],
        "cannot write into /proc",
    ),
    "report read-only": (
        lambda t, r: _study(r) or ["report", "--run", str(r), "--report-dir", READ_ONLY],
        "cannot write into /proc",
    ),
    "latency --out under a file": (
        lambda t, r: (t / "afile").write_text("x") and ["latency", "--out", str(t / "afile" / "t.json")],
        "is a file, so the directory cannot be created",
    ),
    "train --resume, truncated supernet": (
        lambda t, r: (
            _truncate(r / "supernet.safetensors")
            or ["train", "--out", str(r), "--resume", "--epochs", "1", "--batch-size", "256", "--random-subnets", "0"]
        ),
        "the training checkpoint cannot be read",
    ),
    "run --resume, truncated manifest": (
        lambda t, r: (r / "manifest.json").write_text('{"settings": {') and ["run", "--out", str(r), "--resume"],
        "cannot read the run's manifest",
    ),
    "--calibrate -1": (lambda t, r: ["run", "--calibrate", "-1", "--out", str(t / "run")], "expected an integer >= 0"),
    "--validate -1": (
        lambda t, r: ["latency", "--validate", "-1", "--out", str(t / "t.json")],
        "expected an integer >= 0",
    ),
    "--lr inf": (lambda t, r: ["train", "--lr", "inf", "--out", str(t / "run")], "expected a positive finite number"),
    "report on an empty study.db": (
        lambda t, r: (r / "study.db").write_bytes(b"") or ["report", "--run", str(r)],
        "holds no study named",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_former_traceback_is_one_line_and_writes_nothing(case, trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "copy")
    (run / "trials.csv").write_text("number,state,accuracy,latency_ms,macs,params,arch\n")
    make_args, message = CASES[case]
    args = make_args(tmp_path, run)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert exit_code(args) == 2
    assert message in one_line_error(capsys)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


# ---- 8: SIGTERM, Ray Train's temp files ----------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_during_the_search_stops_like_ctrl_c_and_resumes(tmp_path):
    import psutil

    run = tmp_path / "run"
    command = nas_run(
        "--space",
        str(tiny_space_file(tmp_path)),
        "--epochs",
        "1",
        "--trials",
        "12",
        "--evaluators",
        "1",
        "--budget-ms",
        "1000",
        "--calibrate",
        "0",
        "--validate",
        "0",
        "--verify",
        "0",
        "--out",
        str(run),
    )
    storage = f"sqlite:///{run / 'study.db'}"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)

    def complete() -> int:
        study = optuna.load_study(study_name="run", storage=storage)  # nas run's default: the run directory's name
        return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)

    deadline = time.time() + 300
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before SIGTERM: {process.communicate()[1][-2000:]}")
        try:
            if (run / "study.db").exists() and complete() >= 2:
                break
        except (KeyError, ValueError, Exception):  # noqa: BLE001 — the study is being created
            pass
        time.sleep(0.1)
    ray_children = [
        p for p in psutil.Process(process.pid).children(recursive=True) if "ray" in " ".join(p.cmdline()).lower()
    ]
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-2000:]
    assert "nas: stopped by SIGTERM" in err and "Aborted" not in err and "stack trace" not in err.lower()
    study = optuna.load_study(study_name=RunDir(run).study_name(), storage=storage)
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in study.trials]
    _, alive = psutil.wait_procs(ray_children, timeout=30)
    assert not alive, f"Ray processes outlived the driver: {[p.pid for p in alive]}"
    result = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    study = optuna.load_study(study_name=RunDir(run).study_name(), storage=storage)
    assert sum(study_trials.counted(t) for t in study.trials) == 12


# ---- 9 + 12: what optuna-dashboard and timm read --------------------------------------------------------------


def test_constraints_are_stored_where_optuna_dashboard_reads_them(tmp_path):
    from test_faults import TINY_SPACE

    from nas.space_file import parse_space

    space = parse_space(TINY_SPACE, "tiny.yaml")

    class Table:
        def predict(self, arch):
            return float(arch.embed_dim)

    config = search.SearchConfig(
        trials=4, batch=2, sampler="random", budget_ms=12.0
    )  # embed 8 feasible, 16 not: a property of this Table
    study = search.open_study(f"sqlite:///{tmp_path / 's.db'}", config, resume=False, study_name="s")
    search.run_search(
        study,
        space,
        Table(),
        lambda archs: [{"accuracy": 0.5, "macs": 1, "params": 1}] * len(archs),
        config,
        lambda line: None,
    )
    for trial in study.trials:
        slack = trial.user_attrs["latency_ms"] - 12.0
        assert trial.system_attrs[study_trials.DASHBOARD_CONSTRAINTS] == [slack]  # optuna-dashboard's key and format
        assert feasibility.feasible(trial) == (slack <= 0)
    assert study.metric_names == ["accuracy", "latency_ms"]


def test_export_carries_its_preprocessing_for_timm(trained, tmp_path):
    import timm
    import timm.data

    import nas.timm_compat  # noqa: F401 — registers vit_nas
    from nas.exporter import export
    from nas.selection import Candidate

    space, data = RunDir(trained).space_and_data()
    arch = space.smallest()
    out = tmp_path / "export"
    meta = export(
        trained, Candidate(0, 0.0, 0.0, 0, 0, arch), out, formats=("safetensors",), progress=lambda line: None
    )
    dataset = RunDir(trained).dataset(space, data)
    assert meta["classes"] == dataset.classes and meta["preprocessing"]["input_size"] == [
        1,
        space.image_size,
        space.image_size,
    ]
    model = timm.create_model("vit_nas", arch=str(out), checkpoint_path=str(out / "model.safetensors"))
    config = timm.data.resolve_data_config(model=model)
    assert config["input_size"] == (1, space.image_size, space.image_size)
    assert config["mean"] == pytest.approx(tuple(dataset.mean.flatten().tolist()), abs=1e-5)
    assert config["std"] == pytest.approx(tuple(dataset.std.flatten().tolist()), abs=1e-5)
    assert model.pretrained_cfg["label_names"] == dataset.classes
