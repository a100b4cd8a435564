"""The latency lookup table of a search space on one device, and the predictor built on it.

One entry per block configuration the space can produce — (embed_dim, kernel choice,
heads, mlp_ratio) at the space's tokens and head_dim — plus the stem and the head per
embed_dim. `predict(arch)` = stem + Σ blocks + head, then an optional per-device linear
calibration a·x + b fitted on a few end-to-end measurements (nas.latency.validation, which
also validates the table on held-out archs). Building it, chunk by chunk: nas.latency.build.

The table is JSON, written atomically after every measured chunk (nas.latency.build), so an
interrupted build resumes without re-measuring what it has. A table whose fingerprint or space differs from what
is asked for is refused, saying what differs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nas import kernels
from nas.arch import Arch
from nas.errors import NasError
from nas.io import write_json
from nas.latency.fingerprint import Fingerprint
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
