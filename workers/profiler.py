"""Latency profiler as a Ray actor: build or validate a table on the actor's node's device.

On GPU nodes it reserves one whole GPU (`num_gpus=1`, never a fraction: a shared GPU
spoils timing), optionally of a given accelerator type, so a search can target a remote
device; on CPU it reserves as many CPUs as it uses threads.
"""

from __future__ import annotations

import ray

from nas.arch import Arch
from nas.errors import NasError
from nas.latency.fingerprint import Fingerprint
from nas.latency.probe import Protocol
from nas.latency.profiler import Profiler


class RemoteProfiler:
    """The `Profiler` interface, served by an actor; each call blocks until it returns."""

    def __init__(
        self,
        device: str,
        dtype: str,
        batch_size: int,
        backend: str = "eager",
        threads: int = 1,
        accelerator_type: str | None = None,
        protocol: Protocol = Protocol(),
        kernels: str = "auto",
    ) -> None:
        options: dict = {"num_gpus": 1, "num_cpus": 1} if device.startswith("cuda") else {"num_cpus": threads}
        options.update(max_restarts=2, max_task_retries=2)  # a dead profiler is restarted and its chunk re-measured
        if accelerator_type:
            options["accelerator_type"] = accelerator_type
        self.protocol = protocol
        self.actor = (
            ray.remote(Profiler)
            .options(**options)
            .remote(device, dtype, batch_size, backend, threads, protocol, kernels)
        )

    def fingerprint(self) -> Fingerprint:
        return self._get(self.actor.fingerprint.remote())

    def measure_probes(self, chunk: list[tuple[str, Arch]], provisional: bool = False) -> dict[str, dict]:
        return self._get(self.actor.measure_probes.remote(chunk, provisional))

    def measure_models(self, archs: list[Arch], protocol: Protocol | None = None) -> list[float]:
        return self._get(self.actor.measure_models.remote(archs, protocol))

    def reference(self) -> float:
        return self._get(self.actor.reference.remote())

    def anchor_to(self, reference_ms: float | None) -> None:
        self._get(self.actor.anchor_to.remote(reference_ms))

    @staticmethod
    def _get(ref):
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as error:
            raise NasError(
                f"the latency profiler failed after its restarts and retries ({type(error).__name__}); the entries "
                "measured so far are kept: run the same command with --resume (nas run) or again (nas latency)"
            ) from None
