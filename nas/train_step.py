"""The pieces of one supernet training step, and what it shares with the other trainers.

The sandwich's forward and backward with in-place distillation (`sandwich_step`); AdamW
without decay on biases, norms and position tables, its linear warm-up then cosine decay
(`lr_at`), gradient clipping and the fp16 scaler (`optimizer_step`); data parallelism
(`Distributed`); timm's Mixup/CutMix, seeded per step (`make_mixup`, `mixed`); and the
annealing of the angular kernels' auxiliary branch (`angular_aux_at`, `set_angular_aux`),
also used by standalone and blockwise training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nas.arch import Arch
from nas.compute import CPU, Compute
from nas.config import TrainConfig
from nas.errors import NasError
from nas.kernels.angular import AngularAttention
from nas.supernet import SuperNet


@dataclass(frozen=True)
class Distributed:
    """Data parallelism across `world_size` ranks of an initialised torch.distributed group.

    Each rank takes its shard of every batch; gradients are averaged by one all-reduce
    after the sandwich's backward passes. All ranks sample the same subnets, so the set of
    parameters with a gradient is the same everywhere, and parameters no sampled subnet
    used (other kernels, wider slices) are skipped on all ranks alike.
    """

    rank: int
    world_size: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, positions: torch.Tensor) -> torch.Tensor:
        return positions[self.rank :: self.world_size]

    def all_reduce_max(self, tensor: torch.Tensor) -> None:
        import torch.distributed as td

        td.all_reduce(tensor, op=td.ReduceOp.MAX)

    def average_gradients(self, net: torch.nn.Module) -> None:
        import torch.distributed as td

        grads = [p.grad for p in net.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        td.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def lr_at(step: int, total: int, warmup: int, config: TrainConfig) -> float:
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def sandwich_step(
    net: SuperNet,
    archs: list[Arch],
    x: torch.Tensor,
    targets: torch.Tensor,
    distill: float,
    label_smoothing: float,
    compute: Compute = CPU,
    scaler=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of one sandwich step on one batch: the first arch on the targets
    (class indices or mixup's soft targets), the others on (1 − distill)·targets + distill·its
    soft predictions. Returns (summed loss, all finite) as device tensors: no host sync here,
    so it runs the same on a GPU, the meta device and fake tensors."""
    with compute.autocast():
        logits = net(x, archs[0])
    loss = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
    (scaler.scale(loss) if scaler else loss).backward()
    teacher = F.softmax(logits.detach().float(), dim=-1)
    total, finite = loss.detach(), torch.isfinite(loss)
    for arch in archs[1:]:
        with compute.autocast():
            student = net(x, arch).float()
        sub = distill * _soft_cross_entropy(student, teacher) + (1 - distill) * F.cross_entropy(
            student, targets, label_smoothing=label_smoothing
        )
        (scaler.scale(sub) if scaler else sub).backward()
        total, finite = total + sub.detach(), finite & torch.isfinite(sub)
    return total, finite


def _soft_cross_entropy(student: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    return -(teacher_probs * F.log_softmax(student, dim=-1)).sum(-1).mean()


def angular_aux_at(step: int, total: int, config: TrainConfig) -> float:
    """The angular kernels' auxiliary-branch weight at `step` of `total`: linear from `angular_aux` to 0."""
    end = config.angular_aux_until * total
    return 0.0 if end <= 0 else config.angular_aux * max(0.0, 1.0 - step / end)


def set_angular_aux(net: torch.nn.Module, weight: float) -> None:
    for module in net.modules():
        if isinstance(module, AngularAttention):
            module.aux_weight = weight


def make_optimizer(net: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    def decays(name: str, param: torch.Tensor) -> bool:  # as timm / Swin: no decay on biases, norms and position tables
        return param.ndim >= 2 and not any(
            key in name for key in ("pos_embed", "positional_encoding", "relative_position_bias")
        )

    decay = [p for n, p in net.named_parameters() if decays(n, p)]
    no_decay = [p for n, p in net.named_parameters() if not decays(n, p)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )


def optimizer_step(
    net: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler=None, dist: Distributed | None = None
) -> None:
    """Average the gradients across ranks, clip them and step (through the scaler for fp16)."""
    if dist is not None:
        dist.average_gradients(net)
    if scaler is not None:
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def make_mixup(config: TrainConfig, num_classes: int):
    """timm's Mixup/CutMix (None when both alphas are 0); it also smooths the labels."""
    if not (config.mixup or config.cutmix):
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=config.mixup,
        cutmix_alpha=config.cutmix,
        label_smoothing=config.label_smoothing,
        num_classes=num_classes,
    )


def mixed(mixup, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup/CutMix of one batch, its draws from `seed` (timm draws from NumPy's global RNG)."""
    import numpy as np

    if len(x) % 2:
        raise NasError(f"--mixup/--cutmix need an even batch on every worker (got {len(x)}); change --batch-size")
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        return mixup(x, y)
    finally:
        np.random.set_state(state)
