"""Local window softmax attention (Swin-style, without shift), with Swin's relative position bias."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor, nn

from nas.errors import NasError
from nas.kernels.base import AttentionKernel, Grid, check_variant
from nas.kernels.registry import register

VARIANTS = ("swin", "plain")


@register
class WindowAttention(AttentionKernel):
    """Softmax attention inside non-overlapping w×w windows of the token grid, O(N·w²·d):

        out_i = Σ_j softmax_j(q_i·k_j/√d + B_h[Δrow_ij, Δcol_ij]) v_j   over j in i's window

    variant="swin" (default), as Swin's `WindowAttention` (microsoft/Swin-Transformer,
    models/swin_transformer.py): a learnable relative position bias
    B_h per head over the (2w−1)² offsets inside a window (truncated-normal init, std 0.02),
    stored (heads, 2w−1, 2w−1) so that fewer heads use the leading heads' tables.
    variant="plain": no bias (the kernel before revision 2), as the attention of L²ViT's local
    blocks (`LWABlock`, whose two CPEs are not part of this kernel); without an additive mask
    GPUs can run SDPA's flash kernels.

    As in Swin, a grid smaller than the window shrinks the window to min(w, H, W) (the bias
    then uses the central offsets of its table), and a grid that is not a multiple of w is
    padded at the bottom/right; padded positions are masked out as keys and cropped from the
    output. Not done: Swin's shifted windows (every block here is unshifted). Computes in
    the input dtype.
    """

    name = "window"
    needs_grid = True
    revision = 2

    def __init__(self, head_dim: int, num_heads: int, window_size: int = 7, variant: str = "swin") -> None:
        super().__init__(head_dim, num_heads)
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
            raise NasError(f"window: window_size must be a positive integer, got {window_size!r}")
        self.window_size = window_size
        self.variant = check_variant(variant, VARIANTS, self.name)
        if variant == "swin":
            span = 2 * window_size - 1
            self.relative_position_bias = nn.Parameter(trunc_normal_(torch.zeros(num_heads, span, span), std=0.02))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window_size={self.window_size}, variant={self.variant}"

    def macs(self, heads: int, grid: Grid) -> int:
        w = min(self.window_size, *grid)
        padded = -(-grid[0] // w) * w * (-(-grid[1] // w) * w)
        return 2 * heads * padded * w * w * self.head_dim  # QKᵀ and AV inside each window

    def bias(self, heads: int, w: int) -> Tensor:
        """(heads, w², w²): B_h[row_i − row_j, col_i − col_j] for the positions of one w×w window."""
        centre, device = self.window_size - 1, self.relative_position_bias.device
        # made on the device (no host-to-device copy, so CUDA graphs can capture it)
        rows, cols = torch.arange(w, device=device).repeat_interleave(w), torch.arange(w, device=device).repeat(w)
        drow, dcol = rows[:, None] - rows[None, :] + centre, cols[:, None] - cols[None, :] + centre
        return self.relative_position_bias[:heads][:, drow, dcol]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, grid: Grid | None) -> Tensor:
        height, width = grid
        w = min(self.window_size, height, width)
        pad_h, pad_w = -height % w, -width % w
        batch, heads, _, head_dim = q.shape
        windows_h, windows_w = (height + pad_h) // w, (width + pad_w) // w
        windows = windows_h * windows_w

        def partition(x: Tensor) -> Tensor:
            x = F.pad(x.reshape(batch, heads, height, width, head_dim), (0, 0, 0, pad_w, 0, pad_h))
            x = x.reshape(batch, heads, windows_h, w, windows_w, w, head_dim).transpose(3, 4)
            return x.reshape(batch, heads * windows, w * w, head_dim)

        mask = None
        if pad_h or pad_w:
            valid = torch.zeros(height + pad_h, width + pad_w, dtype=torch.bool, device=q.device)
            valid[:height, :width] = True
            valid = valid.reshape(windows_h, w, windows_w, w).transpose(1, 2).reshape(windows, w * w)
            mask = valid.repeat(heads, 1).unsqueeze(1)  # (h·windows, 1, w²): keys only
        if self.variant == "swin":
            bias = (
                self.bias(heads, w)
                .to(q.dtype)
                .unsqueeze(1)
                .expand(heads, windows, w * w, w * w)
                .reshape(heads * windows, w * w, w * w)
            )
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        out = F.scaled_dot_product_attention(partition(q), partition(k), partition(v), attn_mask=mask)
        out = out.reshape(batch, heads, windows_h, windows_w, w, w, head_dim).transpose(3, 4)
        out = out.reshape(batch, heads, height + pad_h, width + pad_w, head_dim)[:, :, :height, :width]
        return out.reshape(batch, heads, height * width, head_dim)
