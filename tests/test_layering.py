"""The code's floors: the model and latency code imports neither Ray, Optuna nor the upper
floors, imports have no cycle, and a kernel is added by one new module."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOWER = [
    "nas.kernels",
    "nas.arch",
    "nas.space",
    "nas.space_file",
    "nas.supernet",
    "nas.subnet",
    "nas.latency",
    "nas.latency.table",
    "nas.latency.build",
    "nas.latency.validation",
    "nas.latency.profiler",
    "nas.latency.probe",
    "nas.latency.timer",
    "nas.latency.trials",
    "nas.latency.runtime",
    "nas.flops",
    "nas.compute",
    "nas.data",
    "nas.dataset",
    "nas.imagefolder",
    "nas.odd_one_out",
    "nas.rundir",
    "nas.sampling",
    "nas.train_step",
    "nas.checkpoint",
    "nas.training",
    "nas.evaluate",
    "nas.exporter",
    "nas.standalone",
    "nas.verify",
    "nas.verify_training",
]
BLOCKED = [
    "ray",
    "optuna",
    "nas.study",
    "nas.study_async",
    "nas.study_trials",
    "nas.feasibility",
    "nas.pipeline",
    "nas.resume",
    "nas.budget",
    "nas.pick",
    "nas.search_run",
    "nas.bench",
    "nas.stages",
    "nas.preflight",
    "nas.cli",
    "nas.commands",
    "workers",
]


@pytest.mark.slow
@pytest.mark.compat
def test_lower_floors_import_without_ray_optuna_or_upper_floors():
    script = textwrap.dedent(f"""
        import importlib, importlib.abc, sys
        BLOCKED = {BLOCKED!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                    raise ImportError(f"blocked import of {{name}}")
        sys.meta_path.insert(0, Block())
        for name in {LOWER!r}:
            importlib.import_module(name)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


def _module_imports() -> dict[str, set[str]]:
    """Imports (module-level and deferred) between the project's own modules (nas.*, workers.*)."""
    paths = list((ROOT / "nas").rglob("*.py")) + list((ROOT / "workers").rglob("*.py"))
    names = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in paths}
    graph = {}
    for name, path in names.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):  # deferred (function-level) imports count too
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from nas import kernels` imports the module nas.kernels (and runs nas/__init__ only once)
                targets.update(
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names else node.module for a in node.names
                )
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = targets
    return {m: {t for t in targets if t in graph and t != m and t != "nas"} for m, targets in graph.items()}


def test_no_import_cycle():
    graph = _module_imports()
    state: dict[str, int] = {}

    def visit(module, stack):
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack + [module, target]))
            if target not in state:
                visit(target, stack + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_nothing_below_the_cli_imports_the_benchmarks():
    graph = _module_imports()
    offenders = [
        m
        for m, targets in graph.items()
        if not m.startswith(("nas.bench", "nas.commands", "nas.cli"))
        and any(t.startswith("nas.bench") for t in targets)
    ]
    assert not offenders, offenders
