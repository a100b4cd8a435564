"""Standalone training of one arch from scratch with one stated recipe, resumable at every epoch.

Every standalone training trains with this one loop: the ground truth (`nas bench truth`),
the verification of a run's final candidates (`nas.verify`), the fidelity and zoo benchmarks
and an export's fine-tuning (which starts from the inherited weights instead of from scratch).
So a verified accuracy and a ground-truth accuracy of the same arch, seed and split are the
same figure. A `Standalone` holds the model, the
optimizer and the batch generator; its `state_dict` after epoch k restores a run that goes
on exactly as an uninterrupted one would (the same batches, augmentations and updates).
Model code only: torch and the model modules, no Ray or Optuna.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from nas.arch import Arch
from nas.compute import Compute


@dataclass(frozen=True)
class Recipe:
    """Standalone training: AdamW, one warm-up epoch, cosine decay to 0, label smoothing;
    Castling-ViT's auxiliary branch for angular layers as `nas train` uses it."""

    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    angular_aux: float = 1.0
    angular_aux_until: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


class Standalone:
    """One arch trained from scratch: `train_epoch()` runs the next epoch of the recipe and
    appends the validation top-1 to `curve`. Seeded by `seed` alone.

    `device`: a device name, or a nas.compute.Compute (device and precision: autocast, and a
    gradient scaler for fp16). `model`: start from this model's weights (fine-tuning) instead of
    a fresh initialisation; it is trained in place."""

    def __init__(
        self, arch: Arch, seed: int, recipe: Recipe, dataset, device: str | torch.device | Compute = "cpu", model=None
    ) -> None:
        from nas.subnet import ViT

        self.arch, self.seed, self.recipe, self.dataset = arch, seed, recipe, dataset
        self.compute = device if isinstance(device, Compute) else Compute(torch.device(device))
        self.device = self.compute.device
        torch.manual_seed(seed)
        self.model = (model if model is not None else ViT(arch)).to(self.device)
        self.scaler = self.compute.scaler()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        self.batches = torch.Generator().manual_seed(seed)  # batch order and augmentation, on the CPU like the images
        self.per_epoch = max(1, dataset.size("train") // recipe.batch_size)
        self.step = 0
        self.curve: list[float] = []  # validation top-1 after each epoch
        self.train_loss: list[float] = []  # mean training loss of each epoch

    @property
    def epoch(self) -> int:
        return len(self.curve)

    def learning_rate(self, step: int) -> float:
        total, warmup = self.recipe.epochs * self.per_epoch, self.recipe.warmup_epochs * self.per_epoch
        warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
        return self.recipe.lr * warm * 0.5 * (1 + math.cos(math.pi * step / total))

    def update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step on a batch at the current step's learning rate; the loss (detached)."""
        from nas.config import TrainConfig
        from nas.train_step import angular_aux_at, set_angular_aux

        aux = TrainConfig(angular_aux=self.recipe.angular_aux, angular_aux_until=self.recipe.angular_aux_until)
        set_angular_aux(self.model, angular_aux_at(self.step, self.recipe.epochs * self.per_epoch, aux))
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        with self.compute.autocast():
            logits = self.model(self.compute.move(x))
        loss = F.cross_entropy(logits.float(), self.compute.move(y), label_smoothing=self.recipe.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.step += 1
        return loss.detach()

    def train_epoch(self) -> float:
        """The next epoch; its validation top-1."""
        from nas.train_step import set_angular_aux

        if self.epoch >= self.recipe.epochs:
            raise ValueError(f"the recipe has {self.recipe.epochs} epochs and all of them are trained")
        self.model.train()
        order = torch.randperm(self.dataset.size("train"), generator=self.batches)
        size = self.recipe.batch_size
        losses = [
            self.update(*self.dataset.batch("train", order[b * size : (b + 1) * size], self.batches)).item()
            for b in range(self.per_epoch)
        ]
        set_angular_aux(self.model, 0.0)
        self.model.eval()
        self.curve.append(round(self.top1("val"), 6))
        self.train_loss.append(round(statistics.fmean(losses), 6))
        return self.curve[-1]

    def top1(self, split: str) -> float:
        def forward(x):
            with self.compute.autocast():
                return self.model(self.compute.move(x))

        return self.dataset.top1(forward, split)

    def state_dict(self) -> dict:
        """Everything the next epoch depends on; tensors, numbers and lists only (torch.load(weights_only=True))."""
        state = {
            "arch": self.arch.to_json(indent=None),
            "seed": self.seed,
            "recipe": self.recipe.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "batches": self.batches.get_state(),
            "step": self.step,
            "curve": list(self.curve),
            "train_loss": list(self.train_loss),
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if (
            state["arch"] != self.arch.to_json(indent=None)
            or state["seed"] != self.seed
            or state["recipe"] != self.recipe.to_dict()
        ):
            raise ValueError("the state is of another arch, seed or recipe")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.set_state(state["batches"])
        self.step = int(state["step"])
        self.curve, self.train_loss = list(state["curve"]), list(state["train_loss"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


def train(arch: Arch, seed: int, recipe: Recipe, dataset, device: str | torch.device | Compute = "cpu") -> dict:
    """`arch` trained from scratch through every epoch of `recipe`: its validation top-1 after each
    epoch (`curve`), the mean training loss of each (`train_loss`), and the seconds spent."""
    started = time.perf_counter()
    run = Standalone(arch, seed, recipe, dataset, device)
    while run.epoch < recipe.epochs:
        run.train_epoch()
    return {"curve": run.curve, "train_loss": run.train_loss, "seconds": round(time.perf_counter() - started, 1)}
