"""timm interop: softmax-only archs <-> timm's `VisionTransformer`, and any exported
arch through `timm.create_model("vit_nas", ...)`.

Our standalone `ViT` uses timm's parameter names, so conversion is a state-dict copy once
the shapes agree. An arch maps onto timm's VisionTransformer (class_token=False,
global_pool='avg') when every layer is softmax with the same heads and MLP ratio and
heads·head_dim = embed_dim (timm's attention width is the embed dim).

`import nas` registers the timm model `vit_nas` (as soon as timm is imported):

    import nas, timm
    model = timm.create_model("vit_nas", pretrained=True, pretrained_cfg_overlay=dict(file="export/model.safetensors"))
"""

from __future__ import annotations

import json
from pathlib import Path

from timm.models.vision_transformer import VisionTransformer

from nas.arch import Arch, LayerChoice
from nas.errors import NasError
from nas.subnet import ViT


def vit_nas(
    pretrained: bool = False,
    arch: Arch | dict | str | Path | None = None,
    pretrained_cfg=None,
    pretrained_cfg_overlay=None,
    **kwargs,
) -> ViT:
    """timm entry point `vit_nas` (registered by `import nas`) for an exported arch.

    - `timm.create_model("vit_nas", pretrained=True, pretrained_cfg_overlay=dict(file="<export>/model.safetensors"))`
      or `timm.create_model("local-dir:<export>", pretrained=True)` (timm reads the export's config.json): the export's
      arch and weights (their SHA-256 checked), as `nas.load` gives them;
    - `timm.create_model("vit_nas", arch=<Arch, its dict, arch.json or an export directory>)`: that arch, fresh weights
      (timm's `checkpoint_path=` loads a safetensors file into it)."""
    from nas.subnet import load

    file = _cfg_file(pretrained_cfg_overlay) or _cfg_file(pretrained_cfg)
    folder = None if file is None else (Path(file) if Path(file).is_dir() else Path(file).parent)
    if pretrained and folder is None:
        raise NasError(
            "vit_nas has no hub weights: pass pretrained_cfg_overlay=dict(file='<export>/model.safetensors'), or create "
            "'local-dir:<export>'"
        )
    unused = [k for k in kwargs if k not in ("cache_dir", "pretrained_model_args")]
    if unused:
        raise NasError(f"vit_nas takes arch= only; the arch fixes {', '.join(unused)}")
    if arch is None and folder is None:
        raise NasError(
            "timm.create_model('vit_nas', ...) needs arch=<arch.json or export directory>, or pretrained=True with "
            "pretrained_cfg_overlay=dict(file='<export>/model.safetensors')"
        )
    metadata = {}
    if pretrained:
        model = load(folder)
        arch = model.arch
        metadata = _metadata(folder)
    else:
        if arch is None or isinstance(arch, (str, Path)):
            path = (
                folder / "arch.json"
                if arch is None
                else Path(arch) / "arch.json"
                if Path(arch).is_dir()
                else Path(arch)
            )
            arch = Arch.from_json(path.read_text(), str(path))
            metadata = _metadata(path.parent)
        elif isinstance(arch, dict):
            arch = Arch.from_dict(arch)
        model = ViT(arch)
    model.pretrained_cfg = model.default_cfg = data_cfg(arch, metadata)
    return model


def _cfg_file(cfg) -> str | None:
    """The `file` of a timm pretrained config (a dict, a timm PretrainedCfg, or None)."""
    value = cfg.get("file") if isinstance(cfg, dict) else getattr(cfg, "file", None)
    return str(value) if value else None


def _metadata(folder: Path) -> dict:
    path = folder / "metadata.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def timm_config(arch: Arch, metadata: dict) -> dict:
    """An export's config.json, as timm's `local-dir:` and Hugging Face loaders read it: the architecture,
    its class count and its pretrained config (input size, crop, mean/std, class names)."""
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in data_cfg(arch, metadata).items()}
    return {
        "architecture": "vit_nas",
        "num_classes": arch.num_classes,
        "num_features": arch.embed_dim,
        "global_pool": "avg",
        "pretrained_cfg": cfg,
    }


def data_cfg(arch: Arch, metadata: dict) -> dict:
    """timm's data config of an export (what `timm.data.resolve_data_config(model=...)` reads): input size,
    interpolation and crop from the arch and the export's metadata.json, mean/std of the training data and
    class names where the export recorded them (an arch alone has no mean/std: timm then assumes ImageNet's)."""
    cfg = {
        "architecture": "vit_nas",
        "input_size": (arch.in_chans, arch.image_size, arch.image_size),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "num_classes": arch.num_classes,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }
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
        raise NasError(
            "from_timm needs a VisionTransformer with class_token=False, no register tokens and global_pool='avg'"
        )
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
        raise NasError(
            f"timm model does not map onto a standalone ViT (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.train(vit.training)
