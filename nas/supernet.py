"""The weight-sharing supernet: one elastic ViT holding every arch of a search space.

Weight entanglement (AutoFormer / HAT): every width is the leading slice of the largest
weight — embed dim `[:e]`, attention heads `[:h·head_dim]` of each of q, k and v, MLP
hidden `[:hidden]` — and depth `d` uses the first d blocks. All kernels of a layer share
that layer's qkv / proj weights — or, in a space with `projections: kernel`, each kernel
choice has its own qkv / proj per layer (one group per kernel choice, widths still
entangled inside each group), which can be tied to the first group during a warm-up and
then split (`tie_projections`, `split_projections`); each kernel choice owns its small
parameters per (layer, kernel), built for the largest head count (and embed dim, for
residual-stream branches such as L²ViT's LCM and CPE) and sliced to the active heads (and
embed dim).
No norm layer keeps running statistics (LayerNorm, and the kernels' `ImageNorm`), so
nothing depends on which subnet ran last.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, PatchEmbed, trunc_normal_
from torch import Tensor, nn

from nas.arch import Arch, LayerChoice
from nas.space import SearchSpace
from nas.subnet import LayerNorm, ViT


class SuperBlock(nn.Module):
    def __init__(self, space: SearchSpace, drop_path: float = 0.0) -> None:
        super().__init__()
        e, h, d = max(space.embed_dim), max(space.heads), space.head_dim
        self.max_heads, self.head_dim = h, d
        self.norm1 = LayerNorm(e)
        labels = [spec.label for spec in space.kernel_choices()]
        self.grouped = space.projections == "kernel"
        self.tied = False  # grouped: every kernel choice uses the first group's projections (a shared warm-up)
        if self.grouped:
            self.qkv_groups = nn.ModuleDict({label: nn.Linear(e, 3 * h * d) for label in labels})
        else:
            self.qkv = nn.Linear(e, 3 * h * d)
        options = space.kernel_options
        self.kernels = nn.ModuleDict(
            {
                spec.label: spec.build(d, h, grid=space.grid, embed_dim=e, **options.get(spec.name, {}))
                for spec in space.kernel_choices()
            }
        )
        if self.grouped:
            self.proj_groups = nn.ModuleDict({label: nn.Linear(h * d, e) for label in labels})
        else:
            self.proj = nn.Linear(h * d, e)
        self.norm2 = LayerNorm(e)
        self.fc1 = nn.Linear(e, int(round(e * max(space.mlp_ratio))))
        self.fc2 = nn.Linear(self.fc1.out_features, e)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def projections(self, label: str) -> tuple[nn.Linear, nn.Linear]:
        """The qkv and proj layers that kernel choice `label` uses."""
        if not self.grouped:
            return self.qkv, self.proj
        if self.tied:
            label = next(iter(self.qkv_groups))
        return self.qkv_groups[label], self.proj_groups[label]

    def active_state(self, layer: LayerChoice, embed_dim: int) -> dict[str, Tensor]:
        """This block's weights for `layer` at `embed_dim`, named as in `subnet.Block`
        (kernel parameters excluded: the kernel slices them itself)."""
        e, width, hidden = embed_dim, layer.heads * self.head_dim, layer.hidden_dim(embed_dim)
        full = self.max_heads * self.head_dim
        qkv, proj = self.projections(layer.kernel_spec.label)
        return {
            "norm1.weight": self.norm1.weight[:e],
            "norm1.bias": self.norm1.bias[:e],
            # qkv rows are [q heads | k heads | v heads]: keep the leading heads of each.
            "attn.qkv.weight": qkv.weight.view(3, full, -1)[:, :width, :e].reshape(3 * width, e),
            "attn.qkv.bias": qkv.bias.view(3, full)[:, :width].reshape(3 * width),
            "attn.proj.weight": proj.weight[:e, :width],
            "attn.proj.bias": proj.bias[:e],
            "norm2.weight": self.norm2.weight[:e],
            "norm2.bias": self.norm2.bias[:e],
            "mlp.fc1.weight": self.fc1.weight[:hidden, :e],
            "mlp.fc1.bias": self.fc1.bias[:hidden],
            "mlp.fc2.weight": self.fc2.weight[:e, :hidden],
            "mlp.fc2.bias": self.fc2.bias[:e],
        }

    def forward(self, x: Tensor, layer: LayerChoice, grid: tuple[int, int]) -> Tensor:
        batch, tokens, e = x.shape
        w = self.active_state(layer, e)
        heads = layer.heads
        kernel = self.kernels[layer.kernel_spec.label]
        if kernel.has_position:  # on the leading e channels of the kernel's weights, before the attention
            x = x + kernel.position(x, grid)
        y = F.layer_norm(x, (e,), w["norm1.weight"], w["norm1.bias"], self.norm1.eps)
        qkv = F.linear(y, w["attn.qkv.weight"], w["attn.qkv.bias"])
        q, k, v = qkv.reshape(batch, tokens, 3, heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = kernel(q, k, v, grid).transpose(1, 2).reshape(batch, tokens, heads * self.head_dim)
        x = x + self.drop_path(F.linear(out, w["attn.proj.weight"], w["attn.proj.bias"]))
        if kernel.has_residual:  # on the leading e channels of the kernel's residual-stream weights
            x = x + self.drop_path(kernel.residual(x, grid))
        y = F.layer_norm(x, (e,), w["norm2.weight"], w["norm2.bias"], self.norm2.eps)
        y = F.linear(
            F.gelu(F.linear(y, w["mlp.fc1.weight"], w["mlp.fc1.bias"])), w["mlp.fc2.weight"], w["mlp.fc2.bias"]
        )
        return x + self.drop_path(y)


class SuperNet(nn.Module):
    """`forward(x, arch)` runs the subnet `arch` of `space` with the shared weights."""

    def __init__(self, space: SearchSpace, drop_path: float = 0.0) -> None:
        super().__init__()
        self.space = space
        e = max(space.embed_dim)
        self.patch_embed = PatchEmbed(space.image_size, space.patch_size, space.in_chans, e)
        self.pos_embed = nn.Parameter(trunc_normal_(torch.zeros(1, space.tokens, e), std=0.02))
        self.blocks = nn.ModuleList(SuperBlock(space, drop_path) for _ in range(max(space.depth)))
        self.fc_norm = LayerNorm(e)
        self.head = nn.Linear(e, space.num_classes)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        if space.projections == "kernel":  # every group of a layer starts from the same weights: the first group's
            with torch.no_grad():
                for block in self.blocks:
                    for groups in (block.qkv_groups, block.proj_groups):
                        first = next(iter(groups.values()))
                        for layer in groups.values():
                            layer.weight.copy_(first.weight)
                            layer.bias.copy_(first.bias)

    def tie_projections(self, tied: bool) -> None:
        """Grouped projections: with `tied`, every kernel choice trains and runs on the first group's."""
        for block in self.blocks:
            block.tied = tied and block.grouped

    def split_projections(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """End of the shared warm-up: every group becomes a copy of the first group's weights and
        of its optimizer state (so each starts where the shared training stopped), then untied."""
        with torch.no_grad():
            for block in self.blocks:
                if not block.grouped:
                    continue
                for groups in (block.qkv_groups, block.proj_groups):
                    first = next(iter(groups.values()))
                    for layer in list(groups.values())[1:]:
                        for name in ("weight", "bias"):
                            getattr(layer, name).copy_(getattr(first, name))
                            if optimizer is not None and getattr(first, name) in optimizer.state:
                                optimizer.state[getattr(layer, name)] = {
                                    k: v.clone() if torch.is_tensor(v) else v
                                    for k, v in optimizer.state[getattr(first, name)].items()
                                }
        self.tie_projections(False)

    def active_state(self, arch: Arch) -> dict[str, Tensor]:
        """The subnet's weights (views into the supernet's), named as in `subnet.ViT`."""
        e = arch.embed_dim
        state = {
            "patch_embed.proj.weight": self.patch_embed.proj.weight[:e],
            "patch_embed.proj.bias": self.patch_embed.proj.bias[:e],
            "pos_embed": self.pos_embed[..., :e],
            "fc_norm.weight": self.fc_norm.weight[:e],
            "fc_norm.bias": self.fc_norm.bias[:e],
            "head.weight": self.head.weight[:, :e],
            "head.bias": self.head.bias,
        }
        for i, layer in enumerate(arch.layers):
            block = self.blocks[i]
            state.update({f"blocks.{i}.{name}": t for name, t in block.active_state(layer, e).items()})
            kernel = block.kernels[layer.kernel_spec.label]
            state.update({f"blocks.{i}.attn.kernel.{name}": t for name, t in kernel.named_parameters()})
        return state

    def forward(self, x: Tensor, arch: Arch) -> Tensor:
        e = arch.embed_dim
        conv = self.patch_embed.proj
        x = F.conv2d(x, conv.weight[:e], conv.bias[:e], stride=conv.stride).flatten(2).transpose(1, 2)
        x = x + self.pos_embed[..., :e]
        for block, layer in zip(self.blocks, arch.layers):
            x = block(x, layer, arch.grid)
        x = F.layer_norm(x.mean(dim=1), (e,), self.fc_norm.weight[:e], self.fc_norm.bias[:e], self.fc_norm.eps)
        return F.linear(x, self.head.weight[:, :e], self.head.bias)


def extract(supernet: SuperNet, arch: Arch) -> ViT:
    """The standalone model of `arch` with the supernet's (sliced) weights copied in."""
    arch = supernet.space.validate(arch)
    model = ViT(arch)
    target = model.state_dict()
    source = supernet.active_state(arch)
    state = {}
    for name, tensor in target.items():
        value = source[name]
        if value.shape != tensor.shape:  # kernel parameters: leading slice for the active heads
            value = value[tuple(slice(0, size) for size in tensor.shape)]
        state[name] = value.detach().clone()
    model.load_state_dict(state, strict=True)
    return model
