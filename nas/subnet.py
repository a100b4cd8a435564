"""The standalone ViT of one `Arch`: plain modules, no slicing, no supernet code.

Parameter names follow timm's `VisionTransformer` (class_token=False, global_pool='avg'):
patch_embed.proj, pos_embed, blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
mlp.fc2}, fc_norm, head — plus blocks.i.attn.kernel.* for a kernel's own parameters (those of
its residual-stream branches included: the block adds `kernel.position(x)` before the attention and
`kernel.residual(x)` after it). The
head pools by averaging the tokens (no class token: kernels with depthwise convs need the
token grid), then applies fc_norm, as timm does with global_pool='avg'.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from torch import Tensor, nn

from nas.arch import Arch
from nas.errors import NasError
from nas.io import write_text
from nas.kernels import AttentionKernel
from nas.weights import load_weights, save_weights

LayerNorm = partial(nn.LayerNorm, eps=1e-6)  # timm ViT's norm layer


class Attention(nn.Module):
    """qkv projection -> attention kernel on (B, heads, N, head_dim) -> output projection."""

    def __init__(self, embed_dim: int, heads: int, head_dim: int, kernel: AttentionKernel) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(embed_dim, 3 * heads * head_dim)
        self.kernel = kernel
        self.proj = nn.Linear(heads * head_dim, embed_dim)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        batch, tokens, _ = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = self.kernel(q, k, v, grid)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, self.heads * self.head_dim))


class Block(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        heads: int,
        head_dim: int,
        hidden_dim: int,
        kernel: AttentionKernel,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(embed_dim)
        self.attn = Attention(embed_dim, heads, head_dim, kernel)
        self.norm2 = LayerNorm(embed_dim)
        self.mlp = Mlp(embed_dim, hidden_dim, act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        if self.attn.kernel.has_position:  # a kernel's branch before the attention (L²ViT's CPE)
            x = x + self.attn.kernel.position(x, grid)
        x = x + self.drop_path(self.attn(self.norm1(x), grid))
        if self.attn.kernel.has_residual:  # a kernel's residual-stream branch (L²ViT's LCM)
            x = x + self.drop_path(self.attn.kernel.residual(x, grid))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """A Vision Transformer whose every block can have its own kernel, heads and MLP width."""

    def __init__(self, arch: Arch, drop_path: float = 0.0) -> None:
        super().__init__()
        self.arch = arch
        self.grid = arch.grid
        e = arch.embed_dim
        self.patch_embed = PatchEmbed(arch.image_size, arch.patch_size, arch.in_chans, e)
        self.pos_embed = nn.Parameter(torch.zeros(1, arch.tokens, e))
        self.blocks = nn.ModuleList(
            Block(
                e,
                layer.heads,
                arch.head_dim,
                layer.hidden_dim(e),
                arch.kernel_spec(i).build(arch.head_dim, layer.heads, grid=arch.grid, embed_dim=e),
                drop_path,
            )
            for i, layer in enumerate(arch.layers)
        )
        self.fc_norm = LayerNorm(e)
        self.head = nn.Linear(e, arch.num_classes)
        trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def embed(self, x: Tensor) -> Tensor:
        """The stem: patch embedding plus position embedding, (B, C, H, W) -> (B, N, E)."""
        return self.patch_embed(x) + self.pos_embed

    def classify(self, tokens: Tensor) -> Tensor:
        """The head: average pooling, fc_norm, linear classifier, (B, N, E) -> (B, classes)."""
        return self.head(self.fc_norm(tokens.mean(dim=1)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x, self.grid)
        return self.classify(x)


# ---- safetensors I/O -------------------------------------------------------------------------


def save(model: ViT, directory: str | Path) -> None:
    """Write `arch.json` and `model.safetensors` (atomically) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_text(directory / "arch.json", model.arch.to_json() + "\n")
    save_weights(model.state_dict(), directory / "model.safetensors", metadata={"arch_digest": model.arch.digest})


def load(directory: str | Path) -> ViT:
    """Rebuild a standalone model from `arch.json` + `model.safetensors` (no pickle involved)."""
    directory = Path(directory)
    arch_path, weights_path = directory / "arch.json", directory / "model.safetensors"
    for path in (arch_path, weights_path):
        if not path.is_file():
            raise NasError(f"{path} does not exist; a model directory holds arch.json and model.safetensors")
    arch = Arch.from_json(arch_path.read_text(), str(arch_path))
    model = ViT(arch)
    state, metadata = load_weights(weights_path)
    if metadata.get("arch_digest") not in (None, arch.digest):
        raise NasError(
            f"{weights_path}: its weights are of arch {metadata['arch_digest']}, but {arch_path} describes {arch.digest} "
            "(files of two exports mixed); export the model again"
        )
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensor shapes of another arch
        raise NasError(f"{weights_path}: does not match {arch_path} ({str(error).splitlines()[0][:200]})") from None
    if missing or unexpected:
        raise NasError(
            f"{weights_path}: does not match {arch_path} (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model
