"""FLatten Transformer focused linear attention with a depthwise conv on V."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.errors import NasError
from nas.kernels.base import (
    AttentionKernel,
    Grid,
    check_grid,
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
    """Focused linear attention, as the authors' `FocusedLinearAttention`
    (LeapLabTHU/FLatten-Transformer, models/flatten_pvt.py, sr_ratio 1):

        k ← k + P   (a learnable positional encoding, one entry per token and channel)
        x⁺ = (ReLU(x) + 1e-6) / softplus(s),   φ_p(x) = ‖x⁺‖ · (x⁺)^p / ‖(x⁺)^p‖

    with focusing power p (3 in the paper) and a learnable per-channel scale s. The norms
    are taken over all h·d channels of a token (every head together) before the heads are
    split, as the authors do; with fewer active heads, over the active heads' channels.
    Raising to p sharpens the attention distribution that a plain ReLU kernel spreads out;
    the rescaling keeps the norm of x⁺. A depthwise `local_kernel_size`² conv on V over the
    token grid restores the rank the low-rank kernel loses; as in the authors' code it has
    head_dim channels shared by all heads. P (zeros at init, as the authors) needs the token
    grid at build time and is stored (heads, N, d) so that fewer heads use its leading slice.
    """

    name = "focused"
    needs_grid = True
    revision = 2

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        grid: Grid | None = None,
        power: float = 3.0,
        local_kernel_size: int = 5,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(head_dim, num_heads)
        self.grid = check_grid(grid, self.name)
        self.power = check_positive(power, self.name, "power")
        self.eps = check_positive(eps, self.name, "eps")
        self.scale = nn.Parameter(torch.zeros(num_heads, head_dim))
        self.positional_encoding = nn.Parameter(torch.zeros(num_heads, self.grid[0] * self.grid[1], head_dim))
        self.local = depthwise(head_dim, local_kernel_size, self.name, "local_kernel_size")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid={self.grid}, power={self.power}"

    def attend(self, q: Tensor, k: Tensor, v: Tensor, grid: Grid | None) -> Tensor:
        if tuple(grid) != self.grid:
            raise NasError(
                f"focused: built for grid {self.grid} (its positional encoding has one entry per token), called with {tuple(grid)}"
            )
        dtype = compute_dtype(q)
        batch, heads, tokens, head_dim = q.shape
        scale = F.softplus(self.scale[:heads].to(dtype)).unsqueeze(1)  # (h, 1, d)
        v_c = v.to(dtype)
        k = k.to(dtype) + self.positional_encoding[:heads].to(dtype)
        out = linear_attention([self._features(q.to(dtype), scale)], [self._features(k, scale)], v_c, eps=self.eps)
        per_head = v_c.transpose(2, 3).reshape(batch * heads, head_dim, grid[0], grid[1])
        local = depthwise_conv(per_head, self.local).reshape(batch, heads, head_dim, tokens).transpose(2, 3)
        return (out + local).to(q.dtype)

    def macs(self, heads: int, grid: Grid) -> int:
        tokens, d = grid[0] * grid[1], self.head_dim
        features = (
            2 * 6 * heads * tokens * d + heads * tokens * d
        )  # relu, scale, norm, power, norm, rescale for q and k; + P
        local = heads * d * tokens * self.local.kernel_size[0] ** 2
        return linear_attention_macs(heads, tokens, d, d) + features + local

    def _features(self, x: Tensor, scale: Tensor) -> Tensor:
        """φ_p with the norms over all active channels of a token: (B, h, N, d), norms over (h, d)."""
        positive = (F.relu(x) + 1e-6) / scale
        powered = positive**self.power

        def norm(t: Tensor) -> Tensor:
            return t.square().sum(dim=(1, 3), keepdim=True).sqrt()

        return powered * (norm(positive) / norm(powered))
