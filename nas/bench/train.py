"""`nas bench train`: how fast the compute device trains and evaluates, and what it costs in memory.

Per data source (the embedded task; a generated ImageFolder, streamed with 0 and 2 loader
workers and, for comparison, the same images decoded once and held in memory):
- training images/s of supernet sandwich steps (largest + smallest + random subnets,
  forward, backward, AdamW step) exactly as `nas train` runs them (`sandwich_step`,
  `optimizer_step`, `dataset.batches`);
- evaluation images/s of the largest subnet on the validation split;
- peak memory: the process's high-water RSS on the CPU (Linux `ru_maxrss`; the loader
  workers are separate processes, reported apart as the sum of their peaks), and
  `max_memory_allocated` on CUDA.
Each case runs in a fresh subprocess, so that one case's peak does not hide another's.

`memory_case` trains one epoch with `nas train` on two generated ImageFolders of different
sizes and reports each process's peak RSS: the streamed data path must not grow with them.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from nas.compute import Compute


@dataclass(frozen=True)
class TrainBenchConfig:
    space: str = "digits-tiny"
    batch_size: int = 64
    steps: int = 12  # timed sandwich steps
    warmup: int = 2
    eval_images: int = 512
    random_subnets: int = 2
    device: str = "auto"
    precision: str = "fp32"
    seed: int = 0


def generate_image_folder(root: Path, train: int, val: int, size: int = 224, classes: int = 10, seed: int = 0) -> Path:
    """An ImageNet-layout folder of RGB JPEGs (`train` + `val` images, round-robin over the
    classes): each class a colour gradient in its own direction, with per-image noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    for part, count in (("train", train), ("val", val)):
        for c in range(classes):
            (root / part / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            c = i % classes
            angle = 2 * np.pi * c / classes
            field = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
            colour = rng.uniform(0.2, 1.0, 3)
            pixels = 255 * np.clip(field[..., None] * colour + rng.normal(0, 0.05, (size, size, 3)), 0, 1)
            Image.fromarray(pixels.astype(np.uint8)).save(root / part / f"class{c:02d}" / f"{i:06d}.jpg", quality=85)
    return root


class Preloaded:
    """Makes an ImageFiles decode each image once and hold it in memory (the comparison case):
    the same transforms, no file reads."""

    def __init__(self, files) -> None:
        self.images = [files.image(index) for index in range(len(files.samples))]
        files.image = self.images.__getitem__


def peak_memory(compute: Compute, workers_mb: float | None) -> dict:
    out = {
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loader_workers_rss_peak_mb": workers_mb,
    }
    if compute.cuda:
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(compute.device) / 2**20
    return out


def children_peak_mb() -> float | None:
    """The sum of the peak RSS (VmHWM) of this process's live children — the loader workers;
    pages they share are counted in each. None where /proc does not tell (not Linux)."""
    import os

    try:
        pids = [
            pid
            for task in os.listdir("/proc/self/task")
            for pid in Path(f"/proc/self/task/{task}/children").read_text().split()
        ]
        total = 0
        for pid in pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        return total / 1024
    except OSError:
        return None


def run_case(config: TrainBenchConfig, data: str | None, loader_workers: int, preload: bool) -> dict:
    """One case, in this process: timed training steps, then timed evaluation."""
    from nas.config import TrainConfig
    from nas.data import load_dataset
    from nas.evaluate import accuracy
    from nas.sampling import sandwich, step_seeds
    from nas.space_file import load_space
    from nas.supernet import SuperNet
    from nas.train_step import make_optimizer, optimizer_step, sandwich_step

    compute = Compute.parse(config.device, config.precision)
    space = load_space(config.space)
    dataset = load_dataset(data or space.data, space.image_size, space.in_chans, workers=loader_workers)
    if preload:
        Preloaded(dataset)
    if dataset.num_classes != space.num_classes:
        space = space.with_num_classes(dataset.num_classes)
    torch.manual_seed(config.seed)
    net = SuperNet(space).to(compute.device)
    optimizer = make_optimizer(net, TrainConfig())
    scaler = compute.scaler()
    steps = config.warmup + config.steps
    order = torch.randperm(dataset.size("train"), generator=torch.Generator().manual_seed(config.seed))
    plan = [
        (order[(s * config.batch_size) % len(order) :][: config.batch_size], step_seeds(config.seed, s)[2])
        for s in range(steps)
    ]
    started = None
    images = 0
    for s, (x, y) in enumerate(dataset.batches("train", plan, pin=compute.cuda)):
        if s == config.warmup:
            if compute.cuda:
                torch.cuda.synchronize()
            started, images = time.perf_counter(), 0
        archs = sandwich(space, step_seeds(config.seed, s)[0], config.random_subnets)
        optimizer.zero_grad(set_to_none=True)
        sandwich_step(net, archs, compute.move(x), compute.move(y), 0.5, 0.1, compute, scaler)
        optimizer_step(net, optimizer, scaler)
        images += len(x)
    if compute.cuda:
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - started
    workers_mb = children_peak_mb() if loader_workers else 0.0  # the persistent training workers are still alive
    limit = min(config.eval_images, dataset.size("val"))
    accuracy(net, space.largest(), dataset, "val", compute=compute, limit=min(limit, 2 * config.batch_size))  # warm-up
    started = time.perf_counter()
    accuracy(net, space.largest(), dataset, "val", batch_size=config.batch_size, compute=compute, limit=limit)
    eval_seconds = time.perf_counter() - started
    return {
        "data": dataset.name,
        "loader_workers": loader_workers,
        "preloaded": preload,
        "device": str(compute.device),
        "precision": compute.precision,
        "batch_size": config.batch_size,
        "timed_steps": config.steps,
        "train_images_per_s": images / train_seconds,
        "eval_images_per_s": limit / eval_seconds,
        "eval_images": limit,
        **peak_memory(compute, workers_mb),
    }


def run_case_in_subprocess(
    config: TrainBenchConfig, data: str | None, loader_workers: int, preload: bool, progress=print
) -> dict:
    """`run_case` in a fresh interpreter (its own peak memory)."""
    request = json.dumps({"config": asdict(config), "data": data, "workers": loader_workers, "preload": preload})
    done = subprocess.run([sys.executable, "-m", "nas.bench.train", request], capture_output=True, text=True)
    if done.returncode != 0:
        from nas.errors import NasError

        raise NasError(
            f"bench case failed ({data}, {loader_workers} workers): {done.stderr.strip().splitlines()[-1] if done.stderr else done.returncode}"
        )
    row = json.loads(done.stdout.strip().splitlines()[-1])
    progress(
        f"  {row['data']}: {loader_workers} loader workers{' (preloaded)' if preload else ''}: train {row['train_images_per_s']:.1f} img/s, "
        f"eval {row['eval_images_per_s']:.1f} img/s, peak RSS {row['rss_peak_mb']:.0f} MB"
        + (
            f" (+ loader workers {row['loader_workers_rss_peak_mb']:.0f} MB)"
            if row["loader_workers_rss_peak_mb"]
            else ""
        )
    )
    return row


MEASURE = (
    "import resource, sys\nfrom nas.cli import main\nfrom nas.fast_exit import run_then_exit\n"
    "def measured(argv):\n    code = main(argv)\n"
    "    print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n    return code\n"
    "run_then_exit(measured, sys.argv[1:])"
)


def memory_case(space: str, data: Path, epochs: int = 1, batch_size: int = 64) -> dict:
    """`nas train` for `epochs` on `data` in a fresh process with 0 loader workers (one process
    holds everything); its own peak RSS and wall time."""
    import shutil
    import tempfile

    from nas.errors import NasError

    run_dir = Path(tempfile.mkdtemp(prefix="nas-bench-train-")) / "run"
    args = [
        "train",
        "--space",
        space,
        "--data",
        str(data),
        "--epochs",
        str(epochs),
        "--batch-size",
        str(batch_size),
        "--random-subnets",
        "0",
        "--compute-device",
        "cpu",
        "--loader-workers",
        "0",
        "--out",
        str(run_dir),
    ]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    shutil.rmtree(run_dir.parent, ignore_errors=True)
    lines = done.stderr.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("peak_rss_kb"):
        raise NasError(f"nas train on {data} failed: {lines[-1] if lines else done.returncode}")
    return {
        "data": str(data),
        "epochs": epochs,
        "seconds": round(seconds, 1),
        "rss_peak_mb": int(lines[-1].split()[1]) / 1024,
        "command": " ".join(["nas", *args[:-1], "<tmp>"]),
    }


SPACE_224 = {  # a small arch space at ImageNet resolution: the data path's cost, not the model's, dominates on a CPU
    "name": "bench-224",
    "description": "nas bench train: 224 px RGB, patch 32 (49 tokens), small widths",
    "image_size": 224,
    "patch_size": 32,
    "in_chans": 3,
    "num_classes": 10,
    "head_dim": 16,
    "embed_dim": [32, 48],
    "depth": [1, 2],
    "heads": [1, 2],
    "mlp_ratio": [1, 2],
    "kernels": ["softmax", "relu"],
}


def run_bench(
    config: TrainBenchConfig,
    work: Path,
    images: int,
    loader_workers: tuple[int, ...],
    memory_sizes: tuple[int, ...],
    progress=print,
    data: str | None = None,
) -> dict:
    """Every case of the benchmark (see the module's docstring); returns the results. With
    `data` (a user's dataset for `config.space`): only its cases, one per loader-worker count."""
    import yaml

    if data is not None:
        progress(f"{config.space} on {data}:")
        return {
            "throughput": [run_case_in_subprocess(config, data, workers, False, progress) for workers in loader_workers]
        }
    work.mkdir(parents=True, exist_ok=True)
    space_file = work / "bench-224.yaml"
    space_file.write_text(yaml.safe_dump(SPACE_224, sort_keys=False))
    results: dict = {"throughput": [], "memory": []}
    progress(f"embedded task ({config.space}), in memory:")
    results["throughput"].append(run_case_in_subprocess(config, None, 0, False, progress))
    folder = work / f"images-{images}"
    if not (folder / "val").is_dir():
        progress(f"generating {images} + {max(10, images // 10)} RGB JPEGs at 224 px in {folder}...")
        generate_image_folder(folder, images, max(10, images // 10))
    folder_config = TrainBenchConfig(**{**asdict(config), "space": str(space_file)})
    progress("generated ImageFolder, streamed from disk and preloaded:")
    for workers in loader_workers:
        results["throughput"].append(run_case_in_subprocess(folder_config, str(folder), workers, False, progress))
    for workers in loader_workers:
        results["throughput"].append(run_case_in_subprocess(folder_config, str(folder), workers, True, progress))
    for size in memory_sizes:
        folder = work / f"images-{size}"
        if not (folder / "val").is_dir():
            progress(f"generating {size} + {max(10, size // 10)} RGB JPEGs at 224 px in {folder}...")
            generate_image_folder(folder, size, max(10, size // 10))
        row = memory_case(str(space_file), folder, batch_size=config.batch_size)
        progress(
            f"  nas train, 1 epoch on {size} images: peak RSS {row['rss_peak_mb']:.0f} MB ({row['seconds']:.0f} s)"
        )
        results["memory"].append({"train_images": size, **row})
    if len(results["memory"]) >= 2:
        peaks = [row["rss_peak_mb"] for row in results["memory"]]
        results["memory_growth"] = max(peaks) / min(peaks) - 1
    streamed = {
        r["loader_workers"]: r
        for r in results["throughput"]
        if r["data"].startswith("imagefolder") and not r["preloaded"]
    }
    preloaded = {r["loader_workers"]: r for r in results["throughput"] if r["preloaded"]}
    results["streamed_vs_preloaded"] = {
        f"{w} workers": streamed[w]["train_images_per_s"] / max(r["train_images_per_s"] for r in preloaded.values())
        for w in streamed
        if preloaded
    }
    return results


def _case(argv: list[str]) -> int:
    request = json.loads(argv[0])
    row = run_case(TrainBenchConfig(**request["config"]), request["data"], request["workers"], request["preload"])
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    from nas.fast_exit import run_then_exit

    run_then_exit(_case, sys.argv[1:])
