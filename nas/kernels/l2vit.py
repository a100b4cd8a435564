"""L²ViT enhanced linear attention, with the local concentration module (LCM) on the residual stream."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.errors import NasError
from nas.kernels.base import (
    AttentionKernel,
    Grid,
    ImageNorm,
    check_positive,
    compute_dtype,
    depthwise,
    depthwise_conv,
    image_norm,
    linear_attention,
    linear_attention_macs,
    token_layer_norm,
)
from nas.kernels.registry import register


@register
class L2ViTAttention(AttentionKernel):
    """Enhanced linear attention, as `LinearAttention` of the authors (ChuanyangZheng/L2ViT,
    classification/models/l2vit.py):

        a_i = τ_h · Σ_j φ(q_i)ᵀφ(k_j) v_j / max(Σ_j φ(q_i)ᵀφ(k_j), c),   φ = ReLU

    with a learnable per-head scale τ_h initialised to d^-½ and the denominator clamped at
    c = `min_denominator` (100, on summed statistics; with our averaged statistics the clamp
    is c/N, the same value). The clamp lets the output shrink where a query attends weakly.

    The LCM is, as in the authors' `LGABlock`, its own pre-norm branch on the residual stream
    after the attention's output projection (`residual`, needs `embed_dim` at build):

        x ← x + LCM(LN(x)),   LCM = conv₇ ∘ norm ∘ GELU ∘ conv₇   (depthwise 7×7 on the token grid)

    Before the attention, as the authors' blocks, a conditional position encoding (CPE,
    `position`, `cpe=True`): x ← x + DWConv₃(x), a 3×3 depthwise conv with bias on the token grid.

    One deviation, forced by weight sharing: the authors' norm inside the LCM is BatchNorm,
    whose running statistics would depend on the subnet that ran last; here it is `ImageNorm`,
    each channel normalised over the grid of its own image (revision 3; revision 2 used a
    LayerNorm over channels, about 2.5× as far from BatchNorm: `nas bench zoo`, `deviations`; it
    had no CPE either). Not done: L²ViT alternates these global blocks with local window blocks
    (the `window` kernel with `variant: plain`, a per-layer choice here).
    """

    name = "l2vit"
    needs_grid = True
    has_residual = True
    has_position = True  # unless built with cpe=False
    revision = 3

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        embed_dim: int | None = None,
        min_denominator: float = 100.0,
        lcm_kernel_size: int = 7,
        cpe: bool = True,
    ) -> None:
        super().__init__(head_dim, num_heads)
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise NasError(
                f"l2vit: build it with embed_dim=E, the block's width: its LCM runs on the residual stream (got {embed_dim!r})"
            )
        self.embed_dim = embed_dim
        self.min_denominator = check_positive(min_denominator, self.name, "min_denominator")
        self.temperature = nn.Parameter(torch.full((num_heads,), head_dim**-0.5))
        self.lcm_norm_in = nn.LayerNorm(embed_dim)
        self.lcm_conv1 = depthwise(embed_dim, lcm_kernel_size, self.name, "lcm_kernel_size")
        self.lcm_norm_mid = ImageNorm(embed_dim)
        self.lcm_conv2 = depthwise(embed_dim, lcm_kernel_size, self.name, "lcm_kernel_size")
        if not isinstance(cpe, bool):
            raise NasError(f"l2vit: cpe must be true or false, got {cpe!r}")
        self.has_position = cpe
        self.cpe = depthwise(embed_dim, 3, self.name, "cpe") if cpe else None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, embed_dim={self.embed_dim}"

    def attend(self, q: Tensor, k: Tensor, v: Tensor, grid: Grid | None) -> Tensor:
        dtype = compute_dtype(q)
        heads, tokens = q.shape[1], q.shape[2]
        attended = linear_attention(
            [F.relu(q.to(dtype))], [F.relu(k.to(dtype))], v.to(dtype), min_denominator=self.min_denominator / tokens
        )
        return (attended * self.temperature[:heads].to(dtype).view(1, heads, 1, 1)).to(q.dtype)

    def residual(self, x: Tensor, grid: Grid) -> Tensor:
        """LCM(LN(x)) for tokens x (B, N, E), E ≤ embed_dim (leading channels of the weights)."""
        batch, tokens, channels = x.shape
        y = token_layer_norm(x, self.lcm_norm_in).transpose(1, 2).reshape(batch, channels, grid[0], grid[1])
        y = F.gelu(depthwise_conv(y, self.lcm_conv1))
        y = depthwise_conv(image_norm(y, self.lcm_norm_mid), self.lcm_conv2)
        return y.reshape(batch, channels, tokens).transpose(1, 2)

    def position(self, x: Tensor, grid: Grid) -> Tensor:
        """DWConv₃(x), the CPE, for tokens x (B, N, E), E ≤ embed_dim (leading channels of the weights)."""
        if self.cpe is None:
            raise NotImplementedError("l2vit built with cpe=False has no branch before the attention")
        batch, tokens, channels = x.shape
        y = depthwise_conv(x.transpose(1, 2).reshape(batch, channels, grid[0], grid[1]), self.cpe)
        return y.reshape(batch, channels, tokens).transpose(1, 2)

    def macs(self, heads: int, grid: Grid) -> int:
        tokens, d = grid[0] * grid[1], self.head_dim
        return linear_attention_macs(heads, tokens, d, d) + 2 * heads * tokens * d + heads * tokens * d
