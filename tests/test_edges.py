"""Bad input at the edges (issue 25, part): each case is one line and exit 2, or a quiet end."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nas.cli import main
from nas.errors import NasError


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_version_prints_the_package_version(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and metadata.version("vit-nas") in capsys.readouterr().out


def test_python_dash_m_nas_is_the_nas_command():
    """Where the console script is not installed (a GPU machine with the repository on PYTHONPATH)."""
    done = subprocess.run([sys.executable, "-m", "nas", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("nas (vit-nas)")


def test_the_gpu_bundle_pins_the_versions_installed_here():
    from importlib import metadata

    from nas.bundle import PACKAGES, pins

    assert "optuna" in PACKAGES and "fvcore" in PACKAGES
    assert pins() == [f"{name}=={metadata.version(name)}" for name in PACKAGES]
    with pytest.raises(SystemExit, match="not-a-package-here not installed"):
        pins(("optuna", "not-a-package-here"))


@pytest.mark.parametrize("budget", ["nan", "inf", "-1", "0", "0.5,nan"])
def test_select_refuses_a_budget_that_is_not_a_positive_finite_number(budget, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        main(["select", "--run", str(tmp_path), "--budget-ms", budget])
    assert stop.value.code == 2 and "positive finite" in one_line_error(capsys)


def test_output_into_a_closed_pipe_ends_quietly():
    """`nas ... | head`: the reader leaves early; no BrokenPipeError traceback."""
    script = (
        "import sys; from nas.cli import main; import nas.commands.run as r\n"
        "def spam(args):\n    [print('line', i) for i in range(100000)]\n    return 0\n"
        "r.run_report = spam\nsys.argv = ['nas', 'report', '--run', '.']\nsys.exit(main())"
    )
    reader = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.readline()
    reader.stdout.close()  # like head after its lines
    stderr = reader.stderr.read().decode()
    assert reader.wait(timeout=60) == 0 and "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_train_help_names_no_stale_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "the space's `epochs` field" in out and "odd-one-out 10" not in out


def test_a_storage_password_with_unencoded_at_and_colon_never_reaches_the_console():
    from nas.storage import check

    for url in (
        "postgresql://user:SECRET@TAIL@127.0.0.1:1/db",
        "postgresql://user:SE:CRET:TAIL@127.0.0.1:notaport/db",
        "mysql://user:SECRETTAIL@127.0.0.1:99999/db",
    ):
        with pytest.raises(NasError) as error:
            check(url, timeout_s=10)
        text = str(error.value)
        assert "SECRET" not in text and "TAIL" not in text and "CRET" not in text, text


def test_the_scrubber_removes_every_piece_of_the_credentials():
    from nas.storage import scrub

    cleaned = scrub(
        "invalid literal for int(): 'SECRET@TAIL@127.0.0.1:1' and SE:CRET", "postgresql://u:SECRET@TAIL@127.0.0.1:1/db"
    )
    assert "SECRET" not in cleaned and "TAIL" not in cleaned and "127.0.0.1" in cleaned
    assert scrub("no secrets here", "postgresql://h/db") == "no secrets here"


@pytest.mark.parametrize(
    "content, words",
    [
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary", "not a text file"),
        (
            "name: deep\nimage_size: 8\npatch_size: 4\nin_chans: 1\nnum_classes: 3\nhead_dim: 4\nembed_dim: [8]\ndepth: [2, 3, 400]\n"
            "heads: [1]\nmlp_ratio: [1]\nkernels: [softmax]\n",
            "field 'depth': 400 layers is more than",
        ),
    ],
)
def test_a_bad_space_file_is_one_line_naming_what_is_wrong(content, words, tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["latency", "--space", str(path), "--out", str(tmp_path / "t.json")]) == 2
    assert words in one_line_error(capsys)


def test_a_directory_as_space_is_called_a_directory(tmp_path, capsys):
    assert main(["latency", "--space", str(tmp_path), "--out", str(tmp_path / "t.json")]) == 2
    assert "is a directory" in one_line_error(capsys)


def test_an_unreachable_tau_target_and_more_threads_than_cores_are_refused(tmp_path, capsys):
    import os

    for args, words in (
        (["--min-tau", "2"], "unreachable"),
        (["--threads", str((os.cpu_count() or 1) * 8)], "oversubscription"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(["latency", "--space", "digits-tiny", *args, "--out", str(tmp_path / "t.json")])
        assert stop.value.code == 2 and words in one_line_error(capsys) and not (tmp_path / "t.json").exists()


def test_sigterm_is_143_even_when_a_library_turns_it_into_a_plain_keyboard_interrupt(monkeypatch, capsys):
    """Ray converts a signal that lands inside ray.get / ray.wait into a new KeyboardInterrupt (its status
    'Interrupted'), so during the search the exception's type said Ctrl-C: exit 130 instead of 143."""
    import os
    import signal
    import time

    import nas.commands.run as commands

    def like_ray_get(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            raise KeyboardInterrupt() from None  # what ray._raylet does with a signal during a blocking call
        return 0

    monkeypatch.setattr(commands, "run_report", like_ray_get)
    assert main(["report", "--run", "."]) == 143
    assert "stopped by SIGTERM" in one_line_error(capsys)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--budget-ms", "5", "--budget-quantile", "0.3"], "pass one"),
        (["--storage-path", "/tmp/x", "--workers", "1"], "--workers 1"),
        (["--out", ""], "empty path"),
        (["--out", " "], "empty path"),
    ],
)
def test_contradictory_or_empty_run_settings_are_refused_before_any_work(args, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(
            ["run", "--space", "digits-tiny", *args] + ([] if "--out" in args else ["--out", str(tmp_path / "run")])
        )
    except SystemExit as stop:  # argparse's own refusal
        code = stop.code
    assert code == 2 and words in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_values_beyond_the_data_are_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--space", "digits-tiny", "--batch-size", "100000", "--out", str(out)]) == 2
    assert "training split holds only" in one_line_error(capsys) and not out.exists()
    assert main(["run", "--space", "digits-tiny", "--val-images", "999999", "--out", str(out)]) == 2
    assert "validation split holds only" in one_line_error(capsys) and not out.exists()


def test_a_resume_asking_for_fewer_trials_than_the_run_has_is_refused():
    from nas.resume import resume_changes

    with pytest.raises(NasError, match="--trials 2: this run was started for 4 trials"):
        resume_changes({"trials": 4, "seed": 0}, {"trials": 2, "seed": 0}, trained=True)
    assert resume_changes({"trials": 4}, {"trials": 6}, trained=True) == {"trials": (4, 6)}  # growing is extending


def test_a_trials_csv_cut_at_a_row_boundary_is_refused_not_half_used(tmp_path):
    """A trials.csv that lists fewer trials than the run's study (cut by a full disk, or stale) would
    let `nas select` choose among some trials only, with no word; it is refused naming the fix."""
    import csv
    import json

    import optuna

    from nas.rundir import STUDY, TRIALS
    from nas.selection import load_candidates
    from nas.space_file import load_space

    arch = json.dumps(load_space("digits-tiny").smallest().to_dict())
    study = optuna.create_study(
        study_name="any-name", storage=f"sqlite:///{tmp_path / STUDY}", directions=["maximize", "minimize"]
    )
    for number in range(4):
        study.add_trial(optuna.trial.create_trial(values=[0.5 + number / 10, 1.0]))
    fields = ["number", "state", "accuracy", "latency_ms", "macs", "params", "arch"]

    def write(rows: int) -> None:
        with (tmp_path / TRIALS).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fields)
            writer.writeheader()
            for number in range(rows):
                writer.writerow(
                    {
                        "number": number,
                        "state": "COMPLETE",
                        "accuracy": 0.5 + number / 10,
                        "latency_ms": 1.0,
                        "macs": 1,
                        "params": 1,
                        "arch": arch,
                    }
                )

    write(2)
    with pytest.raises(NasError, match=r"lists 2 trial\(s\) but the run's study holds 4.*nas report"):
        load_candidates(tmp_path)
    write(4)
    assert [c.trial for c in load_candidates(tmp_path)] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "which",
    [
        ["kernels"],
        ["supernet"],
        ["latency", "--space", "digits-tiny"],
        ["train"],
        ["truth", "--space", "digits-tiny"],
        ["zoo"],
        ["pick", "--run", "r", "--truth", "t"],
        ["blockwise"],
    ],
)
def test_every_benchmark_checks_its_output_before_the_work(which, tmp_path, capsys, monkeypatch):
    from nas.commands import bench, bench_latency, bench_quality, bench_search, bench_truth

    def work(args):  # any benchmark's work: never reached when --out is refused
        raise AssertionError("the benchmark started before its --out was checked")

    for module in (bench, bench_latency, bench_quality, bench_search, bench_truth):
        for name in dir(module):
            if name.startswith("run_bench_"):
                monkeypatch.setattr(module, name, work)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "inside" if which[0] == "truth" else blocker  # a folder that cannot be made / a file for a folder
    assert main(["bench", *which, "--out", str(out)]) == 2
    assert "a-file" in one_line_error(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


def test_bench_train_refuses_negative_loader_workers_before_making_images(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "train", "--loader-workers", "-1", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "counts >= 0" in one_line_error(capsys) and list(tmp_path.iterdir()) == []


def test_nas_train_stopped_before_its_first_checkpoint_leaves_nothing_and_says_so(tmp_path, capsys, monkeypatch):
    import torch

    def ctrl_c(self, *args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C during the first optimizer step, after config.yaml and split.json were written

    monkeypatch.setattr(torch.optim.AdamW, "step", ctrl_c)
    out = tmp_path / "run"
    assert main(["train", "--space", "digits-tiny", "--epochs", "1", "--out", str(out)]) == 130
    assert not out.exists()
    err = one_line_error(capsys)
    assert "nothing is kept" in err and "--resume" not in err


def test_stop_advice_names_resume_only_for_commands_that_have_it(capsys, monkeypatch):
    import nas.commands.models as models

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "run_export", interrupted)
    assert main(["export", "--run", ".", "--trial", "0", "--out", "x"]) == 130
    assert "--resume" not in one_line_error(capsys)


def test_a_budget_refused_as_unreachable_keeps_the_measured_table_for_a_resume(tmp_path, capsys):
    import json

    from nas.resume import resume_changes

    space = tmp_path / "tiny.yaml"
    space.write_text(
        json.dumps(
            {
                "name": "tiny",
                "image_size": 8,
                "patch_size": 4,
                "in_chans": 1,
                "num_classes": 10,
                "head_dim": 4,
                "embed_dim": [8],
                "depth": [1],
                "heads": [1],
                "mlp_ratio": [1],
                "kernels": ["softmax", "relu"],
            }
        )
    )
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--space",
                str(space),
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
    assert "below the smallest latency" in err and f"--resume --out {out}" in err
    assert (out / "latency_table.json").is_file()
    previous = {"budget_ms": 0.000001, "seed": 0}
    assert resume_changes(previous, {"budget_ms": 5.0, "seed": 0}, trained=False, searched=False) == {
        "budget_ms": (0.000001, 5.0)
    }
    with pytest.raises(NasError, match="--budget-ms was"):
        resume_changes(previous, {"budget_ms": 5.0, "seed": 0}, trained=False, searched=True)


# ---- damaged run files (issue 25, #8): one reader per file, one line naming it --------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from runs import make_run

    return make_run(tmp_path_factory.mktemp("damaged") / "run")


def copy_of(run, tmp_path):
    import shutil

    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def test_flipped_bytes_inside_the_supernet_are_refused_not_scored(tiny_run, tmp_path):
    from nas.rundir import WEIGHTS, RunDir

    run = copy_of(tiny_run, tmp_path)
    space, _ = RunDir(run).space_and_data()
    RunDir(run).supernet(space)  # intact: loads
    data = bytearray((run / WEIGHTS).read_bytes())
    for offset in range(len(data) - 4096, len(data) - 4000):  # inside the last tensor, past the header
        data[offset] ^= 0x5A
    (run / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(NasError, match="does not match the checksum"):
        RunDir(run).supernet(space)


def test_an_export_whose_arch_json_belongs_to_another_model_is_one_line(tmp_path):
    import random

    import nas
    from nas.space_file import load_space
    from nas.subnet import ViT, save

    space = load_space("digits-tiny")
    save(ViT(space.largest()), tmp_path / "a")
    save(ViT(space.sample(random.Random(3))), tmp_path / "b")
    (tmp_path / "a" / "arch.json").write_text((tmp_path / "b" / "arch.json").read_text())
    with pytest.raises(NasError, match="files of two exports mixed"):
        nas.load(tmp_path / "a")
    assert nas.load(tmp_path / "b") is not None


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda d: [d], "not an object"),
        (
            lambda d: {**d, "calibration": {**(d.get("calibration") or {}), "a": "fast", "b": 0.0}},
            "calibration field 'a'",
        ),
        (lambda d: {**d, "calibration": {"a": -0.027, "b": 3.0}}, "must be positive"),
    ],
)
def test_a_damaged_latency_table_is_one_line_naming_the_field(tiny_run, tmp_path, damage, words):
    import json

    from nas.latency.table import LatencyTable
    from nas.rundir import TABLE

    path = tmp_path / TABLE
    path.write_text(json.dumps(damage(json.loads((tiny_run / TABLE).read_text()))))
    with pytest.raises(NasError, match=words):
        LatencyTable.load(path)


