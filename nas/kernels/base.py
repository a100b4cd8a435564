"""The interface every attention kernel implements, and the helpers they share.

A kernel maps multi-head queries, keys and values of shape (B, heads, N, head_dim),
plus the token grid (H, W) with H * W = N, to an output of the same shape. It is an
`nn.Module` that owns its own small parameters (depthwise convs, scales, ...); the q/k/v
and output projections belong to the attention block around it.

A kernel built for `num_heads` heads also accepts fewer heads h and then uses the leading
h heads' parameters: that is what lets a weight-sharing supernet keep one kernel module
per (layer, kernel) across widths, and what subnet extraction slices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Union

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
        maps and convs; elementwise work counted once per element)."""
        raise NotImplementedError

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


Feature = Union[Tensor, float]  # a float c stands for a constant feature column of value c


def linear_attention(
    phi_q: Sequence[Feature],
    phi_k: Sequence[Feature],
    v: Tensor,
    weights: Sequence[float] | None = None,
    eps: float = 1e-6,
    min_denominator: float | None = None,
) -> Tensor:
    """Kernelized attention in O(N·D·d), with key statistics averaged over the N keys:

        out_i = φ(q_i)ᵀ S / (φ(q_i)ᵀ z + eps),  S = mean_j φ(k_j) v_jᵀ,  z = mean_j φ(k_j)

    φ is given as matching blocks, φ(x) = [w_1^½·φ_1(x), w_2^½·φ_2(x), ...]: each block a
    (B, h, N, D_b) tensor or a float (a constant column), each weight w_b applied to the
    block's small D_b×(d+1) statistics. So no N×D tensor is concatenated or rescaled: on
    wide maps (Taylor order 2) those passes cost more than the matmuls. The mean (instead
    of the sum) keeps the statistics O(1) whatever N is; `eps` is added to that
    mean-normalised denominator. With `min_denominator` the denominator is clamped from
    below instead (L²ViT). A ones column appended to v yields numerator and denominator
    from the same matmuls.
    """
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
    """`conv` applied to the leading x.shape[1] channels (elastic width), in x's dtype."""
    channels = x.shape[1]
    weight = conv.weight[:channels].to(x.dtype)
    bias = None if conv.bias is None else conv.bias[:channels].to(x.dtype)
    return F.conv2d(x, weight, bias, padding=conv.padding, groups=channels)


def channel_layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    """LayerNorm over the channels of a (B, C, H, W) map, with the leading C of `norm`'s weights."""
    channels = x.shape[1]
    weight = norm.weight[:channels].to(x.dtype)
    bias = norm.bias[:channels].to(x.dtype)
    y = F.layer_norm(x.permute(0, 2, 3, 1), (channels,), weight, bias, norm.eps)
    return y.permute(0, 3, 1, 2)


def depthwise(channels: int, kernel_size: int, name: str, field: str) -> nn.Conv2d:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise NasError(f"{name}: {field} must be a positive odd integer, got {kernel_size!r}")
    return nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)


def check_positive(value: float, name: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise NasError(f"{name}: {field} must be a positive number, got {value!r}")
    return float(value)
