"""Specification of the attention kernels: each equals its authors' operator written out in O(N²) (nas/kernels/naive.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from nas import kernels
from nas.errors import NasError
from nas.kernels import naive

LABELS = [spec.label for spec in kernels.variants()]
SPECS = {spec.label: spec for spec in kernels.variants()}
GRID_KERNELS = [name for name in kernels.names() if kernels.kernel_class(name).needs_grid]

# (batch, heads used, heads built, tokens grid, head_dim): includes N not a perfect square
# (3×5, 2×7) and fewer heads than the kernel was built for (the supernet's elastic case).
SHAPES = [(2, 2, 2, (4, 4), 8), (1, 3, 3, (3, 5), 4), (2, 2, 4, (2, 7), 8), (1, 1, 1, (7, 7), 16)]


# Variants that are not search choices but kernel options of a space (`kernel_options`): the kernels before revision 2.
OPTION_VARIANTS = {
    "window-plain": ("window", {"variant": "plain"}),
    "angular-paper": ("angular", {"variant": "paper"}),
    "taylor-o2-compact-plain": (
        "taylor",
        {"order": 2, "variant": "compact", "shortcut": False, "positional_encoding": False},
    ),
    "l2vit-no-cpe": ("l2vit", {"cpe": False}),
}
CASES = LABELS + list(OPTION_VARIANTS)


def spec_of(case: str) -> kernels.KernelSpec:
    if case in OPTION_VARIANTS:
        name, options = OPTION_VARIANTS[case]
        return kernels.KernelSpec(name, options)
    return SPECS[case]


def build(case: str, head_dim: int, num_heads: int, grid, **extra) -> kernels.AttentionKernel:
    """A kernel built for `grid` (focused's and taylor-compact's positional encoding) and a block of width 2·heads·head_dim (l2vit's LCM)."""
    return spec_of(case).build(head_dim, num_heads, grid=grid, embed_dim=2 * num_heads * head_dim, **extra)


def random_kernel(case: str, head_dim: int, num_heads: int, grid, **extra) -> kernels.AttentionKernel:
    """A kernel in float64 with every parameter randomised (so slicing mistakes and missing branches show)."""
    torch.manual_seed(1)
    module = build(case, head_dim, num_heads, grid, **extra).double()
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name in ("gamma", "temperature"):
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.3)
    return module


def qkv(batch, heads, tokens, head_dim, dtype=torch.float64, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(batch, heads, tokens, head_dim, generator=gen, dtype=dtype) for _ in range(3)]


# ---- equivalence ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}h{s[1]}of{s[2]}-{s[3][0]}x{s[3][1]}-d{s[4]}")
@pytest.mark.parametrize("case", CASES)
def test_kernel_equals_its_authors_operator_written_out(case, shape):
    """Each kernel and variant against its O(N²) reference (nas/kernels/naive.py), float64, random parameters."""
    batch, heads, built_heads, grid, head_dim = shape
    extra = {"window_size": 2} if case.startswith("window") else {}  # 2 does not divide 3×5 or 7×7: padding path
    module = random_kernel(case, head_dim, built_heads, grid, **extra).eval()
    q, k, v = qkv(batch, heads, grid[0] * grid[1], head_dim)
    out = module(q, k, v, grid)
    assert out.shape == q.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, naive.reference(module, q, k, v, grid), rtol=1e-9, atol=1e-11)
    x = torch.randn(
        batch, grid[0] * grid[1], heads * head_dim, dtype=torch.float64
    )  # fewer channels than built: leading slice
    if module.has_residual:
        torch.testing.assert_close(
            module.residual(x, grid), naive.residual_reference(module, x, grid), rtol=1e-9, atol=1e-11
        )
    if module.has_position:
        torch.testing.assert_close(
            module.position(x, grid), naive.position_reference(module, x, grid), rtol=1e-9, atol=1e-11
        )


@pytest.mark.parametrize("case", ["angular", "angular-paper"])
def test_angular_training_output_with_its_auxiliary_branch_equals_the_reference(case):
    module = random_kernel(case, 8, 2, (4, 4)).train()
    module.aux_weight = 0.7
    q, k, v = qkv(2, 2, 16, 8, scale=2.0)  # sharp softmax rows: the 0.02 mask drops some entries and keeps others
    torch.testing.assert_close(module(q, k, v, (4, 4)), naive.reference(module, q, k, v, (4, 4)), rtol=1e-9, atol=1e-11)


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
    assert (
        kernels.get("taylor", head_dim=16, num_heads=1, order=2, variant="full").feature_dim == 1 + 16 + 16 * 17 // 2
    )  # the unique products
    assert kernels.get("taylor", head_dim=16, num_heads=1, grid=(4, 4), order=2, variant="compact").feature_dim == 17
    assert kernels.get("taylor", head_dim=16, num_heads=1, order=1).feature_dim == 17


