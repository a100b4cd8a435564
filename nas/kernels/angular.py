"""Castling-ViT linear-angular attention with a depthwise conv on V."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from nas.errors import NasError
from nas.kernels.base import (
    AttentionKernel,
    Grid,
    check_positive,
    compute_dtype,
    depthwise,
    depthwise_conv,
    from_grid,
    linear_attention,
    linear_attention_macs,
    to_grid,
)
from nas.kernels.registry import register


@register
class AngularAttention(AttentionKernel):
    """Linear-angular attention (Castling-ViT), the paper's form:

        sim(q, k) = 1/2 + (q̂·k̂)/π   (q̂, k̂ unit vectors; the linear term of 1 − θ/π)

    computed in O(N) through φ(x) = [1/√2, x̂/√π] (D = d + 1), i.e. numerator
    ½·Σ_j v_j + (1/π)·q̂ᵀ(K̂ᵀV) and denominator N/2 + (1/π)·q̂ᵀΣ_j k̂_j, exactly. sim lies
    in [1/2 − 1/π, 1/2 + 1/π], so the denominator never vanishes. A depthwise
    `local_kernel_size`² conv on V over the token grid (all h·d channels) is added as
    the local branch that recovers what the dropped high-order terms carried.

    Training-only auxiliary softmax branch: in training mode with `aux_weight` > 0 the
    output adds `aux_weight · softmax_attention(q, k, v)`; the weight is meant to be
    annealed to 0. At 0, and always in eval mode, the branch is never computed.

    Differs from the authors' public "miniature" code, which adds ½·v_i of the token
    itself instead of ½·Σ_j v_j and L2-normalises the output instead of dividing by the
    denominator; this module implements the paper's formula.
    """

    name = "angular"
    needs_grid = True

    def __init__(
        self, head_dim: int, num_heads: int, local_kernel_size: int = 3, aux_weight: float = 0.0, eps: float = 1e-6
    ) -> None:
        super().__init__(head_dim, num_heads)
        self.local = depthwise(num_heads * head_dim, local_kernel_size, self.name, "local_kernel_size")
        self.eps = check_positive(eps, self.name, "eps")
        self.aux_weight = aux_weight

    @property
    def aux_weight(self) -> float:
        return self._aux_weight

    @aux_weight.setter
    def aux_weight(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise NasError(f"angular: aux_weight must be a number >= 0, got {value!r}")
        self._aux_weight = float(value)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, grid: Grid | None) -> Tensor:
        dtype = compute_dtype(q)
        v_c = v.to(dtype)
        q_unit, k_unit = F.normalize(q.to(dtype), dim=-1), F.normalize(k.to(dtype), dim=-1)
        out = linear_attention([1.0, q_unit], [1.0, k_unit], v_c, weights=[0.5, 1 / math.pi], eps=self.eps)
        out = out + from_grid(depthwise_conv(to_grid(v_c, grid), self.local), q.shape[1])
        if self.training and self._aux_weight > 0:
            out = out + self._aux_weight * F.scaled_dot_product_attention(q, k, v).to(dtype)
        return out.to(q.dtype)

    def macs(self, heads: int, grid: Grid) -> int:
        tokens, d = grid[0] * grid[1], self.head_dim
        normalize = 2 * 2 * heads * tokens * d
        local = heads * d * tokens * self.local.kernel_size[0] ** 2
        return linear_attention_macs(heads, tokens, d, d + 1) + normalize + local
