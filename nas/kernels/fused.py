"""The linear kernels' shared core as fused Triton kernels (issue 27), beside the eager form in
`nas.kernels.base.linear_attention`, which stays the specification.

    out_i = φ(q_i)ᵀ S / (φ(q_i)ᵀ z + eps),  S = mean_j φ(k_j) v_jᵀ,  z = mean_j φ(k_j)

`_state` makes one pass over K/V per (image, head) and tile of D features: S and z accumulate
in registers over chunks of tokens. `_output` makes one pass over Q: per chunk of tokens, φ(Q)S
and φ(Q)z over the D tiles, then the division (or L²ViT's clamped denominator). The backward
is autograd's formulas as matmuls in PyTorch (`FusedLinearAttention.backward`): the state's
gradient is as small as the state. The feature maps φ are computed before, in PyTorch (eager or
compiled), and given whole: the blocks and weights of `linear_attention` are assembled into
one φ(Q) and one weighted φ(K) (`assemble`).

Runs where Triton runs: on CUDA, or on the CPU under `TRITON_INTERPRET=1` (how the tests check it
against the eager form). Taken by `nas bench kernels --paths fused` and by latency measurements on
the fused kernel path (`--kernels`, which `auto` sets on CUDA where Triton is installed:
nas.latency.runtime); training and the exported model run the eager form unless called within `path()`.
Its speed on a GPU is unmeasured (no GPU was available since it was written).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from nas.kernels import base

try:
    import triton
    import triton.language as tl
except ImportError:  # the eager path needs no Triton; `available()` says why this one cannot run
    triton = None


def available(device: torch.device | str) -> str | None:
    """None if the fused path can run on `device`, else why not (one line)."""
    if triton is None:
        return "Triton is not installed (pip install triton)"
    if torch.device(device).type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton runs on CUDA devices (or on the CPU under TRITON_INTERPRET=1, for tests)"
    return None


def assemble(phi_q: Sequence, phi_k: Sequence, v: Tensor, weights: Sequence | None) -> tuple[Tensor, Tensor]:
    """`linear_attention`'s blocks as one φ(Q) and one φ(K) with the weights folded into φ(K): a float
    block becomes a constant column, a (D_b, 1) weight scales its block's features."""
    shape = v.shape[:-1]
    qs, ks = [], []
    for index, (fq, fk) in enumerate(zip(phi_q, phi_k, strict=True)):
        weight = 1.0 if weights is None else weights[index]
        if isinstance(weight, Tensor):
            weight = weight.reshape(-1)
        column = lambda c: torch.full(shape + (1,), 1.0, dtype=v.dtype, device=v.device) * c  # noqa: E731
        qs.append(column(fq) if isinstance(fq, float) else fq.expand(shape + fq.shape[-1:]))
        ks.append(column(fk) * weight if isinstance(fk, float) else fk.expand(shape + fk.shape[-1:]) * weight)
    return torch.cat(qs, -1).contiguous(), torch.cat(ks, -1).contiguous()


if triton is not None:

    @triton.jit
    def _state(
        k_ptr, v_ptr, s_ptr, z_ptr, N, D, E, inv_n, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr
    ):
        """S[bh, dtile, :] = Σ_j φK[j, dtile]ᵀ V[j, :] / N and z[bh, dtile] = Σ_j φK[j, dtile] / N."""
        bh, tile = tl.program_id(0), tl.program_id(1)
        feats = tile * BLOCK_D + tl.arange(0, BLOCK_D)
        cols = tl.arange(0, BLOCK_E)
        acc = tl.zeros((BLOCK_D, BLOCK_E), dtype=tl.float32)
        zacc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            rows = start + tl.arange(0, BLOCK_N)
            k = tl.load(
                k_ptr + bh * N * D + rows[:, None] * D + feats[None, :],
                mask=(rows[:, None] < N) & (feats[None, :] < D),
                other=0.0,
            )
            v = tl.load(
                v_ptr + bh * N * E + rows[:, None] * E + cols[None, :],
                mask=(rows[:, None] < N) & (cols[None, :] < E),
                other=0.0,
            )
            acc += tl.dot(tl.trans(k), v, input_precision="ieee")
            zacc += tl.sum(k, axis=0)
        tl.store(
            s_ptr + bh * D * E + feats[:, None] * E + cols[None, :],
            acc * inv_n,
            mask=(feats[:, None] < D) & (cols[None, :] < E),
        )
        tl.store(z_ptr + bh * D + feats, zacc * inv_n, mask=feats < D)

    @triton.jit
    def _output(
        q_ptr,
        s_ptr,
        z_ptr,
        o_ptr,
        den_ptr,
        N,
        D,
        E,
        eps,
        min_den,
        CLAMP: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_E: tl.constexpr,
    ):
        """out[bh, rows, :] = φQ S / (φQ z + eps), or / max(φQ z, min_den) with CLAMP; den kept for the backward."""
        bh, block = tl.program_id(0), tl.program_id(1)
        rows = block * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_E)
        num = tl.zeros((BLOCK_N, BLOCK_E), dtype=tl.float32)
        den = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for start in range(0, D, BLOCK_D):
            feats = start + tl.arange(0, BLOCK_D)
            q = tl.load(
                q_ptr + bh * N * D + rows[:, None] * D + feats[None, :],
                mask=(rows[:, None] < N) & (feats[None, :] < D),
                other=0.0,
            )
            s = tl.load(
                s_ptr + bh * D * E + feats[:, None] * E + cols[None, :],
                mask=(feats[:, None] < D) & (cols[None, :] < E),
                other=0.0,
            )
            z = tl.load(z_ptr + bh * D + feats, mask=feats < D, other=0.0)
            num += tl.dot(q, s, input_precision="ieee")
            den += tl.sum(q * z[None, :], axis=1)
        if CLAMP:
            den = tl.maximum(den, min_den)
        else:
            den = den + eps
        tl.store(
            o_ptr + bh * N * E + rows[:, None] * E + cols[None, :],
            num / den[:, None],
            mask=(rows[:, None] < N) & (cols[None, :] < E),
        )
        tl.store(den_ptr + bh * N + rows, den, mask=rows < N)


