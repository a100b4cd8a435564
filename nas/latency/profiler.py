"""A profiler owns one device and measures on it: table entries and whole models.

The same class runs in this process or as a Ray actor on another node
(`workers/profiler.py`); the table logic only sees its three methods.
"""

from __future__ import annotations

import torch

from nas.arch import Arch
from nas.latency.device import resolve_device
from nas.latency.fingerprint import Fingerprint, fingerprint
from nas.latency.probe import Protocol, model_unit, reference_unit
from nas.latency.robust import DriftProbe, measure_units, measure_with_drift
from nas.latency.table import measure_probes


class Profiler:
    def __init__(self, device: str, dtype: str, batch_size: int, backend: str = "eager", threads: int | None = None, protocol: Protocol = Protocol()) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.protocol = protocol
        self._fingerprint = fingerprint(self.device, dtype, batch_size, backend)
        self._reference = None
        self._probe: DriftProbe | None = None  # kept across measure_models calls: its best is the machine's quiet speed
        self.anchor_ms: float | None = None  # the reference time whole-model figures are expressed at (a table's reference_ms)
        self.speeds: list[float] = []  # per measured chunk of models: the reference's time then / anchor_ms

    def fingerprint(self) -> Fingerprint:
        return self._fingerprint

    def measure_probes(self, chunk: list[tuple[str, Arch]], provisional: bool = False) -> dict[str, dict]:
        return measure_probes(chunk, self.device, self._fingerprint, self.protocol, provisional)

    def reference(self) -> float:
        """One pass of the fixed drift probe (ms)."""
        if self._reference is None:
            self._reference = reference_unit(self.device, self._fingerprint, self.protocol)
        return self._reference()

    def anchor_to(self, reference_ms: float | None) -> None:
        """Express whole-model figures at the speed a table was measured at (its `reference_ms`; None: as measured)."""
        self.anchor_ms = reference_ms

    def measure_models(self, archs: list[Arch], protocol: Protocol | None = None) -> list[float]:
        """End-to-end latency (ms) of each arch's standalone model, with the table's protocol:
        interleaved passes, outliers re-timed, chunks re-measured when the reference model ran
        slower than its best time seen by this profiler (over all its calls: a search measures
        a few models at a time, and a neighbour busy during one call is seen against the quiet best).

        With `anchor_ms` (see `anchor_to`) each chunk's figures are scaled by anchor_ms / the
        reference's time around the chunk (the lower of its timings just before and just
        after): a machine whose speed drifts — another VM on the host, a clock that changes
        — then reports figures at the speed its table was measured at, so that the trials of
        a search, its pick and a later re-measurement are comparable with each other and with
        the table. The reference is a softmax block of the same small scale, dispatch-bound
        on CPUs like the models. `protocol`: the timing of the models (default: the table's; the
        drift checks keep the profiler's)."""
        protocol = protocol or self.protocol
        keys = [f"{i}:{arch.digest}" for i, arch in enumerate(archs)]
        by_key = dict(zip(keys, archs))

        def chunk_entries(chunk: list[str], provisional: bool = False) -> dict:
            units = {key: model_unit(by_key[key], self.device, self._fingerprint, protocol) for key in chunk}
            before = self._yardstick() if self.anchor_ms else None
            entries = measure_units(units, protocol, provisional)
            if self.anchor_ms:
                speed = min(before, self._yardstick()) / self.anchor_ms
                self.speeds.append(round(speed, 4))
                for entry in entries.values():
                    entry["raw_ms"], entry["ms"] = entry["ms"], entry["ms"] / speed
            return entries

        if self._probe is None:
            self._probe = DriftProbe(self.reference, self.protocol)
        entries = measure_with_drift([keys[i : i + 8] for i in range(0, len(keys), 8)], chunk_entries, self._probe, self.protocol)
        return [entries[key]["ms"] for key in keys]

    def _yardstick(self) -> float:
        return min(self.reference() for _ in range(2))
