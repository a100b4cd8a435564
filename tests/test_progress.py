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


def test_the_search_bar_counts_trials_and_a_resumed_search_starts_where_it_stopped(monkeypatch):
    import sys

    from nas import study as search
    from nas.space_file import load_space

    space = load_space("digits-tiny")
    bars = []

    class Recorded(Bar):  # what the search's bar was told: where it opened and how far it got
        def __init__(self, total, desc, unit="step", stream=None, initial=0):
            super().__init__(total, desc, unit, stream, initial)
            self.record = {"desc": desc, "total": total, "initial": initial, "n": initial, "shown": self.shown}
            bars.append(self.record)

        def update(self, n=1):
            self.record["n"] += n
            super().update(n)

    class Table:  # a latency predictor is all the loop needs
        def predict(self, arch):
            return 1.0

    def evaluate(archs):
        return [{"accuracy": 0.5, "macs": 1, "params": 1} for _ in archs]

    monkeypatch.setattr(search, "Bar", Recorded)
    monkeypatch.setattr(sys, "stderr", Terminal())
    study = search.open_study_in_memory(search.SearchConfig(trials=4, batch=2, sampler="random"))
    for trials in (4, 6):  # the second run resumes a study that holds 4 finished trials
        config = search.SearchConfig(trials=trials, batch=2, sampler="random")
        search.run_search(study, space, Table(), evaluate, config, progress=lambda line: None)
    assert bars == [
        {"desc": "search", "total": 4, "initial": 0, "n": 4, "shown": True},
        {"desc": "search", "total": 6, "initial": 4, "n": 6, "shown": True},
    ]
    assert "search:" in sys.stderr.getvalue()


def test_the_asynchronous_search_bar_reaches_every_trial(monkeypatch):
    import sys

    from test_search import ThreadPool

    from nas import study as search
    from nas import study_async
    from nas.space_file import load_space

    space = load_space("digits-tiny")
    counts = []

    class Recorded(Bar):
        def __init__(self, total, desc, unit="step", stream=None, initial=0):
            super().__init__(total, desc, unit, stream, initial)
            self.record = {"total": total, "n": initial, "shown": self.shown}
            counts.append(self.record)

        def update(self, n=1):
            self.record["n"] += n
            super().update(n)

    class Table:
        def predict(self, arch):
            return 1.0

    monkeypatch.setattr(study_async, "Bar", Recorded)
    monkeypatch.setattr(sys, "stderr", Terminal())
    config = search.SearchConfig(trials=10, batch=2, sampler="random", budget_ms=1000.0)
    study = search.open_study_in_memory(config)
    pool = ThreadPool([0.01, 0.002])
    search.run_search(study, space, Table(), pool.evaluate, config, progress=lambda line: None, evaluators=2, pool=pool)
    assert counts == [{"total": 10, "n": 10, "shown": True}]