def test_fewer_heads_use_the_leading_heads_parameters():
    """A kernel built for 4 heads, run on 2, equals a 2-head kernel holding the leading slices."""
    for case in CASES:
        big = random_kernel(case, 8, 4, (3, 4))
        small = build(case, 8, 2, (3, 4)).double()
        state = {}
        for name, tensor in big.state_dict().items():
            target = small.state_dict()[name]
            state[name] = tensor[tuple(slice(0, s) for s in target.shape)]
        small.load_state_dict(state)
        q, k, v = qkv(1, 2, 12, 8)
        torch.testing.assert_close(big(q, k, v, (3, 4)), small(q, k, v, (3, 4)), rtol=0, atol=0, msg=case)
        x = torch.randn(1, 12, 32, dtype=torch.float64)
        for big_branch, small_branch in zip(branches(big, x, (3, 4)), branches(small, x, (3, 4)), strict=True):
            torch.testing.assert_close(big_branch, small_branch, rtol=0, atol=0, msg=case)


# ---- gradients -----------------------------------------------------------------------------


def branches(module, x, grid) -> list:
    """The kernel's residual-stream branches on tokens x: `residual` (after the attention) and `position` (before)."""
    return ([module.residual(x, grid)] if module.has_residual else []) + (
        [module.position(x, grid)] if module.has_position else []
    )


def run_with_residual(module, q, k, v, grid, x):
    """The kernel's output, plus its residual-stream branches on x (so their parameters count)."""
    return (module(q, k, v, grid), *branches(module, x, grid))


def _gradcheck_what_it_uses(fn, inputs: tuple, params: list, fast_mode: bool = False) -> list[bool]:
    """gradcheck of fn(*inputs, *params) over the inputs and the parameters its outputs depend on (the others
    held fixed: perturbing a parameter costs two calls per element, and the LCM's 7×7 convs have thousands);
    returns which parameters were checked. `fast_mode`: gradcheck's check of random projections of the Jacobian
    instead of all of it."""
    outputs = fn(*inputs, *params)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    grads = torch.autograd.grad([o.sum() for o in outputs], params, allow_unused=True) if params else []
    used = [g is not None for g in grads]

    def restricted(*args):
        values = iter(args[len(inputs) :])
        return fn(*args[: len(inputs)], *(next(values) if u else p.detach() for p, u in zip(params, used)))

    checked = [p for p, u in zip(params, used) if u]
    assert torch.autograd.gradcheck(restricted, (*inputs, *checked), eps=1e-6, atol=1e-5, fast_mode=fast_mode)
    return used


@pytest.mark.parametrize("case", CASES)
def test_gradcheck_wrt_qkv_and_every_parameter(case):
    module = random_kernel(case, 4, 2, (2, 3))
    if case.startswith("angular"):
        module.aux_weight = 0.5  # the training branch too
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in module.named_parameters()]
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 6, 4, seed=5))
    x = torch.randn(1, 6, 16, dtype=torch.float64, requires_grad=True)

    used = _gradcheck_what_it_uses(
        lambda q, k, v, *values: functional_call(module, dict(zip(names, values)), (q, k, v, (2, 3))),
        (q, k, v),
        params,
    )
    if module.has_residual or module.has_position:

        class Residual(torch.nn.Module):  # functional_call runs `forward`: route it to the branches
            def __init__(self, kernel):
                super().__init__()
                self.kernel = kernel

            def forward(self, x):
                return tuple(branches(self.kernel, x, (2, 3)))

        wrapper = Residual(module)
        wrapped = [f"kernel.{n}" for n in names]
        by_branches = _gradcheck_what_it_uses(
            lambda x, *values: functional_call(wrapper, dict(zip(wrapped, values)), (x,)),
            (x,),
            params,
            fast_mode=True,  # the branches are torch's convs and norms; ~2,000 weights would take 4,000 calls
        )
        used = [a or b for a, b in zip(used, by_branches)]
    assert all(used), [n for n, u in zip(names, used) if not u]  # every parameter was checked by one of the two


@pytest.mark.parametrize("case", CASES)
def test_gradients_reach_qkv_and_every_parameter(case):
    module = random_kernel(case, 8, 2, (4, 4)).train()
    q, k, v = (t.requires_grad_() for t in qkv(2, 2, 16, 8, seed=7))
    x = torch.randn(2, 16, 32, dtype=torch.float64)
    loss = sum((out * torch.randn_like(out)).sum() for out in run_with_residual(module, q, k, v, (4, 4), x))
    loss.backward()
    for name, tensor in [("q", q), ("k", k), ("v", v), *module.named_parameters()]:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all(), name
        assert tensor.grad.abs().sum() > 0, f"{case}: no gradient reaches {name}"


