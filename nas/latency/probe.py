"""Measuring the pieces of a ViT and whole ViTs on a device, as the exported model runs them.

Every piece is built with the standalone subnet modules (`nas.subnet`), in eval mode,
converted to the fingerprint's dtype, and timed under `torch.no_grad` on random inputs
(two sets, rotated) with `nas.latency.timer`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from nas.arch import Arch
from nas.latency.fingerprint import DTYPES, Fingerprint
from nas.latency.timer import Timing, measure
from nas.subnet import Block, ViT


@dataclass(frozen=True)
class Protocol:
    warmup: int = 5
    repeats: int = 200
    min_repeats: int = 10
    max_seconds: float = 0.5
    input_sets: int = 2

    def to_dict(self) -> dict:
        return {**asdict(self), "statistic": "median", "inputs": "random normal, rotated", "mode": "eval, torch.no_grad"}


def _timed(fn: Callable, make_input: Callable[[], torch.Tensor], device: torch.device, fp: Fingerprint, protocol: Protocol) -> Timing:
    inputs = [(make_input(),) for _ in range(protocol.input_sets)]

    @torch.no_grad()
    def run(x):
        return fn(x)

    return measure(
        run,
        inputs,
        device=device,
        warmup=protocol.warmup,
        repeats=protocol.repeats,
        min_repeats=protocol.min_repeats,
        max_seconds=protocol.max_seconds,
        cuda_graph=fp.backend == "cuda-graph",
    )


def _prepare(module: torch.nn.Module, device: torch.device, fp: Fingerprint) -> torch.nn.Module:
    return module.to(device=device, dtype=DTYPES[fp.dtype]).eval()


def block_timing(arch: Arch, device: torch.device, fp: Fingerprint, protocol: Protocol) -> Timing:
    """The first transformer block of `arch`, at its embed dim, tokens and head dim."""
    layer = arch.layers[0]
    kernel = arch.kernel_spec(0).build(arch.head_dim, layer.heads)
    block = _prepare(Block(arch.embed_dim, layer.heads, arch.head_dim, layer.hidden_dim(arch.embed_dim), kernel), device, fp)
    shape = (fp.batch_size, arch.tokens, arch.embed_dim)
    return _timed(lambda x: block(x, arch.grid), lambda: torch.randn(shape, device=device, dtype=DTYPES[fp.dtype]), device, fp, protocol)


def stem_and_head_timings(arch: Arch, device: torch.device, fp: Fingerprint, protocol: Protocol) -> tuple[Timing, Timing]:
    """Patch + position embedding, and pooling + norm + classifier, at the arch's embed dim."""
    model = _prepare(ViT(arch), device, fp)
    dtype = DTYPES[fp.dtype]
    image = (fp.batch_size, arch.in_chans, arch.image_size, arch.image_size)
    tokens = (fp.batch_size, arch.tokens, arch.embed_dim)
    stem = _timed(model.embed, lambda: torch.randn(image, device=device, dtype=dtype), device, fp, protocol)
    head = _timed(model.classify, lambda: torch.randn(tokens, device=device, dtype=dtype), device, fp, protocol)
    return stem, head


def model_timing(arch: Arch, device: torch.device, fp: Fingerprint, protocol: Protocol) -> Timing:
    """The whole standalone model of `arch`, end to end."""
    model = _prepare(ViT(arch), device, fp)
    image = (fp.batch_size, arch.in_chans, arch.image_size, arch.image_size)
    return _timed(model, lambda: torch.randn(image, device=device, dtype=DTYPES[fp.dtype]), device, fp, protocol)
