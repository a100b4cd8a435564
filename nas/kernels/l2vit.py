"""L²ViT enhanced linear attention followed by the local concentration module (LCM)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.kernels.base import (
    AttentionKernel,
    Grid,
    channel_layer_norm,
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
class L2ViTAttention(AttentionKernel):
    """Enhanced linear attention (L²ViT), as in the authors' code:

        a_i = τ_h · Σ_j φ(q_i)ᵀφ(k_j) v_j / max(Σ_j φ(q_i)ᵀφ(k_j), c),   φ = ReLU

    with a learnable per-head scale τ_h initialised to d^-½ and the denominator clamped
    at c = `min_denominator` (100 in the paper, on summed statistics; with our averaged
    statistics the clamp is c/N, which is the same value). The clamp lets the output
    shrink where a query attends weakly instead of amplifying noise.

    Then the LCM as a pre-norm residual branch on the token grid:
        out = a + conv₇(norm(GELU(conv₇(norm(a)))))   (depthwise 7×7 convs)

    Two deliberate differences from the authors' block, both to keep one kernel interface
    and a supernet without running statistics: the LCM acts on the concatenated head
    outputs inside the kernel (before the block's output projection) rather than as a
    separate branch after it, and its norms are LayerNorms over channels instead of
    BatchNorm (whose running statistics would depend on the sampled subnet).
    """

    name = "l2vit"
    needs_grid = True

    def __init__(
        self, head_dim: int, num_heads: int, min_denominator: float = 100.0, lcm_kernel_size: int = 7
    ) -> None:
        super().__init__(head_dim, num_heads)
        self.min_denominator = check_positive(min_denominator, self.name, "min_denominator")
        channels = num_heads * head_dim
        self.temperature = nn.Parameter(torch.full((num_heads,), head_dim**-0.5))
        self.lcm_norm_in = nn.LayerNorm(channels)
        self.lcm_conv1 = depthwise(channels, lcm_kernel_size, self.name, "lcm_kernel_size")
        self.lcm_norm_mid = nn.LayerNorm(channels)
        self.lcm_conv2 = depthwise(channels, lcm_kernel_size, self.name, "lcm_kernel_size")

    def attend(self, q: Tensor, k: Tensor, v: Tensor, grid: Grid | None) -> Tensor:
        dtype = compute_dtype(q)
        heads, tokens = q.shape[1], q.shape[2]
        attended = linear_attention(
            [F.relu(q.to(dtype))], [F.relu(k.to(dtype))], v.to(dtype), min_denominator=self.min_denominator / tokens
        )
        attended = attended * self.temperature[:heads].to(dtype).view(1, heads, 1, 1)
        a = to_grid(attended, grid)
        y = depthwise_conv(channel_layer_norm(a, self.lcm_norm_in), self.lcm_conv1)
        y = depthwise_conv(channel_layer_norm(F.gelu(y), self.lcm_norm_mid), self.lcm_conv2)
        return from_grid(a + y, heads).to(q.dtype)

    def macs(self, heads: int, grid: Grid) -> int:
        tokens, d = grid[0] * grid[1], self.head_dim
        channels = heads * d
        lcm = 2 * channels * tokens * self.lcm_conv1.kernel_size[0] ** 2 + 3 * channels * tokens  # 2 convs, 2 norms, GELU
        return linear_attention_macs(heads, tokens, d, d) + 2 * heads * tokens * d + heads * tokens * d + lcm
