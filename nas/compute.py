"""The device and precision that compute: training, evaluation, fine-tuning.

Not to be confused with the *target* device, whose latency a search optimises (the
latency table's fingerprint): a supernet can be trained on a GPU for a CPU target.
`--compute-device auto` takes CUDA when it is available; `--precision bf16|fp16` runs the
forward passes under `torch.autocast` (fp16 with a gradient scaler). Needs only torch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from nas.errors import NasError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Compute:
    device: torch.device
    precision: str = "fp32"

    @classmethod
    def parse(cls, device: str = "auto", precision: str = "fp32") -> Compute:
        """Validated at the edge: an unknown name or an absent GPU is one clear error."""
        if precision not in PRECISIONS:
            raise NasError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            parsed = torch.device(device)
        except RuntimeError:
            raise NasError(f"--compute-device {device!r}: use auto, cpu, cuda or cuda:<index>") from None
        if parsed.type not in ("cpu", "cuda", "meta"):
            raise NasError(f"--compute-device {device!r}: use auto, cpu, cuda or cuda:<index>")
        if parsed.type == "cuda":
            if not torch.cuda.is_available():
                raise NasError(
                    f"--compute-device {device}: CUDA is not available on this machine; use --compute-device cpu"
                )
            if parsed.index is not None and parsed.index >= torch.cuda.device_count():
                raise NasError(
                    f"--compute-device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
                )
        if parsed.type == "cpu" and precision == "fp16" and not cpu_fp16_autocast():
            raise NasError("--precision fp16 is not supported on the CPU by this torch; use bf16 or fp32")
        return cls(parsed, precision)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        """The context of a forward pass: autocast to bf16/fp16, or nothing for fp32."""
        if self.precision == "fp32" or self.device.type == "meta":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def scaler(self):
        """A gradient scaler for fp16 (None otherwise): fp16 gradients underflow without one."""
        if self.precision != "fp16":
            return None
        return torch.amp.GradScaler(self.device.type)

    def move(self, tensor: torch.Tensor) -> torch.Tensor:
        """A batch onto the device; asynchronous from pinned memory on CUDA."""
        return tensor.to(self.device, non_blocking=self.cuda)

    def record(self) -> dict:
        """What the run's manifest records about how it computed."""
        out = {"device": str(self.device), "precision": self.precision}
        if self.cuda:
            out.update(
                name=torch.cuda.get_device_name(self.device),
                tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                tf32_cudnn=torch.backends.cudnn.allow_tf32,
                float32_matmul_precision=torch.get_float32_matmul_precision(),
            )
        return out


def cpu_fp16_autocast() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.ones(2, 2) @ torch.ones(2, 2)
        return True
    except (RuntimeError, AssertionError):
        return False


CPU = Compute(torch.device("cpu"))