# ---- half precision ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES)
def test_half_precision_large_inputs_stay_finite(case, dtype):
    """N = 4096 (64×64 grid), inputs ×100: no NaN/Inf, with fp32 and with half-precision weights."""
    q, k, v = qkv(1, 2, 4096, 16, dtype=dtype, scale=100.0, seed=11)
    x = 100.0 * torch.randn(1, 4096, 64).to(dtype)
    module = build(case, 16, 2, (64, 64))
    with torch.no_grad():
        out = run_with_residual(module, q, k, v, (64, 64), x)
        out_half_weights = run_with_residual(module.to(dtype), q, k, v, (64, 64), x)
    for result in (*out, *out_half_weights):
        assert result.dtype == dtype
        assert torch.isfinite(result).all(), f"{case} produced NaN/Inf in {dtype}"


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
def test_cuda_matches_cpu_and_bf16_stays_finite(case):
    module = build(case, 16, 2, (32, 32))
    q, k, v = qkv(2, 2, 1024, 16, dtype=torch.float32)
    with torch.no_grad():
        expected = module(q, k, v, (32, 32))
        gpu = module.cuda()
        torch.backends.cuda.matmul.allow_tf32 = False
        out = gpu(q.cuda(), k.cuda(), v.cuda(), (32, 32))
        torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)
        big = [t.cuda().to(torch.bfloat16) * 100 for t in qkv(1, 2, 1024, 16, dtype=torch.float32, seed=2)]
        assert torch.isfinite(gpu(*big, (32, 32))).all()


# ---- angular auxiliary softmax branch -------------------------------------------------------


@pytest.mark.parametrize("case", ["angular", "angular-paper"])
def test_angular_aux_branch_changes_training_output_only_when_weighted(case):
    module = random_kernel(case, 8, 2, (4, 4)).train()
    q, k, v = qkv(1, 2, 16, 8, scale=2.0)
    plain = module(q, k, v, (4, 4))
    module.aux_weight = 0.5
    assert not torch.allclose(module(q, k, v, (4, 4)), plain)
    # Inference uses only the linear part, whatever the weight.
    torch.testing.assert_close(module.eval()(q, k, v, (4, 4)), plain)


def test_angular_aux_branch_costs_nothing_at_zero_weight(monkeypatch):
    # Counted by calls to softmax, not by FlopCounterMode (whose SDPA count differs between torch releases).
    q, k, v = qkv(1, 2, 256, 8, dtype=torch.float32)
    calls = []
    for owner, name in ((F, "scaled_dot_product_attention"), (torch, "softmax")):
        real = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, _real=real, **kw: calls.append(1) or _real(*a, **kw))

    def softmax_calls(module):
        calls.clear()
        module(q, k, v, (16, 16))
        return len(calls)

    for variant in ("authors", "paper"):
        module = kernels.get("angular", head_dim=8, num_heads=2, variant=variant)
        assert softmax_calls(module.train()) == 0 and softmax_calls(module.eval()) == 0
        module.aux_weight = 0.3
        assert softmax_calls(module.train()) == 1 and softmax_calls(module.eval()) == 0
    # The linear path is far below the N² softmax cost at N = 256.
    softmax = kernels.get("softmax", head_dim=8, num_heads=2)
    assert kernels.get("angular", head_dim=8, num_heads=2).macs(2, (16, 16)) < softmax.macs(2, (16, 16)) / 4


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
        ({"order": 2, "variant": "compact", "shortcut": "yes"}, "shortcut must be true or false"),
        ({"order": 2, "variant": "compact"}, r"build it with grid=\(H, W\), the patch grid"),
    ],
)
def test_bad_taylor_options_are_refused(options, message):
    with pytest.raises(NasError, match=message):
        kernels.get("taylor", head_dim=8, num_heads=2, **options)


def test_l2vit_without_its_cpe_has_no_branch_before_the_attention():
    assert kernels.get("l2vit", head_dim=8, num_heads=2, embed_dim=16).has_position
    bare = kernels.get("l2vit", head_dim=8, num_heads=2, embed_dim=16, cpe=False)
    assert not bare.has_position and bare.cpe is None
    with pytest.raises(NasError, match="cpe must be true or false"):
        kernels.get("l2vit", head_dim=8, num_heads=2, embed_dim=16, cpe="yes")


def test_taylor_compact_without_its_positional_encoding_needs_no_grid_and_other_forms_ignore_the_compact_options():
    plain = kernels.get("taylor", head_dim=8, num_heads=2, order=2, variant="compact", positional_encoding=False)
    q, k, v = qkv(1, 2, 16, 8, dtype=torch.float32)
    assert plain(q, k, v).shape == q.shape and plain.shortcut
    full = kernels.get("taylor", head_dim=8, num_heads=2, order=2, variant="full", shortcut=False)
    assert not full.shortcut and full.positional_encoding is None


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(NasError, match="has no option 'order'; its options: window_size, variant"):
        kernels.get("window", head_dim=8, num_heads=2, order=2)


