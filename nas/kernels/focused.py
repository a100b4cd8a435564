"""FLatten Transformer focused linear attention with a depthwise conv on V."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.kernels.base import (
    AttentionKernel,
    Grid,
    check_positive,
    compute_dtype,
    depthwise,
    depthwise_conv,
    linear_attention,
    linear_attention_macs,
)
from nas.kernels.registry import register


@register
class FocusedAttention(AttentionKernel):
    """Focused linear attention (FLatten Transformer):

        x⁺ = (ReLU(x) + 1e-6) / softplus(s),   φ_p(x) = ‖x⁺‖ · (x⁺)^p / ‖(x⁺)^p‖

    with focusing power p (3 in the paper) and a learnable per-channel scale s (positive
    through softplus). Raising to p sharpens the attention distribution that a plain
    ReLU kernel spreads out; the rescaling keeps the norm of x⁺. A depthwise
    `local_kernel_size`² conv on V over the token grid restores the rank the low-rank
    kernel loses. As in the authors' code, that conv has head_dim channels and is shared
    by all heads, and the scale is per channel of the h·d-wide q/k.
    """

    name = "focused"
    needs_grid = True

    def __init__(
        self, head_dim: int, num_heads: int, power: float = 3.0, local_kernel_size: int = 5, eps: float = 1e-6
    ) -> None:
        super().__init__(head_dim, num_heads)
        self.power = check_positive(power, self.name, "power")
        self.eps = check_positive(eps, self.name, "eps")
        self.scale = nn.Parameter(torch.zeros(num_heads, head_dim))
        self.local = depthwise(head_dim, local_kernel_size, self.name, "local_kernel_size")

    def attend(self, q: Tensor, k: Tensor, v: Tensor, grid: Grid | None) -> Tensor:
        dtype = compute_dtype(q)
        batch, heads, tokens, head_dim = q.shape
        scale = F.softplus(self.scale[:heads].to(dtype)).unsqueeze(1)  # (h, 1, d)
        v_c = v.to(dtype)
        out = linear_attention([self._features(q.to(dtype), scale)], [self._features(k.to(dtype), scale)], v_c, eps=self.eps)
        per_head = v_c.transpose(2, 3).reshape(batch * heads, head_dim, grid[0], grid[1])
        local = depthwise_conv(per_head, self.local).reshape(batch, heads, head_dim, tokens).transpose(2, 3)
        return (out + local).to(q.dtype)

    def macs(self, heads: int, grid: Grid) -> int:
        tokens, d = grid[0] * grid[1], self.head_dim
        features = 2 * 6 * heads * tokens * d  # relu, scale, norm, power, norm, rescale for q and k
        local = heads * d * tokens * self.local.kernel_size[0] ** 2
        return linear_attention_macs(heads, tokens, d, d) + features + local

    def _features(self, x: Tensor, scale: Tensor) -> Tensor:
        positive = (F.relu(x) + 1e-6) / scale
        powered = positive**self.power
        return powered * (positive.norm(dim=-1, keepdim=True) / powered.norm(dim=-1, keepdim=True))
