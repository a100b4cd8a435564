"""FLOPs (multiply-accumulates, as DeiT and fvcore count them) and parameters of an arch.

fvcore traces the standalone model and counts its convs, linears and norms, but it has no
handle for `scaled_dot_product_attention`, elementwise feature maps or the linear-attention
matmul chains of custom kernels. So every attention kernel's own count (what fvcore saw
inside `blocks.i.attn.kernel`) is replaced by the kernel's formula (`AttentionKernel.macs`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch

from nas.arch import Arch
from nas.subnet import ViT


@dataclass(frozen=True)
class Cost:
    macs: int  # multiply-accumulates of one forward for one image ("FLOPs" in DeiT's tables)
    params: int
    kernel_macs: int  # the attention kernels' share of `macs`

    @property
    def gflops(self) -> float:
        return self.macs / 1e9


def count(arch: Arch) -> Cost:
    model = ViT(arch).eval()
    x = torch.randn(1, arch.in_chans, arch.image_size, arch.image_size)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    with warnings.catch_warnings():  # fvcore scripts and traces with torch.jit, which warns that it is deprecated
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(model, x)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        by_module = analysis.by_module()
        macs = analysis.total()
    kernel_macs = 0
    for i, block in enumerate(model.blocks):
        macs -= by_module.get(f"blocks.{i}.attn.kernel", 0)
        kernel_macs += block.attn.kernel.macs(arch.layers[i].heads, arch.grid)
    return Cost(
        macs=int(macs + kernel_macs), params=sum(p.numel() for p in model.parameters()), kernel_macs=kernel_macs
    )
