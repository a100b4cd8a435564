"""Sandwich-rule supernet training with in-place distillation.

Every step trains, on one batch: the largest subnet (softmax everywhere, widest, deepest)
on the labels; the smallest widths (with a random kernel per layer, so every kernel is
trained at the narrowest width) and `random_subnets` uniformly sampled subnets on the
largest's detached soft predictions (in-place distillation). AdamW with linear warm-up
then cosine decay.

Distillation weight: a young teacher predicts nearly uniform classes; distilling from it
pushes the students, whose head and embedding are the teacher's own weights, towards flat
outputs, and the teacher follows. On digits pure distillation collapsed the supernet to
chance (val accuracy 0.13 after 200 steps, 0.92 with labels at 400); so the subnets' loss
is (1 − λ)·CE(labels) + λ·KD, with λ rising linearly from 0 to `distill_weight` (0.5)
over the first `distill_ramp` share of the steps (0.90 at 400 steps, no collapse).

Castling-ViT's recipe: the `angular` layers train with their auxiliary masked-softmax
branch, weighted `angular_aux` (1, as the authors' `sparse_reg`) at step 0 and annealed
linearly to 0 at `angular_aux_until` (half) of the steps; from there on, as in evaluation,
latency tables and exports, the branch is never computed (`angular_aux_at`).

Determinism: the subnets, the augmentation and drop-path of step s depend only on
(seed, s), and the batch order of an epoch only on (seed, epoch) — so data-parallel
ranks sample the same subnets, and a resumed run equals an uninterrupted one.

Run directory: `supernet.safetensors` (weights), `train_state.pt` (optimizer, and
the fp16 gradient scaler's state; tensors and plain containers only, loaded with weights_only=True),
`train_state.json` (progress and final accuracies), `split.json`, `config.yaml`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from nas.arch import Arch
from nas.compute import CPU, Compute
from nas.config import TrainConfig
from nas.data import check_split, save_split
from nas.dataset import Dataset
from nas.errors import NasError
from nas.io import atomic_path, write_json, write_text
from nas.kernels.angular import AngularAttention
from nas.rundir import CONFIG, SPLIT, STATE, STATE_JSON, WEIGHTS, space_record
from nas.space import SearchSpace
from nas.supernet import SuperNet
from nas.weights import load_weights, save_weights


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


def format_epoch(record: dict) -> str:
    """One progress line per epoch (CLI, pipeline and Ray trainer alike)."""
    skipped = f", {record['skipped_steps']} non-finite steps skipped" if record.get("skipped_steps") else ""
    return (
        f"epoch {record['epoch']}/{record['epochs']}  loss {record['loss']:.3f}  val acc largest "
        f"{record['val_largest']:.3f} smallest {record['val_smallest']:.3f}  ({record['seconds']:.1f} s{skipped}, "
        f"ETA {(record['epochs'] - record['epoch']) * record['seconds'] / 60:.1f} min)"
    )


def step_rng(seed: int, step: int) -> random.Random:
    """The RNG of one step: the same on every data-parallel rank, and after a resume."""
    return random.Random(f"nas-train:{seed}:{step}")


TEACHERS = ("fair", "softmax")


def sandwich(space: SearchSpace, rng: random.Random, random_subnets: int, teacher: str = "fair") -> list[Arch]:
    """[largest widths, smallest widths, random subnets...] for one step.

    The smallest widths take a random kernel per layer. The largest widths (trained on the
    labels, the teacher of the others) take softmax everywhere with teacher="softmax", or a
    random kernel per layer with teacher="fair": then every kernel is trained on the labels
    at full width as often as any other, instead of only imitating softmax, which made
    the supernet overrate softmax-heavy archs and underrate the rest."""
    if teacher not in TEACHERS:
        raise NasError(f"teacher {teacher!r}: use one of {', '.join(TEACHERS)}")
    largest = space.largest() if teacher == "softmax" else space.largest(rng=rng)
    return [largest, space.smallest(rng=rng)] + [space.sample(rng) for _ in range(random_subnets)]


KERNEL_SAMPLINGS = ("random", "fair")


def fair_kernels(space: SearchSpace, seed: int, step: int) -> list:
    """The kernel choice of every layer position at `step` under strict fairness (FairNAS): the
    steps fall into blocks of K (the number of kernel choices), and within a block each layer
    position takes each choice exactly once, in a seeded order of its own. A function of
    (seed, step) alone: every data-parallel rank and a resumed run draw the same."""
    choices = space.kernel_choices()
    block, slot = divmod(step, len(choices))
    return [
        choices[random.Random(f"nas-fair:{seed}:{block}:{layer}").sample(range(len(choices)), len(choices))[slot]]
        for layer in range(max(space.depth))
    ]


def check_kernel_sampling(config: TrainConfig) -> None:
    if config.kernel_sampling not in KERNEL_SAMPLINGS:
        raise NasError(f"--kernel-sampling {config.kernel_sampling!r}: use one of {', '.join(KERNEL_SAMPLINGS)}")
    if not 0 <= config.projection_warmup < 1:
        raise NasError(f"--projection-warmup {config.projection_warmup}: use a share of the epochs in [0, 1)")
    if config.kernel_sampling == "fair" and config.teacher != "fair":
        raise NasError(
            f"--kernel-sampling fair with --teacher {config.teacher}: under fair sampling the teacher takes the step's "
            "kernels like its students; pass --teacher fair (the default)"
        )


def fair_sandwich(space: SearchSpace, rng: random.Random, random_subnets: int, kernels: list) -> list[Arch]:
    """[largest, smallest, random widths...], all with the step's kernel vector `kernels` (layer i
    uses kernels[i]): the teacher differs from its students in width only."""

    def arch(embed: int, depth: int, heads, ratios) -> Arch:
        return space.make_arch(embed, [space.make_layer(kernels[i], heads(), ratios()) for i in range(depth)])

    largest = arch(max(space.embed_dim), max(space.depth), lambda: max(space.heads), lambda: max(space.mlp_ratio))
    smallest = arch(min(space.embed_dim), min(space.depth), lambda: min(space.heads), lambda: min(space.mlp_ratio))
    others = [
        arch(
            rng.choice(space.embed_dim),
            rng.choice(space.depth),
            lambda: rng.choice(space.heads),
            lambda: rng.choice(space.mlp_ratio),
        )
        for _ in range(random_subnets)
    ]
    return [largest, smallest] + others


def lr_at(step: int, total: int, warmup: int, config: TrainConfig) -> float:
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def accuracy(
    net: SuperNet,
    arch: Arch,
    dataset: Dataset,
    split: str,
    batch_size: int = 256,
    compute: Compute = CPU,
    limit: int | None = None,
) -> float:
    """Top-1 of subnet `arch` with the supernet's weights (eval mode) on `split` (its first
    `limit` images of a fixed sample), computed on `compute`'s device and precision."""
    was_training = net.training
    net.eval()

    def forward(x):
        with compute.autocast():
            return net(compute.move(x), arch)

    top1 = dataset.top1(forward, split, batch_size, limit)
    net.train(was_training)
    return top1


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


