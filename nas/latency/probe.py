"""Measuring the pieces of a ViT and whole ViTs on a device, as the exported model runs them.

Every piece is built with the standalone subnet modules (`nas.subnet`), in eval mode,
converted to the fingerprint's dtype, and timed under `torch.no_grad` on random inputs
(two sets, rotated) with `nas.latency.timer`. A piece becomes a *unit*: a callable that
runs one timed pass (a few calls after a short warm-up) and returns its median in ms.
`nas.latency.robust` interleaves the passes of many units and combines them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from nas.arch import Arch
from nas.latency.fingerprint import DTYPES, Fingerprint
from nas.latency.timer import measure
from nas.subnet import Block, ViT

Unit = Callable[[], float]  # one timed pass -> median milliseconds per call


@dataclass(frozen=True)
class Protocol:
    """How a table is measured. Each unit is timed in `passes` interleaved passes (round-robin
    over the units of a chunk, not one unit's calls back to back), each pass at most `repeats`
    calls or about `max_seconds`. An entry is the minimum of its per-pass medians (interference
    only slows a pass down, on CUDA too: see nas.latency.robust). A unit is re-timed, at most
    `remeasure` more rounds, when no second pass confirms the lowest within `max_dispersion`
    ((second lowest - lowest) / lowest). A fixed reference probe is re-timed after every chunk: when it runs more
    than `drift_threshold` slower than its best, the chunk is measured again later. Entries of
    the same kernel that are faster at a wider width (beyond `monotone_tolerance`) are
    re-measured once."""

    warmup: int = 5
    repeats: int = 40
    min_repeats: int = 5
    max_seconds: float = 0.1
    input_sets: int = 2
    passes: int = 5
    max_dispersion: float = 0.2
    remeasure: int = 2
    drift_threshold: float = 0.15
    monotone_tolerance: float = 0.1

    def for_trials(self) -> Protocol:
        """The timing of a search's trial models: each pass at most 20 calls (the table's 40
        make measuring every trial cost about half the search stage on 2 cores); the pick
        before export is measured again with the full protocol."""
        from dataclasses import replace

        return replace(self, repeats=min(self.repeats, 20), max_seconds=min(self.max_seconds, 0.05))

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "statistic": "min over passes of per-pass medians",
            "dispersion": "(second lowest - lowest) / lowest pass",
            "inputs": "random normal, rotated",
            "mode": "eval, torch.no_grad",
        }


def timed_unit(
    fn: Callable,
    make_input: Callable[[], torch.Tensor],
    protocol: Protocol,
    device: torch.device | str = "cpu",
    cuda_graph: bool = False,
) -> Unit:
    """A `Unit` for `fn` on `protocol.input_sets` inputs: one timed pass per call (median ms per call, under
    torch.no_grad), the first pass with the protocol's warm-up, later ones with one call."""
    inputs = [(make_input(),) for _ in range(protocol.input_sets)]
    warmed = []

    @torch.no_grad()
    def run(x):
        return fn(x)

    def one_pass() -> float:
        warmup = 1 if warmed else protocol.warmup
        warmed.append(True)
        return measure(
            run,
            inputs,
            device=device,
            warmup=warmup,
            repeats=protocol.repeats,
            min_repeats=protocol.min_repeats,
            max_seconds=protocol.max_seconds,
            cuda_graph=cuda_graph,
        ).median_ms

    return one_pass


def _unit(
    fn: Callable,
    make_input: Callable[[], torch.Tensor],
    device: torch.device,
    fp: Fingerprint,
    protocol: Protocol,
    module: torch.nn.Module,
) -> Unit:
    """`fn` (a call of `module`) timed in the fingerprint's runtime and on its kernel path (nas.latency.runtime)."""
    if fp.backend == "onnxruntime":
        from nas.latency.runtime import onnxruntime_callable

        fn = onnxruntime_callable(module, fn, make_input(), fp.threads)
    elif fp.kernels == "fused":
        fn = _on_fused_path(fn)
    return timed_unit(fn, make_input, protocol, device, cuda_graph=fp.backend == "cuda-graph")


