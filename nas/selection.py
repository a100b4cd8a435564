"""Latency-constrained selection from a finished run: the best archs under any budget.

Candidates are the run's complete trials (`trials.csv`); a budget keeps those whose
latency as the search recorded it (the whole model measured on the target device, or the
table's prediction where the search measured nothing) is within it, and ranks them by
validation accuracy (then latency). `pick_within_budget` measures the best of them again
before one is exported (nas run).
The latencies are only meaningful on the device the run's table was measured on, so a
run from another device is refused unless `--target-device` names that device.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from nas.arch import Arch
from nas.errors import NasError
from nas.latency.device import cpu_name
from nas.latency.fingerprint import Fingerprint
from nas.rundir import TABLE, TRIALS


@dataclass(frozen=True)
class Candidate:
    trial: int
    accuracy: float
    latency_ms: float
    macs: int
    params: int
    arch: Arch

    def to_dict(self) -> dict:
        return {
            "trial": self.trial,
            "accuracy": self.accuracy,
            "latency_ms": self.latency_ms,
            "macs": self.macs,
            "params": self.params,
            "digest": self.arch.digest,
            "arch": self.arch.to_dict(),
        }


def load_candidates(run_dir: Path) -> list[Candidate]:
    path = Path(run_dir) / TRIALS
    if not path.is_file():
        raise NasError(
            f"{run_dir} holds no {TRIALS}; run the search first (nas run / nas search), or nas report to rewrite it"
        )
    candidates, rows = [], 0
    with path.open() as handle:
        for row in csv.DictReader(handle):
            rows += 1
            if row.get("state") != "COMPLETE":
                continue
            try:
                candidates.append(
                    Candidate(
                        int(row["number"]),
                        float(row["accuracy"]),
                        float(row["latency_ms"]),
                        int(row["macs"]),
                        int(row["params"]),
                        Arch.from_dict(json.loads(row["arch"]), f"{path} trial {row['number']}"),
                    )
                )
            except (KeyError, ValueError, TypeError) as error:
                raise NasError(f"{path}: malformed row for trial {row.get('number')!r} ({error})") from None
    check_complete(path, rows)
    if not candidates:
        raise NasError(f"{path} has no complete trial to select from")
    return candidates


def check_complete(path: Path, rows: int) -> None:
    """trials.csv lists every trial of the run's own study (each state): fewer rows than the study
    holds is a cut or stale file, whose best arch may be missing. Studies in another storage are not read."""
    from nas.rundir import STUDY, RunDir
    from nas.storage import sqlite_trial_count

    study = path.parent / STUDY
    if not study.is_file():
        return
    # None when study.db holds no study of the run's name (several named ones): nothing to compare
    held = sqlite_trial_count(f"sqlite:///{study}", RunDir(path.parent).study_name())
    if held is not None and held != rows:
        raise NasError(
            f"{path} lists {rows} trial(s) but the run's study holds {held}: the file is cut or stale; "
            f"rewrite it with nas report --run {path.parent}"
        )


def select(candidates: list[Candidate], budget_ms: float, top: int = 1) -> list[Candidate]:
    """The `top` most accurate candidates within `budget_ms` (ties: faster first)."""
    if budget_ms <= 0:
        raise NasError(f"--budget-ms must be > 0, got {budget_ms}")
    feasible = [c for c in candidates if c.latency_ms <= budget_ms]
    if not feasible:
        fastest = min(candidates, key=lambda c: c.latency_ms)
        raise NasError(
            f"--budget-ms {budget_ms} is below every arch of this run: the fastest reached {fastest.latency_ms:.4f} ms "
            f"(trial {fastest.trial}); raise the budget"
        )
    return sorted(feasible, key=lambda c: (-c.accuracy, c.latency_ms, c.trial))[:top]


def by_trial(candidates: list[Candidate], trial: int) -> Candidate:
    for candidate in candidates:
        if candidate.trial == trial:
            return candidate
    raise NasError(
        f"trial {trial} is not a complete trial of this run; complete trials: {', '.join(str(c.trial) for c in candidates[:20])}…"
    )


def local_devices() -> list[str]:
    names = ["cpu", cpu_name()]
    if torch.cuda.is_available():
        names += ["cuda"] + [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return names


def run_fingerprint(run_dir: Path) -> Fingerprint:
    path = Path(run_dir) / TABLE
    try:
        return Fingerprint.from_dict(json.loads(path.read_text())["fingerprint"])
    except (OSError, ValueError, KeyError) as error:
        raise NasError(f"{path}: cannot read the run's latency table ({error})") from None


def check_device(run_dir: Path, device: str | None) -> tuple[Fingerprint, bool]:
    """The run's fingerprint, and whether this machine is that device (so latency can be measured here).

    Refuses a run measured on another device unless `device` names it."""
    fp = run_fingerprint(run_dir)
    here = fp.device_name in local_devices() and (fp.device_type == "cpu" or torch.cuda.is_available())
    if device is None:
        if not here:
            raise NasError(
                f"the latencies of {run_dir} were measured on {fp.device_name} ({fp.device_type}), not on this machine; "
                f"pass --target-device '{fp.device_name}' to select for that device anyway"
            )
        return fp, True
    if device.lower() not in (fp.device_type.lower(), fp.device_name.lower()):
        raise NasError(
            f"--target-device {device!r} does not match the device of {run_dir}'s latencies: {fp.device_name} ({fp.device_type}); "
            "select from a run measured on that device"
        )
    return fp, here


def pick_within_budget(
    candidates: list[Candidate], measure, budget_ms: float, group: int = 4, progress=print
) -> tuple[Candidate, float, list[dict]]:
    """The most accurate candidate whose model, measured again now, is within `budget_ms`.

    Candidates are taken best first (accuracy, then latency) in groups of `group`, each group's
    models measured together (`measure`: a profiler's measure_models, interleaved passes checked
    against a reference model); the first within the budget is the pick. Returns it, its
    measured latency, and every measurement taken ({trial, search_ms, measured_ms}). A NasError
    when none measures within the budget."""
    ordered = sorted(candidates, key=lambda c: (-c.accuracy, c.latency_ms, c.trial))
    checked: list[dict] = []
    for start in range(0, len(ordered), group):
        chunk = ordered[start : start + group]
        for candidate, ms in zip(chunk, measure([c.arch for c in chunk])):
            checked.append({"trial": candidate.trial, "search_ms": candidate.latency_ms, "measured_ms": ms})
            if ms <= budget_ms:
                over = checked[:-1]
                if over:
                    progress(
                        f"!! {len(over)} more accurate candidate(s) measured over the budget {budget_ms} ms on re-measurement ("
                        + ", ".join(
                            f"trial {c['trial']}: {c['measured_ms']:.4f} ms, {c['search_ms']:.4f} ms in the search"
                            for c in over[:3]
                        )
                        + f"); exporting trial {candidate.trial} instead"
                    )
                return candidate, ms, checked
    fastest = min(checked, key=lambda c: c["measured_ms"])
    raise NasError(
        f"no candidate measured within the budget {budget_ms} ms on re-measurement: the fastest of {len(checked)} was "
        f"trial {fastest['trial']} at {fastest['measured_ms']:.4f} ms; raise the budget or run on a quieter machine"
    )
