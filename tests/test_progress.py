"""Progress bars: drawn on a terminal, absent from pipes and files (whose lines stay the plain record)."""

from __future__ import annotations

import io

from nas.progress import Bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_is_drawn_on_a_terminal_and_cleared_when_done():
    stream = Terminal()
    with Bar(5, "epoch 1/2", stream=stream) as bar:
        assert bar.shown
        for _ in range(5):
            bar.update()
    drawn = stream.getvalue()
    assert "epoch 1/2" in drawn and "/5 [" in drawn  # redrawn in place (tqdm limits how often)
    assert drawn.split("\r")[-2].strip() == ""  # the last redraw blanks the line: no bar left behind


def test_nothing_is_written_to_a_pipe_or_file():
    stream = io.StringIO()  # isatty() is False, as for `nas run > log` or `| tee`
    with Bar(5, "epoch 1/2", stream=stream) as bar:
        assert not bar.shown
        bar.update(5)
    assert stream.getvalue() == ""


def test_training_lines_stay_plain_when_the_console_is_not_a_terminal(tmp_path, capsys):
    from nas.cli import main

    assert main(["train", "--space", "digits-tiny", "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert "epoch 1/1" in captured.out and "\r" not in captured.out + captured.err