def step_seeds(seed: int, step: int) -> tuple[random.Random, int, int]:
    """Step `step`'s RNG (for its subnets), drop-path seed and augmentation seed."""
    rng = step_rng(seed, step)
    return rng, rng.getrandbits(63), rng.getrandbits(62)


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


def train_supernet(
    space: SearchSpace,
    dataset: Dataset,
    config: TrainConfig,
    out: Path,
    resume: bool = False,
    data_arg: str | None = None,
    progress: Callable[[dict], None] = lambda record: None,
    dist: Distributed | None = None,
    compute: Compute = CPU,
) -> dict:
    """Train (or resume) the supernet of `space` into run directory `out` on `compute`'s device
    and precision; returns the final summary.

    With `dist`, this is one rank of a data-parallel run: every rank calls it with the same
    arguments, rank 0 alone writes files, and every rank gets `progress` per epoch."""
    main = dist is None or dist.main
    out = Path(out)
    check_kernel_sampling(config)
    steps_per_epoch = max(1, dataset.size("train") // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = min(total_steps, steps_per_epoch * config.warmup_epochs)
    torch.manual_seed(config.seed)
    compute = replace(compute, precision=config.precision)
    net = SuperNet(space, drop_path=config.drop_path).to(
        compute.device
    )  # initialised on the CPU: the same weights on any device
    optimizer = make_optimizer(net, config)
    scaler = compute.scaler()
    mixup = make_mixup(config, dataset.num_classes)
    run_config = {"space": space_record(space), "data": data_arg or "digits", "train": asdict(config)}

    history: list[dict] = []
    start_epoch = 0
    if (out / WEIGHTS).exists() or (out / STATE_JSON).exists():
        if not resume:
            raise NasError(
                f"{out} already holds a trained supernet; pass --resume to continue it or choose another --out"
            )
        start_epoch, history = _load_checkpoint(net, optimizer, out, run_config, dataset, scaler)
    elif resume:
        raise NasError(f"--resume: {out} holds no supernet checkpoint to continue")
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        save_split(dataset, out / SPLIT)
        write_text(out / CONFIG, yaml.safe_dump(run_config, sort_keys=False))

    net.train()
    started = time.perf_counter()
    bad_in_a_row = 0
    split = round(config.projection_warmup * config.epochs) if space.projections == "kernel" else 0
    for epoch in range(start_epoch, config.epochs):
        if (
            0 < split == epoch
        ):  # the shared warm-up ends: each kernel choice's group starts from the shared weights and their state
            net.split_projections(optimizer)
        else:
            net.tie_projections(epoch < split)
        skipped = 0
        epoch_start = time.perf_counter()
        order = torch.randperm(
            dataset.size("train"), generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        )
        plan = []
        for b in range(steps_per_epoch):
            positions = order[b * config.batch_size : (b + 1) * config.batch_size]
            _, _, augment = step_seeds(config.seed, epoch * steps_per_epoch + b)
            plan.append((dist.shard(positions) if dist else positions, augment if config.augment else None))
        losses = []
        sampled = hashlib.sha256()
        for b, (x, y) in enumerate(dataset.batches("train", plan, pin=compute.cuda)):
            step = epoch * steps_per_epoch + b
            rng, drop_seed, augment = step_seeds(config.seed, step)
            torch.manual_seed(drop_seed)  # drop-path
            x, y = compute.move(x), compute.move(y)
            x, targets = (x, y) if mixup is None else mixed(mixup, x, y, augment)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup, config)
            optimizer.zero_grad(set_to_none=True)
            set_angular_aux(net, angular_aux_at(step, total_steps, config))
            if config.kernel_sampling == "fair":
                archs = fair_sandwich(space, rng, config.random_subnets, fair_kernels(space, config.seed, step))
            else:
                archs = sandwich(space, rng, config.random_subnets, config.teacher)
            sampled.update("".join(arch.digest for arch in archs).encode())
            weight = config.distill_weight * min(1.0, step / max(1.0, config.distill_ramp * total_steps))
            smoothing = 0.0 if mixup is not None else config.label_smoothing  # mixup's targets are already smoothed
            total, finite = sandwich_step(net, archs, x, targets, weight, smoothing, compute, scaler)
            if dist is not None:  # every rank must agree to skip, or the all-reduce would hang
                flag = (~finite).float().reshape(1)
                dist.all_reduce_max(flag)
                finite = flag[0] == 0
            step_loss, ok = torch.stack([total.float(), finite.float()]).tolist()  # the one host sync of the step
            if not ok:
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                bad_in_a_row += 1
                if bad_in_a_row >= config.max_bad_steps:
                    raise NasError(
                        f"training stopped: {bad_in_a_row} consecutive steps with a non-finite loss (last at step {step}); "
                        "lower --lr or check the data for NaN/Inf"
                    )
                continue
            bad_in_a_row = 0
            optimizer_step(net, optimizer, scaler, dist)
            losses.append(step_loss)
        record = {
            "epoch": epoch + 1,
            "epochs": config.epochs,
            "step": (epoch + 1) * steps_per_epoch,
            "loss": sum(losses) / len(losses) if losses else float("nan"),
            "skipped_steps": skipped,
            "val_largest": accuracy(net, space.largest(), dataset, "val", config.batch_size, compute),
            "val_smallest": accuracy(net, space.smallest(), dataset, "val", config.batch_size, compute),
            "seconds": time.perf_counter() - epoch_start,
            "subnets_sha256": sampled.hexdigest()[:16],  # the same on every data-parallel rank
        }
        history.append(record)
        if main:
            _save_checkpoint(net, optimizer, out, history, scaler=scaler)
        progress(record)

    set_angular_aux(net, 0.0)  # whatever the schedule, nothing after training computes the auxiliary branch
    net.tie_projections(False)
    summary = {
        "test_largest": accuracy(net, space.largest(), dataset, "test", config.batch_size, compute),
        "test_smallest": accuracy(net, space.smallest(), dataset, "test", config.batch_size, compute),
        "largest": space.largest().to_dict(),
        "smallest": space.smallest().to_dict(),
        "train_seconds_this_run": time.perf_counter() - started,
        "compute": compute.record(),
    }
    if main:
        _save_checkpoint(net, optimizer, out, history, summary, scaler)
    return summary


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


