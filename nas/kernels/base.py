"""The interface every attention kernel implements, and the helpers they share.

A kernel maps multi-head queries, keys and values of shape (B, heads, N, head_dim),
plus the token grid (H, W) with H * W = N, to an output of the same shape. It is an
`nn.Module` that owns its own small parameters (depthwise convs, scales, ...); the q/k/v
and output projections belong to the attention block around it.

A kernel built for `num_heads` heads also accepts fewer heads h and then uses the leading
h heads' parameters: that is what lets a weight-sharing supernet keep one kernel module
per (layer, kernel) across widths, and what subnet extraction slices.

Two things a kernel may need besides head_dim and num_heads, given at build time by the
model around it (`registry.get(..., grid=, embed_dim=)`, passed only to kernels whose
constructor names them): the token `grid` (a parameter per token, e.g. FLatten's positional
encoding on k) and the block's `embed_dim` (a module on the residual stream, e.g. L²ViT's
local concentration module). A kernel with a residual-stream module implements `residual`:
the block adds `residual(x, grid)` to its residual stream after the attention's output
projection (x = x + residual(x)), on the leading `x.shape[-1]` channels of its weights. One
with a branch before the attention (L²ViT's conditional position encoding) implements
`position`: the block first does x = x + position(x, grid), then the attention on norm1(x).

`revision` counts changes of a kernel's operator: latency tables and supernets measured or
trained with another revision are refused (it is part of the space digest).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.errors import NasError

Grid = tuple[int, int]


class AttentionKernel(nn.Module):
    """Base class: validates inputs, then calls `attend`."""

    name: ClassVar[str]
    needs_grid: ClassVar[bool] = False
    # The option sets that are distinct search-space choices (e.g. Taylor's orders). This is
    # the one declaration that the space YAML, Arch validation, Optuna's parameters, labels
    # and latency-table keys derive from.
    variants: ClassVar[tuple[dict, ...]] = ({},)
    label_prefixes: ClassVar[dict[str, str]] = {}  # e.g. {"order": "o"}: label taylor-o2-compact
    revision: ClassVar[int] = 1
    has_residual: ClassVar[bool] = False  # True when `residual` adds a residual-stream branch after the attention
    has_position: ClassVar[bool] = False  # True when `position` adds one before it

    def __init__(self, head_dim: int, num_heads: int) -> None:
        super().__init__()
        for field, value in (("head_dim", head_dim), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise NasError(f"{self.name}: {field} must be a positive integer, got {value!r}")
        self.head_dim = head_dim
        self.num_heads = num_heads

    def forward(self, q: Tensor, k: Tensor, v: Tensor, grid: Grid | None = None) -> Tensor:
        self._check_inputs(q, k, v, grid)
        return self.attend(q, k, v, grid)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, grid: Grid | None) -> Tensor:
        raise NotImplementedError

    def macs(self, heads: int, grid: Grid) -> int:
        """Multiply-accumulates of one forward for one image, by formula (matmuls, feature
        maps and convs; elementwise work counted once per element). The residual-stream
        branches (`residual`, `position`) are not included: they run outside the kernel's
        module and are counted there."""
        raise NotImplementedError

    def residual(self, x: Tensor, grid: Grid) -> Tensor:
        """The residual-stream branch (B, N, E) -> (B, N, E) of kernels with `has_residual`."""
        raise NotImplementedError(f"{self.name} has no residual-stream branch")

    def position(self, x: Tensor, grid: Grid) -> Tensor:
        """The branch (B, N, E) -> (B, N, E) added before the attention by kernels with `has_position`."""
        raise NotImplementedError(f"{self.name} has no branch before the attention")

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, num_heads={self.num_heads}"

    def _check_inputs(self, q: Tensor, k: Tensor, v: Tensor, grid: Grid | None) -> None:
        if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
            raise NasError(
                f"{self.name}: q, k and v must share one shape (B, heads, N, head_dim); "
                f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
            )
        _, heads, tokens, head_dim = q.shape
        if head_dim != self.head_dim:
            raise NasError(
                f"{self.name}: q/k/v have head dim {head_dim}, but this kernel was built for "
                f"head_dim={self.head_dim}; build it with head_dim={head_dim} or fix the projection"
            )
        if heads > self.num_heads:
            raise NasError(
                f"{self.name}: q/k/v have {heads} heads, but this kernel was built for at most "
                f"num_heads={self.num_heads}"
            )
        if grid is None:
            if self.needs_grid:
                raise NasError(
                    f"{self.name}: this kernel needs the token grid (H, W) of the patch grid; "
                    f"call it as kernel(q, k, v, grid=(H, W))"
                )
            return
        if len(grid) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in grid):
            raise NasError(f"{self.name}: grid must be two positive integers (H, W), got {grid!r}")
        if grid[0] * grid[1] != tokens:
            raise NasError(
                f"{self.name}: grid (H, W) = {tuple(grid)} holds {grid[0] * grid[1]} tokens, but "
                f"q/k/v have N = {tokens}; pass the patch grid of this input"
            )


# ---------------------------------------------------------------------------------------
# Shared numerics


def compute_dtype(x: Tensor) -> torch.dtype:
    """Linear kernels compute in fp32 when given half precision (KERNELS.md, Numerics)."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


