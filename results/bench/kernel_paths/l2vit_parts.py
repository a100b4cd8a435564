"""L²ViT's timed call in parts, eager vs torch.compile (fullgraph), forward, 1,024 tokens, 2 threads:
python results/bench/kernel_paths/l2vit_parts.py > results/bench/kernel_paths/l2vit_parts.txt"""

import torch
from torch.utils import benchmark

from nas.kernels import registry

torch.set_num_threads(2)
batch, heads, tokens, head_dim, grid = 1, 4, 1024, 32, (32, 32)
q, k, v = (torch.randn(batch, heads, tokens, head_dim) for _ in range(3))
x = torch.randn(batch, tokens, heads * head_dim)
module = registry.get("l2vit", head_dim, heads, grid=grid, embed_dim=heads * head_dim)
parts = {
    "attention": lambda: module(q, k, v, grid),
    "residual (LCM)": lambda: module.residual(x, grid),
    "position (CPE)": lambda: module.position(x, grid),
}
with torch.no_grad():
    for name, call in parts.items():
        for path, fn in (("eager", call), ("compiled", torch.compile(call, fullgraph=True, dynamic=False))):
            fn()
            timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=2).blocked_autorange(min_run_time=1)
            print(f"{name:16s} {path:9s} {timer.median * 1e3:.3f} ms")
