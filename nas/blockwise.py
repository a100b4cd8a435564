"""Block-wise local distillation: a second estimator of the accuracy axis, beside the supernet (DNA, Puzzle).

One standalone **parent** per embed dim of a space — its widest and deepest arch at that embed dim, softmax in
every layer — is trained from scratch with the ground truth's recipe (`nas.standalone`). For each of a parent's
layers, every kernel choice of the space gets a **student block**: the supernet's elastic block
(`nas.supernet.SuperBlock`) for that one kernel choice at that embed dim, heads and MLP width entangled inside it,
warm-started from the parent's block (norms, q/k/v, proj, MLP; the kernel's own parameters fresh) and trained to
reproduce the parent block's output from the parent block's input (mean squared error, the sandwich of widths at
every step; the parent is frozen). Nothing downstream is trained, so each student learns from every step, and a
kernel is judged by how well it can stand in for softmax at one place in a trained network — not by how a shared
set of weights happens to suit it.

Then every **replacement** is scored: the parent's validation top-1 with block i replaced by one student at one
width (or skipped, for the layers that shallower archs of the space do not have). An arch is predicted as its embed
dim's parent accuracy plus the sum of its layers' changes (an additive model of replace-one-block scores, as
Puzzle and MathNAS score blocks): `predict(arch, table)`. The table holds
embed_dims × max depth × (kernel choices × heads × MLP ratios + skip) figures and scores any arch of the space
without running a model.

Model code only: torch and the model modules, no Ray or Optuna.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.arch import Arch, LayerChoice, _number
from nas.errors import NasError
from nas.kernels import KernelSpec
from nas.space import SearchSpace
from nas.subnet import ViT
from nas.supernet import SuperBlock

PARENT_KERNEL = "softmax"
SKIP = "skip"  # a layer an arch does not have: the identity in the parent's residual stream


@dataclass(frozen=True)
class LocalRecipe:
    """Training of one layer's student blocks: AdamW with cosine decay, the sandwich of widths (the largest, the
    smallest and `random_widths` random ones) at every step, Castling-ViT's auxiliary branch for angular students
    as `nas train` uses it."""

    epochs: int = 1  # passes over the training images (20,000 on odd-one-out: ~3.5 min per layer on 2 cores)
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    random_widths: int = 1
    angular_aux: float = 1.0
    angular_aux_until: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


def parent_arch(space: SearchSpace, embed_dim: int) -> Arch:
    """The parent of `embed_dim`: softmax in every layer, the space's most heads, largest MLP ratio and depth."""
    layer = space.make_layer(KernelSpec(PARENT_KERNEL), max(space.heads), max(space.mlp_ratio))
    return space.make_arch(embed_dim, [layer] * max(space.depth))


def choice_key(layer: LayerChoice) -> str:
    """A layer choice's key in the table: `<kernel label>/h<heads>/m<mlp ratio>`."""
    return f"{layer.kernel_spec.label}/h{layer.heads}/m{_number(layer.mlp_ratio)}"


def widths(space: SearchSpace) -> list[tuple[int, float]]:
    """Every (heads, MLP ratio) of the space, largest first, smallest last."""
    return [(h, m) for h in sorted(space.heads, reverse=True) for m in sorted(space.mlp_ratio, reverse=True)]


def block_space(space: SearchSpace, embed_dim: int, spec: KernelSpec) -> SearchSpace:
    """`space` narrowed to one embed dim and one kernel choice: a `SuperBlock` of it is one student block."""
    narrowed = replace(
        space,
        embed_dim=(embed_dim,),
        kernels=(spec.name,),
        projections="shared",
        choice_limits={spec.name: {key: (value,) for key, value in spec.options.items()}},
    )
    if [c.label for c in narrowed.kernel_choices()] != [spec.label]:
        raise NasError(f"kernel choice {spec.label}: the space cannot be narrowed to it alone")
    return narrowed


class Students(nn.Module):
    """The student blocks of one parent layer: one elastic block per kernel choice of the space."""

    def __init__(self, space: SearchSpace, parent: ViT, layer: int) -> None:
        super().__init__()
        self.space, self.layer, self.grid = space, layer, parent.grid
        self.specs = {spec.label: spec for spec in space.kernel_choices()}
        self.blocks = nn.ModuleDict(
            {label: SuperBlock(block_space(space, parent.arch.embed_dim, spec)) for label, spec in self.specs.items()}
        )
        self.warm_start(parent.blocks[layer])

    @torch.no_grad()
    def warm_start(self, source: nn.Module) -> None:
        """Every student's norms, q/k/v, proj and MLP become copies of the parent block's (same shapes: the parent
        is the widest arch); a kernel's own parameters keep their initialisation."""
        pairs = {
            "norm1": source.norm1,
            "qkv": source.attn.qkv,
            "proj": source.attn.proj,
            "norm2": source.norm2,
            "fc1": source.mlp.fc1,
            "fc2": source.mlp.fc2,
        }
        for block in self.blocks.values():
            for name, module in pairs.items():
                target = getattr(block, name)
                if target.weight.shape != module.weight.shape:
                    raise NasError(
                        f"student {name} {tuple(target.weight.shape)} vs parent {tuple(module.weight.shape)}: "
                        "the parent must be the space's widest arch at this embed dim"
                    )
                target.weight.copy_(module.weight)
                target.bias.copy_(module.bias)

    def forward(self, x: Tensor, layer: LayerChoice) -> Tensor:
        return self.blocks[layer.kernel_spec.label](x, layer, self.grid)

    def choice(self, label: str, heads: int, mlp_ratio: float) -> LayerChoice:
        return self.space.make_layer(self.specs[label], heads, mlp_ratio)


