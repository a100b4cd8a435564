"""The configuration tree: one frozen dataclass per stage, composed into `RunConfig` for `nas run`.

Every setting is declared once, as a field with its default, type, choices, help and resume rule
(`setting`). From that declaration come the command-line flags (`add_flags`), `--config FILE` and
`--print-config` (`load`, `dump`), the settings manifest.json records (`to_dict`) and what a
`--resume` may change (`resume_rules`). Nothing here imports torch, so `nas --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from nas.errors import NasError

# What a resumed run may change of a setting (nas.pipeline.resume_changes):
RESULT = "result"  # it changes what the run computes: it must equal the run's
BUDGET = "budget"  # it may change until the search has begun
GROWS = "grows"  # it may grow (trials: the study is extended), never shrink
UNTIL_TRAINED = "until-trained"  # it must equal the run's until the supernet is trained
FREE = "free"  # it changes how the run goes, not what it computes: recorded as a change
SILENT = "silent"  # not even recorded
RULES = (RESULT, BUDGET, GROWS, UNTIL_TRAINED, FREE, SILENT)


# ---- value parsers: one per kind of setting, shared by the flags and the config file --------------


def _positive(cast, what: str):
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {what}, got {text!r}") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive finite {what}, got {text!r}")
        return value

    parse.__name__ = f"positive_{cast.__name__}"
    return parse


positive_int = _positive(int, "integer")
positive_float = _positive(float, "number")


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def share(text: str) -> float:
    """A share in [0, 1]."""
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}")
    return value


def out_dir(text: str) -> str:
    """An output path; an empty one (`--out ''`, an unset shell variable) would silently mean the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path; name the output, e.g. --out results/my-run")
    return text


def ray_storage_path(value: str) -> str:
    """--storage-path: a URI Ray Train writes to (s3://, gs://, ...) as given, or a folder made absolute
    (on a cluster it must be the same shared folder on every node)."""
    if "://" in value:
        return value
    return str(Path(value).expanduser().resolve())


# ---- declaring settings ------------------------------------------------------------------------------


def setting(
    default,
    help: str,
    *,
    parse=None,
    choices=None,
    resume: str = RESULT,
    flags: tuple[str, ...] = (),
    default_text: str | None = None,
):
    """A field of a stage's config: `parse` turns a flag's text into the value (default: the field's type),
    `flags` replaces the flag derived from the name, `default_text` says what a None default means."""
    assert resume in RULES, resume
    return field(
        default=default,
        metadata={
            "help": help,
            "parse": parse,
            "choices": choices,
            "resume": resume,
            "flags": flags,
            "default_text": default_text,
        },
    )


def group(cls, help: str, *, owned: tuple[str, ...] = ()):
    """A nested stage config; `owned`: its fields the enclosing config sets (no flags of their own)."""
    return field(default_factory=cls, metadata={"help": help, "group": cls, "owned": owned})


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
        "what models are timed in: eager (PyTorch as it is), cuda-graph (CUDA: captured once, replayed) or "
        "onnxruntime (the exported ONNX graph in an ONNX Runtime CPU session); part of the device fingerprint",
        flags=("--runtime", "--backend"),
    )
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


# ---- what the tree generates --------------------------------------------------------------------------


