"""Attention kernels of the search space: one module per kernel, one registry.

    >>> from nas import kernels
    >>> kernels.names()
    ['softmax', 'relu', 'angular', 'taylor', 'focused', 'l2vit', 'window']
    >>> attn = kernels.get("taylor", head_dim=32, num_heads=4, grid=(14, 14), order=2, variant="compact")
    >>> out = attn(q, k, v, grid=(H, W))  # q, k, v: (B, heads, N, head_dim)  # doctest: +SKIP

The math of every kernel is in shared/KERNELS.md and in each class's docstring.
"""

from nas.kernels.base import AttentionKernel
from nas.kernels.registry import KernelSpec, get, kernel_class, names, options, register, variants

# Importing the modules registers the kernels: the built-in ones in this order, then any
# other module of this package (a new kernel is one new module).
from nas.kernels import softmax, relu, angular, taylor, focused, l2vit, window  # noqa: E402, F401  isort: skip


def _import_other_modules() -> None:
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_other_modules()

__all__ = ["AttentionKernel", "KernelSpec", "get", "kernel_class", "names", "options", "register", "variants"]
