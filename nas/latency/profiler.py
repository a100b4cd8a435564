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

    def fingerprint(self) -> Fingerprint:
        return self._fingerprint

    def measure_probes(self, chunk: list[tuple[str, Arch]], provisional: bool = False) -> dict[str, dict]:
        return measure_probes(chunk, self.device, self._fingerprint, self.protocol, provisional)

    def reference(self) -> float:
        """One pass of the fixed drift probe (ms)."""
        if self._reference is None:
            self._reference = reference_unit(self.device, self._fingerprint, self.protocol)
        return self._reference()

    def measure_models(self, archs: list[Arch]) -> list[float]:
        """End-to-end latency (ms) of each arch's standalone model, with the table's protocol:
        interleaved passes, outliers re-timed, chunks re-measured when the machine ran slow."""
        keys = [f"{i}:{arch.digest}" for i, arch in enumerate(archs)]
        by_key = dict(zip(keys, archs))

        def chunk_entries(chunk: list[str], provisional: bool = False) -> dict:
            units = {key: model_unit(by_key[key], self.device, self._fingerprint, self.protocol) for key in chunk}
            return measure_units(units, self.protocol, provisional)

        probe = DriftProbe(self.reference, self.protocol)
        entries = measure_with_drift([keys[i : i + 8] for i in range(0, len(keys), 8)], chunk_entries, probe, self.protocol)
        return [entries[key]["ms"] for key in keys]
