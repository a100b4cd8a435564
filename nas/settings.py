"""Declaring settings, and what the declarations generate.

Every setting is declared once, as a field with its default, type, choices, help and resume rule
(`setting`; `group` nests a stage's config). From that declaration come the command-line flags
(`add_flags`, `given`, `from_args`), `--config FILE` and `--print-config` (`load`, `from_mapping`, `dump`),
the settings manifest.json records (`to_dict`) and what a `--resume` may change (`resume_rules`).
The configuration trees themselves are in nas.config. Nothing here imports torch, so `nas --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import field
from pathlib import Path

from nas.errors import NasError

# What a resumed run may change of a setting (nas.resume.resume_changes):
RESULT = "result"  # it changes what the run computes: it must equal the run's
BUDGET = "budget"  # it may change until the search has begun
GROWS = "grows"  # it may grow (trials: the study is extended), never shrink
UNTIL_TRAINED = "until-trained"  # it must equal the run's until the supernet is trained
FREE = "free"  # it changes how the run goes, not what it computes: recorded as a change
SILENT = "silent"  # not even recorded
RULES = (RESULT, BUDGET, GROWS, UNTIL_TRAINED, FREE, SILENT)


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
