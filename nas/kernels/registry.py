"""Kernel registry: name -> class, plus the named variants the search space chooses from."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from nas.errors import NasError
from nas.kernels.base import AttentionKernel

_KERNELS: dict[str, type[AttentionKernel]] = {}


def register(cls: type[AttentionKernel]) -> type[AttentionKernel]:
    """Class decorator: make `cls` available under `cls.name`."""
    if cls.name in _KERNELS:
        raise ValueError(f"attention kernel {cls.name!r} is registered twice")
    _KERNELS[cls.name] = cls
    return cls


def names() -> list[str]:
    """The registered kernel names, in registration order."""
    return list(_KERNELS)


def kernel_class(name: str) -> type[AttentionKernel]:
    try:
        return _KERNELS[name]
    except KeyError:
        raise NasError(f"unknown attention kernel {name!r}; valid kernels: {', '.join(names())}") from None


CONTEXT = ("grid", "embed_dim")  # given by the model around a kernel, not options of the space


def options(name: str) -> dict[str, object]:
    """The options a kernel takes besides head_dim and num_heads, with their defaults."""
    params = inspect.signature(kernel_class(name).__init__).parameters
    return {p: params[p].default for p in list(params)[3:] if p not in CONTEXT}


def get(
    name: str, head_dim: int, num_heads: int, grid=None, embed_dim: int | None = None, **kernel_options
) -> AttentionKernel:
    """Build kernel `name` for `num_heads` heads of `head_dim`, e.g.
    `get("taylor", head_dim=32, num_heads=4, grid=(14, 14), order=2, variant="compact")`. `grid` (H, W) and
    `embed_dim` go to the kernels whose constructor takes them (see `nas.kernels.base`)."""
    valid = options(name)
    for option in kernel_options:
        if option not in valid:
            listed = ", ".join(valid) or "none"
            raise NasError(f"kernel {name!r} has no option {option!r}; its options: {listed}")
    params = inspect.signature(_KERNELS[name].__init__).parameters
    context = {key: value for key, value in (("grid", grid), ("embed_dim", embed_dim)) if key in params}
    return _KERNELS[name](head_dim, num_heads, **context, **kernel_options)


@dataclass(frozen=True)
class KernelSpec:
    """A kernel name plus the options that make it a distinct choice (e.g. Taylor order 2, compact)."""

    name: str
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Short stable label: `softmax`, `taylor-o2-compact`, ..."""
        if not self.options:
            return self.name
        prefixes = kernel_class(self.name).label_prefixes if self.name in _KERNELS else {}
        return "-".join([self.name] + [f"{prefixes.get(key, '')}{self.options[key]}" for key in sorted(self.options)])

    def build(self, head_dim: int, num_heads: int, grid=None, embed_dim: int | None = None, **extra) -> AttentionKernel:
        return get(self.name, head_dim, num_heads, grid=grid, embed_dim=embed_dim, **{**self.options, **extra})


def variants() -> list[KernelSpec]:
    """Every distinct kernel choice of the library, in registry order."""
    return [KernelSpec(name, dict(opts)) for name, cls in _KERNELS.items() for opts in cls.variants]
