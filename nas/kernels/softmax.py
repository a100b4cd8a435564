"""Softmax attention, sim = exp(q·k/√d): the baseline and the supernet's teacher."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from nas.kernels.base import AttentionKernel, Grid
from nas.kernels.registry import register


@register
class SoftmaxAttention(AttentionKernel):
    """O(N²·d) softmax attention through `F.scaled_dot_product_attention`, so GPUs run the
    fused flash / memory-efficient kernels. Computes in the input dtype."""

    name = "softmax"

    def attend(self, q: Tensor, k: Tensor, v: Tensor, grid: Grid | None) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v)

    def macs(self, heads: int, grid: Grid) -> int:
        tokens = grid[0] * grid[1]
        return 2 * heads * tokens * tokens * self.head_dim  # QKᵀ and AV
