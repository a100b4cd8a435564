"""Building a latency table: every missing entry measured chunk by chunk into its file.

The table is written atomically after every chunk, so an interrupted build resumes without
re-measuring what it has. With a reference (the drift probe), chunks measured while the
machine ran slow are measured again (nas.latency.robust); a finished build re-measures, once,
the entries slower than the same kernel at a wider width.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from nas.arch import Arch
from nas.errors import NasError
from nas.latency.fingerprint import Fingerprint
from nas.latency.probe import Protocol, probe_units
from nas.latency.robust import DriftProbe, measure_units, measure_with_drift, merge, width_inconsistencies
from nas.latency.table import LatencyTable, kernel_revisions, probe_archs, space_digest
from nas.progress import Bar
from nas.space import SearchSpace


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
        bar.update(min(len(chunk), bar_left[0]))  # a re-measured chunk moves no further than the total
        bar_left[0] -= min(len(chunk), bar_left[0])

    chunks = [todo[i : i + 8] for i in range(0, len(todo), 8)]
    before = len(table.drift)
    bar_left = [len(todo)]
    with Bar(total, "latency table", unit="entry", initial=done) as bar:
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
