"""Search spaces: what a space fixes and lets choose, its kernel choices, and the archs it samples and admits.

A space fixes the input (image_size, patch_size, in_chans, num_classes), the head
dimension and per-kernel options, and lists the choices: global `embed_dim` and `depth`;
per layer a kernel choice, `heads` and `mlp_ratio`. A kernel choice is a kernel plus one of
the option sets its class declares in `variants` (Taylor: order 1, order 2 full, order 2
compact); a section named after the kernel limits them, e.g.
`taylor: {order: [2], variant: [compact]}`. Choices are independent (AutoFormer style): a layer's attention
width heads·head_dim need not equal embed_dim, but the widest attention may not exceed
the widest embedding. Spaces are declarative YAML files in search_spaces/, loaded by nas.space_file.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from nas import kernels
from nas.arch import FIXED_FIELDS, Arch, LayerChoice, PatchGrid
from nas.errors import NasError
from nas.kernels import KernelSpec

BASELINE_KERNEL = "softmax"  # the largest subnet (the supernet's teacher) uses it everywhere


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