def check_config(config: TrainConfig, workers: int = 1) -> None:
    """Every training setting, at the edge (nas train, nas run), before any work."""
    check_kernel_sampling(config)
    if config.angular_aux_until > 1:
        raise NasError(
            f"--angular-aux-until is a share of the training steps, at most 1; got {config.angular_aux_until}"
        )
    check_mixup(config.mixup, config.cutmix, config.batch_size, workers)


def check_mixup(mixup: float, cutmix: float, batch_size: int, workers: int = 1) -> None:
    """At the edge: timm's Mixup pairs each image with another of its batch."""
    if (mixup or cutmix) and batch_size % (2 * workers):
        raise NasError(
            f"--mixup/--cutmix need an even batch on every worker: --batch-size {batch_size} over {workers} worker(s); "
            f"use a multiple of {2 * workers}"
        )


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


def _save_checkpoint(
    net: SuperNet,
    optimizer: torch.optim.Optimizer,
    out: Path,
    history: list[dict],
    final: dict | None = None,
    scaler=None,
) -> None:
    save_weights(net.state_dict(), out / WEIGHTS)
    with atomic_path(out / STATE) as tmp:
        torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None}, tmp)
    # Written last: it names the epoch that the two files above belong to.
    write_json(out / STATE_JSON, {"epochs_done": len(history), "history": history, "final": final})


