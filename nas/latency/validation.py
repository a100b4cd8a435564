"""A latency table checked against whole models: its calibration and its validation.

The calibration is a per-device linear fit a·x + b of a few end-to-end measurements on the
table's sums of entries. Validation measures held-out random archs (never the calibration
ones) end to end and stores MAPE, the share within ±10 %, Kendall τ and the worst case.
"""

from __future__ import annotations

import math
import random

from nas.arch import Arch
from nas.errors import NasError
from nas.latency.table import LatencyTable
from nas.space import SearchSpace


def held_out_archs(space: SearchSpace, count: int, seed: int, exclude: set[str]) -> list[Arch]:
    """`count` distinct random archs whose digests are not in `exclude`."""
    rng = random.Random(f"nas-latency:{seed}")
    archs: dict[str, Arch] = {}
    for _ in range(100 * count + 100):
        if len(archs) == count:
            break
        arch = space.sample(rng)
        if arch.digest not in exclude:
            archs.setdefault(arch.digest, arch)
    return list(archs.values())


def calibrate(table: LatencyTable, archs: list[Arch], measured: list[float]) -> None:
    """Least-squares fit measured ≈ a·raw + b with a > 0 and b ≥ 0, stored in the table.

    A whole model costs its blocks (a: how their standalone timings scale inside it) plus a
    fixed overhead (b) that cannot be negative; a larger sum of entries is never faster. An
    unconstrained fit over a few noisy points breaks both (seen: a = −0.027; 4.40·x − 4.19 ms,
    whose smallest arch would take −1.02 ms); then the line is fitted through the origin (b = 0),
    the best fit within the constraints when the free one has b < 0 or a ≤ 0."""
    raw = [table.raw(arch) for arch in archs]
    if any(not (math.isfinite(y) and y > 0) for y in measured) or any(x <= 0 for x in raw):
        raise NasError(
            "calibration: every whole model and every sum of entries must take a positive, finite time; "
            "the measurements are broken (rebuild the table on a quiet machine)"
        )
    n = len(raw)
    mean_x, mean_y = sum(raw) / n, sum(measured) / n
    var = sum((x - mean_x) ** 2 for x in raw)
    a = sum((x - mean_x) * (y - mean_y) for x, y in zip(raw, measured)) / var if var > 0 else 0.0
    b = mean_y - a * mean_x
    constrained = a <= 0 or b < 0
    if constrained:
        a, b = sum(x * y for x, y in zip(raw, measured)) / sum(x * x for x in raw), 0.0
    table.calibration = {
        "a": a,
        "b": b,
        "constrained": constrained,
        "archs": [arch.digest for arch in archs],
        "predicted_raw_ms": raw,
        "measured_ms": measured,
    }


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's τ-b (ties in either list counted as neither concordant nor discordant)."""
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator else 0.0


def validate(table: LatencyTable, archs: list[Arch], measured: list[float]) -> dict:
    """Prediction quality on `archs` (which must not include calibration archs); stored in the table."""
    calibration = set(table.calibration["archs"]) if table.calibration else set()
    overlap = [arch.digest for arch in archs if arch.digest in calibration]
    if overlap:
        raise NasError(f"validation archs must be held out from calibration; {len(overlap)} overlap")
    predicted = [table.predict(arch) for arch in archs]
    errors = [(p - m) / m for p, m in zip(predicted, measured)]
    worst = max(range(len(archs)), key=lambda i: abs(errors[i]))
    table.validation = {
        "archs": len(archs),
        "mape": sum(abs(e) for e in errors) / len(errors),
        "within_10pct": sum(abs(e) <= 0.10 for e in errors) / len(errors),
        "kendall_tau": kendall_tau(predicted, measured),
        "worst": {
            "arch": archs[worst].to_dict(),
            "digest": archs[worst].digest,
            "predicted_ms": predicted[worst],
            "measured_ms": measured[worst],
            "error": errors[worst],
        },
        "points": [
            {"digest": a.digest, "predicted_ms": p, "measured_ms": m} for a, p, m in zip(archs, predicted, measured)
        ],
    }
    return table.validation


def summary_line(validation: dict) -> str:
    worst = validation["worst"]
    return (
        f"{validation['archs']} held-out archs: MAPE {validation['mape']:.1%}, within ±10% {validation['within_10pct']:.0%}, "
        f"Kendall tau {validation['kendall_tau']:.3f}, worst {worst['error']:+.1%} "
        f"({worst['predicted_ms']:.3f} ms predicted vs {worst['measured_ms']:.3f} ms measured)"
    )
