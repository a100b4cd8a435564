"""The Optuna search on local Ray: outputs, kill + resume, dead evaluators, budgets, DDP."""

from __future__ import annotations

import csv
import json
import math
import os
import time

import optuna
import pytest
from runs import make_run

from nas import feasibility, study_trials
from nas import study as search
from nas.cli import main
from nas.latency import table as lut
from nas.rundir import TABLE, RunDir
from nas.space_file import load_space
from nas.storage import normalize, redact, redact_text
from nas.training import TrainConfig
from workers.cluster import init_ray

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_local():
    init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.mark.compat
def test_the_local_ray_instance_runs_its_workers_at_the_drivers_priority(ray_local):
    """Ray's default (niceness +15 for every worker) starves evaluators, profilers and training workers as soon as
    anything else runs on the machine: a local instance of ours keeps them at the priority of the process that started it."""
    import os

    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, 0)

    assert ray.get(niceness.remote()) == os.getpriority(os.PRIO_PROCESS, 0)


@pytest.mark.slow
@pytest.mark.compat
def test_tiny_search_writes_every_file_and_a_feasible_front(trained, ray_local, capsys):
    from nas.budget import default_budget

    space, _ = RunDir(trained).space_and_data()
    budget = str(
        default_budget(space, lut.LatencyTable.load(trained / TABLE, space))[0]
    )  # from the measured table, never a constant
    assert main(["search", "--run", str(trained), "--trials", "8", "--evaluators", "2", "--budget-ms", budget]) == 0
    for name in ("study.db", "trials.csv", "pareto.csv", "pareto.png", "supernet.safetensors", TABLE, "config.yaml"):
        assert (trained / name).exists(), name
    rows = list(csv.DictReader((trained / "trials.csv").open()))
    assert len(rows) == 8 and all(r["state"] in ("COMPLETE", "FAIL", "PRUNED") for r in rows)
    for r in rows:  # latency first: an arch over the budget is judged, not scored; every scored one was measured
        if r["state"] == "PRUNED":
            assert (
                float(r["latency_ms"]) > float(budget)
                and r["feasible"] == "False"
                and r["skipped"]
                and not r["accuracy"]
            )
        if r["state"] == "COMPLETE":
            assert (
                r["latency_source"] == "measured"
                and float(r["latency_ms"]) == float(r["measured_ms"])
                and float(r["predicted_ms"]) > 0
            )
    front = list(csv.DictReader((trained / "pareto.csv").open()))
    assert front, "some trial should be feasible under the budget"
    points = [(float(r["accuracy"]), float(r["latency_ms"])) for r in front]
    assert all(r["feasible"] == "True" and float(r["latency_ms"]) <= float(budget) for r in front)
    for a in points:  # non-dominated
        assert not any(b != a and b[0] >= a[0] and b[1] <= a[1] for b in points)
    study = optuna.load_study(study_name=RunDir(trained).study_name(), storage=f"sqlite:///{trained / 'study.db'}")
    assert all(t.constraints for t in study.trials), "every trial carries the latency constraint"
    assert "accuracy" in capsys.readouterr().out


