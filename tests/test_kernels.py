"""Specification of the attention kernels: each equals its explicit O(N²) formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from nas import kernels
from nas.errors import NasError

LABELS = [spec.label for spec in kernels.variants()]
SPECS = {spec.label: spec for spec in kernels.variants()}
GRID_KERNELS = [name for name in kernels.names() if kernels.kernel_class(name).needs_grid]

# (batch, heads used, heads built, tokens grid, head_dim): includes N not a perfect square
# (3×5, 2×7) and fewer heads than the kernel was built for (the supernet's elastic case).
SHAPES = [(2, 2, 2, (4, 4), 8), (1, 3, 3, (3, 5), 4), (2, 2, 4, (2, 7), 8), (1, 1, 1, (7, 7), 16)]


def random_kernel(spec: kernels.KernelSpec, head_dim: int, num_heads: int, **extra) -> kernels.AttentionKernel:
    """A kernel in float64 with every parameter randomised (so slicing mistakes show)."""
    torch.manual_seed(1)
    module = spec.build(head_dim, num_heads, **extra).double()
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name in ("alpha", "gamma", "temperature"):
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.3)
    return module


def qkv(batch, heads, tokens, head_dim, dtype=torch.float64, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(batch, heads, tokens, head_dim, generator=gen, dtype=dtype) for _ in range(3)]


# ---- reference formulas, written from KERNELS.md without the kernels' code ----------------


def ratio(sim, v, eps=0.0):
    """out_i = Σ_j sim_ij v_j / Σ_j sim_ij, with the kernels' eps on mean-normalised sums."""
    tokens = sim.shape[-1]
    return (sim @ v / tokens) / (sim.sum(-1, keepdim=True) / tokens + eps)


def grid_map(x, grid):  # (B, h, N, d) -> (B, h·d, H, W)
    b, h, n, d = x.shape
    return x.permute(0, 1, 3, 2).reshape(b, h * d, *grid)


