"""Taylor order 2 full: revision 3 (the symmetric d(d+1)/2 feature map, nas.kernels.taylor) against
revision 2 (all d² entries of x⊗x, re-created below from its source), forward, fp32, on this machine.

    python results/bench/taylor_symmetric.py [--tokens 256,1024,4096] [--rounds 5] [--out results/bench/taylor_symmetric_cpu.jsonl]

Interleaved: each round times both (median of `--calls` calls each after 3 warm-ups), so load on
the machine hits both alike; one JSON line per (round, tokens), appended. Also checks the outputs
agree to float32 rounding (max |Δ| relative to max |out|).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone

import torch

from nas import kernels
from nas.io import append_line
from nas.kernels.base import linear_attention
from nas.latency import describe_device


def revision_2(module, q, k, v):
    """Revision 2's order 2 full (git show d7b473c:nas/kernels/taylor.py, `_outer`): φ = [1, x, vec(x⊗x)]."""
    outer = lambda x: (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)  # noqa: E731
    d = module.head_dim
    return linear_attention(
        [1.0, q, outer(q)], [1.0, k, outer(k)], v, weights=[1.0, d**-0.5, 1.0 / (2 * d)], eps=module.eps
    )


def median_ms(fn, calls: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", default="256,1024,4096")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--out", default="results/bench/taylor_symmetric_cpu.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    module = kernels.get("taylor", head_dim=args.head_dim, num_heads=args.heads, order=2, variant="full").eval()
    machine = describe_device(torch.device("cpu"))
    for round_ in range(args.rounds):
        for tokens in map(int, args.tokens.split(",")):
            g = torch.Generator().manual_seed(tokens)
            q, k, v = (torch.randn(1, args.heads, tokens, args.head_dim, generator=g) for _ in range(3))
            with torch.inference_mode():
                new, old = module(q, k, v), revision_2(module, q, k, v)
                difference = ((new - old).abs().max() / old.abs().max()).item()
                old_ms = median_ms(lambda q=q, k=k, v=v: revision_2(module, q, k, v), args.calls)
                new_ms = median_ms(lambda q=q, k=k, v=v: module(q, k, v), args.calls)
            record = {
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "round": round_,
                "tokens": tokens,
                "heads": args.heads,
                "head_dim": args.head_dim,
                "threads": args.threads,
                "revision_2_ms": round(old_ms, 4),
                "revision_3_ms": round(new_ms, 4),
                "speedup": round(old_ms / new_ms, 3),
                "max_relative_difference": difference,
                "machine": machine["name"],
                "torch": machine["torch"],
            }
            append_line(args.out, record)
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
