"""`nas bench supernet`: the cost of weight sharing for one training step.

For each sampled arch, one training step (zero_grad, forward, cross-entropy, backward,
AdamW step) of the subnet inside the supernet and of the same arch as a standalone
extracted model, on the same batch, timed alternately (supernet, standalone, supernet, …)
so that machine noise hits both alike. Reports the per-arch median ratio and its median.
"""

from __future__ import annotations

import csv
import io
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from nas.io import write_json, write_text
from nas.latency import describe_device
from nas.latency.timer import summarize
from nas.space import SearchSpace
from nas.supernet import SuperNet, extract


@dataclass(frozen=True)
class SupernetBenchConfig:
    space: str = "digits-tiny"
    archs: int = 10
    batch_size: int = 64
    warmup: int = 2
    repeats: int = 10
    seed: int = 0


@dataclass(frozen=True)
class SupernetRow:
    arch: str
    summary: str
    supernet_ms: float
    standalone_ms: float

    @property
    def ratio(self) -> float:
        return self.supernet_ms / self.standalone_ms


def _step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, forward: Callable[[], torch.Tensor], labels: torch.Tensor
) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(forward(), labels).backward()
        optimizer.step()

    return step


def run(space: SearchSpace, config: SupernetBenchConfig, progress: Callable[[str], None] = print) -> list[SupernetRow]:
    torch.manual_seed(config.seed)
    net = SuperNet(space).train()
    rng = random.Random(config.seed)
    x = torch.randn(config.batch_size, space.in_chans, space.image_size, space.image_size)
    y = torch.randint(0, space.num_classes, (config.batch_size,))
    rows = []
    for i in range(config.archs):
        arch = space.sample(rng)
        standalone = extract(net, arch).train()
        steps = [
            _step(net, torch.optim.AdamW(net.parameters(), lr=1e-5), lambda arch=arch: net(x, arch), y),
            _step(
                standalone,
                torch.optim.AdamW(standalone.parameters(), lr=1e-5),
                lambda standalone=standalone: standalone(x),
                y,
            ),
        ]
        times: list[list[float]] = [[], []]
        for repeat in range(config.warmup + config.repeats):
            for which, step in enumerate(steps):
                start = time.perf_counter()
                step()
                if repeat >= config.warmup:
                    times[which].append((time.perf_counter() - start) * 1e3)
        supernet_ms, standalone_ms = (summarize(t).median_ms for t in times)
        kinds = ",".join(layer.kernel_spec.label for layer in arch.layers)
        row = SupernetRow(arch.digest, f"e{arch.embed_dim} d{arch.depth} [{kinds}]", supernet_ms, standalone_ms)
        rows.append(row)
        progress(
            f"[{i + 1}/{config.archs}] {row.summary}: supernet {supernet_ms:.2f} ms, standalone {standalone_ms:.2f} ms, ratio {row.ratio:.3f}"
        )
    return rows


def median_ratio(rows: list[SupernetRow]) -> float:
    return statistics.median(row.ratio for row in rows)


def write_results(
    rows: list[SupernetRow], config: SupernetBenchConfig, out_dir: Path, command: str | None
) -> list[Path]:
    stem = out_dir / f"supernet_{config.space}_cpu"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["arch", "summary", "supernet_ms", "standalone_ms", "ratio"])
    for row in rows:
        writer.writerow(
            [row.arch, row.summary, f"{row.supernet_ms:.4g}", f"{row.standalone_ms:.4g}", f"{row.ratio:.4f}"]
        )
    write_text(stem.with_suffix(".csv"), buffer.getvalue())
    write_json(
        stem.with_suffix(".json"),
        {
            "benchmark": "nas bench supernet",
            "command": command,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": describe_device(torch.device("cpu")),
            "config": asdict(config),
            "protocol": "one training step (zero_grad, forward, cross-entropy, backward, AdamW step) on one random batch; "
            f"{config.warmup} warm-up + {config.repeats} timed steps per model, supernet and standalone alternating; medians",
            "median_ratio": median_ratio(rows),
        },
    )
    return [stem.with_suffix(".csv"), stem.with_suffix(".json")]
