"""A profiler owns one device and measures on it: table entries and whole models.

The same class runs in this process or as a Ray actor on another node
(`workers/profiler.py`); the table logic only sees its three methods.
"""

from __future__ import annotations

import torch

from nas.arch import Arch
from nas.latency.build import measure_probes
from nas.latency.device import resolve_device
from nas.latency.fingerprint import Fingerprint, fingerprint
from nas.latency.probe import Protocol, model_unit, reference_unit
from nas.latency.robust import DriftProbe, measure_units, measure_with_drift

MAX_SPEED_RATIO = 1.5  # the widest quiet-speed change a table's figures are corrected for (see Profiler.speed)


class Profiler:
    def __init__(
        self,
        device: str,
        dtype: str,
        batch_size: int,
        backend: str = "eager",
        threads: int | None = None,
        protocol: Protocol = Protocol(),
        kernels: str = "auto",
    ) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.protocol = protocol
        self._fingerprint = fingerprint(self.device, dtype, batch_size, backend, kernels)
        self._reference = None
        self._probe: DriftProbe | None = None  # kept across measure_models calls: its best is the machine's quiet speed
        self.anchor_ms: float | None = (
            None  # the reference time whole-model figures are expressed at (a table's reference_ms)
        )
        self.speeds: list[float] = []  # per measure_models call: the reference's best time so far / anchor_ms

    @classmethod
    def like(cls, fp: Fingerprint, device: str | None = None, protocol: Protocol = Protocol()) -> Profiler:
        """A profiler that measures as `fp` was measured (its device type, dtype, batch, runtime, threads and
        kernel path), on `device` (default: the fingerprint's device type)."""
        device = fp.device_type if device is None else device
        return cls(device, fp.dtype, fp.batch_size, fp.backend, fp.threads, protocol=protocol, kernels=fp.kernels)

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

        With `anchor_ms` (see `anchor_to`) the figures are scaled by `speed()`: the reference's
        best time seen by this profiler over the table's. A host that runs slower or faster for
        good (another clock, another VM size) then reports figures at the speed its table was
        measured at, so that a search's trials, its pick and a later re-measurement compare
        with each other and with the table. Only the best time counts: interference slows the
        tiny reference far more than the models (on 2 oversubscribed cores it ran 200x slower
        while models ran a few times slower), and dividing by its time then would shrink the
        figures below the truth; interference is left to the re-measurement, which keeps the
        lower figures. `protocol`: the timing of the models (default: the table's; the drift
        checks keep the profiler's)."""
        protocol = protocol or self.protocol
        keys = [f"{i}:{arch.digest}" for i, arch in enumerate(archs)]
        by_key = dict(zip(keys, archs))

        def chunk_entries(chunk: list[str], provisional: bool = False) -> dict:
            units = {key: model_unit(by_key[key], self.device, self._fingerprint, protocol) for key in chunk}
            return measure_units(units, protocol, provisional)

        if self._probe is None:
            self._probe = DriftProbe(self.reference, self.protocol)
        entries = measure_with_drift(
            [keys[i : i + 8] for i in range(0, len(keys), 8)], chunk_entries, self._probe, self.protocol
        )
        raw = [entries[key]["ms"] for key in keys]
        speed = self.speed()
        if speed is None:
            return raw
        self.speeds.append(round(speed, 4))
        scale = speed if 1 / MAX_SPEED_RATIO <= speed <= MAX_SPEED_RATIO else 1.0
        return [ms / scale for ms in raw]

    def speed(self) -> float | None:
        """The reference's best time seen by this profiler over the table's (`anchor_ms`): the machine's
        quiet speed against the table's (1.25: 25 % slower). Figures are scaled by it only within
        `MAX_SPEED_RATIO` either way; beyond, the host is not the table's in effect, or it was never
        quiet while this profiler measured, and the figures are left as measured."""
        if not self.anchor_ms or self._probe is None:
            return None
        return self._probe.best / self.anchor_ms
