"""Loading search spaces: the YAML files in search_spaces/ by name, or any YAML file by path, checked field by
field (each mistake named with its fix) into a nas.space.SearchSpace."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from nas import kernels
from nas.arch import FIXED_FIELDS
from nas.data import EMBEDDED
from nas.errors import NasError
from nas.space import SearchSpace

MAX_DEPTH = 64  # layers; ViTs searched here have 2-24, and the space's size (choices ** depth) must stay a float
REQUIRED = ("name", *FIXED_FIELDS, "embed_dim", "depth", "heads", "mlp_ratio", "kernels")
OPTIONAL = (
    "description",
    "kernel_options",
    "data",
    "epochs",
    "projections",
)  # plus a section per kernel with choice options
PROJECTIONS = ("shared", "kernel")  # one qkv / proj per layer for every kernel, or one per kernel choice (nas.supernet)


def available() -> list[str]:
    """Names of the spaces shipped in search_spaces/."""
    return sorted(p.name[:-5] for p in resources.files("search_spaces").iterdir() if p.name.endswith(".yaml"))


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load a shipped space by name (`digits-tiny`) or any YAML file by path."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if path.is_dir():
            raise NasError(f"search space {text} is a directory; pass a YAML file")
        if not path.is_file():
            raise NasError(f"search space file {text} does not exist")
        source = str(path)
        try:
            content = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise NasError(f"{text}: not a text file (a search space is YAML)") from None
        except OSError as error:
            raise NasError(f"{text}: cannot read it ({error.strerror})") from None
    else:
        shipped = resources.files("search_spaces") / f"{text}.yaml"
        if not shipped.is_file():
            raise NasError(
                f"unknown search space {text!r}; shipped spaces: {', '.join(available())} (or pass a YAML path)"
            )
        source = f"search_spaces/{text}.yaml"
        content = shipped.read_text()
    try:
        data = yaml.safe_load(content)
    except yaml.YAMLError as error:
        raise NasError(f"{source}: malformed YAML ({' '.join(str(error).split())})") from None
    return parse_space(data, source)


def parse_space(data: Any, source: str) -> SearchSpace:
    def fail(field_name: str, problem: str, fix: str) -> NasError:
        return NasError(f"{source}: field '{field_name}': {problem}; fix: {fix}")

    if not isinstance(data, dict):
        raise NasError(f"{source}: a search space must be a YAML mapping of fields ({', '.join(REQUIRED)})")
    for name in REQUIRED:
        if name not in data:
            raise fail(name, "missing", f"add '{name}:' (required fields: {', '.join(REQUIRED)})")
    for name in data:
        if name not in REQUIRED + OPTIONAL and name not in kernels.names():
            raise fail(
                name,
                "unknown field",
                f"remove it or use one of {', '.join(REQUIRED + OPTIONAL)}, or a kernel's name for its choice options",
            )

    def positive_int(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail(name, f"{value!r} is not a positive integer", "give a positive integer")
        return value

    def choices(name: str, number: type = int) -> tuple:
        values = data[name]
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise fail(name, "empty choice list", "list at least one value")
        out = []
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float) if number is float else int) or value <= 0:
                raise fail(
                    name,
                    f"{value!r} is not a positive {'number' if number is float else 'integer'}",
                    "use positive values",
                )
            out.append(int(value) if float(value).is_integer() else float(value))
        if len(set(out)) != len(out):
            raise fail(name, f"duplicate values in {values}", "list each value once")
        return tuple(sorted(out))

    fixed = {name: positive_int(name, data[name]) for name in FIXED_FIELDS}
    if not isinstance(data["name"], str) or not data["name"]:
        raise fail("name", f"{data['name']!r} is not a name", "give the space a name")
    if fixed["image_size"] % fixed["patch_size"]:
        raise fail(
            "patch_size",
            f"{fixed['patch_size']} does not divide image_size {fixed['image_size']}",
            "pick a divisor of image_size",
        )
    embed, depth, heads = choices("embed_dim"), choices("depth"), choices("heads")
    if max(depth) > MAX_DEPTH:
        raise fail("depth", f"{max(depth)} layers is more than {MAX_DEPTH}", f"use depths up to {MAX_DEPTH}")
    ratios = choices("mlp_ratio", float)
    if max(heads) * fixed["head_dim"] > max(embed):
        raise fail(
            "heads",
            f"the widest attention, heads × head_dim = {max(heads)} × {fixed['head_dim']} = {max(heads) * fixed['head_dim']}, "
            f"exceeds the widest embed_dim {max(embed)}",
            "lower heads or head_dim, or raise embed_dim",
        )

    names = data["kernels"] if isinstance(data["kernels"], list) else [data["kernels"]]
    if not names:
        raise fail("kernels", "empty choice list", f"list kernels from: {', '.join(kernels.names())}")
    for name in names:
        if name not in kernels.names():
            raise fail("kernels", f"unknown kernel {name!r}", f"use kernels from: {', '.join(kernels.names())}")
    if len(set(names)) != len(names):
        raise fail("kernels", "a kernel is listed twice", "list each kernel once")

    limits = {}
    for name in names:
        if name not in data:
            continue
        declared = kernels.kernel_class(name).variants
        keys = {key for variant in declared for key in variant}
        section = data[name]
        example = {key: sorted({v[key] for v in declared if key in v}, key=str) for key in sorted(keys)}
        if not keys or not isinstance(section, dict) or set(section) - keys:
            raise fail(
                name,
                f"{section!r} is not a mapping of {name}'s choice options",
                f"write e.g. {name}: {example}" if keys else f"remove it: {name} has no choice options",
            )
        limits[name] = {}
        for key, values in section.items():
            values = tuple(values) if isinstance(values, list) else (values,)
            if not values or any(not any(type(v) is type(a) and v == a for a in example[key]) for v in values):
                raise fail(
                    f"{name}.{key}",
                    f"{section[key]!r} is not a non-empty subset of {example[key]}",
                    f"use values from {example[key]}",
                )
            limits[name][key] = values
    for name in data:
        if name in kernels.names() and name not in names:
            raise fail(
                name, "choice options for a kernel the space does not list", f"remove it or add {name} to kernels"
            )

    embedded_data = data.get("data", "digits")
    if embedded_data not in EMBEDDED:
        raise fail(
            "data",
            f"{embedded_data!r} is not an embedded dataset",
            f"use one of {', '.join(EMBEDDED)} (users' data is given with --data)",
        )

    projections = data.get("projections", "shared")
    if projections not in PROJECTIONS:
        raise fail(
            "projections", f"{projections!r} is not a projection sharing", f"use one of {', '.join(PROJECTIONS)}"
        )

    options = data.get("kernel_options", {}) or {}
    if not isinstance(options, dict):
        raise fail("kernel_options", "not a mapping", "map kernel names to option mappings")
    for name, opts in options.items():
        if name not in names:
            raise fail(
                f"kernel_options.{name}",
                "options for a kernel the space does not list",
                f"remove it or add {name} to kernels",
            )
        chosen = {key for variant in kernels.kernel_class(name).variants for key in variant}
        valid = [o for o in kernels.options(name) if o not in chosen]
        if not isinstance(opts, dict) or any(o not in valid for o in opts):
            raise fail(
                f"kernel_options.{name}",
                f"{opts!r} has options {name} does not take",
                f"use options from: {', '.join(valid) or 'none'}",
            )
        try:
            side = fixed["image_size"] // fixed["patch_size"]
            kernels.get(name, fixed["head_dim"], max(heads), grid=(side, side), embed_dim=max(embed), **opts)
        except NasError as error:
            raise fail(f"kernel_options.{name}", str(error), "use a valid value") from None

    return SearchSpace(
        name=data["name"],
        embed_dim=embed,
        depth=depth,
        heads=heads,
        mlp_ratio=ratios,
        kernels=tuple(names),
        choice_limits=limits,
        kernel_options={k: dict(v) for k, v in options.items()},
        description=str(data.get("description", "")),
        source=source,
        data=embedded_data,
        epochs=positive_int("epochs", data.get("epochs", 100)),
        projections=projections,
        **fixed,
    )