def _on_fused_path(fn: Callable) -> Callable:
    """`fn` with the linear kernels' core on nas.kernels.fused's Triton kernels."""
    from nas.kernels import fused

    def run(x):
        with fused.path():
            return fn(x)

    return run


def _prepare(module: torch.nn.Module, device: torch.device, fp: Fingerprint) -> torch.nn.Module:
    return module.to(device=device, dtype=DTYPES[fp.dtype]).eval()


def block_unit(arch: Arch, device: torch.device, fp: Fingerprint, protocol: Protocol) -> Unit:
    """The first transformer block of `arch`, at its embed dim, tokens and head dim."""
    layer = arch.layers[0]
    kernel = arch.kernel_spec(0).build(arch.head_dim, layer.heads, grid=arch.grid, embed_dim=arch.embed_dim)
    block = _prepare(
        Block(arch.embed_dim, layer.heads, arch.head_dim, layer.hidden_dim(arch.embed_dim), kernel), device, fp
    )
    shape = (fp.batch_size, arch.tokens, arch.embed_dim)
    return _unit(
        lambda x: block(x, arch.grid),
        lambda: torch.randn(shape, device=device, dtype=DTYPES[fp.dtype]),
        device,
        fp,
        protocol,
        block,
    )


def stem_and_head_units(arch: Arch, device: torch.device, fp: Fingerprint, protocol: Protocol) -> tuple[Unit, Unit]:
    """Patch + position embedding, and pooling + norm + classifier, at the arch's embed dim."""
    model = _prepare(ViT(arch), device, fp)
    dtype = DTYPES[fp.dtype]
    image = (fp.batch_size, arch.in_chans, arch.image_size, arch.image_size)
    tokens = (fp.batch_size, arch.tokens, arch.embed_dim)
    stem = _unit(model.embed, lambda: torch.randn(image, device=device, dtype=dtype), device, fp, protocol, model)
    head = _unit(model.classify, lambda: torch.randn(tokens, device=device, dtype=dtype), device, fp, protocol, model)
    return stem, head


def model_unit(arch: Arch, device: torch.device, fp: Fingerprint, protocol: Protocol) -> Unit:
    """The whole standalone model of `arch`, end to end."""
    model = _prepare(ViT(arch), device, fp)
    image = (fp.batch_size, arch.in_chans, arch.image_size, arch.image_size)
    return _unit(model, lambda: torch.randn(image, device=device, dtype=DTYPES[fp.dtype]), device, fp, protocol, model)


def probe_units(
    chunk: list[tuple[str, Arch]], device: torch.device, fp: Fingerprint, protocol: Protocol
) -> dict[str, Unit]:
    """Table entries' units: a block probe is one entry, a stem+head probe two (stem|e, head|e)."""
    units: dict[str, Unit] = {}
    for key, arch in chunk:
        if key.startswith("stem+head|"):
            e = key.split("|")[1]
            units[f"stem|{e}"], units[f"head|{e}"] = stem_and_head_units(arch, device, fp, protocol)
        else:
            units[key] = block_unit(arch, device, fp, protocol)
    return units


def reference_unit(device: torch.device, fp: Fingerprint, protocol: Protocol) -> Unit:
    """The drift probe: a fixed softmax block (64 tokens, embed 64, 2 heads of 32), whatever the space."""
    from nas.kernels import get

    block = _prepare(Block(64, 2, 32, 128, get("softmax", 32, 2)), device, fp)
    shape = (fp.batch_size, 64, 64)
    return _unit(
        lambda x: block(x, (8, 8)),
        lambda: torch.randn(shape, device=device, dtype=DTYPES[fp.dtype]),
        device,
        fp,
        protocol,
        block,
    )
