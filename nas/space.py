"""Search spaces: declarative YAML files in search_spaces/, loadable by name or path.

A space fixes the input (image_size, patch_size, in_chans, num_classes), the head
dimension and per-kernel options, and lists the choices: global `embed_dim` and `depth`;
per layer a kernel choice, `heads` and `mlp_ratio`. A kernel choice is a kernel plus one of
the option sets its class declares in `variants` (Taylor: order 1, order 2 full, order 2
compact); a section named after the kernel limits them, e.g.
`taylor: {order: [2], variant: [compact]}`. Choices are independent (AutoFormer style): a layer's attention
width heads·head_dim need not equal embed_dim, but the widest attention may not exceed
the widest embedding.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from nas import kernels
from nas.arch import FIXED_FIELDS, Arch, LayerChoice, PatchGrid
from nas.data import EMBEDDED
from nas.errors import NasError
from nas.kernels import KernelSpec

BASELINE_KERNEL = "softmax"  # the largest subnet (the supernet's teacher) uses it everywhere
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


@dataclass(frozen=True)
class SearchSpace(PatchGrid):
    name: str
    image_size: int
    patch_size: int
    in_chans: int
    num_classes: int
    head_dim: int
    embed_dim: tuple[int, ...]
    depth: tuple[int, ...]
    heads: tuple[int, ...]
    mlp_ratio: tuple[float, ...]
    kernels: tuple[str, ...]
    choice_limits: dict[str, dict[str, tuple]] = field(default_factory=dict)  # kernel -> option -> allowed values
    kernel_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    source: str = ""
    data: str = "digits"  # the embedded dataset used when no --data is given
    epochs: int = 100  # supernet training epochs when no --epochs is given
    projections: str = (
        "shared"  # the supernet's attention projections: shared by a layer's kernels, or one group per kernel choice
    )

    # ---- derived ---------------------------------------------------------------------------

    def kernel_choices(self) -> list[KernelSpec]:
        """Every per-layer kernel choice: each listed kernel with each option set its class
        declares (`variants`) that the space's limits admit."""
        choices = []
        for name in self.kernels:
            limits = self.choice_limits.get(name, {})
            for variant in kernels.kernel_class(name).variants:
                if all(variant[key] in allowed for key, allowed in limits.items() if key in variant):
                    choices.append(KernelSpec(name, dict(variant)))
        return choices

    def size(self) -> int:
        """Number of distinct architectures."""
        per_layer = len(self.kernel_choices()) * len(self.heads) * len(self.mlp_ratio)
        return len(self.embed_dim) * sum(per_layer**depth for depth in self.depth)

    def with_num_classes(self, num_classes: int) -> SearchSpace:
        return replace(self, num_classes=num_classes)

    # ---- architectures -----------------------------------------------------------------------

    def make_arch(self, embed_dim: int, layers: list[LayerChoice]) -> Arch:
        """An arch of this space's fixed fields (not validated: see `validate`)."""
        return Arch(
            embed_dim=embed_dim,
            depth=len(layers),
            layers=tuple(layers),
            kernel_options={k: dict(v) for k, v in self.kernel_options.items()},
            **{name: getattr(self, name) for name in FIXED_FIELDS},
        )

    @staticmethod
    def make_layer(spec: KernelSpec, heads: int, mlp_ratio: float) -> LayerChoice:
        """The layer choice of kernel choice `spec` at these widths."""
        return LayerChoice(spec.name, heads, mlp_ratio, tuple(spec.options.items()))

    def sample(self, rng: random.Random, kernel: KernelSpec | None = None) -> Arch:
        """A uniformly random arch (depth, then each layer's choices independently)."""
        choices = self.kernel_choices()
        depth = rng.choice(self.depth)
        embed_dim = rng.choice(self.embed_dim)
        layers = [
            self.make_layer(kernel or rng.choice(choices), rng.choice(self.heads), rng.choice(self.mlp_ratio))
            for _ in range(depth)
        ]
        return self.make_arch(embed_dim, layers)

    def largest(self, kernel: KernelSpec | None = None, rng: random.Random | None = None) -> Arch:
        """Widest and deepest. Kernels: `kernel` in every layer; else with `rng` a random kernel
        per layer; else softmax everywhere."""
        choices = self.kernel_choices()
        specs = [
            kernel or (rng.choice(choices) if rng else KernelSpec(BASELINE_KERNEL)) for _ in range(max(self.depth))
        ]
        return self.make_arch(
            max(self.embed_dim), [self.make_layer(spec, max(self.heads), max(self.mlp_ratio)) for spec in specs]
        )

    def smallest(self, kernel: KernelSpec | None = None, rng: random.Random | None = None) -> Arch:
        """Narrowest and shallowest. Kernels: `kernel` in every layer; else with `rng` a random
        kernel per layer; else the space's first linear (non-softmax) kernel everywhere."""
        choices = self.kernel_choices()
        if kernel is None and rng is None:
            kernel = next((c for c in choices if c.name != BASELINE_KERNEL), KernelSpec(BASELINE_KERNEL))
        specs = [kernel or rng.choice(choices) for _ in range(min(self.depth))]
        return self.make_arch(
            min(self.embed_dim), [self.make_layer(spec, min(self.heads), min(self.mlp_ratio)) for spec in specs]
        )

    def validate(self, arch: Arch) -> Arch:
        """Return `arch` if it belongs to this space, else raise naming the field and the allowed values."""
        where = f"arch (space {self.name})"
        for name in FIXED_FIELDS:
            if getattr(arch, name) != getattr(self, name):
                raise NasError(
                    f"{where}: field '{name}' is {getattr(arch, name)}, but the space fixes it to {getattr(self, name)}"
                )
        if arch.kernel_options != self.kernel_options:
            raise NasError(
                f"{where}: field 'kernel_options' is {arch.kernel_options}, but the space fixes it to {self.kernel_options}"
            )
        _check_in(arch.embed_dim, self.embed_dim, f"{where}: field 'embed_dim'")
        _check_in(arch.depth, self.depth, f"{where}: field 'depth'")
        if len(arch.layers) != arch.depth:
            raise NasError(f"{where}: field 'layers' has {len(arch.layers)} entries but depth is {arch.depth}")
        for i, layer in enumerate(arch.layers):
            at = f"{where}: layers[{i}]"
            _check_in(layer.kernel, self.kernels, f"{at}.kernel")
            allowed = [spec for spec in self.kernel_choices() if spec.name == layer.kernel]
            if layer.kernel_spec not in allowed:
                raise NasError(
                    f"{at}: kernel {layer.kernel!r} with options {dict(layer.options) or 'none'} is not a choice of this space; "
                    f"its choices: {'; '.join(str(spec.options or 'no options') for spec in allowed)}"
                )
            _check_in(layer.heads, self.heads, f"{at}.heads")
            _check_in(layer.mlp_ratio, self.mlp_ratio, f"{at}.mlp_ratio")
        return arch

    def arch_from_json(self, text: str, source: str = "arch") -> Arch:
        return self.validate(Arch.from_json(text, source))


def _check_in(value: Any, allowed: tuple, what: str) -> None:
    if value not in allowed:
        raise NasError(f"{what} is {value!r}; allowed: {', '.join(map(str, allowed))}")


# ---- loading ---------------------------------------------------------------------------------


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
