"""Whole-model figures anchored to a reference time measured quiet, measured quiet and beside two
busy processes (2 threads each, matrix products) on this 2-core machine. One JSON line per run:
    python results/bench/anchor_busy.py quiet|busy >> results/bench/anchor_busy.jsonl
The busy figures must not fall below the quiet ones (nas.latency.profiler.Profiler.speed)."""

import json
import random
import subprocess
import sys
import time

import torch

from nas.latency.profiler import Profiler
from nas.space_file import load_space

space = load_space("odd-one-out")
rng = random.Random(3)
archs = [space.sample(rng) for _ in range(6)]
mode = sys.argv[1]
torch.set_num_threads(2)
p = Profiler("cpu", "fp32", 1, threads=2)
anchor = min(p.reference() for _ in range(10))
if mode == "busy":
    hogs = [
        subprocess.Popen(
            [sys.executable, "-c", "import torch; torch.set_num_threads(2); a=torch.randn(400,400)\nwhile True: a@a"]
        )
        for _ in range(2)
    ]
    time.sleep(2)
q = Profiler("cpu", "fp32", 1, threads=2)
q.anchor_to(anchor)
t = time.time()
ms = q.measure_models(archs)
if mode == "busy":
    for h in hogs:
        h.kill()
print(
    json.dumps(
        {
            "mode": mode,
            "anchor": round(anchor, 4),
            "speeds": q.speeds,
            "ms": [round(x, 3) for x in ms],
            "s": round(time.time() - t, 1),
        }
    )
)
