"""Slow references: each kernel's operator written out explicitly in O(N²), as its authors
define it — an N×N similarity matrix, then Σ_j sim_ij v_j / Σ_j sim_ij (or softmax), plus
the kernel's extra branches — with none of the kernels' own code (no feature maps, no
`linear_attention`, no reshaping helpers). Tests compare every kernel and variant with
these in float64, with the kernel's parameters randomised.

`reference(module, q, k, v, grid)` takes a built kernel (for its options and parameters)
and q, k, v of shape (B, h, N, d); `residual_reference(module, x, grid)` and
`position_reference(module, x, grid)` the residual-stream branches (after and before the
attention) of kernels that have them, for tokens x of shape (B, N, E).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def ratio(sim: Tensor, v: Tensor, eps: float = 0.0) -> Tensor:
    """out_i = Σ_j sim_ij v_j / Σ_j sim_ij, with the kernels' eps on mean-normalised sums."""
    tokens = sim.shape[-1]
    return (sim @ v / tokens) / (sim.sum(-1, keepdim=True) / tokens + eps)


def _image(x: Tensor, grid) -> Tensor:
    """(B, h, N, d) -> (B, h·d, H, W), channel c = head·d + j."""
    b, h, n, d = x.shape
    return x.permute(0, 1, 3, 2).reshape(b, h * d, *grid)