def tokens_of(y, heads):  # (B, h·d, H, W) -> (B, h, N, d)
    b, c, hh, ww = y.shape
    return y.reshape(b, heads, c // heads, hh * ww).permute(0, 1, 3, 2)


def dwconv(x, conv, channels):
    return F.conv2d(x, conv.weight[:channels], conv.bias[:channels], padding=conv.kernel_size[0] // 2, groups=channels)


def cosine(q, k):
    return F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)


def reference(label, module, q, k, v, grid):
    b, h, n, d = q.shape
    logits = q @ k.transpose(-2, -1) / math.sqrt(d)
    if label == "softmax":
        return ratio(logits.exp(), v)
    if label == "relu":
        return ratio(F.relu(q) @ F.relu(k).transpose(-2, -1), v, module.eps)
    if label == "angular":
        sim = 0.5 + cosine(q, k) / math.pi
        return ratio(sim, v, module.eps) + tokens_of(dwconv(grid_map(v, grid), module.local, h * d), h)
    if label == "taylor-o1":
        return ratio(1 + module.temperature * cosine(q, k), v, module.eps)
    if label == "taylor-o2-full":
        return ratio(1 + logits + logits**2 / 2, v, module.eps)
    if label == "taylor-o2-compact":
        u = lambda x: F.normalize(F.normalize(x, dim=-1) ** 2, dim=-1)  # noqa: E731
        sim = (module.alpha**2 * (u(q) @ u(k).transpose(-2, -1)) + module.gamma**2) / 2
        return ratio(sim, v, module.eps)
    if label == "focused":
        scale = F.softplus(module.scale[:h]).unsqueeze(1)

        def phi(x):
            xp = (F.relu(x) + 1e-6) / scale
            return xp.norm(dim=-1, keepdim=True) * xp**module.power / (xp**module.power).norm(dim=-1, keepdim=True)

        local = torch.stack([dwconv(v[:, i].transpose(1, 2).reshape(b, d, *grid), module.local, d) for i in range(h)], 1)
        return ratio(phi(q) @ phi(k).transpose(-2, -1), v, module.eps) + local.reshape(b, h, d, n).transpose(2, 3)
    if label == "l2vit":
        sim = F.relu(q) @ F.relu(k).transpose(-2, -1)
        tau = module.temperature[:h].view(1, h, 1, 1)
        a = grid_map(tau * (sim @ v) / sim.sum(-1, keepdim=True).clamp(min=module.min_denominator), grid)
        c = h * d

        def norm(x, ln):
            return F.layer_norm(x.permute(0, 2, 3, 1), (c,), ln.weight[:c], ln.bias[:c], ln.eps).permute(0, 3, 1, 2)

        y = dwconv(norm(F.gelu(dwconv(norm(a, module.lcm_norm_in), module.lcm_conv1, c)), module.lcm_norm_mid), module.lcm_conv2, c)
        return tokens_of(a + y, h)
    if label == "window":
        w = min(module.window_size, *grid)
        rows, cols = torch.arange(n) // grid[1], torch.arange(n) % grid[1]
        window_id = (rows // w) * 1000 + cols // w
        same = window_id[:, None] == window_id[None, :]
        return ratio(logits.exp() * same, v)
    raise AssertionError(f"no reference for {label}")


# ---- equivalence ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}h{s[1]}of{s[2]}-{s[3][0]}x{s[3][1]}-d{s[4]}")
@pytest.mark.parametrize("label", LABELS)
def test_kernel_equals_explicit_quadratic_formula(label, shape):
    batch, heads, built_heads, grid, head_dim = shape
    extra = {"window_size": 2} if label == "window" else {}  # 2 does not divide 3×5 or 7×7: padding path
    module = random_kernel(SPECS[label], head_dim, built_heads, **extra)
    q, k, v = qkv(batch, heads, grid[0] * grid[1], head_dim)
    out = module(q, k, v, grid)
    expected = reference(label, module, q, k, v, grid)
    assert out.shape == q.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-11)


def test_taylor_order2_full_is_exactly_one_plus_x_plus_half_x_squared():
    """Cross-check with a single-head explicit sum, no matrix tricks: sim = 1 + x + x²/2."""
    module = kernels.get("taylor", head_dim=4, num_heads=1, order=2, variant="full").double()
    q, k, v = qkv(1, 1, 6, 4, seed=3)
    out = module(q, k, v)
    for i in range(6):
        sims = [1 + x + x * x / 2 for x in (float(q[0, 0, i] @ k[0, 0, j]) / 2.0 for j in range(6))]
        expected = sum(s * v[0, 0, j] for j, s in enumerate(sims)) / 6 / (sum(sims) / 6 + module.eps)
        torch.testing.assert_close(out[0, 0, i], expected, rtol=1e-12, atol=1e-12)


def test_taylor_feature_widths():
    assert kernels.get("taylor", head_dim=16, num_heads=1, order=2, variant="full").feature_dim == 1 + 16 + 256
    assert kernels.get("taylor", head_dim=16, num_heads=1, order=2, variant="compact").feature_dim == 17
    assert kernels.get("taylor", head_dim=16, num_heads=1, order=1).feature_dim == 17


def test_fewer_heads_use_the_leading_heads_parameters():
    """A kernel built for 4 heads, run on 2, equals a 2-head kernel holding the leading slices."""
    for label in LABELS:
        big = random_kernel(SPECS[label], 8, 4)
        small = SPECS[label].build(8, 2).double()
        state = {}
        for name, tensor in big.state_dict().items():
            target = small.state_dict()[name]
            state[name] = tensor[tuple(slice(0, s) for s in target.shape)]
        small.load_state_dict(state)
        q, k, v = qkv(1, 2, 12, 8)
        torch.testing.assert_close(big(q, k, v, (3, 4)), small(q, k, v, (3, 4)), rtol=0, atol=0, msg=label)


# ---- gradients -----------------------------------------------------------------------------


@pytest.mark.parametrize("label", LABELS)
def test_gradcheck_wrt_qkv_and_every_parameter(label):
    module = random_kernel(SPECS[label], 4, 2)
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in module.named_parameters()]
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 6, 4, seed=5))

    def run(q, k, v, *values):
        return functional_call(module, dict(zip(names, values)), (q, k, v, (2, 3)))

    assert torch.autograd.gradcheck(run, (q, k, v, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("label", LABELS)
def test_gradients_reach_qkv_and_every_parameter(label):
    module = random_kernel(SPECS[label], 8, 2)
    q, k, v = (t.requires_grad_() for t in qkv(2, 2, 16, 8, seed=7))
    (module(q, k, v, (4, 4)) * torch.randn(2, 2, 16, 8, dtype=torch.float64)).sum().backward()
    for name, tensor in [("q", q), ("k", k), ("v", v), *module.named_parameters()]:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all(), name
        assert tensor.grad.abs().sum() > 0, f"{label}: no gradient reaches {name}"


# ---- half precision ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("label", LABELS)
def test_half_precision_large_inputs_stay_finite(label, dtype):
    """N = 4096 (64×64 grid), inputs ×100: no NaN/Inf, with fp32 and with half-precision weights."""
    q, k, v = qkv(1, 2, 4096, 16, dtype=dtype, scale=100.0, seed=11)
    module = SPECS[label].build(16, 2)
    with torch.no_grad():
        out = module(q, k, v, (64, 64))
        out_half_weights = module.to(dtype)(q, k, v, (64, 64))
    for result in (out, out_half_weights):
        assert result.dtype == dtype
        assert torch.isfinite(result).all(), f"{label} produced NaN/Inf in {dtype}"


@pytest.mark.gpu
@pytest.mark.parametrize("label", LABELS)
def test_cuda_matches_cpu_and_bf16_stays_finite(label):
    module = SPECS[label].build(16, 2)
    q, k, v = qkv(2, 2, 1024, 16, dtype=torch.float32)
    with torch.no_grad():
        expected = module(q, k, v, (32, 32))
        gpu = module.cuda()
        torch.backends.cuda.matmul.allow_tf32 = False
        out = gpu(q.cuda(), k.cuda(), v.cuda(), (32, 32))
        torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)
        big = [t.cuda().to(torch.bfloat16) * 100 for t in qkv(1, 2, 4096, 16, dtype=torch.float32, seed=2)]
        assert torch.isfinite(gpu(*big, (64, 64))).all()


# ---- angular auxiliary softmax branch -------------------------------------------------------


def test_angular_aux_branch_changes_training_output_only_when_weighted():
    module = random_kernel(SPECS["angular"], 8, 2).train()
    q, k, v = qkv(1, 2, 16, 8)
    plain = module(q, k, v, (4, 4))
    module.aux_weight = 0.5
    with_aux = module(q, k, v, (4, 4))
    assert not torch.allclose(plain, with_aux)
    softmax = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(with_aux, plain + 0.5 * softmax)
    # Inference uses only the linear part, whatever the weight.
    torch.testing.assert_close(module.eval()(q, k, v, (4, 4)), plain)


def test_angular_aux_branch_costs_nothing_at_zero_weight(monkeypatch):
    # Counted by calls to softmax attention, not by FlopCounterMode (whose SDPA count differs
    # between torch releases: 0 FLOPs on torch 2.14).
    q, k, v = qkv(1, 2, 256, 8, dtype=torch.float32)
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))

    def softmax_calls(module):
        calls.clear()
        module(q, k, v, (16, 16))
        return len(calls)

    module = kernels.get("angular", head_dim=8, num_heads=2)
    softmax = kernels.get("softmax", head_dim=8, num_heads=2)
    assert softmax_calls(module.train()) == 0 and softmax_calls(module.eval()) == 0
    module.aux_weight = 0.3
    assert softmax_calls(module.train()) == 1 and softmax_calls(module.eval()) == 0
    # The linear path is far below the N² softmax cost at N = 256.
    assert module.macs(2, (16, 16)) < softmax.macs(2, (16, 16)) / 4


