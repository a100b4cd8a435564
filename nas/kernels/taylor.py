"""QT-ViT Taylor-expansion attention: exp(x) ≈ 1 + x (+ x²/2), with the expansion order a choice."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.errors import NasError
from nas.kernels.base import AttentionKernel, Grid, check_positive, compute_dtype, linear_attention, linear_attention_macs
from nas.kernels.registry import register

VARIANTS = ("full", "compact")


@register
class TaylorAttention(AttentionKernel):
    """Taylor expansion of softmax's exp(q·k/√d), as an exact dot product of feature maps.

    order=2, variant="full": sim = 1 + s + s²/2 with s = q·k/√d, always ≥ 1/2. Since
        s² = ⟨q⊗q, k⊗k⟩/d, φ(x) = [1, x/d^¼, vec(x⊗x)/(√2·√d)], D = 1 + d + d². The
        d(d+1)/2 unique entries of x⊗x would suffice, but gathering them took ~25× longer
        than the broadcast outer product on CPU (11 ms vs 0.4 ms at N=1024, 4 heads, d=32),
        more than the duplicate entries cost in the matmuls.
    order=2, variant="compact" (QT-ViT's fast form, as in the authors' code, β = 0):
        φ(x) = [α·u(x), γ]/√2 with u(x) = normalise(normalise(x)²) (elementwise square) and
        learnable scalars α, γ; D = d + 1. sim = (α²·⟨u(q), u(k)⟩ + γ²)/2 ≥ γ²/2 > 0
        because u has no negative entries.
    order=1: sim = 1 + s, which is negative when s < −1. We bound s by putting q and k on
        the sphere of radius (τ·√d)^½, i.e. s = τ·cos(q, k) with temperature τ < 1, so
        sim ∈ [1 − τ, 1 + τ] and the denominator cannot vanish. φ(x) = [1, √τ·x̂], D = d + 1.
    """

    name = "taylor"
    variants = ({"order": 1}, {"order": 2, "variant": "full"}, {"order": 2, "variant": "compact"})
    label_prefixes = {"order": "o"}

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        order: int = 2,
        variant: str | None = None,
        temperature: float = 0.9,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(head_dim, num_heads)
        if order not in (1, 2) or isinstance(order, bool):
            raise NasError(f"taylor: order must be 1 or 2 (the expansion order of exp), got {order!r}")
        if order == 1 and variant is not None:
            raise NasError(f"taylor: variant applies to order 2 only (full or compact); got variant={variant!r} with order=1")
        if order == 2:
            variant = "full" if variant is None else variant
            if variant not in VARIANTS:
                raise NasError(f"taylor: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if check_positive(temperature, self.name, "temperature") >= 1:
            raise NasError(f"taylor: temperature must lie in (0, 1) so that 1 + s stays positive, got {temperature!r}")
        self.order = order
        self.variant = variant
        self.temperature = float(temperature)
        self.eps = check_positive(eps, self.name, "eps")
        if variant == "compact":
            self.alpha = nn.Parameter(torch.tensor(1.0))
            self.gamma = nn.Parameter(torch.tensor(1.0))

    @property
    def feature_dim(self) -> int:
        """D, the width of φ."""
        d = self.head_dim
        return 1 + d + d * d if self.variant == "full" else d + 1

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, order={self.order}, variant={self.variant}"

    def attend(self, q: Tensor, k: Tensor, v: Tensor, grid: Grid | None) -> Tensor:
        dtype = compute_dtype(q)
        q, k, v_c = q.to(dtype), k.to(dtype), v.to(dtype)
        # φ as blocks [constant, linear, quadratic] with the weights of their dot products.
        if self.order == 1:
            phi_q, phi_k = [1.0, F.normalize(q, dim=-1)], [1.0, F.normalize(k, dim=-1)]
            weights = [1.0, self.temperature]
        elif self.variant == "compact":
            phi_q, phi_k = [self._unit_square(q), 1.0], [self._unit_square(k), 1.0]
            weights = [self.alpha.to(dtype) ** 2 / 2, self.gamma.to(dtype) ** 2 / 2]
        else:
            phi_q, phi_k = [1.0, q, self._outer(q)], [1.0, k, self._outer(k)]
            weights = [1.0, self.head_dim**-0.5, 1.0 / (2 * self.head_dim)]
        return linear_attention(phi_q, phi_k, v_c, weights=weights, eps=self.eps).to(v.dtype)

    def macs(self, heads: int, grid: Grid) -> int:
        tokens, d = grid[0] * grid[1], self.head_dim
        features = {1: 2 * d, 2: d * d if self.variant == "full" else 5 * d}[self.order]  # per token, q or k
        return linear_attention_macs(heads, tokens, d, self.feature_dim) + 2 * heads * tokens * features

    @staticmethod
    def _unit_square(x: Tensor) -> Tensor:
        return F.normalize(F.normalize(x, dim=-1).square(), dim=-1)

    @staticmethod
    def _outer(x: Tensor) -> Tensor:
        return (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)