Feature = Tensor | float  # a float c stands for a constant feature column of value c
# Within nas.kernels.fused.path(): the fused core, a function with linear_attention's arguments (None: the eager form below).
# A module global, not a ContextVar: torch.compile (torch 2.6) cannot trace ContextVar.get() in a full graph.
FUSED = None


def linear_attention(
    phi_q: Sequence[Feature],
    phi_k: Sequence[Feature],
    v: Tensor,
    weights: Sequence[float | Tensor] | None = None,
    eps: float = 1e-6,
    min_denominator: float | None = None,
) -> Tensor:
    """Kernelized attention in O(N·D·d), with key statistics averaged over the N keys:

        out_i = φ(q_i)ᵀ S / (φ(q_i)ᵀ z + eps),  S = mean_j φ(k_j) v_jᵀ,  z = mean_j φ(k_j)

    φ is given as matching blocks, φ(x) = [w_1^½·φ_1(x), w_2^½·φ_2(x), ...]: each block a
    (B, h, N, D_b) tensor or a float (a constant column), each weight w_b — a float, or a
    (D_b, 1) tensor of one weight per feature — applied to the block's small D_b×(d+1) statistics. So no N×D tensor is concatenated or rescaled: on
    wide maps (Taylor order 2) those passes cost more than the matmuls. The mean (instead
    of the sum) keeps the statistics O(1) whatever N is; `eps` is added to that
    mean-normalised denominator. With `min_denominator` the denominator is clamped from
    below instead (L²ViT). A ones column appended to v yields numerator and denominator
    from the same matmuls. Within `nas.kernels.fused.path()`, the fused Triton kernels compute it.
    """
    if FUSED is not None:
        return FUSED(phi_q, phi_k, v, weights, eps, min_denominator)
    tokens = v.shape[-2]
    ones = torch.ones(v.shape[:-1] + (1,), dtype=v.dtype, device=v.device)
    v1 = torch.cat([v, ones], dim=-1)  # (B, h, N, d + 1)
    out: Tensor | None = None
    for index, (fq, fk) in enumerate(zip(phi_q, phi_k, strict=True)):
        scale = (1.0 if weights is None else weights[index]) / tokens
        kv = (fk * v1.sum(-2, keepdim=True) if isinstance(fk, float) else fk.transpose(-2, -1) @ v1) * scale
        term = fq * kv if isinstance(fq, float) else fq @ kv  # (B, h, N or 1, d + 1)
        out = term if out is None else out + term
    assert out is not None, "linear_attention needs at least one feature block"
    out = out.expand(v1.shape)
    numerator, denominator = out[..., :-1], out[..., -1:]
    if min_denominator is None:
        return numerator / (denominator + eps)
    return numerator / denominator.clamp(min=min_denominator)


def linear_attention_macs(heads: int, tokens: int, head_dim: int, feature_dim: int) -> int:
    """S = φ(K)ᵀ[V 1] and φ(Q)S (2·N·D·(d+1) per head) plus the final division (N·d)."""
    return heads * tokens * (2 * feature_dim * (head_dim + 1) + head_dim)


def to_grid(x: Tensor, grid: Grid) -> Tensor:
    """(B, h, N, d) -> (B, h·d, H, W); channel c = head·d + j, so leading heads = leading channels."""
    batch, heads, _, head_dim = x.shape
    return x.transpose(2, 3).reshape(batch, heads * head_dim, grid[0], grid[1])


