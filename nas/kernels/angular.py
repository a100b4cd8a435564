"""Castling-ViT linear-angular attention, with its training-only auxiliary sparse softmax branch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.errors import NasError
from nas.kernels.base import (
    AttentionKernel,
    Grid,
    check_odd,
    check_positive,
    check_variant,
    compute_dtype,
    depthwise,
    depthwise_conv,
    from_grid,
    linear_attention,
    linear_attention_macs,
    to_grid,
)
from nas.kernels.registry import register

VARIANTS = ("authors", "paper")


@register
class AngularAttention(AttentionKernel):
    """Linear-angular attention (Castling-ViT). Angular similarity 1 − θ/π keeps its linear
    term, sim(q, k) = 1/2 + (q̂·k̂)/π (q̂, k̂ unit vectors), computed in O(N).

    variant="authors" (default), as `LinAngularAttention` of GATECH-EIC/Castling-ViT
    (castling-vit.py):

        a_i = ½·v_i + (1/π)·q̂_iᵀ(Σ_j k̂_j v_jᵀ) [+ w·Σ_j m_ij v_j]
        out_i = a_i / ‖a_i‖ + DWConv_seq(v)_i

    with the local branch a depthwise conv of `local_kernel_size`×1 (9 by default) along the
    token sequence, one filter per head shared by its d channels, no bias. The bracket is the
    training-only auxiliary branch: m = S ⊙ [S > `aux_threshold`] with S = softmax(q·kᵀ/√d),
    a masked (sparse) softmax inside the normalisation, weighted by `aux_weight` (the authors
    add it with weight 1; the paper's recipe anneals it to 0 during training: see
    `nas.training`). At weight 0, and always in eval mode, it is never computed.

    variant="paper" (the kernel before revision 2): the paper's ratio form
    (½·Σ_j v_j + (1/π)·q̂ᵀK̂ᵀV) / (N/2 + (1/π)·q̂ᵀΣ_j k̂_j), plus a depthwise
    `local_kernel_size`² conv over the token grid on all h·d channels (3 by default); its
    auxiliary branch adds w·softmax(q·kᵀ/√d)·v after that ratio, dense.
    """

    name = "angular"
    needs_grid = True
    revision = 2

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        variant: str = "authors",
        local_kernel_size: int | None = None,
        aux_weight: float = 0.0,
        aux_threshold: float = 0.02,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(head_dim, num_heads)
        self.variant = check_variant(variant, VARIANTS, self.name)
        size = local_kernel_size if local_kernel_size is not None else (9 if variant == "authors" else 3)
        if variant == "authors":
            check_odd(size, self.name, "local_kernel_size")
            self.local = nn.Conv2d(
                num_heads, num_heads, (size, 1), padding=(size // 2, 0), groups=num_heads, bias=False
            )
        else:
            self.local = depthwise(num_heads * head_dim, size, self.name, "local_kernel_size")
        self.eps = check_positive(eps, self.name, "eps")
        self.aux_threshold = check_positive(aux_threshold, self.name, "aux_threshold")
        self.aux_weight = aux_weight

    @property
    def aux_weight(self) -> float:
        return self._aux_weight

    @aux_weight.setter
    def aux_weight(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise NasError(f"angular: aux_weight must be a number >= 0, got {value!r}")
        self._aux_weight = float(value)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, variant={self.variant}"

    def attend(self, q: Tensor, k: Tensor, v: Tensor, grid: Grid | None) -> Tensor:
        dtype = compute_dtype(q)
        v_c = v.to(dtype)
        q_unit, k_unit = F.normalize(q.to(dtype), dim=-1), F.normalize(k.to(dtype), dim=-1)
        auxiliary = self.training and self._aux_weight > 0
        if self.variant == "paper":
            out = linear_attention([1.0, q_unit], [1.0, k_unit], v_c, weights=[0.5, 1 / math.pi], eps=self.eps)
            out = out + from_grid(depthwise_conv(to_grid(v_c, grid), self.local), q.shape[1])
            if auxiliary:
                out = out + self._aux_weight * F.scaled_dot_product_attention(q, k, v).to(dtype)
            return out.to(q.dtype)
        heads = q.shape[1]
        a = 0.5 * v_c + (q_unit @ (k_unit.transpose(-2, -1) @ v_c)) / math.pi
        if auxiliary:
            scores = torch.softmax((q.to(dtype) @ k.to(dtype).transpose(-2, -1)) * q.shape[-1] ** -0.5, dim=-1)
            a = a + self._aux_weight * ((scores * (scores > self.aux_threshold)) @ v_c)
        local = F.conv2d(v_c, self.local.weight[:heads].to(dtype), padding=self.local.padding, groups=heads)
        return (F.normalize(a, dim=-1, eps=self.eps) + local).to(q.dtype)

    def macs(self, heads: int, grid: Grid) -> int:
        tokens, d = grid[0] * grid[1], self.head_dim
        normalize = 2 * 2 * heads * tokens * d
        if self.variant == "paper":
            local = heads * d * tokens * self.local.kernel_size[0] ** 2
            return linear_attention_macs(heads, tokens, d, d + 1) + normalize + local
        local = heads * d * tokens * self.local.kernel_size[0]
        # K̂ᵀV and q̂(K̂ᵀV): 2·N·d² per head; ½v, sum and the output normalisation: 3·N·d
        return 2 * heads * tokens * d * d + 3 * heads * tokens * d + normalize + local
