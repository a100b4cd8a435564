"""Local window softmax attention (Swin-style, without shift)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nas.errors import NasError
from nas.kernels.base import AttentionKernel, Grid
from nas.kernels.registry import register


@register
class WindowAttention(AttentionKernel):
    """Softmax attention inside non-overlapping w×w windows of the token grid, O(N·w²·d).

    As in Swin, a grid smaller than the window shrinks the window to min(w, H, W), and a
    grid that is not a multiple of w is padded at the bottom/right; padded positions are
    masked out as keys and cropped from the output. Computes in the input dtype.
    """

    name = "window"
    needs_grid = True

    def __init__(self, head_dim: int, num_heads: int, window_size: int = 7) -> None:
        super().__init__(head_dim, num_heads)
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
            raise NasError(f"window: window_size must be a positive integer, got {window_size!r}")
        self.window_size = window_size

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window_size={self.window_size}"

    def macs(self, heads: int, grid: Grid) -> int:
        w = min(self.window_size, *grid)
        padded = -(-grid[0] // w) * w * (-(-grid[1] // w) * w)
        return 2 * heads * padded * w * w * self.head_dim  # QKᵀ and AV inside each window

    def attend(self, q: Tensor, k: Tensor, v: Tensor, grid: Grid | None) -> Tensor:
        height, width = grid
        w = min(self.window_size, height, width)
        pad_h, pad_w = -height % w, -width % w
        batch, heads, _, head_dim = q.shape
        windows_h, windows_w = (height + pad_h) // w, (width + pad_w) // w

        def partition(x: Tensor) -> Tensor:
            x = F.pad(x.reshape(batch, heads, height, width, head_dim), (0, 0, 0, pad_w, 0, pad_h))
            x = x.reshape(batch, heads, windows_h, w, windows_w, w, head_dim).transpose(3, 4)
            return x.reshape(batch, heads * windows_h * windows_w, w * w, head_dim)

        mask = None
        if pad_h or pad_w:
            valid = torch.zeros(height + pad_h, width + pad_w, dtype=torch.bool, device=q.device)
            valid[:height, :width] = True
            valid = valid.reshape(windows_h, w, windows_w, w).transpose(1, 2).reshape(windows_h * windows_w, w * w)
            mask = valid.repeat(heads, 1).unsqueeze(1)  # (h·windows, 1, w²): keys only
        out = F.scaled_dot_product_attention(partition(q), partition(k), partition(v), attn_mask=mask)
        out = out.reshape(batch, heads, windows_h, windows_w, w, w, head_dim).transpose(3, 4)
        out = out.reshape(batch, heads, height + pad_h, width + pad_w, head_dim)[:, :, :height, :width]
        return out.reshape(batch, heads, height * width, head_dim)
