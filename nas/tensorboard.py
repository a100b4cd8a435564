"""`nas run --tensorboard`: training and search scalars in `<run>/tensorboard/` (tensorboardX, which
arrives with ray[train]); view them with `tensorboard --logdir <run>/tensorboard`.

- train/loss, train/val_largest, train/val_smallest, train/epoch_seconds: one point per supernet epoch;
- search/accuracy, search/latency_ms (every complete trial), search/hypervolume (the feasible front's
  after each trial, nas.report.hypervolume_history): one point per trial number.
"""

from __future__ import annotations

from pathlib import Path

from nas.errors import NasError

EPOCH_SCALARS = {
    "loss": "train/loss",
    "val_largest": "train/val_largest",
    "val_smallest": "train/val_smallest",
    "seconds": "train/epoch_seconds",
}


class Scalars:
    """A tensorboardX writer for one run directory's `tensorboard/` folder (appended on a resume)."""

    def __init__(self, directory: Path) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise NasError(
                "--tensorboard needs tensorboardX (pip install tensorboardX; it comes with ray[train])"
            ) from None
        self.writer = SummaryWriter(str(directory))

    def epoch(self, record: dict) -> None:
        for key, tag in EPOCH_SCALARS.items():
            if record.get(key) is not None:
                self.writer.add_scalar(tag, float(record[key]), int(record["epoch"]))
        self.writer.flush()

    def search(self, trials, budget_ms: float | None) -> None:
        from nas.report import hypervolume_history

        for t in sorted(trials, key=lambda t: t.number):
            if t.state.name == "COMPLETE":
                self.writer.add_scalar("search/accuracy", float(t.values[0]), t.number)
                self.writer.add_scalar("search/latency_ms", float(t.values[1]), t.number)
        for number, volume in zip(*hypervolume_history(trials, budget_ms)[:2]):
            self.writer.add_scalar("search/hypervolume", volume, number)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
