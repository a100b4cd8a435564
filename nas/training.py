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

Run directory: `split.json` and `config.yaml`, written here at the start; the checkpoint
of every epoch (weights, optimizer and progress) is nas.checkpoint's.

This module holds the loop (`train_supernet`), the checks of the training settings and the
epoch's progress line; the subnets each step trains are nas.sampling's, the step itself
(loss, optimizer, mixup, data parallelism, the angular schedule) nas.train_step's, and
`accuracy` nas.evaluate's.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch
import yaml

from nas.checkpoint import load_checkpoint, save_checkpoint
from nas.compute import CPU, Compute
from nas.config import TrainConfig
from nas.data import save_split
from nas.dataset import Dataset
from nas.errors import NasError
from nas.evaluate import accuracy
from nas.io import write_text
from nas.progress import Bar
from nas.rundir import CONFIG, SPLIT, STATE_JSON, WEIGHTS, space_record
from nas.sampling import KERNEL_SAMPLINGS, fair_kernels, fair_sandwich, sandwich, step_seeds
from nas.space import SearchSpace
from nas.supernet import SuperNet
from nas.train_step import (
    Distributed,
    angular_aux_at,
    lr_at,
    make_mixup,
    make_optimizer,
    mixed,
    optimizer_step,
    sandwich_step,
    set_angular_aux,
)


def format_epoch(record: dict) -> str:
    """One progress line per epoch (CLI, pipeline and Ray trainer alike)."""
    skipped = f", {record['skipped_steps']} non-finite steps skipped" if record.get("skipped_steps") else ""
    return (
        f"epoch {record['epoch']}/{record['epochs']}  loss {record['loss']:.3f}  val acc largest "
        f"{record['val_largest']:.3f} smallest {record['val_smallest']:.3f}  ({record['seconds']:.1f} s{skipped}, "
        f"ETA {(record['epochs'] - record['epoch']) * record['seconds'] / 60:.1f} min)"
    )


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
    # initialised on the CPU: the same weights on any device
    net = SuperNet(space, drop_path=config.drop_path).to(compute.device)
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
        start_epoch, history = load_checkpoint(net, optimizer, out, run_config, dataset, scaler)
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
        if 0 < split == epoch:  # the shared warm-up ends: each kernel's group starts from the shared weights and state
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
        bar = Bar(steps_per_epoch if main else 0, f"epoch {epoch + 1}/{config.epochs}")
        for b, (x, y) in enumerate(dataset.batches("train", plan, pin=compute.cuda)):
            bar.update()
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
        bar.close()
        history.append(record)
        if main:
            save_checkpoint(net, optimizer, out, history, scaler=scaler)
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
        save_checkpoint(net, optimizer, out, history, summary, scaler)
    return summary


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
