"""The latency lookup table of a search space on one device, and the predictor built on it.

One entry per block configuration the space can produce — (embed_dim, kernel choice,
heads, mlp_ratio) at the space's tokens and head_dim — plus the stem and the head per
embed_dim. `predict(arch)` = stem + Σ blocks + head, then an optional per-device linear
calibration a·x + b fitted on a few end-to-end measurements. Validation measures held-out
random archs (never the calibration ones) end to end and stores MAPE, the share within
±10 %, Kendall τ and the worst case.

The table is JSON, written atomically after every entry, so an interrupted build resumes
without re-measuring what it has. A table whose fingerprint or space differs from what
is asked for is refused, saying what differs.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nas import kernels
from nas.arch import Arch
from nas.errors import NasError
from nas.io import write_json
from nas.latency.fingerprint import Fingerprint
from nas.latency.probe import Protocol, probe_units
from nas.latency.robust import DriftProbe, measure_units, measure_with_drift, merge, width_inconsistencies
from nas.space import SearchSpace

FORMAT = "nas-latency-table/1"


def space_digest(space: SearchSpace) -> str:
    """Hash of what shapes the entries (choices and fixed fields), not of name or comments."""
    shape = {
        k: v
        for k, v in space.__dict__.items()
        if k not in ("name", "description", "source", "data", "epochs", "choice_limits", "projections")
    }
    shape["kernel_choices"] = [spec.label for spec in space.kernel_choices()]
    # A kernel whose operator changed (revision > 1) makes the tables measured before the change stale.
    revisions = kernel_revisions(space)
    if revisions:
        shape["kernel_revisions"] = revisions
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=list).encode()).hexdigest()[:16]


def kernel_revisions(space: SearchSpace) -> dict[str, int]:
    """The revisions of the space's kernels whose operator changed since the first (revision 1 is left out)."""
    return {
        name: kernels.kernel_class(name).revision for name in space.kernels if kernels.kernel_class(name).revision > 1
    }


def block_key(embed_dim: int, label: str, heads: int, mlp_ratio: float) -> str:
    return f"block|e{embed_dim}|{label}|h{heads}|r{mlp_ratio}"


def arch_keys(arch: Arch) -> list[str]:
    """The entries whose sum predicts `arch`."""
    e = arch.embed_dim
    blocks = [block_key(e, layer.kernel_spec.label, layer.heads, layer.mlp_ratio) for layer in arch.layers]
    return [f"stem|e{e}", *blocks, f"head|e{e}"]


def probe_archs(space: SearchSpace) -> Iterator[tuple[str, Arch]]:
    """(key, one-layer arch) for every block configuration, then stem/head per embed dim."""
    for e in space.embed_dim:
        for spec in space.kernel_choices():
            for heads in space.heads:
                for ratio in space.mlp_ratio:
                    layer = space.make_layer(spec, heads, ratio)
                    yield block_key(e, spec.label, heads, layer.mlp_ratio), space.make_arch(e, [layer])
    for e in space.embed_dim:
        yield (
            f"stem+head|e{e}",
            space.make_arch(e, [space.make_layer(space.kernel_choices()[0], min(space.heads), min(space.mlp_ratio))]),
        )


