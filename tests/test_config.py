"""The configuration tree (nas.config): one declaration per setting reaches the flags, --config,
--print-config, the manifest and the --resume check; `nas --help` imports no deep-learning library."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import yaml

from nas import config as config_tree
from nas import settings
from nas.cli import main
from nas.config import RunConfig, TrainConfig
from nas.errors import NasError
from nas.parsers import positive_int
from nas.settings import group, setting


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def printed_config(capsys, *args) -> dict:
    assert main(["run", "--print-config", *args]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_a_field_added_to_a_stage_config_reaches_the_cli_the_config_file_the_manifest_and_the_resume_check(
    monkeypatch, capsys, tmp_path
):
    from nas.resume import resume_changes, settings_record

    @dataclasses.dataclass(frozen=True)
    class Training(TrainConfig):
        warm_restarts: int = setting(3, "a setting added to the training stage", parse=positive_int)

    @dataclasses.dataclass(frozen=True)
    class Run(RunConfig):
        train: Training = group(Training, "supernet training", owned=("epochs", "seed", "precision"))

    monkeypatch.setattr(config_tree, "RunConfig", Run)
    # 1. the command line, with its help and default
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--train.warm-restarts" in capsys.readouterr().out
    assert printed_config(capsys)["train"]["warm_restarts"] == 3
    assert printed_config(capsys, "--train.warm-restarts", "5")["train"]["warm_restarts"] == 5
    with pytest.raises(SystemExit, match="2"):  # its parser applies
        main(["run", "--print-config", "--train.warm-restarts", "0"])
    assert "--train.warm-restarts" in capsys.readouterr().err
    # 2. a config file
    file = tmp_path / "run.yaml"
    file.write_text("train:\n  warm_restarts: 7\n")
    assert printed_config(capsys, "--config", str(file))["train"]["warm_restarts"] == 7
    # 3. the manifest's settings
    assert settings_record(Run(train=Training(warm_restarts=7)))["train"]["warm_restarts"] == 7
    # 4. the resume check: it changes what is computed (the default rule), so a resume may not change it
    before, now = (
        settings_record(Run(train=Training(warm_restarts=7))),
        settings_record(Run(train=Training(warm_restarts=9))),
    )
    with pytest.raises(NasError, match="--train.warm-restarts was 7, now 9"):
        resume_changes(before, now, trained=True)


@pytest.mark.parametrize(
    "command, cls, given",
    [
        (
            "latency",
            "LatencySettings",
            ["--out", "t.json", "--calibrate", "0", "--max-mape", "0.2", "--backend", "eager"],
        ),
        (
            "export",
            "ExportSettings",
            ["--run", "r", "--trial", "1", "--out", "e", "--format", "safetensors", "--overwrite"],
        ),
        ("verify", "VerifySettings", ["--run", "r", "--jobs", "1", "--seed", "3"]),
    ],
)
def test_the_one_stage_commands_flags_come_from_their_settings(command, cls, given, capsys):
    """Every field of nas.config_stages' settings is a flag of its command, with its default in the help,
    and the flags given become the settings object the command runs with."""
    from nas import config_stages
    from nas.cli import build_parser

    settings_cls = getattr(config_stages, cls)
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, f in settings.leaves(settings_cls):
        flag = settings.flag_of(settings_cls, name)
        shown = {True: "on", False: "off"}[f.default] if isinstance(f.default, bool) else f.default
        default = f.metadata["default_text"] if f.default is None else shown
        assert flag in text and f"(default: {default})" in text, name
    chosen = settings.from_args(settings_cls, build_parser([command]).parse_args([command, *given]))
    expected = {
        "latency": {"calibrate": 0, "max_mape": 0.2, "runtime": "eager"},
        "export": {"formats": "safetensors", "overwrite": True},
        "verify": {"jobs": 1, "seed": 3},
    }[command]
    assert {k: getattr(chosen, k) for k in expected} == expected
    untouched = dataclasses.replace(chosen, **{k: getattr(settings_cls(), k) for k in expected})
    assert untouched == settings_cls()


def test_a_bad_export_format_is_one_line_before_any_work(capsys, tmp_path):
    with pytest.raises(SystemExit, match="2"):
        main(["export", "--run", str(tmp_path), "--trial", "0", "--out", str(tmp_path / "e"), "--format", "onnx"])
    assert "--format" in one_line_error(capsys)


def test_print_config_replays_through_config_and_flags_override_the_file(capsys, tmp_path):
    printed = printed_config(capsys, "--train.lr", "0.01", "--train.no-augment", "--budget-ms", "2.5", "--trials", "40")
    assert printed["train"]["lr"] == 0.01 and printed["train"]["augment"] is False and printed["budget_ms"] == 2.5
    assert "epochs" not in printed["train"] and "seed" not in printed["train"]  # owned by the run: one flag each
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump(printed))
    assert printed_config(capsys, "--config", str(file)) == printed
    again = printed_config(capsys, "--config", str(file), "--trials", "60", "--train.augment")
    assert again == {**printed, "trials": 60, "train": {**printed["train"], "augment": True}}
    assert settings.load(RunConfig, file) == settings.from_mapping(RunConfig, printed, "here")
    assert printed_config(capsys) == settings.to_dict(RunConfig())  # the defaults are the dataclass's


@pytest.mark.parametrize(
    "text, words",
    [
        ("train:\n  learning_rate: 0.1\n", "unknown setting 'train.learning_rate'"),
        ("lr: 0.1\n", "unknown setting 'lr' (did you mean train.lr?)"),
        ("train:\n  lr: -1\n", "train.lr: expected a positive finite number"),
        ("trials: 2.5\n", "trials must be an integer"),
        ("sampler: annealing\n", "sampler 'annealing': use one of tpe, nsga2, random, gp"),
        ("randaugment: 1\n", "randaugment must be true or false"),
        ("trials:\n", "trials may not be empty"),
        ("- 1\n- 2\n", "expected a mapping of settings"),
        ("train: [1\n", "not valid YAML"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_setting(capsys, tmp_path, text, words):
    file = tmp_path / "run.yaml"
    file.write_text(text)
    assert main(["run", "--config", str(file), "--print-config"]) == 2
    line = one_line_error(capsys)
    assert words in line and str(file) in line


def test_a_missing_config_file_and_two_budgets_are_refused_in_one_line(capsys, tmp_path):
    assert main(["run", "--config", str(tmp_path / "none.yaml"), "--print-config"]) == 2
    assert "no such file" in one_line_error(capsys)
    assert main(["run", "--budget-ms", "2", "--budget-quantile", "0.3", "--print-config"]) == 2
    assert "pass one" in one_line_error(capsys)


def test_every_training_setting_reaches_the_supernet_training_of_nas_run(monkeypatch, tmp_path):
    """`nas run --train.<name>`: the training stage receives it (the run owns epochs, seed and precision)."""
    from nas import pipeline

    seen = {}

    class Reached(Exception):
        pass

    def capture(space, data, dataset, config, *args, **kwargs):
        seen["config"] = config
        raise Reached

    monkeypatch.setattr(pipeline, "train_stage", capture)
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
    with pytest.raises(Reached):
        main(
            [
                "run",
                "--space",
                str(space),
                "--calibrate",
                "0",
                "--validate",
                "0",
                "--budget-ms",
                "1000",
                "--epochs",
                "3",
                "--seed",
                "4",
                "--train.lr",
                "0.01",
                "--train.weight-decay",
                "0",
                "--train.no-augment",
                "--train.kernel-sampling",
                "fair",
                "--out",
                str(tmp_path / "run"),
            ]
        )
    assert seen["config"] == TrainConfig(
        epochs=3, seed=4, lr=0.01, weight_decay=0.0, augment=False, kernel_sampling="fair"
    )
    replay = settings.load(RunConfig, tmp_path / "run" / "run.yaml")  # the run's settings as given, for --config
    assert replay.train.lr == 0.01 and replay.epochs == 3 and replay.space == str(space)
    assert "== train" in (tmp_path / "run" / "nas.log").read_text()


def test_training_settings_are_checked_before_any_work(capsys, tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--space",
                "digits-tiny",
                "--train.kernel-sampling",
                "fair",
                "--train.teacher",
                "softmax",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "--kernel-sampling fair with --teacher softmax" in one_line_error(capsys)
    assert not out.exists()


def test_nas_help_imports_no_deep_learning_library():
    """`nas --help` and `nas run --help` build their parsers from nas.config alone (the benchmarks' only for `nas bench`)."""
    code = (
        "import sys, contextlib, io\nfrom nas.cli import main\n"
        "for argv in (['--help'], ['run', '--help'], ['train', '--help'], ['run', '--print-config']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n            main(argv)\n        except SystemExit:\n            pass\n"
        "print(sorted(m for m in ('torch', 'timm', 'optuna', 'ray') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_readme_lists_the_commands_as_the_parser_has_them():
    """README's command list is generated (`python -m nas.readme`); it fails here when the two drift apart."""
    from nas import readme

    text = readme.README.read_text()
    assert readme.rewritten(text) == text, "README's command list is stale: run `python -m nas.readme`"
    assert len(text.splitlines()) <= 250


@pytest.mark.slow
@pytest.mark.compat
def test_the_public_api_is_declared_and_import_nas_stays_light():
    code = (
        "import sys, nas\nlight = not any(m in sys.modules for m in ('torch', 'timm', 'optuna', 'ray'))\n"
        "names = [callable(getattr(nas, name)) for name in nas.__all__ if name != '__version__']\n"
        "import timm\nprint(light, all(names), timm.models.is_model('vit_nas'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True"]


@pytest.mark.parametrize(
    "body, status, out, err",
    [
        ("return 3", 3, "partial line|handler|thread", ""),  # buffered output, atexit work, threads: all done first
        ("raise RuntimeError('boom')", 1, "partial line|handler|thread", "RuntimeError: boom"),
        ("sys.exit('usage')", 1, "partial line|handler|thread", "usage"),
        ("sys.exit(0)", 0, "partial line|handler|thread", ""),
    ],
)
def test_the_console_entry_exits_with_the_commands_status_after_its_output_threads_and_atexit_work(
    body, status, out, err
):
    """`nas` ends without the interpreter's module teardown (nas.fast_exit): nothing a command leaves to the end of
    the process may be lost by that — buffered output, atexit handlers registered during the command (Ray's
    shutdown), threads still running — and the exit status stays the command's."""
    code = (
        "import atexit, sys, threading, time\nfrom nas.fast_exit import run_then_exit\n"
        "def command(argv=None):\n"
        "    atexit.register(lambda: print('handler', end='|'))\n"
        "    threading.Thread(target=lambda: (time.sleep(0.3), print('thread', end='|'))).start()\n"
        "    print('partial line', end='|')\n"
        f"    {body}\n"
        "run_then_exit(command, [])\n"
    )
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as a console script's output is
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=buffered)
    assert done.returncode == status, done.stderr
    assert sorted(done.stdout.split("|")[:-1]) == sorted(out.split("|"))
    assert err in done.stderr
