"""The runtimes a model is timed in: what users deploy with, not only eager PyTorch.

    eager        the standalone PyTorch modules, called as they are
    cuda-graph   each call captured once into a CUDA graph and replayed (CUDA only)
    onnxruntime  the module's ONNX graph — written by the exporter `nas export` uses
                 (nas.exporter.to_onnx: torch.onnx, dynamo, opset 18) — in an ONNX Runtime
                 session on the CPU execution provider, with as many intra-op threads as
                 the fingerprint's CPU threads

The runtime is part of the device fingerprint (`backend`, and `runtime_version` for ONNX
Runtime): a table or study measured in one runtime is refused for another. Not built:
`compile` (torch.compile: its per-model compilation, tens of seconds on 2 cores, is longer
than timing a whole table), `tensorrt`, and ONNX Runtime on CUDA; each is refused in one line.

Within a PyTorch runtime (eager, cuda-graph), the linear kernels' core runs on one of two paths
(`kernels` in the fingerprint, the CLI's --kernels; `resolve_kernels`):

    eager        nas.kernels.base.linear_attention as PyTorch operations (the specification)
    fused        nas.kernels.fused: Triton kernels, where Triton runs (CUDA)

`auto` takes the fused path on CUDA when Triton is installed and the eager one elsewhere. The
exported standalone model runs either way; it runs at the measured latency on the path its
metadata records (`with nas.kernels.fused.path(): model(x)` for fused).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import torch

from nas.config import KERNEL_PATHS
from nas.errors import NasError

RUNTIMES = ("eager", "cuda-graph", "onnxruntime")
NOT_BUILT = {
    "compile": "torch.compile is not a latency runtime yet: compiling each measured model takes longer than timing the whole table "
    "on a small machine; measure in eager (or cuda-graph on GPUs, which removes launch overhead the way compilation does)",
    "tensorrt": "TensorRT is not a latency runtime yet; on NVIDIA GPUs use cuda-graph, or onnxruntime on CPUs",
}


def check_runtime(runtime: str, device: torch.device, dtype: str) -> str | None:
    """Refuse (one line) a runtime this device, dtype or installation cannot time; returns the
    runtime's own version for the fingerprint (None where it is torch's)."""
    if runtime in NOT_BUILT:
        raise NasError(f"--runtime {runtime}: {NOT_BUILT[runtime]}")
    if runtime not in RUNTIMES:
        raise NasError(f"--runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    if runtime == "cuda-graph" and device.type != "cuda":
        raise NasError("--runtime cuda-graph needs a CUDA device")
    if runtime != "onnxruntime":
        return None
    if device.type != "cpu":
        raise NasError(
            "--runtime onnxruntime times ONNX Runtime's CPU execution provider; on CUDA use eager or cuda-graph"
        )
    if dtype != "fp32":
        raise NasError(f"--runtime onnxruntime measures fp32 models; --dtype {dtype} is not supported there")
    try:
        import onnxruntime
    except ImportError:
        raise NasError("--runtime onnxruntime needs the onnxruntime package: pip install onnxruntime") from None
    return f"onnxruntime {onnxruntime.__version__}"


def resolve_kernels(kernels: str, device: torch.device, runtime: str) -> str:
    """The kernel path (`eager` or `fused`) models are timed on, for --kernels `kernels` (auto, eager or fused);
    a path this device, runtime or installation cannot run is refused in one line."""
    if kernels not in KERNEL_PATHS:
        raise NasError(f"--kernels {kernels!r}: use one of {', '.join(KERNEL_PATHS)}")
    if kernels == "eager" or (kernels == "auto" and (device.type != "cuda" or runtime == "onnxruntime")):
        return "eager"
    from nas.kernels import fused

    why = fused.available(device)
    if kernels == "auto":
        return "eager" if why else "fused"
    if runtime == "onnxruntime":
        raise NasError(
            "--kernels fused: --runtime onnxruntime times the ONNX graph, which has no Triton kernels; use eager"
        )
    if why:
        raise NasError(f"--kernels fused: {why}; use --kernels eager (or auto)")
    return "fused"


class _Positional(torch.nn.Module):
    """`fn(x)` of a module as a module of one input (a block takes its grid too)."""

    def __init__(self, module: torch.nn.Module, fn: Callable) -> None:
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self, x):
        return self.fn(x)


INPUT, OUTPUT = "images", "logits"


def onnx_bytes(module: torch.nn.Module, fn: Callable, example: torch.Tensor) -> bytes:
    """The ONNX graph of `fn` (a call of `module`; `module` itself for a whole model), with a
    dynamic batch: the exporter and settings of `nas export`'s model.onnx (nas.exporter.to_onnx)."""
    wrapped = module if fn is module else _Positional(module, fn)
    if example.shape[0] < 2:  # a batch of 1 would be specialised to 1 by the exporter
        example = torch.cat([example, example])
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapped.eval(),
            (example,),
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            opset_version=18,
            verbose=False,
            external_data=False,
        )
    program.save(buffer)
    return buffer.getvalue()


def onnxruntime_callable(module: torch.nn.Module, fn: Callable, example: torch.Tensor, threads: int | None) -> Callable:
    """`fn` as ONNX Runtime runs it: a callable of one CPU tensor returning the session's outputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_bytes(module, fn, example), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor):
        return session.run(None, {INPUT: x.detach().contiguous().numpy()})

    return run
