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


@pytest.mark.parametrize("budget", ["nan", "inf", "-1", "0", "0.5,nan"])
def test_select_refuses_a_budget_that_is_not_a_positive_finite_number(budget, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        main(["select", "--run", str(tmp_path), "--budget-ms", budget])
    assert stop.value.code == 2 and "positive finite" in one_line_error(capsys)


def test_output_into_a_closed_pipe_ends_quietly():
    """`nas ... | head`: the reader leaves early; no BrokenPipeError traceback."""
    script = ("import sys; from nas.cli import main; import nas.commands.run as r\n"
              "def spam(args):\n    [print('line', i) for i in range(100000)]\n    return 0\n"
              "r.run_report = spam\nsys.argv = ['nas', 'report', '--run', '.']\nsys.exit(main())")
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

    for url in ("postgresql://user:SECRET@TAIL@127.0.0.1:1/db", "postgresql://user:SE:CRET:TAIL@127.0.0.1:notaport/db",
                "mysql://user:SECRETTAIL@127.0.0.1:99999/db"):
        with pytest.raises(NasError) as error:
            check(url, timeout_s=10)
        text = str(error.value)
        assert "SECRET" not in text and "TAIL" not in text and "CRET" not in text, text


def test_the_scrubber_removes_every_piece_of_the_credentials():
    from nas.storage import scrub

    cleaned = scrub("invalid literal for int(): 'SECRET@TAIL@127.0.0.1:1' and SE:CRET", "postgresql://u:SECRET@TAIL@127.0.0.1:1/db")
    assert "SECRET" not in cleaned and "TAIL" not in cleaned and "127.0.0.1" in cleaned
    assert scrub("no secrets here", "postgresql://h/db") == "no secrets here"


@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary", "not a text file"),
    ("name: deep\nimage_size: 8\npatch_size: 4\nin_chans: 1\nnum_classes: 3\nhead_dim: 4\nembed_dim: [8]\ndepth: [2, 3, 400]\n"
     "heads: [1]\nmlp_ratio: [1]\nkernels: [softmax]\n", "field 'depth': 400 layers is more than"),
])
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

    for args, words in ((["--min-tau", "2"], "unreachable"), (["--threads", str((os.cpu_count() or 1) * 8)], "oversubscription")):
        with pytest.raises(SystemExit) as stop:
            main(["latency", "--space", "digits-tiny", *args, "--out", str(tmp_path / "t.json")])
        assert stop.value.code == 2 and words in one_line_error(capsys) and not (tmp_path / "t.json").exists()
