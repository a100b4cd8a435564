"""The configuration tree: one frozen dataclass per stage, composed into `RunConfig` for `nas run`.

Every setting is declared once, as a field with its default, type, choices, help and resume rule
(`setting`, nas.settings; its value parser from nas.parsers). From that declaration come the command-line
flags, `--config FILE` and `--print-config`, the settings manifest.json records and what a `--resume` may
change (nas.settings). Nothing here imports torch, so `nas --help` stays fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from nas.parsers import (
    non_negative_float,
    non_negative_int,
    out_dir,
    positive_float,
    positive_int,
    ray_storage_path,
    share,
)
from nas.settings import BUDGET, FREE, GROWS, SILENT, UNTIL_TRAINED, group, setting


@dataclass(frozen=True)
class TrainConfig:
    """Supernet training (nas.training): the sandwich rule with in-place distillation."""

    epochs: int = setting(100, "supernet training epochs", parse=positive_int)
    batch_size: int = setting(64, "training batch size", parse=positive_int)
    lr: float = setting(3e-3, "peak AdamW learning rate", parse=positive_float)
    min_lr: float = setting(1e-5, "learning rate at the end of the cosine schedule", parse=non_negative_float)
    weight_decay: float = setting(0.05, "AdamW weight decay", parse=non_negative_float)
    warmup_epochs: int = setting(2, "epochs of linear learning-rate warm-up", parse=non_negative_int)
    random_subnets: int = setting(
        2, "random subnets per step besides the largest and the smallest", parse=non_negative_int
    )
    label_smoothing: float = setting(0.1, "label smoothing of the largest subnet's loss", parse=share)
    distill_weight: float = setting(
        0.5, "weight of the in-place distillation loss of the other subnets", parse=non_negative_float
    )
    distill_ramp: float = setting(0.25, "share of the steps over which that weight rises from 0", parse=share)
    max_bad_steps: int = setting(
        5, "consecutive non-finite losses before training stops", parse=positive_int, resume=FREE
    )
    drop_path: float = setting(0.0, "stochastic depth rate of the deepest block", parse=share)
    augment: bool = setting(True, "random crops and flips of the training images")
    teacher: str = setting(
        "fair",
        "kernels of the label-trained widest path: a random kernel per layer each step (fair) or softmax everywhere",
        choices=("fair", "softmax"),
    )
    seed: int = setting(0, "seed of the subnet sampling and the initialisation")
    precision: str = setting(
        "fp32",
        "autocast precision of the forward passes (fp16 with a gradient scaler)",
        choices=("fp32", "bf16", "fp16"),
    )
    mixup: float = setting(0.0, "timm Mixup alpha (0: off); the labels become soft targets", parse=non_negative_float)
    cutmix: float = setting(0.0, "timm CutMix alpha (0: off)", parse=non_negative_float)
    angular_aux: float = setting(
        1.0,
        "Castling-ViT: start weight of the angular kernels' auxiliary masked-softmax branch (0: off)",
        parse=non_negative_float,
    )
    angular_aux_until: float = setting(
        0.5, "share of the training steps (0-1) over which that weight falls linearly to 0", parse=non_negative_float
    )
    kernel_sampling: str = setting(
        "random",
        "kernels of the sandwich's subnets: each draws its own per layer (random), or strict "
        "fairness (fair: within every K steps each layer trains each of the K kernel choices once, and one "
        "step's subnets share their kernels)",
        choices=("random", "fair"),
    )
    projection_warmup: float = setting(
        0.3,
        "a space with `projections: kernel`: share of the epochs (0-1) whose kernel groups train "
        "tied, as shared projections, before each group goes on from those weights",
        parse=non_negative_float,
    )


CONNECT_TIMEOUT_S = 30.0  # seconds to reach a storage or a Ray cluster before any work (--connect-timeout)
SAMPLERS = ("tpe", "nsga2", "random", "gp")
DTYPES = ("fp32", "bf16", "fp16")
VERIFY_CANDIDATES = 8  # nas run's default (--verify; nas.verify.CANDIDATES)
# The verification's recipe length (--verify-epochs): the ground truth's settled schedule. After 24 epochs the ranking of
# the truth's 33 archs has settled (half vs full Kendall tau 0.86), after 12 it has not (it ranks the 24-epoch one at 0.66),
# and a 12-epoch verification picked the 2nd worst of its 8 candidates by their 24-epoch figures
# (results/bench/verified_pick/pick_24-epochs.log).
VERIFY_EPOCHS = 24
RUNTIME_HELP = (
    "what models are timed in: eager (PyTorch as it is), cuda-graph (CUDA: captured once, replayed) or "
    "onnxruntime (the exported ONNX graph in an ONNX Runtime CPU session); part of the device fingerprint"
)
KERNEL_PATHS = ("auto", "eager", "fused")  # nas.latency.runtime.resolve_kernels
KERNELS_HELP = (
    "the path the linear kernels' core runs on while models are timed: eager (PyTorch operations), fused "
    "(Triton kernels, CUDA) or auto (fused on CUDA when Triton is installed, else eager); part of the device fingerprint"
)


@dataclass(frozen=True)
class RunConfig:
    """`nas run`: the whole pipeline (latency table, supernet training, search, verification, export)."""

    space: str = setting("odd-one-out", "search space name or YAML path")
    data: str | None = setting(
        None, "CIFAR-10 python folder or ImageFolder root", default_text="the space's embedded dataset"
    )
    seed: int = setting(0, "seed of every stage")
    # latency
    device: str = setting("cpu", "device whose latency is optimised: cpu, cuda or cuda:<i>", flags=("--target-device",))
    dtype: str = setting("fp32", "inference dtype of the latency measurement", choices=DTYPES)
    batch_size: int = setting(1, "inference batch size for latency", parse=positive_int)
    runtime: str = setting(
        "eager",
        RUNTIME_HELP,
        flags=("--runtime", "--backend"),
    )
    kernels: str = setting("auto", KERNELS_HELP, choices=KERNEL_PATHS)
    calibrate: int = setting(10, "whole models for the latency calibration", parse=non_negative_int)
    validate: int = setting(50, "held-out whole models to validate the latency table", parse=non_negative_int)
    latency: str = setting(
        "measured",
        "what decides each trial's latency: its whole model measured on the target device (the table is "
        "the prior and pre-filter), or the table's prediction alone",
        choices=("measured", "predicted"),
    )
    budget_ms: float | None = setting(
        None,
        "latency budget in ms",
        parse=positive_float,
        resume=BUDGET,
        default_text="the --budget-quantile of the predicted latency of 2,000 random archs",
    )
    budget_quantile: float = setting(
        0.5,
        "without --budget-ms: the budget admits about this share of random archs (0-1; 1 admits all)",
        parse=positive_float,
        resume=BUDGET,
    )
    # training
    epochs: int | None = setting(None, "supernet training epochs", parse=positive_int, default_text="the space's")
    workers: int = setting(
        1, "Ray Train workers for the supernet; 1 trains in this process", parse=positive_int, resume=UNTIL_TRAINED
    )
    compute_device: str = setting(
        "auto",
        "device that trains and evaluates: auto (CUDA when available), cpu, cuda or cuda:<i>; "
        "independent of --target-device",
        resume=FREE,
    )
    precision: str = setting(
        "fp32", "autocast precision of training and evaluation (fp16 with a gradient scaler)", choices=DTYPES
    )
    loader_workers: int = setting(
        2,
        "DataLoader processes decoding ImageFolder images (embedded and CIFAR-10 data are in memory and ignore it)",
        parse=non_negative_int,
        resume=FREE,
    )
    randaugment: bool = setting(False, "ImageFolder data: add RandAugment (m9) to the training transform")
    storage_path: str | None = setting(
        None,
        "with --workers > 1: where Ray Train keeps its checkpoints; on a cluster, a folder every "
        "node sees under that path or a URI such as s3://bucket/prefix. Not --storage, the Optuna "
        "database",
        parse=ray_storage_path,
        resume=FREE,
        default_text="<out>/ray_train",
    )
    train: TrainConfig = group(TrainConfig, "supernet training", owned=("epochs", "seed", "precision"))
    # search
    trials: int = setting(100, "Optuna trials", parse=positive_int, resume=GROWS)
    sampler: str = setting(
        "tpe", "tpe (multivariate, grouped), nsga2, random or gp (Gaussian process)", choices=SAMPLERS
    )
    evaluators: int = setting(2, "Ray evaluator actors", parse=positive_int, resume=FREE)
    val_images: int | None = setting(
        None,
        "score each search trial on this many validation images (a fixed sample)",
        parse=positive_int,
        default_text="all",
    )
    gpus_per_evaluator: float | None = setting(
        None,
        "with a CUDA compute device: GPUs each evaluator asks Ray for, fractions allowed",
        parse=positive_float,
        resume=FREE,
        default_text="a whole GPU when there is one per evaluator, else a share of one",
    )
    ray_address: str | None = setting(
        None, "'auto' or an address to join a Ray cluster", resume=FREE, default_text="a local Ray"
    )
    storage: str | None = setting(
        None,
        "Optuna storage URL, e.g. postgresql://user@host/db; better: put it, with its password, in the "
        "environment variable NAS_STORAGE_URL, so it is not in the process list",
        default_text="sqlite in --out",
    )
    study_name: str | None = setting(
        None,
        "the study in the storage, so that one storage holds several searches",
        default_text="the run directory's name",
    )
    connect_timeout: float = setting(
        CONNECT_TIMEOUT_S,
        "seconds to reach --storage and --ray-address before any work",
        parse=positive_float,
        resume=SILENT,
    )
    tensorboard: bool = setting(
        False, "write training and search scalars for TensorBoard into <run>/tensorboard", resume=FREE
    )
    # verification
    verify: int = setting(
        VERIFY_CANDIDATES,
        "after the search, train this many of the best candidates under the budget standalone (successive "
        "halving) and pick by verified accuracy; 0: pick by inherited accuracy",
        parse=non_negative_int,
        resume=FREE,
    )
    verify_epochs: int = setting(
        VERIFY_EPOCHS,
        "epochs of the verification's standalone recipe (the ground truth's): the finalist trains them all, the "
        "halving's rungs a half, a quarter, ... of them",
        parse=positive_int,
        resume=FREE,
    )

    def train_config(self) -> TrainConfig:
        """The supernet's training settings, with the ones the run owns (epochs resolved from the space)."""
        return dataclasses.replace(
            self.train, epochs=self.epochs or self.train.epochs, seed=self.seed, precision=self.precision
        )