@pytest.mark.slow  # reads the tiny search's study
@pytest.mark.compat
def test_report_draws_the_hypervolume_history_and_the_latency_fit(trained, ray_local, capsys):
    """`nas report`: hypervolume.png (never falling, ending at the final front's) and latency_fit.png."""
    from nas.report import front_of, hypervolume, hypervolume_history

    assert (trained / "study.db").exists(), "runs after the tiny search above"
    assert main(["report", "--run", str(trained)]) == 0
    assert "hypervolume.png, latency_fit.png" in capsys.readouterr().out
    for name in ("hypervolume.png", "latency_fit.png"):
        assert (trained / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    study = optuna.load_study(study_name=RunDir(trained).study_name(), storage=f"sqlite:///{trained / 'study.db'}")
    numbers, volumes, ref = hypervolume_history(study.get_trials(), None)
    assert numbers and all(b >= a for a, b in zip(volumes, volumes[1:]))
    points = [
        (t.values[0], t.values[1]) for t in study.get_trials() if t.state.name == "COMPLETE" and feasibility.feasible(t)
    ]
    assert volumes[-1] == pytest.approx(hypervolume(front_of(points, ref), 0.0, ref))


def test_a_search_with_no_feasible_trial_fails_with_one_line(trained, ray_local, capsys, tmp_path):
    space, _ = RunDir(trained).space_and_data()
    table = lut.LatencyTable.load(trained / TABLE, space)
    floor = feasibility.smallest_latency(space, table)  # only the single fastest configuration is feasible
    storage = f"sqlite:///{tmp_path / 'other.db'}"
    code = main(
        [
            "search",
            "--run",
            str(trained),
            "--latency",
            "predicted",  # judged by the table alone: measured trials could meet that budget when the machine runs faster
            "--trials",
            "4",
            "--sampler",
            "random",
            "--evaluators",
            "1",
            "--budget-ms",
            f"{math.ceil(floor * 1e6) / 1e6:.6f}",
            "--storage",
            storage,
            "--report-dir",
            str(tmp_path / "report"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert (
        "no trial met the budget" in err[0] and "the fastest trial was" in err[0] and "would admit about half" in err[0]
    )


@pytest.mark.slow
@pytest.mark.compat
def test_dead_evaluator_is_restarted_or_its_trial_recorded_failed(trained, ray_local):
    from nas.evaluate import evaluation_state
    from workers.evaluator import EvaluatorPool

    space, _ = RunDir(trained).space_and_data()
    table = lut.LatencyTable.load(trained / TABLE, space)
    # The timeout is a safety net against a restart that never completes, not a bound on the work (a trial takes seconds).
    pool = EvaluatorPool(evaluation_state(trained), 2, max_restarts=1, max_task_retries=1, timeout_s=120)
    # Both actors built and answering first: the failure under test is an evaluator dying while its trial is in flight
    # (killing a Ray actor while its worker process still starts can leave Ray unable to place its replacement).
    assert all(isinstance(r, dict) for r in pool.evaluate([space.smallest(), space.smallest()]))
    kills = []

    def evaluate_killing_one(archs):
        refs = pool.submit(archs)
        if len(kills) < 2:  # kill an actor while its trial is in flight, twice (restart budget is 1)
            ray.kill(pool.actors[0], no_restart=False)
            kills.append(1)
        return pool.collect(refs)

    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    config = search.SearchConfig(
        trials=8, batch=2, budget_ms=1000.0
    )  # every arch: the test is about dead actors, not the budget
    search.run_search(study, space, table, evaluate_killing_one, config, progress=lambda line: None)
    pool.shutdown()
    states = [t.state for t in study.trials]
    assert len(study.trials) == 8 and optuna.trial.TrialState.RUNNING not in states
    failures = [
        (t.number, t.user_attrs.get("failure")) for t in study.trials if t.state != optuna.trial.TrialState.COMPLETE
    ]
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 6, failures  # only the killed actor's trials may fail
    assert optuna.trial.TrialState.FAIL not in states[-2:], failures  # the dead actor was replaced: full capacity again
    assert all("latency" in t.constraints for t in study.trials), "failed trials keep their constraint"
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert all(t.user_attrs["failure"] for t in failed)


def test_nan_accuracy_is_a_failed_trial_not_zero(trained):
    space, _ = RunDir(trained).space_and_data()
    table = lut.LatencyTable.load(trained / TABLE, space)
    study = optuna.create_study(directions=["maximize", "minimize"])
    search.run_search(
        study,
        space,
        table,
        lambda archs: [{"accuracy": float("nan"), "macs": 1, "params": 1}] * len(archs),
        search.SearchConfig(trials=2, batch=2),
        progress=lambda line: None,
    )
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    assert feasibility.pareto_front(study.trials) == []


def test_the_search_states_how_busy_its_evaluators_were():
    space = load_space("digits-tiny")

    class Table:  # a latency predictor is all the loop needs
        def predict(self, arch):
            return 1.0

    def evaluate(archs):  # each evaluation reports its own time, as nas.evaluate.Evaluator does
        return [{"accuracy": 0.5, "macs": 1, "params": 1, "seconds": 0.25} for _ in archs]

    lines = []
    config = search.SearchConfig(trials=6, batch=2, sampler="random")
    study = search.open_study_in_memory(config)
    search.run_search(study, space, Table(), evaluate, config, progress=lines.append, evaluators=2)
    fresh = [t for t in study.trials if "reused_from" not in t.user_attrs]
    assert fresh and all(t.user_attrs["eval_seconds"] == 0.25 for t in fresh)
    assert lines[-1].startswith(f"evaluators: busy {0.25 * len(fresh):.1f} s of 2 x ")


def test_infeasible_budget_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    from test_faults import tiny_space_file

    # 0.1 µs: below any forward pass on any device (a kernel launch alone costs more), so no latency constant
    code = main(
        [
            "run",
            "--space",
            str(tiny_space_file(tmp_path)),
            "--budget-ms",
            "0.0001",
            "--calibrate",
            "0",
            "--validate",
            "0",
            "--out",
            str(out),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "--budget-ms 0.0001 is below the smallest latency any arch of tiny reaches on this device" in err
    assert not (out / "supernet.safetensors").exists() and not (out / "study.db").exists()


@pytest.mark.slow
def test_two_studies_in_one_storage_stay_separate(trained, ray_local, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'team.db'}"
    for name, trials in (("first", 3), ("second", 2)):
        assert (
            main(
                [
                    "search",
                    "--run",
                    str(trained),
                    "--trials",
                    str(trials),
                    "--sampler",
                    "random",
                    "--evaluators",
                    "1",
                    "--storage",
                    storage,
                    "--study-name",
                    name,
                    "--report-dir",
                    str(tmp_path / name),
                ]
            )
            == 0
        )
    assert {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)} == {"first": 3, "second": 2}
    assert [len(list(csv.DictReader((tmp_path / name / "trials.csv").open()))) for name in ("first", "second")] == [
        3,
        2,
    ]
    capsys.readouterr()
    again = [
        "search",
        "--run",
        str(trained),
        "--trials",
        "3",
        "--evaluators",
        "1",
        "--storage",
        storage,
        "--study-name",
        "first",
        "--report-dir",
        str(tmp_path / "again"),
    ]
    assert main(again) == 2  # the same name without --resume: refused, naming both ways out
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "already holds a study named 'first'" in err[0]
        and "--resume" in err[0]
        and "--study-name" in err[0]
    )
    assert main(["report", "--storage", storage]) == 0  # the storage's studies, listed
    listed = capsys.readouterr().out
    assert (
        "2 studies" in listed and "first: 3 trials (3 complete)" in listed and "second: 2 trials (2 complete)" in listed
    )
    assert (
        main(
            [
                "report",
                "--run",
                str(trained),
                "--storage",
                storage,
                "--study-name",
                "second",
                "--report-dir",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    assert "study second: 2 trials" in capsys.readouterr().out
    assert len(list(csv.DictReader((tmp_path / "r" / "trials.csv").open()))) == 2
    assert (
        main(
            [
                "report",
                "--run",
                str(trained),
                "--storage",
                storage,
                "--study-name",
                "third",
                "--report-dir",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "holds no study named 'third' (it holds: first, second); pass --study-name NAME" in capsys.readouterr().err
    assert (
        main(
            [
                "search",
                "--run",
                str(trained),
                "--storage",
                storage,
                "--study-name",
                "a b",
                "--report-dir",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "--study-name 'a b': use 1 to 128 printable characters without spaces" in capsys.readouterr().err
    assert {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)} == {"first": 3, "second": 2}


def test_storage_password_is_redacted():
    assert redact("postgresql://nas:s3cret@db.local:5432/nas") == "postgresql://nas:***@db.local:5432/nas"
    assert (
        redact("postgresql://nas@db.local/nas?sslmode=require&password=s3cret")
        == "postgresql://nas@db.local/nas?sslmode=require&password=***"
    )
    assert redact("sqlite:///tmp/x.db") == "sqlite:///tmp/x.db"
    assert "s3cret" not in redact_text("nas run --storage postgresql://nas:s3cret@db/nas --out x")


def test_postgresql_storage(trained, ray_local, capsys, tmp_path):
    url = os.environ.get("NAS_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("no PostgreSQL server: .ci/run starts one and sets NAS_TEST_POSTGRES_URL when it can")
    storage = normalize(url)
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    except Exception as error:  # noqa: BLE001
        pytest.skip(f"PostgreSQL at {redact(url)} is not reachable: {error}")
    name = "nas-ci-postgres"
    if name in names:
        optuna.delete_study(study_name=name, storage=storage)
    assert (
        main(
            [
                "search",
                "--run",
                str(trained),
                "--trials",
                "4",
                "--evaluators",
                "1",
                "--storage",
                url,
                "--study-name",
                name,
                "--report-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[-1]
    printed = capsys.readouterr().out
    assert f":{password}@" not in printed and ":***@" in printed
    optuna.delete_study(study_name=name, storage=storage)


@pytest.mark.slow
@pytest.mark.compat
def test_ddp_ranks_sample_the_same_subnets_and_leave_no_checkpoint_copies_in_the_temp_folder(tmp_path):
    import tempfile
    from pathlib import Path

    from workers.trainer import train_distributed

    def copies() -> set[Path]:
        return set(Path(tempfile.gettempdir()).glob("*/supernet.safetensors"))

    space = load_space("digits-tiny")
    before = copies()
    try:
        summary = train_distributed(
            space,
            None,
            TrainConfig(epochs=2, batch_size=256, random_subnets=1),
            tmp_path,
            2,
            False,
            progress=lambda line: None,
        )
    finally:
        ray.shutdown()  # also when it fails: the tests after it get a fresh Ray instance, not this one's leftovers
    logs = [json.loads((tmp_path / "ray_train" / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert len(logs[0]) == 2 and logs[0] == logs[1]
    assert 0 <= summary["test_largest"] <= 1 and (tmp_path / "supernet.safetensors").exists()
    assert copies() - before == set()  # Ray Train's checkpoints are not left behind in the temp folder


def test_hypervolume_of_a_front():
    from nas.bench.search import hypervolume

    # reference (accuracy 0.5, latency 4): two points dominate 3×0.3 + 1×(0.9-0.8) = 1.0
    assert hypervolume([(0.8, 1.0), (0.9, 3.0)], 0.5, 4.0) == pytest.approx(0.9 + 0.1)
    assert hypervolume([(0.8, 1.0), (0.7, 2.0)], 0.5, 4.0) == pytest.approx(0.9)  # dominated point adds nothing
    assert hypervolume([(0.4, 1.0), (0.9, 5.0)], 0.5, 4.0) == 0.0  # outside the reference box


@pytest.mark.slow
def test_bench_search_runs_on_a_tiny_setting(trained, ray_local, tmp_path, capsys):
    args = [
        "bench",
        "search",
        "--run",
        str(trained),
        "--trials",
        "4",
        "--seeds",
        "0",
        "--reference-archs",
        "20",
        "--samplers",
        "tpe,nsga2,random",
        "--checkpoints",
        "2",
        "--evaluators",
        "1",
        "--ref-accuracy",
        "0.0",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    data = json.loads((tmp_path / "search_digits-tiny.json").read_text())
    assert set(data["hypervolume"]) == {"nsga2", "tpe", "random"}
    assert set(data["throughput_archs_per_second"]) == {"1_evaluators", "2_evaluators"}
    assert data["reference_front"]["archs"] == 20 and data["reference_front"]["hypervolume"] > 0
    assert all(0 <= stats["share_mean"] and "share_at_2" in stats for stats in data["hypervolume"].values())
    assert set(data["targets"]) == {"nsga2_above_random_at_4_trials"}  # TPE's target is at 50 trials
    rows = list(csv.DictReader((tmp_path / "search_digits-tiny.csv").open()))
    assert len(rows) == 3 and all(float(r["hypervolume_at_2"]) <= float(r["hypervolume"]) for r in rows)
    assert "of the reference on average" in capsys.readouterr().out
    # Resumable: run again, and every score and study comes from the logs (one line each), nothing is scored twice.
    scores = (tmp_path / "search_digits-tiny_scores.jsonl").read_text().splitlines()
    assert len(scores) == len({json.loads(line)["digest"] for line in scores}) >= 20
    assert len((tmp_path / "search_digits-tiny_studies.jsonl").read_text().splitlines()) == 3
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("(from the log)") == 3 and f"{len(scores)} archs already scored" in out
    assert (tmp_path / "search_digits-tiny_scores.jsonl").read_text().splitlines() == scores
    assert json.loads((tmp_path / "search_digits-tiny.json").read_text())["hypervolume"] == data["hypervolume"]


def test_hypervolume_after_counts_only_the_first_trials_within_the_budget():
    from nas.bench.search import hypervolume_after

    points = [[0.6, 1.0], [None, 5.0], [0.9, 3.0], [0.95, 4.5]]  # a pruned trial, then one over the budget of 4 ms
    assert hypervolume_after(points, 1, 0.5, 4.0) == pytest.approx(3 * 0.1)
    assert hypervolume_after(points, 4, 0.5, 4.0) == pytest.approx(3 * 0.1 + 1 * 0.3)


@pytest.mark.slow
def test_run_with_an_explicit_storage_url(tmp_path, capsys):
    from test_faults import tiny_space_file

    storage = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    out = tmp_path / "run"
    args = [
        "run",
        "--space",
        str(tiny_space_file(tmp_path)),
        "--epochs",
        "1",
        "--trials",
        "3",
        "--evaluators",
        "1",
        "--budget-ms",
        "1000",
        "--calibrate",
        "0",
        "--validate",
        "0",
        "--storage",
        storage,
        "--verify",
        "0",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert not (out / "study.db").exists() and (tmp_path / "elsewhere.db").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["study_name"] == "run" == RunDir(out).study_name()  # the run directory's name, recorded
    assert len(optuna.load_study(study_name="run", storage=storage).trials) == 3
    assert manifest["settings"]["storage"] == storage and manifest["stages"]["search"]["completed"]
    ray.shutdown()


@pytest.mark.parametrize(  # the GP sampler fits a torch model per trial (~5 s)
    "sampler",
    [pytest.param(s, marks=[pytest.mark.slow, pytest.mark.compat]) if s == "gp" else s for s in search.SAMPLERS],
)
def test_every_sampler_sees_the_same_parameters_in_every_trial(trained, sampler):
    """A fixed parameterisation (issue 26): every trial suggests every layer up to the largest depth, so no
    sampler falls back to independent sampling; the arch uses the first `depth` layers."""
    space, _ = RunDir(trained).space_and_data()
    table = lut.LatencyTable.load(trained / TABLE, space)
    study = search.open_study_in_memory(search.SearchConfig(sampler=sampler, seed=1))

    def evaluate(archs):
        return [{"accuracy": 0.1 * a.depth + 0.01 * a.embed_dim / 16, "macs": 1, "params": 1} for a in archs]

    search.run_search(
        study,
        space,
        table,
        evaluate,
        search.SearchConfig(trials=14, batch=2, sampler=sampler, seed=1, budget_ms=1000.0),
        progress=lambda line: None,
    )
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 14
    names = {name for t in trials for name in t.params}
    assert all(set(t.params) == names for t in trials)
    assert names == {"embed_dim", "depth"} | {
        f"l{i}_{p}" for i in range(max(space.depth)) for p in ("kernel", "heads", "mlp_ratio")
    }
    for t in trials:
        arch = study_trials.arch_of(t, space)
        assert arch.depth == t.params["depth"] and arch.digest == t.user_attrs["digest"]


def test_unused_layers_change_neither_the_arch_nor_its_digest(trained):
    space, _ = RunDir(trained).space_and_data()
    depth = min(space.depth)
    labels = [spec.label for spec in space.kernel_choices()]
    base = {"embed_dim": space.embed_dim[0], "depth": depth}
    for i in range(max(space.depth)):
        base.update({f"l{i}_kernel": labels[0], f"l{i}_heads": space.heads[0], f"l{i}_mlp_ratio": space.mlp_ratio[0]})
    other = {**base, **{f"l{i}_kernel": labels[-1] for i in range(depth, max(space.depth))}}
    a, b = (study_trials.suggest_arch(optuna.trial.FixedTrial(p), space) for p in (base, other))
    assert a == b and a.digest == b.digest and a.depth == depth
    assert (
        study_trials.suggest_arch(optuna.trial.FixedTrial({**base, "l0_kernel": labels[-1]}), space).digest != a.digest
    )


class ThreadPool:
    """A fake asynchronous evaluator pool (the interface of EvaluatorPool's `start`/`wait`): evaluator i
    takes `delays[i]` seconds per arch, in a thread. `log`: (evaluator, digest) of every evaluation."""

    def __init__(self, delays, stop_after: int | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self.delays, self.actors, self.stop_after = delays, list(range(len(delays))), stop_after
        self.executor, self.flying, self.log, self.answered = ThreadPoolExecutor(len(delays)), {}, [], 0

    def idle(self):
        return len(self.actors) - len(self.flying)

    def start(self, arch):
        index = next(i for i in self.actors if i not in self.flying)
        self.flying[index] = self.executor.submit(self._evaluate, index, arch)
        return index

    def _evaluate(self, index, arch):
        time.sleep(self.delays[index])
        self.log.append((index, arch.digest))
        return {
            "accuracy": 0.1 * arch.depth + 0.01 * arch.embed_dim / 16,
            "macs": 1,
            "params": 1,
            "seconds": self.delays[index],
        }

    def wait(self):
        from concurrent.futures import FIRST_COMPLETED, wait

        if self.stop_after is not None and self.answered >= self.stop_after:
            raise KeyboardInterrupt  # Ctrl-C while evaluations are in flight
        done, _ = wait(list(self.flying.values()), return_when=FIRST_COMPLETED)
        out = [(i, f.result()) for i, f in list(self.flying.items()) if f in done]
        for i, _ in out:
            del self.flying[i]
        self.answered += len(out)
        return out

    def evaluate(self, archs):
        raise AssertionError("the asynchronous loop gives archs one by one (start/wait)")


def space_and_table(trained):
    space, _ = RunDir(trained).space_and_data()
    return space, lut.LatencyTable.load(trained / TABLE, space)


def test_asynchronous_search_keeps_the_other_evaluators_going_beside_a_slow_one(trained):
    """Issue 26, 3: with one slow evaluator, the fast one keeps getting trials instead of waiting for a batch."""
    space, table = space_and_table(trained)
    pool = ThreadPool([0.6, 0.005])
    study = search.open_study_in_memory(search.SearchConfig(sampler="random", seed=0))
    lines = []
    search.run_search(
        study,
        space,
        table,
        pool.evaluate,
        search.SearchConfig(trials=20, batch=4, sampler="random", budget_ms=1000.0),
        progress=lines.append,
        evaluators=2,
        pool=pool,
    )
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 20 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    slow, fast = (sum(1 for i, _ in pool.log if i == e) for e in (0, 1))
    assert fast >= 3 * slow, (slow, fast)  # batches of 4 would give each evaluator 2 per batch
    assert len({d for _, d in pool.log}) == len(pool.log)  # each arch evaluated once
    assert all(t.user_attrs["eval_seconds"] in (0.6, 0.005) for t in trials if "reused_from" not in t.user_attrs)
    assert "asynchronous: no batches" in lines[-1]


def test_asynchronous_search_killed_and_resumed_loses_no_trial_and_scores_none_twice(trained, tmp_path):
    space, table = space_and_table(trained)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    config = search.SearchConfig(trials=12, batch=2, sampler="tpe", seed=3, budget_ms=1000.0)
    study = search.open_study(storage, config, resume=False, study_name="s")
    with pytest.raises(KeyboardInterrupt):
        search.run_search(
            study,
            space,
            table,
            None,
            config,
            progress=lambda line: None,
            evaluators=2,
            pool=ThreadPool([0.05, 0.02], stop_after=5),
        )
    interrupted = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("interrupted")]
    assert len(interrupted) >= 2 and not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    study = search.open_study(storage, config, resume=True, study_name="s")
    search.run_search(
        study, space, table, None, config, progress=lambda line: None, evaluators=2, pool=ThreadPool([0.05, 0.02])
    )
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sum(study_trials.counted(t) for t in trials) == 12 == len(complete)  # nothing lost: 12 scored trials
    scored = [t.user_attrs["digest"] for t in complete if "reused_from" not in t.user_attrs]
    assert len(scored) == len(set(scored))  # no arch scored twice
    for t in interrupted:  # each interrupted trial's arch was run again
        assert any(c.params == t.params for c in complete), t.number