def _block(size: int, floor: int = 16) -> int:
    return max(floor, triton.next_power_of_2(size))


class FusedLinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, phi_q: Tensor, phi_k: Tensor, v: Tensor, eps: float, min_denominator: float | None):
        batch, heads, tokens, features = phi_q.shape
        width = v.shape[-1]
        q, k, vv = (t.float().contiguous() for t in (phi_q, phi_k, v))
        state = torch.empty(batch, heads, features, width, device=v.device, dtype=torch.float32)
        z = torch.empty(batch, heads, features, device=v.device, dtype=torch.float32)
        out = torch.empty(batch, heads, tokens, width, device=v.device, dtype=torch.float32)
        den = torch.empty(batch, heads, tokens, device=v.device, dtype=torch.float32)
        block_d, block_e, block_n = min(_block(features), 64), _block(width), 32
        _state[(batch * heads, triton.cdiv(features, block_d))](
            k, vv, state, z, tokens, features, width, 1.0 / tokens, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_E=block_e
        )
        clamp = min_denominator is not None
        _output[(batch * heads, triton.cdiv(tokens, block_n))](
            q,
            state,
            z,
            out,
            den,
            tokens,
            features,
            width,
            float(eps),
            float(min_denominator or 0.0),
            CLAMP=clamp,
            BLOCK_N=block_n,
            BLOCK_D=block_d,
            BLOCK_E=block_e,
        )
        ctx.save_for_backward(q, k, vv, state, z, out, den)
        ctx.clamp, ctx.min_denominator, ctx.dtypes = clamp, min_denominator, (phi_q.dtype, phi_k.dtype, v.dtype)
        return out.to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, state, z, out, den = ctx.saved_tensors
        g = grad.float()
        tokens = q.shape[-2]
        d_num = g / den.unsqueeze(-1)
        d_den = -(g * out).sum(-1, keepdim=True) / den.unsqueeze(-1)
        if ctx.clamp:  # the clamp's gradient is zero where it holds the denominator at its floor
            d_den = d_den * (den.unsqueeze(-1) > ctx.min_denominator)
        d_q = d_num @ state.transpose(-2, -1) + d_den * z.unsqueeze(-2)
        d_state = q.transpose(-2, -1) @ d_num
        d_z = (q * d_den).sum(-2)
        d_k = (v @ d_state.transpose(-2, -1) + d_z.unsqueeze(-2)) / tokens
        d_v = k @ d_state / tokens
        return d_q.to(ctx.dtypes[0]), d_k.to(ctx.dtypes[1]), d_v.to(ctx.dtypes[2]), None, None


@contextlib.contextmanager
def path() -> Iterator[None]:
    """Within it, every linear kernel's core (`linear_attention`) runs fused; refused where it cannot run."""
    before, base.FUSED = base.FUSED, linear_attention_fused
    try:
        yield
    finally:
        base.FUSED = before


def linear_attention_fused(
    phi_q: Sequence,
    phi_k: Sequence,
    v: Tensor,
    weights: Sequence | None = None,
    eps: float = 1e-6,
    min_denominator: float | None = None,
) -> Tensor:
    """`nas.kernels.base.linear_attention` (same arguments, same result to float32 rounding) by the fused kernels."""
    why = available(v.device)
    if why:
        raise RuntimeError(f"the fused path cannot run here: {why}")
    q, k = assemble(phi_q, phi_k, v, weights)
    return FusedLinearAttention.apply(q, k, v, eps, min_denominator)