# ---- errors --------------------------------------------------------------------------------


def test_unknown_kernel_lists_the_valid_names():
    with pytest.raises(NasError) as error:
        kernels.get("performer", head_dim=8, num_heads=2)
    message = str(error.value)
    assert "performer" in message
    for name in kernels.names():
        assert name in message


def test_taylor_order_3_is_refused():
    with pytest.raises(NasError, match="order must be 1 or 2"):
        kernels.get("taylor", head_dim=8, num_heads=2, order=3)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"order": 2, "variant": "half"}, "variant must be one of full, compact"),
        ({"order": 1, "variant": "full"}, "variant applies to order 2 only"),
        ({"temperature": 1.5}, "temperature must lie in"),
    ],
)
def test_bad_taylor_options_are_refused(options, message):
    with pytest.raises(NasError, match=message):
        kernels.get("taylor", head_dim=8, num_heads=2, **options)


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(NasError, match="has no option 'order'; its options: window_size"):
        kernels.get("window", head_dim=8, num_heads=2, order=2)


@pytest.mark.parametrize("label", LABELS)
def test_head_dim_mismatch_is_refused(label):
    module = SPECS[label].build(8, 2)
    q, k, v = qkv(1, 2, 16, 4, dtype=torch.float32)
    with pytest.raises(NasError, match="head dim 4, but this kernel was built for head_dim=8"):
        module(q, k, v, (4, 4))


def test_too_many_heads_and_mismatched_shapes_are_refused():
    module = kernels.get("relu", head_dim=8, num_heads=2)
    q, k, v = qkv(1, 3, 16, 8, dtype=torch.float32)
    with pytest.raises(NasError, match="3 heads, but this kernel was built for at most num_heads=2"):
        module(q, k, v)
    with pytest.raises(NasError, match="must share one shape"):
        module(q[:, :2], k[:, :2, :8], v[:, :2])


@pytest.mark.parametrize("name", GRID_KERNELS)
def test_grid_that_does_not_match_tokens_is_refused(name):
    module = kernels.get(name, head_dim=8, num_heads=2)
    q, k, v = qkv(1, 2, 15, 8, dtype=torch.float32)
    with pytest.raises(NasError, match=r"grid \(H, W\) = \(4, 4\) holds 16 tokens, but q/k/v have N = 15"):
        module(q, k, v, (4, 4))
    with pytest.raises(NasError, match="needs the token grid"):
        module(q, k, v)


def test_registry_holds_the_seven_kernels():
    assert kernels.names() == ["softmax", "relu", "angular", "taylor", "focused", "l2vit", "window"]
    assert GRID_KERNELS == ["angular", "focused", "l2vit", "window"]
