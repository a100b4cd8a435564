"""ReLU linear attention (EfficientViT style), φ(x) = ReLU(x)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from nas.kernels.base import (
    AttentionKernel,
    Grid,
    check_positive,
    compute_dtype,
    linear_attention,
    linear_attention_macs,
)
from nas.kernels.registry import register


@register
class ReluAttention(AttentionKernel):
    """sim(q, k) = ReLU(q)·ReLU(k), computed linearly in N (D = d). A row of ReLU(k) can be
    all zero, hence `eps` in the (mean-normalised) denominator."""

    name = "relu"

    def __init__(self, head_dim: int, num_heads: int, eps: float = 1e-6) -> None:
        super().__init__(head_dim, num_heads)
        self.eps = check_positive(eps, self.name, "eps")

    def attend(self, q: Tensor, k: Tensor, v: Tensor, grid: Grid | None) -> Tensor:
        dtype = compute_dtype(q)
        out = linear_attention([F.relu(q.to(dtype))], [F.relu(k.to(dtype))], v.to(dtype), eps=self.eps)
        return out.to(q.dtype)

    def macs(self, heads: int, grid: Grid) -> int:
        tokens, d = grid[0] * grid[1], self.head_dim
        return linear_attention_macs(heads, tokens, d, d) + 2 * heads * tokens * d
