"""Hardware-aware architecture search for efficient Vision Transformers.

The Python API (loaded on first use, so that `import nas` and `nas --help` stay light):

    import nas
    result = nas.run(nas.RunConfig(space="digits-tiny", trials=20), out="results/my-run")
    model = nas.load("results/my-run/exports/best")

`import nas` also registers the timm model `vit_nas` (nas.timm_compat) once timm is imported.
"""

from __future__ import annotations

import sys

__version__ = "0.1.0"
__all__ = [
    "run",
    "train",
    "search",
    "select",
    "export",
    "load",
    "RunConfig",
    "TrainConfig",
    "SearchSettings",
    "LatencySettings",
    "ExportSettings",
    "VerifySettings",
    "__version__",
]

_API = {
    "run": "nas.api",
    "train": "nas.api",
    "search": "nas.api",
    "select": "nas.api",
    "export": "nas.api",
    "load": "nas.api",
    "RunConfig": "nas.config",
    "TrainConfig": "nas.config",
    "SearchSettings": "nas.config",
    "LatencySettings": "nas.config_stages",
    "ExportSettings": "nas.config_stages",
    "VerifySettings": "nas.config_stages",
}


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'nas' has no attribute {name!r}")


def _register_with_timm() -> None:
    """`vit_nas` in timm's registry: now when timm is loaded, else right after it is (an import hook
    that removes itself), so that `import nas` does not import timm and torch."""
    if "timm" in sys.modules:
        _register()
        return
    import importlib.abc
    import importlib.util

    class AfterTimm(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name != "timm":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec("timm")
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                exec_module = spec.loader.exec_module

                def exec_and_register(module):
                    exec_module(module)
                    _register()

                spec.loader.exec_module = exec_and_register
            return spec

    sys.meta_path.insert(0, AfterTimm())


def _register() -> None:
    from timm.models import is_model, register_model

    if is_model("vit_nas"):
        return

    def vit_nas(pretrained: bool = False, **kwargs):
        from nas.timm_compat import vit_nas as build

        return build(pretrained=pretrained, **kwargs)

    vit_nas.__doc__ = "An exported vit-nas arch (nas.timm_compat.vit_nas)."
    register_model(vit_nas)


_register_with_timm()
