"""Issue 27: the linear kernels' fused Triton core equals the eager one, forward and gradients (float32),
under Triton's interpreter on the CPU (a subprocess: TRITON_INTERPRET is read when Triton compiles), and on CUDA."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest
import torch
from test_faults import REPO

pytest.importorskip("triton")

# (batch, heads, tokens, head_dim, heads built, grid): fewer heads than built, non-square grids, more tokens than one
# chunk (32) and, for Taylor order 2 full at d = 16, more features (153) than one tile (64).
SHAPES = [(2, 2, 15, 8, 3, (3, 5)), (1, 3, 16, 8, 4, (4, 4)), (2, 1, 35, 16, 2, (5, 7)), (1, 2, 64, 8, 2, (8, 8))]
LINEAR = [
    "relu",
    "taylor-o1",
    "taylor-o2-full",
    "taylor-o2-compact",
    "focused",
    "l2vit",
]  # the kernels with linear_attention's core

CHECK = """
import sys
import torch
from nas import kernels
from nas.kernels import fused

device = sys.argv[1]
specs = {s.label: s for s in kernels.variants()}
for batch, heads, tokens, d, built, grid in SHAPES:
    for label in LINEAR:
        torch.manual_seed(tokens)
        module = specs[label].build(d, built, grid=grid, embed_dim=built * d).to(device)
        for p in module.parameters():  # away from their initial values, so that every parameter matters
            p.data.add_(0.1 * torch.randn_like(p))
        q, k, v = (torch.randn(batch, heads, tokens, d, device=device, requires_grad=True) for _ in range(3))
        results = []
        for fast in (False, True):
            if fast:
                with fused.path():
                    out = module(q, k, v, grid)
            else:
                out = module(q, k, v, grid)
            wrt = [q, k, v, *module.parameters()]
            results.append([out, *torch.autograd.grad((out * out).sum(), wrt, allow_unused=True)])
        for a, b in zip(*results):
            if a is not None:
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=lambda m: f"{label} {tokens} tokens: {m}")
print("checked", len(SHAPES) * len(LINEAR))
"""


@pytest.mark.slow
@pytest.mark.compat
def test_fused_core_equals_the_eager_one_under_the_interpreter():
    code = f"SHAPES = {SHAPES!r}\nLINEAR = {LINEAR!r}\n" + CHECK
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, "cpu"], capture_output=True, text=True, cwd=REPO, env=env, timeout=600
    )
    assert done.returncode == 0 and f"checked {len(SHAPES) * len(LINEAR)}" in done.stdout, done.stderr[-3000:]


def test_fused_path_is_refused_where_triton_cannot_run():
    from nas import kernels
    from nas.kernels import fused

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter runs it here")
    module = kernels.get("relu", head_dim=8, num_heads=2)
    q = torch.randn(1, 2, 4, 8)
    with fused.path(), pytest.raises(RuntimeError, match="Triton runs on CUDA devices"):
        module(q, q, q)
    assert torch.isfinite(module(q, q, q)).all()  # outside the block, the eager path


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.is_available() is False on this machine"
)
def test_fused_core_equals_the_eager_one_on_cuda():
    code = f"SHAPES = {SHAPES!r}\nLINEAR = {LINEAR!r}\n" + CHECK
    done = subprocess.run([sys.executable, "-c", code, "cuda"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


# ---- the kernel path of latency measurements (--kernels) ---------------------------------------------------------

MEASURE = """
import json, sys
from nas.kernels import fused
from nas.latency import table as lut
from nas.latency.probe import Protocol
from nas.latency.profiler import Profiler
from nas.space_file import parse_space

calls = []
core = fused.linear_attention_fused
fused.linear_attention_fused = lambda *args, **kwargs: calls.append(1) or core(*args, **kwargs)
space = parse_space(json.loads(sys.argv[1]), "tiny.yaml")
probe = [(key, arch) for key, arch in lut.probe_archs(space) if "|relu|" in key][:1]
protocol = Protocol(warmup=1, repeats=2, min_repeats=1, max_seconds=0.01, passes=1)
for kernels in ("eager", "fused"):
    before = len(calls)
    profiler = Profiler("cpu", "fp32", 1, protocol=protocol, kernels=kernels)
    entries = profiler.measure_probes(probe)
    (model_ms,) = profiler.measure_models([probe[0][1]])
    print(json.dumps({"path": profiler.fingerprint().kernels, "core_calls": len(calls) - before,
                      "entry_ms": entries[probe[0][0]]["ms"], "model_ms": model_ms}))
"""


@pytest.mark.slow
@pytest.mark.compat
def test_models_are_timed_on_the_kernel_path_their_fingerprint_records():
    """Under the interpreter (the fused path's stand-in for CUDA here): a profiler on the fused path runs the
    linear kernels' core as the Triton kernels, in table entries and whole models alike, and says so in its
    fingerprint; on the eager path the Triton kernels never run."""
    import json

    from test_faults import TINY_SPACE

    tiny = {**TINY_SPACE, "image_size": 4, "patch_size": 2, "depth": [1], "embed_dim": [8]}
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(tiny)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    eager, fused = (json.loads(line) for line in done.stdout.splitlines())
    assert eager["path"] == "eager" and eager["core_calls"] == 0
    assert fused["path"] == "fused" and fused["core_calls"] > 0
    assert all(run["entry_ms"] > 0 and run["model_ms"] > 0 for run in (eager, fused))


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.is_available() is False on this machine"
)
@pytest.mark.parametrize("path", ["eager", "fused"])
def test_every_kernel_captures_in_a_cuda_graph_and_its_replay_equals_its_call(path):
    from nas import kernels
    from nas.kernels import fused

    context = fused.path if path == "fused" else contextlib.nullcontext
    for spec in kernels.variants():
        torch.manual_seed(0)
        module = spec.build(32, 4, grid=(16, 16), embed_dim=128).cuda().eval()
        q, k, v = (torch.randn(2, 4, 256, 32, device="cuda") for _ in range(3))
        with torch.no_grad(), context():
            expected = module(q, k, v, (16, 16))
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                module(q, k, v, (16, 16))  # warm-up outside the capture (Triton compiles, cuBLAS picks its kernels)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = module(q, k, v, (16, 16))
            for x in (q, k, v):
                x.copy_(torch.randn_like(x))
            graph.replay()
            torch.cuda.synchronize()
            torch.testing.assert_close(out, module(q, k, v, (16, 16)), msg=lambda m, label=spec.label: f"{label}: {m}")
        assert not torch.equal(out, expected), spec.label  # the replay computed the new inputs