def _tokens(y: Tensor, heads: int) -> Tensor:
    b, c, hh, ww = y.shape
    return y.reshape(b, heads, c // heads, hh * ww).permute(0, 1, 3, 2)


def _dwconv(x: Tensor, conv, channels: int) -> Tensor:
    bias = None if conv.bias is None else conv.bias[:channels]
    return F.conv2d(x, conv.weight[:channels], bias, padding=conv.padding, groups=channels)


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def softmax(module, q, k, v, grid):
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v


def relu(module, q, k, v, grid):
    return ratio(F.relu(q) @ F.relu(k).transpose(-2, -1), v, module.eps)


def angular(module, q, k, v, grid):
    b, h, n, d = q.shape
    cos = _unit(q) @ _unit(k).transpose(-2, -1)
    aux = module.training and module.aux_weight > 0
    attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)
    if module.variant == "paper":
        out = ratio(0.5 + cos / math.pi, v, module.eps) + _tokens(_dwconv(_image(v, grid), module.local, h * d), h)
        return out + module.aux_weight * attention @ v if aux else out
    # Castling-ViT's LinAngularAttention: ½·v_i + (1/π)·Σ_j cos_ij v_j (+ masked softmax), L2-normalised,
    # plus a depthwise (k×1) conv per head along the token sequence.
    a = 0.5 * v + (cos / math.pi) @ v
    if aux:
        a = a + module.aux_weight * (attention * (attention > module.aux_threshold)) @ v
    size = module.local.kernel_size[0]
    padded = F.pad(v, (0, 0, size // 2, size // 2))
    weight = module.local.weight[:h, 0, :, 0]  # (h, size)
    local = sum(weight[:, t].view(1, h, 1, 1) * padded[:, :, t : t + n] for t in range(size))
    return a / a.norm(dim=-1, keepdim=True) + local


def taylor(module, q, k, v, grid):
    d = q.shape[-1]
    if module.order == 1:
        return ratio(1 + module.temperature * (_unit(q) @ _unit(k).transpose(-2, -1)), v, module.eps)
    if module.variant == "full":
        x = q @ k.transpose(-2, -1) / math.sqrt(d)
        return ratio(1 + x + x**2 / 2, v, module.eps)
    # QT-ViT's compact form (AMD_QTViT LiteMLA.relu_linear_att): P on k, sim = u(q)·u(k) + γ², GELU shortcut on v.
    h, n = q.shape[1], q.shape[2]
    if module.positional_encoding is not None:
        k = k + module.positional_encoding[:h]
    u = lambda x: _unit(_unit(x) ** 2)  # noqa: E731
    out = ratio(u(q) @ u(k).transpose(-2, -1) + module.gamma**2, v, module.eps)
    if not module.shortcut:
        return out
    norm = module.shortcut_norm  # each channel of each head of each image, over its tokens
    mean = v.sum(dim=2, keepdim=True) / n
    var = ((v - mean) ** 2).sum(dim=2, keepdim=True) / n
    return out + F.gelu((v - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias)


def focused(module, q, k, v, grid):
    """FLatten's FocusedLinearAttention on (B, N, C) tokens, C = h·d: norms over all C channels."""
    b, h, n, d = q.shape
    merge = lambda x: x.permute(0, 2, 1, 3).reshape(b, n, h * d)  # noqa: E731
    split = lambda x: x.reshape(b, n, h, d).permute(0, 2, 1, 3)  # noqa: E731
    scale = F.softplus(module.scale[:h].reshape(h * d))
    position = module.positional_encoding[:h].permute(1, 0, 2).reshape(n, h * d)

    def phi(x):
        x = (F.relu(x) + 1e-6) / scale
        powered = x**module.power
        return powered / powered.norm(dim=-1, keepdim=True) * x.norm(dim=-1, keepdim=True)

    fq, fk = split(phi(merge(q))), split(phi(merge(k) + position))
    out = ratio(fq @ fk.transpose(-2, -1), v, module.eps)
    per_head = v.transpose(2, 3).reshape(b * h, d, *grid)  # the conv has d channels shared by all heads
    return out + _dwconv(per_head, module.local, d).reshape(b, h, d, n).transpose(2, 3)


def l2vit(module, q, k, v, grid):
    h = q.shape[1]
    sim = F.relu(q) @ F.relu(k).transpose(-2, -1)
    return (
        module.temperature[:h].view(1, h, 1, 1)
        * (sim @ v)
        / sim.sum(-1, keepdim=True).clamp(min=module.min_denominator)
    )


def window(module, q, k, v, grid):
    b, h, n, d = q.shape
    w = min(module.window_size, *grid)
    rows, cols = torch.arange(n) // grid[1], torch.arange(n) % grid[1]
    same = (rows[:, None] // w == rows[None, :] // w) & (cols[:, None] // w == cols[None, :] // w)
    logits = q @ k.transpose(-2, -1) / math.sqrt(d)
    if module.variant == "swin":
        centre = module.window_size - 1
        drow = (rows[:, None] % w) - (rows[None, :] % w) + centre
        dcol = (cols[:, None] % w) - (cols[None, :] % w) + centre
        logits = logits + module.relative_position_bias[:h][:, drow, dcol]
    return torch.softmax(logits.masked_fill(~same, float("-inf")), dim=-1) @ v


def residual_l2vit(module, x, grid):
    """L²ViT's LCM(norm3(x)): conv₇ → GELU → norm → conv₇, depthwise on the token grid."""
    b, n, e = x.shape
    y = F.layer_norm(x, (e,), module.lcm_norm_in.weight[:e], module.lcm_norm_in.bias[:e], module.lcm_norm_in.eps)
    y = F.gelu(_dwconv(y.transpose(1, 2).reshape(b, e, *grid), module.lcm_conv1, e))
    norm = module.lcm_norm_mid  # each channel of each image, over its grid
    mean = y.sum(dim=(2, 3), keepdim=True) / n
    var = ((y - mean) ** 2).sum(dim=(2, 3), keepdim=True) / n
    y = (y - mean) / torch.sqrt(var + norm.eps) * norm.weight[:e].view(e, 1, 1) + norm.bias[:e].view(e, 1, 1)
    return _dwconv(y, module.lcm_conv2, e).reshape(b, e, n).transpose(1, 2)


def position_l2vit(module, x, grid):
    """L²ViT's CPE branch: a 3×3 depthwise conv (with bias) of the tokens on their grid."""
    b, n, e = x.shape
    return _dwconv(x.transpose(1, 2).reshape(b, e, *grid), module.cpe, e).reshape(b, e, n).transpose(1, 2)


REFERENCES = {
    "softmax": softmax,
    "relu": relu,
    "angular": angular,
    "taylor": taylor,
    "focused": focused,
    "l2vit": l2vit,
    "window": window,
}
RESIDUAL_REFERENCES = {"l2vit": residual_l2vit}
POSITION_REFERENCES = {"l2vit": position_l2vit}


def reference(module, q: Tensor, k: Tensor, v: Tensor, grid) -> Tensor:
    return REFERENCES[module.name](module, q, k, v, grid)


def residual_reference(module, x: Tensor, grid) -> Tensor:
    return RESIDUAL_REFERENCES[module.name](module, x, grid)


def position_reference(module, x: Tensor, grid) -> Tensor:
    return POSITION_REFERENCES[module.name](module, x, grid)