@pytest.mark.parametrize("case", CASES)
def test_head_dim_mismatch_is_refused(case):
    module = build(case, 8, 2, (4, 4))
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
    module = kernels.get(name, head_dim=8, num_heads=2, grid=(4, 4), embed_dim=32)
    q, k, v = qkv(1, 2, 15, 8, dtype=torch.float32)
    with pytest.raises(NasError, match=r"grid \(H, W\) = \(4, 4\) holds 16 tokens, but q/k/v have N = 15"):
        module(q, k, v, (4, 4))
    with pytest.raises(NasError, match="needs the token grid"):
        module(q, k, v)


def test_registry_holds_the_seven_kernels():
    assert kernels.names() == ["softmax", "relu", "angular", "taylor", "focused", "l2vit", "window"]
    assert GRID_KERNELS == ["angular", "focused", "l2vit", "window"]


@pytest.mark.parametrize("blocks", [True, False])
def test_taylor_order2_full_both_forms_equal_the_reference(monkeypatch, blocks):
    """Issue 27: the symmetric d(d+1)/2 map (in blocks, used on large inputs on the CPU) and the d² map
    (small inputs) are one operator: forward and gradients equal the naive reference, with fewer heads than built."""
    from nas.kernels import naive, taylor

    monkeypatch.setattr(taylor, "BLOCKS_FROM", 1 if blocks else 2**62)
    module = kernels.get("taylor", head_dim=8, num_heads=4, order=2, variant="full")
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 15, 8, generator=generator, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out, ref = module(q, k, v), naive.reference(module, q, k, v, None)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(
        torch.autograd.grad(out.square().sum(), (q, k, v)), torch.autograd.grad(ref.square().sum(), (q, k, v))
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.slow  # compiles four small graphs
@pytest.mark.compat  # torch.library.custom_op under torch.compile: checked at torch's lower bound too
def test_a_compiled_depthwise_conv_equals_the_eager_one_in_either_layout_and_batch():
    """Under torch.compile the depthwise convs of L²ViT, FLatten and Castling are an opaque operator whose output
    layout the compiler is told beforehand (nas.kernels.base._opaque_depthwise_conv): batch 1 from tokens is the
    case where the eager convolution returns another layout than its channels-last input. Forward and gradients."""
    from nas.kernels.base import depthwise_conv

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 6, 3, padding=1, groups=6)
    for batch in (1, 2):
        for from_tokens in (True, False):
            x = (
                torch.randn(batch, 15, 4).transpose(1, 2).reshape(batch, 4, 3, 5)
                if from_tokens
                else torch.randn(batch, 4, 3, 5)
            )
            x.requires_grad_(True)
            results = []
            for fn in (depthwise_conv, torch.compile(depthwise_conv, fullgraph=True, dynamic=False)):
                out = fn(x, conv).reshape(batch, 4, 15).transpose(1, 2)  # back to tokens, as the kernels do
                results.append(
                    [out, *torch.autograd.grad((out * out.detach().roll(1)).sum(), [x, conv.weight, conv.bias])]
                )
            for a, b in zip(*results):
                torch.testing.assert_close(b, a, msg=lambda m, case=(batch, from_tokens): f"{case}: {m}")
            torch._dynamo.reset()


def test_the_opaque_depthwise_conv_runs_on_meta_and_fake_cuda_tensors_in_the_declared_layout():
    """The GPU path without a GPU: the operator the compiler sees (its fake implementation) answers for CUDA tensors with
    the input's device, shape and layout, and its forward and backward run on the meta device."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from nas.kernels.base import _opaque_depthwise_conv

    with FakeTensorMode():
        x = torch.randn(1, 15, 4, device="cuda").transpose(1, 2).reshape(1, 4, 3, 5)
        out = _opaque_depthwise_conv(x, torch.randn(4, 1, 3, 3, device="cuda"), None, 1, 1)
        assert out.device.type == "cuda" and out.shape == x.shape
        assert out.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 3, 5, device="meta", requires_grad=True)
    weight = torch.randn(4, 1, 3, 3, device="meta", requires_grad=True)
    bias = torch.randn(4, device="meta", requires_grad=True)
    out = _opaque_depthwise_conv(x, weight, bias, 1, 1)
    grads = torch.autograd.grad(out.sum(), [x, weight, bias])
    assert [g.shape for g in grads] == [x.shape, weight.shape, bias.shape] and all(
        g.device.type == "meta" for g in grads
    )