def _load_checkpoint(
    net: SuperNet, optimizer: torch.optim.Optimizer, out: Path, run_config: dict, dataset: Dataset, scaler=None
) -> tuple[int, list[dict]]:
    saved = yaml.safe_load((out / CONFIG).read_text())
    for key in ("space", "data"):
        if saved.get(key) != run_config[key]:
            raise NasError(f"{out / CONFIG}: the run was started with another {key}; resume with the same settings")
    defaults = asdict(TrainConfig())  # a setting added after the run started: it had the default
    changed = [k for k, v in run_config["train"].items() if saved["train"].get(k, defaults.get(k)) != v]
    if changed:
        raise NasError(
            f"{out / CONFIG}: --resume needs the same training settings; changed: "
            + ", ".join(f"{k} ({saved['train'].get(k)} -> {run_config['train'][k]})" for k in changed)
        )
    check_split(dataset, out / SPLIT)
    try:
        state = json.loads((out / STATE_JSON).read_text())
        net.load_state_dict(load_weights(out / WEIGHTS)[0])
        saved_state = torch.load(out / STATE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved_state["optimizer"])
        if scaler is not None and saved_state.get("scaler"):  # fp16: the loss scale it had reached
            scaler.load_state_dict(saved_state["scaler"])
    except Exception as error:  # noqa: BLE001 — OSError, JSON, torch and safetensors (SafetensorError) errors alike
        raise NasError(
            f"{out}: the training checkpoint cannot be read ({type(error).__name__}: {str(error)[:200]}); "
            "start a new run (another --out)"
        ) from None
    return state["epochs_done"], state["history"]
