"""Measurements that stay true next to a noisy neighbour.

A shared machine slows some calls down (another job, throttling, a notebook), never speeds
them up. So each unit (a table entry or a whole model) is timed in several passes,
interleaved round-robin over the units of a chunk, so that a burst of interference hits
one pass of many units rather than every pass of one; the entry is the minimum of its
per-pass medians. That holds on CUDA too: a small model at a small batch is bound by the
host's kernel launches, which a busy host slows down exactly like CPU work (measured on an
H100: one entry's passes 0.66 and 1.23 ms minutes apart), and a shared GPU only adds time.
A unit whose lowest pass no second pass confirms within `max_dispersion` is re-timed. Around every chunk a
fixed reference probe is re-timed: a chunk measured while the reference ran slower than
its best by more than `drift_threshold` is measured again later, and the lower figures
kept. Finally, entries of one kernel that are faster at a wider width than at a narrower
one (beyond `monotone_tolerance`) are re-measured once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from nas.latency.probe import Protocol, Unit

Entry = dict  # {"ms", "dispersion", "passes", "remeasured"}


def dispersion(medians: list[float]) -> float:
    """Whether another pass confirms the lowest, on which the entry rests: (second lowest −
    lowest) / lowest. Passes slowed by interference do not count, which spares re-timing them
    while a neighbour is busy."""
    ordered = sorted(medians)
    low, other = ordered[0], ordered[min(1, len(ordered) - 1)]
    return (other - low) / low if low > 0 else float("inf")


def measure_units(units: dict[str, Unit], protocol: Protocol, provisional: bool = False) -> dict[str, Entry]:
    """Each unit's entry from `protocol.passes` interleaved passes; a unit whose passes disagree
    beyond `max_dispersion` (see `dispersion`) is re-timed in as many passes again, at most
    `protocol.remeasure` times (all its passes count). A
    `provisional` measurement (its figures will be measured again) takes one pass, no re-timing."""
    rounds = {key: [] for key in units}
    for _ in range(1 if provisional else protocol.passes):
        for key, unit in units.items():
            rounds[key].append(unit())
    out = {}
    for key, unit in units.items():
        every, again = list(rounds[key]), 0
        while not provisional and dispersion(every) > protocol.max_dispersion and again < protocol.remeasure:
            every += [unit() for _ in range(protocol.passes)]
            again += 1
        out[key] = {
            "ms": min(every),
            "dispersion": round(dispersion(every), 4),
            "passes": len(every),
            "remeasured": again,
        }
    return out


def merge(old: Entry | None, new: Entry) -> Entry:
    """A re-measured entry: the lower figure stands (interference only adds time)."""
    if old is None or new["ms"] <= old["ms"]:
        keep = dict(new)
    else:
        keep = dict(old)
    keep["passes"] = new["passes"] + (old["passes"] if old else 0)
    keep["remeasured"] = (old["remeasured"] + 1) if old else new["remeasured"]
    return keep


class DriftProbe:
    """Times the reference unit and keeps its best (lowest) time: the machine's quiet speed."""

    def __init__(self, reference: Callable[[], float], protocol: Protocol) -> None:
        self.reference, self.protocol = reference, protocol
        self.best = min(reference() for _ in range(3))

    def check(self) -> float:
        """Time the reference now (ms); the best is lowered when it ran faster."""
        now = min(self.reference() for _ in range(2))
        self.best = min(self.best, now)
        return now

    def ratio(self, ms: float) -> float:
        return ms / self.best

    def slow(self, ms: float) -> bool:
        return self.ratio(ms) > 1 + self.protocol.drift_threshold