@dataclass
class LatencyTable:
    space: str
    space_digest: str
    fingerprint: Fingerprint
    protocol: dict
    entries: dict[str, dict] = field(default_factory=dict)  # key -> {"ms", "dispersion", "passes", "remeasured"}
    calibration: dict | None = None  # {"a", "b", "archs": [digest...], "measured_ms", "predicted_ms"}
    validation: dict | None = None
    build_seconds: float = 0.0
    drift: list = field(default_factory=list)  # chunks measured while the reference probe ran slow (re-measured)
    checks: dict = field(default_factory=dict)  # width-consistency re-measurement
    kernel_revisions: dict = field(default_factory=dict)  # of the kernels measured (those above revision 1)
    reference_ms: float | None = (
        None  # the drift probe's best time during the build: the speed the entries are at (nas.latency.profiler)
    )
    chunks: list = field(
        default_factory=list
    )  # per measured chunk: its probe keys, reference times before/after, attempt
    # (a resumed build judges them again with the final best reference time, as an uninterrupted one does)

    # ---- prediction ----------------------------------------------------------------------

    def raw(self, arch: Arch) -> float:
        """stem + Σ blocks + head, in ms, before calibration."""
        missing = [key for key in arch_keys(arch) if key not in self.entries]
        if missing:
            raise NasError(
                f"latency table for {self.space} lacks {missing[0]} (and {len(missing) - 1} more); build it completely with `nas latency`"
            )
        return sum(self.entries[key]["ms"] for key in arch_keys(arch))

    def predict(self, arch: Arch) -> float:
        """Predicted latency of `arch` in ms on the table's device."""
        raw = self.raw(arch)
        if self.calibration is None:
            return raw
        return self.calibration["a"] * raw + self.calibration["b"]

    # ---- persistence ----------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "space": self.space,
            "space_digest": self.space_digest,
            "fingerprint": self.fingerprint.to_dict(),
            "protocol": self.protocol,
            "build_seconds": round(self.build_seconds, 2),
            "calibration": self.calibration,
            "validation": self.validation,
            "drift": self.drift,
            "checks": self.checks,
            "kernel_revisions": self.kernel_revisions,
            "reference_ms": self.reference_ms,
            "chunks": self.chunks,
            "entries": self.entries,
        }

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(
        cls, path: str | Path, space: SearchSpace | None = None, expect: Fingerprint | None = None
    ) -> LatencyTable:
        """Read a table; refuse it if it was built for another space or device."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError(f"a JSON {type(data).__name__}, not an object")
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            table = cls(
                space=data["space"],
                space_digest=data["space_digest"],
                fingerprint=Fingerprint.from_dict(data["fingerprint"]),
                protocol=data["protocol"],
                entries=data["entries"],
                calibration=data.get("calibration"),
                validation=data.get("validation"),
                build_seconds=data.get("build_seconds", 0.0),
                drift=data.get("drift", []),
                checks=data.get("checks", {}),
                kernel_revisions=data.get("kernel_revisions", {}),
                reference_ms=data.get("reference_ms"),
                chunks=data.get("chunks", []),
            )
            if table.reference_ms is not None and not (
                isinstance(table.reference_ms, (int, float))
                and math.isfinite(table.reference_ms)
                and table.reference_ms > 0
            ):
                raise ValueError(
                    f"reference_ms is {table.reference_ms!r}; it must be a positive number of milliseconds"
                )
            _check_entries(table.entries)
            _check_calibration(table.calibration)
        except OSError as error:
            raise NasError(f"{path}: cannot read the latency table ({error.strerror})") from None
        except (ValueError, KeyError, TypeError, AttributeError, NasError) as error:
            raise NasError(f"{path}: not a valid latency table ({error})") from None
        current = kernel_revisions(space) if space is not None else {}
        if space is not None and table.space_digest != space_digest(space) and table.kernel_revisions != current:
            changed = sorted(
                name
                for name in set(current) | set(table.kernel_revisions)
                if table.kernel_revisions.get(name, 1) != current.get(name, 1)
            )
            raise NasError(
                f"{path}: measured with an earlier operator of kernel(s) {', '.join(changed)} (revision "
                + ", ".join(f"{n} {table.kernel_revisions.get(n, 1)} vs {current.get(n, 1)} now" for n in changed)
                + "); rebuild it into a new file with `nas latency`"
            )
        if space is not None and (table.space_digest != space_digest(space)):
            raise NasError(
                f"{path}: built for search space {table.space!r} as it was then, not for {space.name!r} as it is now; rebuild it"
            )
        if expect is not None and table.fingerprint != expect:
            raise NasError(
                f"{path}: built on another device or setting, refused ("
                + "; ".join(
                    f"table {d}".replace(" vs ", " vs requested ") for d in table.fingerprint.differences(expect)
                )
                + ")"
            )
        return table


def _check_entries(entries) -> None:
    if not isinstance(entries, dict):
        raise ValueError("'entries' is not a mapping")
    for key, entry in entries.items():
        value = entry.get("ms") if isinstance(entry, dict) else entry
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"entry {key!r} is {value!r} ms; every entry must be a positive, finite number of milliseconds: rebuild the table"
            )


# ---- building --------------------------------------------------------------------------------


def build(
    space: SearchSpace,
    fp: Fingerprint,
    path: Path,
    measure_entries: Callable[..., dict[str, dict]],
    protocol: Protocol = Protocol(),
    progress: Callable[[str], None] = print,
    reference: Callable[[], float] | None = None,
) -> LatencyTable:
    """Measure every missing entry of `space`'s table into `path`, resuming what is there.

    `measure_entries(chunk, provisional=False)` measures a chunk of (key, probe arch) pairs on the fingerprint's
    device: a `Profiler` in this process, or one served by a Ray actor. With `reference`
    (one pass of the drift probe, in ms), chunks measured while the machine ran slow are
    measured again (nas.latency.robust).
    """
    if path.exists():
        table = LatencyTable.load(path, space, fp)
        if table.protocol != protocol.to_dict():
            raise NasError(f"{path}: measured with another protocol ({table.protocol}); rebuild into a new file")
    else:
        table = LatencyTable(
            space.name, space_digest(space), fp, protocol.to_dict(), kernel_revisions=kernel_revisions(space)
        )
    probes = list(probe_archs(space))
    todo = [(key, arch) for key, arch in probes if not _have(table, key)]
    total = len(probes)
    done = total - len(todo)
    if done:
        progress(f"resuming {path}: {done}/{total} entries already measured")
    started, base_seconds = time.perf_counter(), table.build_seconds
    probe = DriftProbe(reference, protocol) if reference else None
    unchecked = not table.checks  # no build of this table finished its checks: every entry is still to be judged
    by_key = dict(probes)
    kept = [r for r in table.chunks if unchecked and all(k in by_key for k in r.get("probe_keys", []))] if probe else []
    # a chunk queued again counts as queued only if its next attempt was measured before the stop
    followed = {(tuple(r["probe_keys"]), r["attempt"] - 1) for r in kept}
    history = [
        {
            "chunk": [(k, by_key[k]) for k in r["probe_keys"]],
            "attempt": r["attempt"],
            "before": r["before"],
            "after": r["after"],
            "keys": r["keys"],
            "queued": (tuple(r["probe_keys"]), r["attempt"]) in followed,
        }
        for r in kept
    ]
    if probe is not None and history:  # the best reference time seen while the earlier session measured
        probe.best = min([probe.best] + [r[t] for r in history for t in ("before", "after")])
    measured = [0]

    earlier = dict(table.entries)  # what an earlier session measured: a re-measurement keeps the lower figure

    def save(chunk, entries, record=None) -> None:
        table.entries.update({k: merge(earlier[k], e) if k in earlier else e for k, e in entries.items()})
        if record is not None:
            table.chunks = [
                {
                    "probe_keys": [k for k, _ in r["chunk"]],
                    "attempt": r["attempt"],
                    "before": round(r["before"], 5),
                    "after": round(r["after"], 5),
                    "keys": r["keys"],
                    "queued": r["queued"],
                }
                for r in record
            ]
        measured[0] += len(chunk)
        elapsed = time.perf_counter() - started
        eta = elapsed / measured[0] * max(0, len(todo) - measured[0])
        table.build_seconds = base_seconds + elapsed
        table.save(path)
        redo = " (re-measured: the machine ran slow)" if measured[0] > len(todo) else ""
        progress(
            f"[{min(done + measured[0], total)}/{total}] {chunk[-1][0]}: {_measured(table, chunk[-1][0])}{redo}  (ETA {eta / 60:.1f} min)"
        )

    chunks = [todo[i : i + 8] for i in range(0, len(todo), 8)]
    before = len(table.drift)
    measure_with_drift(chunks, measure_entries, probe, protocol, save, table.drift, history)
    if (
        (todo or len(table.drift) > before)
        and probe is not None
        and (table.reference_ms is None or probe.best < table.reference_ms)
    ):
        table.reference_ms = probe.best  # the machine's quiet speed while the entries were measured
        table.save(path)
    if unchecked:
        _recheck_widths(table, dict(probes), set(table.entries), measure_entries, protocol, progress)
        table.build_seconds = base_seconds + time.perf_counter() - started
        table.save(path)
    return table


def _recheck_widths(
    table: LatencyTable, probes: dict, fresh: set, measure_entries, protocol: Protocol, progress
) -> None:
    """Re-measure, once, block entries that are slower than the same kernel at a wider width —
    those measured in this session (`fresh`): a resumed build keeps what an earlier one finished."""
    pairs = width_inconsistencies(table.entries, protocol.monotone_tolerance)
    keys = sorted({key for pair in pairs for key in pair if key in fresh})
    if keys:
        progress(
            f"{len(pairs)} width inconsistencies (a kernel faster at a wider width): re-measuring {len(keys)} entries"
        )
        for i in range(0, len(keys), 8):
            for key, entry in measure_entries([(k, probes[k]) for k in keys[i : i + 8]]).items():
                table.entries[key] = merge(table.entries.get(key), entry)
    left = width_inconsistencies(table.entries, protocol.monotone_tolerance)
    table.checks = {"width_inconsistencies": len(pairs), "remeasured": keys, "left": [list(p) for p in left]}


def _measured(table: LatencyTable, key: str) -> str:
    """What a probe measured, for the progress line (a stem+head probe fills two entries)."""
    if key.startswith("stem+head|"):
        e = key.split("|")[1]
        return f"stem {table.entries[f'stem|{e}']['ms']:.3f} ms + head {table.entries[f'head|{e}']['ms']:.3f} ms"
    return f"{table.entries[key]['ms']:.3f} ms"


def _check_calibration(calibration) -> None:
    """A stored calibration line: finite numbers a > 0 and b (older tables may hold a slightly negative b)."""
    if calibration is None:
        return
    if not isinstance(calibration, dict):
        raise ValueError("field 'calibration' must be an object with 'a' and 'b'")
    for name in ("a", "b"):
        value = calibration.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"calibration field '{name}' is {value!r}; it must be a finite number")
    if calibration["a"] <= 0:
        raise ValueError(
            f"calibration slope 'a' is {calibration['a']}; it must be positive (larger models are not faster)"
        )


def _have(table: LatencyTable, key: str) -> bool:
    if key.startswith("stem+head|"):
        e = key.split("|")[1]
        return f"stem|{e}" in table.entries and f"head|{e}" in table.entries
    return key in table.entries


def measure_probes(
    chunk: list[tuple[str, Arch]], device: torch.device, fp: Fingerprint, protocol: Protocol, provisional: bool = False
) -> dict[str, dict]:
    """Entries for (key, probe arch) pairs, measured in this process in interleaved passes."""
    return measure_units(probe_units(chunk, device, fp, protocol), protocol, provisional)


# ---- calibration and validation -----------------------------------------------------------


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
