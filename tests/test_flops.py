"""FLOP counts: DeiT-Tiny's published figure, and linear kernels that grow linearly in N."""

from __future__ import annotations

import pytest

from nas import flops, kernels
from nas.space_file import load_space


def test_deit_tiny_softmax_arch_matches_the_published_126_gflops():
    arch = load_space("deit-tiny").largest()  # embed 192, depth 12, 3 heads of 64, MLP ratio 4
    assert (arch.embed_dim, arch.depth, arch.layers[0].heads, arch.layers[0].mlp_ratio) == (192, 12, 3, 4)
    cost = flops.count(arch)
    assert abs(cost.gflops - 1.26) / 1.26 <= 0.03, cost
    assert abs(cost.params - 5.7e6) / 5.7e6 <= 0.02  # DeiT-Tiny: 5.7 M (ours has no class token)
    # The SDPA handle is what closes the gap over plain fvcore (1.08 G): 12 layers × 2·N²·C.
    assert cost.kernel_macs == 12 * 2 * 196 * 196 * 192


@pytest.mark.parametrize("spec", [s for s in kernels.variants() if s.name not in ("softmax",)], ids=lambda s: s.label)
def test_linear_and_window_kernels_grow_linearly_in_tokens(spec):
    kernel = spec.build(32, 4, grid=(32, 32), embed_dim=128, **({"window_size": 8} if spec.name == "window" else {}))
    small, large = kernel.macs(4, (32, 32)), kernel.macs(4, (64, 64))
    assert large == pytest.approx(4 * small, rel=1e-9)


def test_softmax_grows_quadratically():
    kernel = kernels.get("softmax", head_dim=32, num_heads=4)
    assert kernel.macs(4, (64, 64)) == 16 * kernel.macs(4, (32, 32))


def test_kernel_choice_changes_the_count_of_an_arch():
    space = load_space("hires")
    by_kernel = {spec.label: flops.count(space.smallest(kernel=spec)).macs for spec in space.kernel_choices()}
    assert by_kernel["relu"] < by_kernel["softmax"]
    assert by_kernel["taylor-o2-full"] > by_kernel["taylor-o2-compact"]


def test_a_kernels_residual_stream_branch_is_counted():
    """L²ViT's LCM and CPE run on the residual stream, outside the kernel's formula: fvcore counts the LCM's two
    depthwise 7×7 convs (E·N·49 MACs each), the CPE's 3×3 one (E·N·9) and the norms, so an l2vit layer costs them
    more than a relu layer (same φ)."""
    space = load_space("digits-tiny")
    spec = {s.label: s for s in space.kernel_choices()}
    l2vit, relu = (flops.count(space.smallest(kernel=spec[label])) for label in ("l2vit", "relu"))
    arch = space.smallest(kernel=spec["l2vit"])
    convs = arch.depth * (2 * 49 + 9) * arch.embed_dim * arch.tokens
    attention = sum(
        kernels.get("l2vit", arch.head_dim, layer.heads, embed_dim=arch.embed_dim).macs(layer.heads, arch.grid)
        - kernels.get("relu", arch.head_dim, layer.heads).macs(layer.heads, arch.grid)
        for layer in arch.layers
    )
    assert l2vit.macs - relu.macs >= convs + attention
    assert (
        l2vit.macs - relu.macs <= convs + attention + arch.depth * 2 * 5 * arch.embed_dim * arch.tokens
    )  # + two norms (fvcore: 5 per element)
