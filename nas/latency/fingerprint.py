"""Device fingerprint: what a latency measurement is only valid for."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from nas.errors import NasError
from nas.latency.device import describe_device

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BACKENDS = ("eager", "cuda-graph", "onnxruntime")  # the runtimes a model is timed in (nas.latency.runtime)


@dataclass(frozen=True)
class Fingerprint:
    device_type: str  # cpu or cuda
    device_name: str  # CPU model or GPU name
    torch: str
    cuda: str | None
    cudnn: int | None
    dtype: str
    batch_size: int
    threads: int | None  # CPU thread count (None on CUDA, where it does not set the kernels' speed)
    backend: str  # the runtime: eager, cuda-graph or onnxruntime (the CLI's --runtime)
    runtime_version: str | None = None  # the runtime's own version where it is not torch's (onnxruntime)
    kernels: str = "eager"  # the linear kernels' path: eager or fused (nas.latency.runtime.resolve_kernels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Fingerprint:
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not names - {"runtime_version", "kernels"} <= set(data) <= names:
            raise NasError(f"not a device fingerprint (expected fields {', '.join(sorted(names))})")
        return cls(**data)  # a table from before runtime_version and kernels existed was measured in torch, eager

    def setting(self) -> str:
        """What is measured, in words: "cpu, fp32, batch 1, eager runtime, eager kernels, 2 threads"."""
        threads = f", {self.threads} threads" if self.threads else ""
        return f"{self.device_type}, {self.dtype}, batch {self.batch_size}, {self.backend} runtime, {self.kernels} kernels{threads}"

    def differences(self, other: Fingerprint) -> list[str]:
        """Human-readable `field: self vs other` for every field that differs."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def fingerprint(
    device: torch.device, dtype: str, batch_size: int, backend: str = "eager", kernels: str = "auto"
) -> Fingerprint:
    """What a measurement on `device` is valid for; `kernels` (auto, eager or fused) is resolved to the path taken."""
    if dtype not in DTYPES:
        raise NasError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    from nas.latency.runtime import check_runtime, resolve_kernels

    runtime_version = check_runtime(backend, device, dtype)
    path = resolve_kernels(kernels, device, backend)
    if batch_size < 1:
        raise NasError(f"--batch-size must be >= 1, got {batch_size}")
    info = describe_device(device)
    return Fingerprint(
        device_type=device.type,
        device_name=info["name"],
        torch=torch.__version__,
        cuda=info["cuda"],
        cudnn=info["cudnn"],
        dtype=dtype,
        batch_size=batch_size,
        threads=torch.get_num_threads() if device.type == "cpu" else None,
        backend=backend,
        runtime_version=runtime_version,
        kernels=path,
    )
