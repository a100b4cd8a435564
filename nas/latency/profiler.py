"""A profiler owns one device and measures on it: table entries and whole models.

The same class runs in this process or as a Ray actor on another node
(`workers/profiler.py`); the table logic only sees its three methods.
"""

from __future__ import annotations

import torch

from nas.arch import Arch
from nas.latency.device import resolve_device
from nas.latency.fingerprint import Fingerprint, fingerprint
from nas.latency.probe import Protocol, model_timing
from nas.latency.table import measure_probes


class Profiler:
    def __init__(self, device: str, dtype: str, batch_size: int, backend: str = "eager", threads: int | None = None, protocol: Protocol = Protocol()) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.protocol = protocol
        self._fingerprint = fingerprint(self.device, dtype, batch_size, backend)

    def fingerprint(self) -> Fingerprint:
        return self._fingerprint

    def measure_probes(self, chunk: list[tuple[str, Arch]]) -> dict[str, dict]:
        return measure_probes(chunk, self.device, self._fingerprint, self.protocol)

    def measure_models(self, archs: list[Arch]) -> list[float]:
        """Median end-to-end latency (ms) of each arch's standalone model."""
        return [model_timing(arch, self.device, self._fingerprint, self.protocol).median_ms for arch in archs]
