"""Softmax-only archs <-> timm's `VisionTransformer` (class_token=False, global_pool='avg').

Our standalone `ViT` uses timm's parameter names, so conversion is a state-dict copy once
the shapes agree. An arch maps onto timm when every layer is softmax with the same heads
and MLP ratio and heads·head_dim = embed_dim (timm's attention width is the embed dim).
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer

from nas.arch import Arch, LayerChoice
from nas.errors import NasError
from nas.subnet import ViT


def check_timm_compatible(arch: Arch) -> None:
    first = arch.layers[0]
    if any(layer.kernel != "softmax" for layer in arch.layers):
        raise NasError("only softmax-only archs map onto timm's VisionTransformer (its attention is softmax)")
    if any((layer.heads, layer.mlp_ratio) != (first.heads, first.mlp_ratio) for layer in arch.layers):
        raise NasError("timm's VisionTransformer needs the same heads and mlp_ratio in every layer")
    if first.heads * arch.head_dim != arch.embed_dim:
        raise NasError(
            f"timm's attention width is embed_dim: heads × head_dim = {first.heads} × {arch.head_dim} "
            f"must equal embed_dim = {arch.embed_dim}"
        )


def to_timm(model: ViT) -> VisionTransformer:
    """A timm VisionTransformer with the same weights and the same logits."""
    arch = model.arch
    check_timm_compatible(arch)
    first = arch.layers[0]
    vit = VisionTransformer(
        img_size=arch.image_size,
        patch_size=arch.patch_size,
        in_chans=arch.in_chans,
        num_classes=arch.num_classes,
        global_pool="avg",
        class_token=False,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=first.heads,
        mlp_ratio=first.mlp_ratio,
        qkv_bias=True,
    )
    vit.load_state_dict(model.state_dict(), strict=True)
    return vit.train(model.training)


def from_timm(vit: VisionTransformer) -> ViT:
    """Our standalone ViT from a timm VisionTransformer built with class_token=False, global_pool='avg'."""
    if vit.cls_token is not None or getattr(vit, "reg_token", None) is not None or vit.global_pool != "avg":
        raise NasError("from_timm needs a VisionTransformer with class_token=False, no register tokens and global_pool='avg'")
    block = vit.blocks[0]
    embed_dim = vit.embed_dim
    layer = LayerChoice("softmax", heads=block.attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / embed_dim)
    arch = Arch(
        embed_dim=embed_dim,
        depth=len(vit.blocks),
        layers=(layer,) * len(vit.blocks),
        image_size=vit.patch_embed.img_size[0],
        patch_size=vit.patch_embed.patch_size[0],
        in_chans=vit.patch_embed.proj.in_channels,
        num_classes=vit.num_classes,
        head_dim=block.attn.head_dim,
    )
    model = ViT(arch)
    missing, unexpected = model.load_state_dict(vit.state_dict(), strict=False)
    if missing or unexpected:
        raise NasError(f"timm model does not map onto a standalone ViT (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.train(vit.training)


@torch.no_grad()
def same_logits(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    """Largest absolute logit difference of two models on `x` (eval mode)."""
    return (a.eval()(x) - b.eval()(x)).abs().max().item()
