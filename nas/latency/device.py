"""Which device a measurement ran on, described well enough to refuse mixing devices."""

from __future__ import annotations

import os
import platform

import torch

from nas.errors import NasError


def resolve_device(spec: str, flag: str = "--target-device") -> torch.device:
    """Parse `cpu`, `cuda` or `cuda:i`, refusing a device this machine does not have."""
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise NasError(f"{flag} {spec!r} is not a device; use cpu, cuda or cuda:<index>") from None
    if device.type not in ("cpu", "cuda"):
        raise NasError(f"{flag} {spec!r}: only cpu and cuda devices are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise NasError(f"{flag} {spec}: CUDA is not available on this machine (torch.cuda.is_available() is False)")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise NasError(f"{flag} {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        device = torch.device("cuda", index)
    return device


def device_tag(device_type: str, name: str) -> str:
    """`cpu` or `cuda-<GPU name>` with non-alphanumerics as dashes, for file names."""
    if device_type == "cpu":
        return "cpu"
    return "cuda-" + "".join(c if c.isalnum() else "-" for c in name).strip("-")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: torch.device) -> dict:
    """Device name and the software stack that produced a measurement."""
    description = {
        "device": str(device),
        "name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    return description