def from_grid(x: Tensor, heads: int) -> Tensor:
    """(B, h·d, H, W) -> (B, h, N, d), the inverse of `to_grid`."""
    batch, channels, height, width = x.shape
    return x.reshape(batch, heads, channels // heads, height * width).transpose(2, 3)


def depthwise_conv(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """`conv` applied to the leading x.shape[1] channels (elastic width), in x's dtype. Under torch.compile
    the convolution is one opaque operator (`_opaque_depthwise_conv`) and the compiler fuses what is around it;
    torch.export (ONNX) sees the plain convolution."""
    channels = x.shape[1]
    weight = conv.weight[:channels].to(x.dtype)
    bias = None if conv.bias is None else conv.bias[:channels].to(x.dtype)
    if torch.compiler.is_compiling() and not _exporting():
        return _opaque_depthwise_conv(x, weight, bias, conv.padding[0], conv.padding[1])
    return F.conv2d(x, weight, bias, padding=conv.padding, groups=channels)


def _exporting() -> bool:
    """torch.export is tracing (True where torch cannot say: the plain convolution is always right)."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return True if is_exporting is None else is_exporting()


# The eager convolution as an operator the compiler calls but does not lower: inductor's own lowering of these depthwise
# convs, with the layout it picks for them, made L²ViT's compiled branches slower than eager on the CPU (LCM 1.37 -> 1.69 ms
# on a 2-core AMD EPYC; results/bench/README.md, kernel_paths); kept opaque, the convs take the input's layout (channels-last
# from the tokens) as in eager, and the norms and activations between them fuse.
@torch.library.custom_op("nas::depthwise_conv", mutates_args=())
def _opaque_depthwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None, pad_h: int, pad_w: int) -> Tensor:
    out = F.conv2d(x, weight, bias, padding=(pad_h, pad_w), groups=x.shape[1])
    return out.contiguous(memory_format=_layout(x))  # the layout the compiler was told (below); a no-op but for batch 1


@_opaque_depthwise_conv.register_fake
def _(x, weight, bias, pad_h, pad_w):
    height = x.shape[2] + 2 * pad_h - weight.shape[2] + 1
    width = x.shape[3] + 2 * pad_w - weight.shape[3] + 1
    shape = (x.shape[0], x.shape[1], height, width)
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_layout(x))


def _layout(x: Tensor) -> torch.memory_format:
    """Channels-last for channels-last input (tokens seen as a grid), else contiguous: the output layout."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def _conv_setup(ctx, inputs, output) -> None:
    x, weight, bias, pad_h, pad_w = inputs
    ctx.save_for_backward(x, weight)
    ctx.padding, ctx.has_bias = (pad_h, pad_w), bias is not None


def _conv_backward(ctx, grad: Tensor):
    x, weight = ctx.saved_tensors
    groups = x.shape[1]
    d_x = torch.nn.grad.conv2d_input(x.shape, weight, grad, padding=ctx.padding, groups=groups)
    d_weight = torch.nn.grad.conv2d_weight(x, weight.shape, grad, padding=ctx.padding, groups=groups)
    return d_x, d_weight, grad.sum((0, 2, 3)) if ctx.has_bias else None, None, None


_opaque_depthwise_conv.register_autograd(_conv_backward, setup_context=_conv_setup)


class ImageNorm(nn.Module):
    """BatchNorm's stand-in in a weight-sharing supernet: each channel of each image normalised with
    that image's own statistics (over its tokens or grid positions), in training and at inference,
    then a per-channel affine map (ones and zeros at init, as BatchNorm's).

    BatchNorm's running statistics would depend on the subnet that ran last; these depend on the
    input alone. In training, BatchNorm's statistics span the batch as well: the gap is measured
    per use (`nas bench zoo`, `deviations`). A map with fewer channels uses the leading weights."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return image_norm(x, self)


def image_norm(x: Tensor, norm: ImageNorm) -> Tensor:
    """`norm` on x of shape (B, C, ...), channels at dim 1 (a group norm with one channel per group).
    A function, like `token_layer_norm`, so that a residual-stream branch counts it outside the kernel."""
    channels = x.shape[1]
    return F.group_norm(x, channels, norm.weight[:channels].to(x.dtype), norm.bias[:channels].to(x.dtype), norm.eps)


def token_layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    """LayerNorm over the last dim of (B, N, C) tokens, with the leading C of `norm`'s weights."""
    channels = x.shape[-1]
    return F.layer_norm(x, (channels,), norm.weight[:channels].to(x.dtype), norm.bias[:channels].to(x.dtype), norm.eps)


def check_grid(grid, name: str) -> Grid:
    """A build-time token grid (H, W), required by kernels with a parameter per token."""
    if grid is None:
        raise NasError(f"{name}: build it with grid=(H, W), the patch grid: it holds a parameter per token")
    if len(grid) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in grid):
        raise NasError(f"{name}: grid must be two positive integers (H, W), got {grid!r}")
    return (grid[0], grid[1])


def check_variant(variant: str, allowed: Sequence[str], name: str) -> str:
    if variant not in allowed:
        raise NasError(f"{name}: variant must be one of {', '.join(allowed)}, got {variant!r}")
    return variant


def check_odd(kernel_size: int, name: str, field: str) -> int:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise NasError(f"{name}: {field} must be a positive odd integer, got {kernel_size!r}")
    return kernel_size


def depthwise(channels: int, kernel_size: int, name: str, field: str) -> nn.Conv2d:
    check_odd(kernel_size, name, field)
    return nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)


def check_positive(value: float, name: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise NasError(f"{name}: {field} must be a positive number, got {value!r}")
    return float(value)
