"""The roofline of `nas bench kernels`: how close each kernel call runs to what the device allows.

A call's work: FLOPs by the kernel's own formula (`AttentionKernel.macs`, 2 FLOPs per multiply-accumulate; a
forward and backward counted as 3 forwards, the usual estimate) and the bytes it must move at least (read q, k, v
and write the output: 4 tensors of B·h·N·d elements; with the backward, also read the output's gradient and
write the gradients of q, k and v: 8). The device's peaks are measured in the same process and dtype — FLOP/s by
a large square matmul, bytes/s by a large copy (read and write) — so they are the peaks this library reaches on
this device, not a datasheet's. The roofline time of a call is max(FLOPs / peak FLOP/s, bytes / peak bytes/s); its
**roofline share** is that time over the measured one (1.0: the call runs at the limit its arithmetic intensity
allows). L²ViT's LCM and CPE branches run in the timed call but are not in its formula, so its share is a lower
bound.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from nas.latency import measure

BACKWARD_FACTOR = 3  # forward + backward FLOPs as a multiple of the forward's


@dataclass(frozen=True)
class Peaks:
    flops_per_s: float  # a square matmul of `matmul` rows, median of its timed calls
    bytes_per_s: float  # a copy of `copy_bytes` bytes: read and written, so 2 × copy_bytes per call
    matmul: int
    copy_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def measure_peaks(
    device: torch.device, dtype: torch.dtype, matmul: int | None = None, copy_bytes: int | None = None
) -> Peaks:
    """FLOP/s of an n×n by n×n matmul and bytes/s of a large copy on `device` in `dtype` (medians)."""
    cuda = device.type == "cuda"
    n = matmul or (8192 if cuda else 1024)
    size = copy_bytes or (1 << 30 if cuda else 1 << 28)
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=generator).to(device=device, dtype=dtype) for _ in range(2))
    timed = measure(torch.matmul, [(a, b)], device=device, warmup=2, repeats=10, min_repeats=3, max_seconds=1.0)
    flops = 2 * n**3 / (timed.median_ms / 1e3)
    element = torch.empty((), dtype=dtype).element_size()
    source = torch.empty(size // element, dtype=dtype, device=device).fill_(1)
    target = torch.empty_like(source)
    copied = measure(
        lambda x, y: y.copy_(x), [(source, target)], device=device, warmup=2, repeats=10, min_repeats=3, max_seconds=1.0
    )
    return Peaks(
        flops_per_s=flops,
        bytes_per_s=2 * source.numel() * element / (copied.median_ms / 1e3),
        matmul=n,
        copy_bytes=source.numel() * element,
    )


def work(
    module, grid: tuple[int, int], heads: int, head_dim: int, batch_size: int, mode: str, dtype: torch.dtype
) -> tuple[int, int]:
    """(FLOPs, least bytes moved) of one timed call of `module` (see the module's docstring)."""
    flops = 2 * module.macs(heads, grid) * batch_size
    tensor = batch_size * heads * grid[0] * grid[1] * head_dim * torch.empty((), dtype=dtype).element_size()
    if mode == "fwd":
        return flops, 4 * tensor
    return BACKWARD_FACTOR * flops, 8 * tensor


def share(flops: int, moved: int, median_ms: float, peaks: Peaks) -> dict:
    """Achieved TFLOP/s and GB/s, arithmetic intensity, which roof binds, and the roofline share of one call."""
    seconds = median_ms / 1e3
    compute, memory = flops / peaks.flops_per_s, moved / peaks.bytes_per_s
    return {
        "tflops": flops / seconds / 1e12,
        "gbs": moved / seconds / 1e9,
        "intensity": flops / moved if moved else 0.0,
        "bound": "compute" if compute >= memory else "memory",
        "roofline_share": max(compute, memory) / seconds,
    }
