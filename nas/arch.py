"""`Arch`: one architecture of a search space, as plain, validated, hashable data.

    {"embed_dim": 64, "depth": 2,
     "layers": [{"kernel": "taylor", "order": 2, "variant": "full", "heads": 4, "mlp_ratio": 3},
                {"kernel": "softmax", "heads": 2, "mlp_ratio": 2}],
     "image_size": 32, "patch_size": 4, "in_chans": 1, "num_classes": 10, "head_dim": 16,
     "kernel_options": {"window": {"window_size": 4}}}

The fixed fields (image, patch, channels, classes, head_dim, per-kernel options) come from
the search space, so an arch.json alone rebuilds the model. The canonical JSON (sorted
keys, no whitespace, integral ratios as integers) has a stable SHA-256 hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from nas.errors import NasError
from nas.kernels import KernelSpec

FIXED_FIELDS = ("image_size", "patch_size", "in_chans", "num_classes", "head_dim")


def _number(value: float) -> float | int:
    """2.0 -> 2 so that equal ratios serialise (and hash) identically."""
    return int(value) if float(value).is_integer() else float(value)


@dataclass(frozen=True)
class LayerChoice:
    """The choices of one transformer block: a kernel with its choice options (those its
    class declares in `variants`, e.g. Taylor's order and variant), heads and MLP ratio."""

    kernel: str
    heads: int
    mlp_ratio: float
    options: tuple[tuple[str, Any], ...] = ()  # sorted (name, value) pairs

    def __post_init__(self) -> None:
        object.__setattr__(self, "mlp_ratio", _number(self.mlp_ratio))
        object.__setattr__(self, "options", tuple(sorted(dict(self.options).items())))

    @property
    def kernel_spec(self) -> KernelSpec:
        """Kernel name and the options that make this choice (e.g. order, variant)."""
        return KernelSpec(self.kernel, dict(self.options))

    def hidden_dim(self, embed_dim: int) -> int:
        return int(round(embed_dim * self.mlp_ratio))

    def to_dict(self) -> dict[str, Any]:
        return {"kernel": self.kernel, **dict(self.options), "heads": self.heads, "mlp_ratio": self.mlp_ratio}


class PatchGrid:
    """The token grid of an `image_size` / `patch_size` pair (Arch and SearchSpace have both)."""

    image_size: int
    patch_size: int

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass(frozen=True, eq=False)
class Arch(PatchGrid):
    embed_dim: int
    depth: int
    layers: tuple[LayerChoice, ...]
    image_size: int
    patch_size: int
    in_chans: int
    num_classes: int
    head_dim: int
    kernel_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def kernel_spec(self, layer: int) -> KernelSpec:
        """The layer's kernel with its choice options plus the space's fixed options."""
        choice = self.layers[layer].kernel_spec
        return KernelSpec(choice.name, {**self.kernel_options.get(choice.name, {}), **choice.options})

    def to_dict(self) -> dict[str, Any]:
        return {
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "layers": [layer.to_dict() for layer in self.layers],
            **{name: getattr(self, name) for name in FIXED_FIELDS},
            "kernel_options": self.kernel_options,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        """Stable hash of the canonical JSON (first 16 hex digits of SHA-256)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Arch) and self.canonical_json() == other.canonical_json()

    def __hash__(self) -> int:
        return hash(self.canonical_json())

    def __repr__(self) -> str:
        kinds = ",".join(f"{layer.kernel_spec.label}/h{layer.heads}/r{layer.mlp_ratio}" for layer in self.layers)
        return f"Arch(embed_dim={self.embed_dim}, depth={self.depth}, layers=[{kinds}])"

    @classmethod
    def from_dict(cls, data: Any, source: str = "arch") -> Arch:
        """Parse (types and structure only); `SearchSpace.validate` checks the values."""
        if not isinstance(data, dict):
            raise NasError(f"{source}: an arch must be a JSON object, got {type(data).__name__}")
        required = ("embed_dim", "depth", "layers", *FIXED_FIELDS)
        missing = [name for name in required if name not in data]
        if missing:
            raise NasError(f"{source}: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(data) - set(required) - {"kernel_options"})
        if unknown:
            raise NasError(f"{source}: unknown field(s) {', '.join(unknown)}")
        ints = {name: _int(data[name], f"{source}: field '{name}'") for name in ("embed_dim", "depth", *FIXED_FIELDS)}
        if not isinstance(data["layers"], list):
            raise NasError(f"{source}: field 'layers' must be a list of layer objects")
        layers = tuple(_layer(layer, f"{source}: layers[{i}]") for i, layer in enumerate(data["layers"]))
        options = data.get("kernel_options", {})
        if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
            raise NasError(f"{source}: field 'kernel_options' must map kernel names to option objects")
        return cls(layers=layers, kernel_options=options, **ints)

    @classmethod
    def from_json(cls, text: str, source: str = "arch") -> Arch:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise NasError(f"{source}: not valid JSON ({error})") from None
        return cls.from_dict(data, source)


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise NasError(f"{what} must be an integer, got {value!r}")
    return value


def _layer(data: Any, where: str) -> LayerChoice:
    if not isinstance(data, dict):
        raise NasError(f"{where}: a layer must be an object with kernel, heads, mlp_ratio")
    for name in ("kernel", "heads", "mlp_ratio"):
        if name not in data:
            raise NasError(f"{where}: missing field '{name}'")
    kernel = str(data["kernel"])
    choice_options = {key for variant in _declared_variants(kernel) for key in variant}
    unknown = sorted(set(data) - {"kernel", "heads", "mlp_ratio"} - choice_options)
    if unknown:
        raise NasError(
            f"{where}: unknown field(s) {', '.join(unknown)}"
            + (f" (kernel {kernel!r} chooses {', '.join(sorted(choice_options))})" if choice_options else "")
        )
    ratio = data["mlp_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise NasError(f"{where}: field 'mlp_ratio' must be a number, got {ratio!r}")
    options = {key: data[key] for key in sorted(choice_options) if key in data}
    for key, value in options.items():
        allowed = [v[key] for v in _declared_variants(kernel) if key in v]
        if not any(type(value) is type(a) and value == a for a in allowed):
            raise NasError(
                f"{where}: field '{key}' is {value!r}; kernel {kernel!r} takes {', '.join(map(repr, dict.fromkeys(allowed)))}"
            )
    return LayerChoice(
        kernel=kernel,
        heads=_int(data["heads"], f"{where}: field 'heads'"),
        mlp_ratio=ratio,
        options=tuple(options.items()),
    )


def _declared_variants(kernel: str) -> tuple[dict, ...]:
    """The choice option sets kernel `kernel` declares; none for an unknown kernel (the space names it)."""
    from nas import kernels

    return kernels.kernel_class(kernel).variants if kernel in kernels.names() else ({},)
