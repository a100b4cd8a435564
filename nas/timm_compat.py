"""timm interop: softmax-only archs <-> timm's `VisionTransformer`, and any exported
arch through `timm.create_model("vit_nas", ...)`.

Our standalone `ViT` uses timm's parameter names, so conversion is a state-dict copy once
the shapes agree. An arch maps onto timm's VisionTransformer (class_token=False,
global_pool='avg') when every layer is softmax with the same heads and MLP ratio and
heads·head_dim = embed_dim (timm's attention width is the embed dim).

Importing this module registers the timm model `vit_nas`:

    import nas.timm_compat, timm
    model = timm.create_model("vit_nas", arch="export/arch.json", checkpoint_path="export/model.safetensors")
"""

from __future__ import annotations

import json
from pathlib import Path

from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

from nas.arch import Arch, LayerChoice
from nas.errors import NasError
from nas.subnet import ViT


@register_model
def vit_nas(pretrained: bool = False, arch: Arch | dict | str | Path | None = None, **kwargs) -> ViT:
    """timm entry point for an exported arch: `arch` is an Arch, its dict, an arch.json path
    or an export directory. Weights come through timm's `checkpoint_path=` (safetensors)."""
    if pretrained:
        raise NasError("vit_nas has no hub weights; pass checkpoint_path='<export>/model.safetensors'")
    if arch is None:
        raise NasError("timm.create_model('vit_nas', ...) needs arch=<arch.json or export directory>")
    metadata = {}
    if isinstance(arch, (str, Path)):
        path = Path(arch) / "arch.json" if Path(arch).is_dir() else Path(arch)
        arch = Arch.from_json(path.read_text(), str(path))
        if (path.parent / "metadata.json").is_file():
            metadata = json.loads((path.parent / "metadata.json").read_text())
    elif isinstance(arch, dict):
        arch = Arch.from_dict(arch)
    unused = [k for k in kwargs if not k.startswith("pretrained_cfg") and k not in ("cache_dir",)]
    if unused:
        raise NasError(f"vit_nas takes arch= only; the arch fixes {', '.join(unused)}")
    model = ViT(arch)
    model.pretrained_cfg = model.default_cfg = pretrained_cfg(arch, metadata)
    return model


def pretrained_cfg(arch: Arch, metadata: dict) -> dict:
    """timm's data config of an export (what `timm.data.resolve_data_config(model=...)` reads): input size,
    interpolation and crop from the arch and the export's metadata.json, mean/std of the training data and
    class names where the export recorded them (an arch alone has no mean/std: timm then assumes ImageNet's)."""
    cfg = {"architecture": "vit_nas", "input_size": (arch.in_chans, arch.image_size, arch.image_size), "interpolation": "bilinear",
           "crop_pct": 1.0, "crop_mode": "center", "num_classes": arch.num_classes, "first_conv": "patch_embed.proj", "classifier": "head"}
    prep = metadata.get("preprocessing") or {}
    for key in ("interpolation", "crop_pct", "crop_mode"):
        if key in prep:
            cfg[key] = prep[key]
    if "mean" in prep and "std" in prep:
        cfg["mean"], cfg["std"] = tuple(prep["mean"]), tuple(prep["std"])
    if metadata.get("classes"):
        cfg["label_names"] = list(metadata["classes"])
    return cfg


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

