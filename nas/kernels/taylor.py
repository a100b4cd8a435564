"""QT-ViT Taylor-expansion attention: exp(x) ≈ 1 + x (+ x²/2), with the expansion order a choice;
the compact form is the authors' (positional encoding on k, GELU shortcut on v)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.errors import NasError
from nas.kernels.base import (
    AttentionKernel,
    Grid,
    ImageNorm,
    check_grid,
    check_positive,
    compute_dtype,
    linear_attention,
    linear_attention_macs,
)
from nas.kernels.registry import register

VARIANTS = ("full", "compact")
BLOCKS_FROM = 2**21  # entries of x⊗x (B·h·N·d²) from which order 2 full uses the symmetric blocks on the CPU


@register
class TaylorAttention(AttentionKernel):
    """Taylor expansion of softmax's exp(q·k/√d), as an exact dot product of feature maps.

    order=2, variant="full": sim = 1 + s + s²/2 with s = q·k/√d, always ≥ 1/2. Since
        s² = ⟨q⊗q, k⊗k⟩/d and x⊗x is symmetric, s² = Σ_{a≤b} c_ab (q_a q_b)(k_a k_b)/d with
        c_aa = 1 and c_ab = 2: φ(x) = [1, x/d^¼, (c_ab^½ x_a x_b)_{a≤b}/(√2·√d)],
        D = 1 + d + d(d+1)/2 (revisions 1–2 used all d² entries of x⊗x: the same operator with
        about twice the matmul work). The d(d+1)/2 products are given as d blocks, one per
        leading index a: x_a·(x_a, …, x_{d−1}), each N×(d−a) — no N×D tensor is built (a gather of
        the unique entries, or one N×D buffer, cost more in memory traffic and page faults than the
        matmuls they save) —, and the weights c_ab scale each block's small (d−a)×(d+1) statistics.
        Those 2d small products cost a fixed overhead per call: where x⊗x of all tokens is small
        (under `BLOCKS_FROM` entries: 8 MiB in fp32, e.g. fewer than 512 tokens of 4 heads with
        d = 32), and off the CPU (not measured there yet), the d² map vec(x⊗x) as one broadcast
        product is faster, and is used (`results/bench/taylor_symmetric_cpu.jsonl`).
    order=2, variant="compact": QT-ViT's fast form, as the authors' attention (`LiteMLA.
        relu_linear_att` in AMD-AIG-AIMA/AMD_QTViT, efficientvit/models/nn/ops.py):

            k ← k + P                        (positional_encoding: a learnable entry per token and channel)
            φ(x) = [u(x), γ],  u(x) = normalise(normalise(x)²)   (elementwise square; γ learnable, 1 at init)
            out_i = Σ_j ⟨φ(q_i), φ(k_j)⟩ v_j / Σ_j ⟨φ(q_i), φ(k_j)⟩ + GELU(norm(v)_i)   (shortcut)

        D = d + 1; sim = ⟨u(q), u(k)⟩ + γ² ≥ γ² > 0 because u has no negative entries. The
        authors' norm is a BatchNorm2d(d) over every head's v; its running statistics would
        depend on the subnet that ran last, so ours (`ImageNorm`) normalises each channel of
        each head of each image over the tokens (the image's own statistics, in training and
        at inference), then applies a per-channel affine (d channels shared by all heads, as
        the authors'). The size of that difference is measured by `nas bench zoo` (`deviations`).
        P (zeros at init, as the authors') needs the token grid at build time and is stored
        (heads, N, d) so that fewer heads use its leading slice.
        `shortcut=False, positional_encoding=False` give the bare kernel of revision 1. Not
        taken from the authors' model: EfficientViT's multi-scale q/k/v aggregation (a block design).
    order=1: sim = 1 + s, which is negative when s < −1. We bound s by putting q and k on
        the sphere of radius (τ·√d)^½, i.e. s = τ·cos(q, k) with temperature τ < 1, so
        sim ∈ [1 − τ, 1 + τ] and the denominator cannot vanish. φ(x) = [1, √τ·x̂], D = d + 1.
    `shortcut` and `positional_encoding` belong to the compact form; the others ignore them.
    """

    name = "taylor"
    variants = ({"order": 1}, {"order": 2, "variant": "full"}, {"order": 2, "variant": "compact"})
    label_prefixes = {"order": "o"}
    revision = 3  # 2: the compact form's shortcut and positional encoding; 3: order 2 full's symmetric map (faster: tables before are stale)

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        grid: Grid | None = None,
        order: int = 2,
        variant: str | None = None,
        shortcut: bool = True,
        positional_encoding: bool = True,
        temperature: float = 0.9,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(head_dim, num_heads)
        if order not in (1, 2) or isinstance(order, bool):
            raise NasError(f"taylor: order must be 1 or 2 (the expansion order of exp), got {order!r}")
        if order == 1 and variant is not None:
            raise NasError(
                f"taylor: variant applies to order 2 only (full or compact); got variant={variant!r} with order=1"
            )
        if order == 2:
            variant = "full" if variant is None else variant
            if variant not in VARIANTS:
                raise NasError(f"taylor: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        for option, value in (("shortcut", shortcut), ("positional_encoding", positional_encoding)):
            if not isinstance(value, bool):
                raise NasError(f"taylor: {option} must be true or false, got {value!r}")
        if check_positive(temperature, self.name, "temperature") >= 1:
            raise NasError(f"taylor: temperature must lie in (0, 1) so that 1 + s stays positive, got {temperature!r}")
        self.order = order
        self.variant = variant
        self.temperature = float(temperature)
        self.eps = check_positive(eps, self.name, "eps")
        compact = variant == "compact"
        self.shortcut = compact and shortcut
        self.grid = check_grid(grid, self.name) if compact and positional_encoding else None
        self.needs_grid = self.grid is not None
        if compact:
            self.gamma = nn.Parameter(torch.tensor(1.0))
        if self.grid is not None:
            self.positional_encoding = nn.Parameter(torch.zeros(num_heads, self.grid[0] * self.grid[1], head_dim))
        else:
            self.register_parameter("positional_encoding", None)
        if self.shortcut:
            self.shortcut_norm = ImageNorm(head_dim)  # d channels shared by all heads, as the authors' BatchNorm2d(d)

    @property
    def feature_dim(self) -> int:
        """D, the width of φ."""
        d = self.head_dim
        return 1 + d + d * (d + 1) // 2 if self.variant == "full" else d + 1

    def extra_repr(self) -> str:
        extras = f", shortcut={self.shortcut}, grid={self.grid}" if self.variant == "compact" else ""
        return f"{super().extra_repr()}, order={self.order}, variant={self.variant}{extras}"

    def attend(self, q: Tensor, k: Tensor, v: Tensor, grid: Grid | None) -> Tensor:
        dtype = compute_dtype(q)
        q, k, v_c = q.to(dtype), k.to(dtype), v.to(dtype)
        # φ as blocks [constant, linear, quadratic] with the weights of their dot products.
        if self.order == 1:
            phi_q, phi_k = [1.0, F.normalize(q, dim=-1)], [1.0, F.normalize(k, dim=-1)]
            weights = [1.0, self.temperature]
        elif self.variant == "compact":
            if self.positional_encoding is not None:
                if tuple(grid) != self.grid:
                    raise NasError(
                        f"taylor: built for grid {self.grid} (its positional encoding has one entry per token), called with {tuple(grid)}"
                    )
                k = k + self.positional_encoding[: q.shape[1]].to(dtype)
            phi_q, phi_k = [self._unit_square(q), 1.0], [self._unit_square(k), 1.0]
            weights = [1.0, self.gamma.to(dtype) ** 2]
        elif q.device.type != "cpu" or q.numel() * self.head_dim < BLOCKS_FROM:  # the d² map in one product
            phi_q, phi_k = [1.0, q, self._outer(q)], [1.0, k, self._outer(k)]
            weights = [1.0, self.head_dim**-0.5, 1.0 / (2 * self.head_dim)]
        else:  # the symmetric map, one block per leading index
            d = self.head_dim
            pairs = torch.full((d, 1), 2.0 / (2 * d), dtype=dtype, device=q.device)  # c_ab / 2d: 2 off the diagonal ...
            pairs[0] = 1.0 / (2 * d)  # ... and 1 on it (the first entry of each block, b = a)
            phi_q = [1.0, q] + [q[..., a:] * q[..., a : a + 1] for a in range(d)]
            phi_k = [1.0, k] + [k[..., a:] * k[..., a : a + 1] for a in range(d)]
            weights = [1.0, d**-0.5] + [pairs[: d - a] for a in range(d)]
        out = linear_attention(phi_q, phi_k, v_c, weights=weights, eps=self.eps)
        if self.shortcut:  # GELU(norm(v)): each channel of each head of each image over its tokens
            batch, heads, tokens, d = v_c.shape
            per_channel = self.shortcut_norm(v_c.transpose(2, 3).reshape(batch * heads, d, tokens))
            out = out + F.gelu(per_channel.reshape(batch, heads, d, tokens).transpose(2, 3))
        return out.to(v.dtype)

    def macs(self, heads: int, grid: Grid) -> int:
        tokens, d = grid[0] * grid[1], self.head_dim
        features = {1: 2 * d, 2: d * (d + 1) // 2 if self.variant == "full" else 5 * d}[self.order]  # per token, q or k
        extras = (
            heads * tokens * d * ((self.positional_encoding is not None) + 5 * self.shortcut)
        )  # + P; mean, var, normalise, affine, GELU
        return linear_attention_macs(heads, tokens, d, self.feature_dim) + 2 * heads * tokens * features + extras

    @staticmethod
    def _unit_square(x: Tensor) -> Tensor:
        return F.normalize(F.normalize(x, dim=-1).square(), dim=-1)

    @staticmethod
    def _outer(x: Tensor) -> Tensor:
        return (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)