def measure_with_drift(
    chunks: Iterable[list],
    measure_chunk: Callable[..., dict[str, Entry]],
    probe: DriftProbe | None,
    protocol: Protocol,
    done: Callable[..., None] = lambda chunk, entries, judged=None: None,
    drift_log: list | None = None,
    history: list[dict] | None = None,
) -> dict[str, Entry]:
    """Measure chunk by chunk; a chunk during which the reference was slow (before or after it)
    is queued again, at most `protocol.remeasure` times, and its entries merged. Slowness is
    judged against the best reference time seen so far, and once more against the final best
    when the queue is empty: interference that began before the first reference timing made
    the machine look slow only once it ended, and the chunks measured under it are then
    queued again too. A chunk that starts while the machine already runs slow will be measured
    again anyway, so it gets a provisional measurement, one pass without re-timing
    (`measure_chunk(chunk, provisional=True)`); the lower figures stand once it is measured
    again. `done(chunk, entries, judged)` is called after every chunk with every chunk judged so far
    (the table saves its progress and those judgements there). `history`: the judgements of an
    interrupted earlier session, judged again at the end like this session's own chunks."""
    results: dict[str, Entry] = {}
    queue = [(list(chunk), 0) for chunk in chunks]
    judged: list[dict] = list(history or [])  # per measured chunk: its reference times, and whether it was queued again
    before = probe.check() if probe else 0.0

    def ran_slow(record: dict) -> bool:  # and may be measured again
        return (
            bool(probe)
            and record["attempt"] < protocol.remeasure
            and (probe.slow(record["before"]) or probe.slow(record["after"]))
        )

    def again(record: dict, late: bool) -> None:
        record["queued"] = True
        queue.append((record["chunk"], record["attempt"] + 1))
        if drift_log is not None:
            drift_log.append(
                {
                    "ratio_before": round(probe.ratio(record["before"]), 3),
                    "ratio_after": round(probe.ratio(record["after"]), 3),
                    "entries": record["keys"],
                    "attempt": record["attempt"] + 1,
                    **({"late": True} if late else {}),
                }
            )

    while True:
        while queue:
            chunk, attempt = queue.pop(0)
            doomed = bool(probe) and probe.slow(before) and attempt < protocol.remeasure
            measured = measure_chunk(chunk, provisional=doomed)
            for key, entry in measured.items():
                results[key] = merge(results.get(key), entry)
            after = probe.check() if probe else 0.0
            record = {
                "chunk": chunk,
                "attempt": attempt,
                "before": before,
                "after": after,
                "keys": sorted(measured),
                "queued": False,
            }
            judged.append(record)
            if ran_slow(record):
                again(record, late=False)
            before = after
            done(chunk, {k: results[k] for k in measured}, judged)
        late = [record for record in judged if not record["queued"] and ran_slow(record)]
        if not late:
            return results
        for record in late:
            again(record, late=True)


def width_inconsistencies(entries: dict[str, Entry], tolerance: float) -> list[tuple[str, str]]:
    """(narrower, wider) block entries of one kernel where the narrower is slower by more than
    `tolerance`, along embed_dim, heads and mlp_ratio (keys `block|e<E>|<label>|h<H>|r<R>`)."""
    blocks = {}
    for key, entry in entries.items():
        parts = key.split("|")
        if parts[0] == "block":
            blocks[(int(parts[1][1:]), parts[2], int(parts[3][1:]), float(parts[4][1:]))] = (key, entry["ms"])
    pairs = []
    for (e, label, h, r), (key, ms) in blocks.items():
        for wider in ((e2, label, h, r) for e2 in {k[0] for k in blocks} if e2 > e):
            pairs += _slower(blocks, key, ms, wider, tolerance)
        for wider in ((e, label, h2, r) for h2 in {k[2] for k in blocks} if h2 > h):
            pairs += _slower(blocks, key, ms, wider, tolerance)
        for wider in ((e, label, h, r2) for r2 in {k[3] for k in blocks} if r2 > r):
            pairs += _slower(blocks, key, ms, wider, tolerance)
    return pairs


def _slower(blocks: dict, key: str, ms: float, wider: tuple, tolerance: float) -> list[tuple[str, str]]:
    if wider in blocks and ms > blocks[wider][1] * (1 + tolerance):
        return [(key, blocks[wider][0])]
    return []