def leaves(cls, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """(dotted name, field) of every setting of `cls`, nested groups flattened ("train.lr"); a group's owned fields left out."""
    found = []
    for f in dataclasses.fields(cls):
        if "group" in f.metadata:
            found += [
                (name, g)
                for name, g in leaves(f.metadata["group"], f"{prefix}{f.name}.")
                if name.rsplit(".", 1)[-1] not in f.metadata["owned"]
            ]
        else:
            found.append((prefix + f.name, f))
    return found


def resume_rules(cls) -> dict[str, str]:
    return {name: f.metadata.get("resume", RESULT) for name, f in leaves(cls)}


def flag_of(cls, name: str) -> str:
    """The primary flag of a dotted setting name (for messages)."""
    for dotted, f in leaves(cls):
        if dotted == name:
            return (f.metadata.get("flags") or (_derived_flag(dotted),))[0]
    return _derived_flag(name)


def _derived_flag(dotted: str) -> str:
    return "--" + dotted.replace("_", "-")


def to_dict(config) -> dict:
    """The settings as plain data (manifest.json, --print-config); a group's owned fields left out."""
    values = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if "group" in f.metadata:
            value = {k: v for k, v in to_dict(value).items() if k not in f.metadata["owned"]}
        values[f.name] = value
    return values


def flatten(mapping: dict, prefix: str = "") -> dict:
    """{"train": {"lr": x}} -> {"train.lr": x}."""
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def with_values(config, values: dict):
    """`config` with the dotted settings in `values` replaced."""
    direct = {k: v for k, v in values.items() if "." not in k}
    nested: dict[str, dict] = {}
    for key, value in values.items():
        if "." in key:
            head, rest = key.split(".", 1)
            nested.setdefault(head, {})[rest] = value
    for head, inner in nested.items():
        direct[head] = with_values(getattr(config, head), inner)
    return dataclasses.replace(config, **direct)


_KINDS = {"int": int, "float": float, "str": str, "bool": bool}


def _kind(f: dataclasses.Field):
    """(type, optional) of a setting's annotation: `int | None` -> (int, True). Settings are ints, floats,
    strings or booleans, each maybe None."""
    hint = f.type
    if isinstance(hint, str):
        parts = [part.strip() for part in hint.replace("Optional[", "").rstrip("]").split("|")]
        names = [part for part in parts if part != "None"]
        return _KINDS[names[0]], len(names) < len(parts) or hint.startswith("Optional[")
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def _parser(f: dataclasses.Field):
    return f.metadata.get("parse") or _kind(f)[0]


def check_value(dotted: str, f: dataclasses.Field, value, where: str):
    """A value read from a config file, checked as its flag would be; NasError naming the setting otherwise."""
    kind, optional = _kind(f)
    if value is None:
        if optional:
            return None
        raise NasError(f"{where}: {dotted} may not be empty; leave it out for its default {f.default!r}")
    if kind is bool:
        if not isinstance(value, bool):
            raise NasError(f"{where}: {dotted} must be true or false, got {value!r}")
        return value
    if kind in (int, float) and isinstance(value, bool) or kind is int and isinstance(value, float):
        raise NasError(f"{where}: {dotted} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if not isinstance(value, (str, int, float)):
        raise NasError(f"{where}: {dotted} must be a single value, got {value!r}")
    try:
        parsed = _parser(f)(str(value))
    except (argparse.ArgumentTypeError, ValueError) as error:
        raise NasError(f"{where}: {dotted}: {error}") from None
    choices = f.metadata.get("choices")
    if choices and parsed not in choices:
        raise NasError(f"{where}: {dotted} {parsed!r}: use one of {', '.join(choices)}")
    return parsed


def from_mapping(cls, mapping, where: str, base=None):
    """A config from a (nested) mapping of settings, e.g. a YAML file; unknown names refused in one line."""
    if not isinstance(mapping, dict):
        raise NasError(f"{where}: expected a mapping of settings (name: value), got {type(mapping).__name__}")
    known = dict(leaves(cls))
    values = {}
    for dotted, value in flatten(mapping).items():
        if dotted not in known:
            close = [k for k in known if k.rsplit(".", 1)[-1] == dotted.rsplit(".", 1)[-1]]
            hint = f" (did you mean {close[0]}?)" if close else "; the settings are those of `--print-config`"
            raise NasError(f"{where}: unknown setting {dotted!r}{hint}")
        values[dotted] = check_value(dotted, known[dotted], value, where)
    return with_values(base if base is not None else cls(), values)


def load(cls, path: Path, base=None):
    """`--config FILE`: a YAML file of settings (what `--print-config` writes)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise NasError(f"--config {path}: no such file; write one with `nas run --print-config > run.yaml`")
    try:
        mapping = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise NasError(f"--config {path}: not valid YAML ({str(error).splitlines()[0]})") from None
    return from_mapping(cls, mapping, f"--config {path}", base)


def dump(config) -> str:
    import yaml

    return yaml.safe_dump(to_dict(config), sort_keys=False)


def add_flags(
    parser: argparse.ArgumentParser, cls, *, defaults=None, exclude: tuple[str, ...] = (), prefix: str = ""
) -> None:
    """One flag per setting of `cls` (nested groups as --group.name). Unset flags stay out of the namespace
    (`given`), so a config file's values are not overridden by defaults; the help shows each default."""
    defaults = defaults if defaults is not None else cls()
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        if "group" in f.metadata:
            title = parser.add_argument_group(f"{f.name} settings ({f.metadata['help']})")
            add_flags(
                title,
                f.metadata["group"],
                defaults=getattr(defaults, f.name),
                exclude=f.metadata["owned"],
                prefix=f"{prefix}{f.name}.",
            )
            continue
        dotted = prefix + f.name
        meta = f.metadata
        default = getattr(defaults, f.name)
        shown = (
            meta.get("default_text")
            if default is None
            else ("on" if default is True else "off" if default is False else default)
        )
        text = f"{meta.get('help', '')} (default: {shown})".replace("%", "%%")
        flags = meta.get("flags") or (_derived_flag(dotted),)
        kwargs = {"dest": dotted, "help": text, "default": argparse.SUPPRESS}
        kind, _ = _kind(f)
        if kind is bool:  # --name / --no-name (--group.no-name in a group)
            negative = tuple(
                flag[: flag.rfind(".") + 1 if "." in flag else 2]
                + "no-"
                + flag[flag.rfind(".") + 1 if "." in flag else 2 :]
                for flag in flags
            )
            parser.add_argument(*flags, action="store_const", const=True, **kwargs)
            parser.add_argument(
                *negative,
                action="store_const",
                const=False,
                dest=dotted,
                default=kwargs["default"],
                help=f"turn {flags[0]} off",
            )
            continue
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        parser.add_argument(
            *flags,
            type=meta.get("parse") or kind,
            metavar=None if meta.get("choices") else dotted.rsplit(".", 1)[-1].upper(),
            **kwargs,
        )


def given(cls, args: argparse.Namespace) -> dict:
    """The dotted settings of `cls` set on the command line."""
    present = vars(args)
    return {name: present[name] for name, _ in leaves(cls) if name in present}


def from_args(cls, args: argparse.Namespace, base=None):
    """`base` (default: the defaults) with what the command line set."""
    return with_values(base if base is not None else cls(), given(cls, args))