def tokens_before(parent: ViT, x: Tensor, layer: int) -> Tensor:
    """The residual stream entering the parent's block `layer`."""
    tokens = parent.embed(x)
    for block in parent.blocks[:layer]:
        tokens = block(tokens, parent.grid)
    return tokens


def sandwich(space: SearchSpace, rng: random.Random, extra: int) -> list[tuple[int, float]]:
    """The largest, the smallest and `extra` random widths (distinct where the space has enough)."""
    every = widths(space)
    chosen = [every[0], every[-1]] if len(every) > 1 else [every[0]]
    middle = [w for w in every if w not in chosen]
    chosen += rng.sample(middle, min(extra, len(middle)))
    return chosen


def train_students(
    parent: ViT,
    layer: int,
    space: SearchSpace,
    dataset,
    recipe: LocalRecipe,
    seed: int,
    progress: Callable[[str], None] | None = None,
) -> tuple[Students, list[float]]:
    """Train the students of the parent's block `layer` by local distillation; the students and the mean loss of
    each epoch (summed over kernel choices and the step's widths). Deterministic for (parent, layer, recipe, seed)."""
    from nas.config import TrainConfig
    from nas.train_step import angular_aux_at, set_angular_aux

    torch.manual_seed(seed * 1000 + layer)
    students = Students(space, parent, layer)
    parent.eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(students.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    per_epoch = max(1, dataset.size("train") // recipe.batch_size)
    total = recipe.epochs * per_epoch
    batches = torch.Generator().manual_seed(seed * 1000 + layer)
    rng = random.Random(f"blockwise:{seed}:{layer}")
    aux = TrainConfig(angular_aux=recipe.angular_aux, angular_aux_until=recipe.angular_aux_until)
    losses: list[float] = []
    step = 0
    students.train()
    for epoch in range(recipe.epochs):
        order = torch.randperm(dataset.size("train"), generator=batches)
        running = 0.0
        for b in range(per_epoch):
            x, _ = dataset.batch("train", order[b * recipe.batch_size : (b + 1) * recipe.batch_size], batches)
            with torch.no_grad():
                inputs = tokens_before(parent, x, layer)
                target = parent.blocks[layer](inputs, parent.grid)
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            set_angular_aux(students, angular_aux_at(step, total, aux))
            loss = sum(
                F.mse_loss(students(inputs, students.choice(label, h, m)), target)
                for h, m in sandwich(space, rng, recipe.random_widths)
                for label in students.specs
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item()
            step += 1
        losses.append(round(running / per_epoch, 6))
        if progress:
            progress(f"  layer {layer}: epoch {epoch + 1}/{recipe.epochs}, local loss {losses[-1]:.5f}")
    set_angular_aux(students, 0.0)
    students.eval()
    return students, losses


@torch.no_grad()
def layer_scores(
    parent: ViT, students: Students, dataset, split: str = "val", batch_size: int = 256
) -> dict[str, float]:
    """Validation top-1 of the parent with block `students.layer` replaced by each student at each width, and
    skipped where shallower archs of the space lack the layer: `choice_key -> top1` (and `skip -> top1`)."""
    layer, space = students.layer, students.space
    n = dataset.size(split)
    plan = [(torch.arange(start, min(start + batch_size, n)), None) for start in range(0, n, batch_size)]
    parent.eval()
    cached = [(tokens_before(parent, x, layer), y) for x, y in dataset.batches(split, plan)]

    def top1(block: Callable[[Tensor], Tensor]) -> float:
        correct = 0
        for tokens, y in cached:
            tokens = block(tokens)
            for later in parent.blocks[layer + 1 :]:
                tokens = later(tokens, parent.grid)
            correct += (parent.classify(tokens).argmax(-1) == y).sum().item()
        return round(correct / n, 6)

    scores = {}
    for label in students.specs:
        for heads, ratio in widths(space):
            choice = students.choice(label, heads, ratio)
            scores[choice_key(choice)] = top1(lambda tokens, c=choice: students(tokens, c))
    if layer >= min(space.depth):
        scores[SKIP] = top1(lambda tokens: tokens)
    return scores


def predict(arch: Arch, table: dict[int, dict]) -> float:
    """An arch's predicted validation top-1: its embed dim's parent accuracy plus, for every layer of the parent,
    the change its choice there (or the skip, past the arch's depth) made alone. `table`: embed_dim ->
    {"parent": top1, "layers": [{choice_key or "skip": top1}, ...]}."""
    if arch.embed_dim not in table:
        raise NasError(f"arch embed_dim {arch.embed_dim}: the block-wise table holds embed dims {sorted(table)} only")
    entry = table[arch.embed_dim]
    base, layers = entry["parent"], entry["layers"]
    if arch.depth > len(layers):
        raise NasError(f"arch depth {arch.depth}: the block-wise table's parents have {len(layers)} layers")
    total = base
    for i, scores in enumerate(layers):
        key = choice_key(arch.layers[i]) if i < arch.depth else SKIP
        if key not in scores:
            raise NasError(f"arch layer {i} ({key}): not in the block-wise table; it was made for another space")
        total += scores[key] - base
    return total