@dataclass(frozen=True)
class SearchSettings:
    """`nas search`: the Optuna search over a run directory that holds a trained supernet and a latency table."""

    table: str | None = setting(None, "latency table", default_text="<run>/latency_table.json")
    latency: str = setting(
        "measured",
        "what decides each trial's latency: its whole model measured on the target device (the table is "
        "the prior and pre-filter), or the table's prediction alone",
        choices=("measured", "predicted"),
    )
    accept_poor_fit: bool = setting(
        False, "with --latency predicted: search on a table that failed its validation anyway"
    )
    budget_ms: float | None = setting(
        None, "latency budget in ms", parse=positive_float, default_text="none, the whole front"
    )
    trials: int = setting(100, "Optuna trials", parse=positive_int)
    sampler: str = setting(
        "tpe", "tpe (multivariate, grouped), nsga2, random or gp (Gaussian process)", choices=SAMPLERS
    )
    third_objective: str | None = setting(
        None, "also minimise params or MACs", choices=("params", "macs"), default_text="none"
    )
    evaluators: int = setting(2, "Ray evaluator actors", parse=positive_int)
    batch: int | None = setting(None, "trials asked per round", parse=positive_int, default_text="2 x evaluators")
    seed: int = setting(0, "seed of the sampler")
    compute_device: str = setting("auto", "device that evaluates: auto (CUDA when available), cpu, cuda or cuda:<i>")
    precision: str = setting("fp32", "autocast precision of the evaluation", choices=DTYPES)
    val_images: int | None = setting(
        None, "score each trial on this many validation images (a fixed sample)", parse=positive_int, default_text="all"
    )
    gpus_per_evaluator: float | None = setting(
        None,
        "with a CUDA compute device: GPUs each evaluator asks Ray for, fractions allowed",
        parse=positive_float,
        default_text="a whole GPU when there is one per evaluator, else a share of one",
    )
    ray_address: str | None = setting(None, "'auto' or an address to join a Ray cluster", default_text="a local Ray")
    storage: str | None = setting(
        None,
        "Optuna storage URL, e.g. postgresql://user@host/db; better: put it, with its password, in the "
        "environment variable NAS_STORAGE_URL, so it is not in the process list",
        default_text="sqlite:///<run>/study.db",
    )
    study_name: str | None = setting(
        None,
        "the study in the storage, so that one storage holds several searches",
        default_text="the one the run recorded, else the only study in the run's study.db, else the run "
        "directory's name",
    )
    connect_timeout: float = setting(
        CONNECT_TIMEOUT_S, "seconds to reach --storage and --ray-address before any work", parse=positive_float
    )
    report_dir: str | None = setting(
        None,
        "where trials.csv and pareto.* go; required for a study in another --storage",
        parse=out_dir,
        default_text="the run, for the run's own study",
    )