def test_a_cut_split_or_a_manifest_of_the_wrong_shape_is_one_line(tiny_run, tmp_path):
    from nas.rundir import MANIFEST, SPLIT, RunDir

    run = copy_of(tiny_run, tmp_path)
    space, data = RunDir(run).space_and_data()
    text = (run / SPLIT).read_text()
    (run / SPLIT).write_text(text[: len(text) // 2])
    with pytest.raises(NasError, match="not a valid split file"):
        RunDir(run).dataset(space, data)
    (run / MANIFEST).write_text('["not", "a", "manifest"]')
    with pytest.raises(NasError, match="not a run manifest"):
        RunDir(run).manifest_data()
    (run / MANIFEST).write_text('{"settings": [1, 2], "stages": {}}')
    with pytest.raises(NasError, match="field 'settings' must be an object"):
        RunDir(run).manifest_data()


def test_the_budget_count_is_over_judged_trials_only():
    """Issue 25 #5: "6 of 8 trials within the budget" counted interrupted (FAIL) trials, which carry a
    latency constraint but were never judged; the count is over COMPLETE and PRUNED trials."""
    import optuna

    from nas.feasibility import budget_counts

    def trial(state, slack, **kwargs):
        return optuna.trial.create_trial(state=state, constraints={"latency": slack}, **kwargs)

    complete = optuna.trial.TrialState.COMPLETE
    trials = [
        trial(complete, -0.1, values=[0.9, 1.0]),
        trial(complete, 0.2, values=[0.95, 1.3]),
        trial(optuna.trial.TrialState.PRUNED, 0.5),
        trial(optuna.trial.TrialState.FAIL, -0.2, user_attrs={"interrupted": True}),
        trial(optuna.trial.TrialState.FAIL, 0.1),
    ]
    assert budget_counts(trials) == (1, 3, 1)
