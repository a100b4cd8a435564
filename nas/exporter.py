"""Export a found architecture as a standalone model directory.

    <out>/arch.json           the Arch (canonical fields)
    <out>/model.safetensors   weights inherited from the supernet (optionally fine-tuned)
    <out>/model.onnx          ONNX (torch.onnx dynamo exporter, dynamic batch)
    <out>/model.pt            TorchScript (traced)
    <out>/metadata.json       arch hash, source run/trial, accuracies, predicted and measured
                              latency with the fingerprint, MACs, params, versions
    <out>/config.json         timm's model config (architecture vit_nas, pretrained_cfg): timm's
                              `local-dir:<out>` and `pretrained_cfg_overlay=dict(file=...)` find the weights

Files are written into a temporary directory that is renamed into place, so an export is
complete or absent. `nas.load(<out>)` rebuilds the model from arch.json + safetensors
without unpickling anything.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from nas import flops, subnet
from nas.compute import CPU, Compute
from nas.config_stages import FORMATS
from nas.dataset import Dataset
from nas.errors import NasError
from nas.io import write_json
from nas.rundir import RunDir, versions
from nas.selection import Candidate, check_device
from nas.standalone import Recipe, Standalone
from nas.subnet import ViT
from nas.supernet import extract


def finetune(
    model: ViT,
    dataset: Dataset,
    epochs: int,
    seed: int = 0,
    lr: float = 3e-4,
    batch_size: int = 64,
    progress=print,
    compute: Compute = CPU,
) -> None:
    """Standalone training from the model's own weights on the run's train split: the one loop of
    nas.standalone (AdamW, cosine decay, label smoothing, the dataset's augmentation), without warm-up
    or Castling-ViT's auxiliary branch, on `compute`'s device and precision; the model is trained in
    place and left on that device."""
    recipe = Recipe(epochs=epochs, batch_size=batch_size, lr=lr, warmup_epochs=0, angular_aux=0.0)
    run = Standalone(model.arch, seed, recipe, dataset, compute, model=model)
    while run.epoch < epochs:
        val = run.train_epoch()
        progress(f"fine-tune epoch {run.epoch}/{epochs}: loss {run.train_loss[-1]:.4f}, val top-1 {val:.4f}")
    model.eval()


def top1(model: ViT, dataset: Dataset, split: str, compute: Compute = CPU) -> float:
    """Top-1 of a standalone model on `split`, computed on `compute` (the model is moved there)."""
    model.to(compute.device)

    def forward(x):
        with compute.autocast():
            return model(compute.move(x))

    return dataset.top1(forward, split)


def verified_model(run_dir: Path, arch, verified: dict, dataset: Dataset, compute: Compute = CPU) -> tuple[ViT, dict]:
    """The standalone model a verification trained for `arch` (its saved state), and its figures."""
    from nas.verify_training import read_state

    path = Path(run_dir) / verified["state"]
    state = read_state(path)
    if state is None or state.get("arch") != arch.to_json(indent=None):
        raise NasError(
            f"{path}: missing or not the verification state of trial's arch {arch.digest}; run nas verify --run {run_dir} again"
        )
    model = ViT(arch)
    model.load_state_dict(state["model"])
    model.eval()
    figures = {
        "val": top1(model, dataset, "val", compute),
        "test": top1(model, dataset, "test", compute),
        "epochs": len(state["curve"]),
        "recipe": state["recipe"],
        "seed": state["seed"],
        "curve": state["curve"],
    }
    return model, figures


def to_onnx(model: ViT, path: Path) -> None:
    """model.onnx: torch.onnx's dynamo exporter, opset 18, dynamic batch — the graph that
    `--runtime onnxruntime` times (nas.latency.runtime.onnx_bytes)."""
    from nas.io import write_bytes
    from nas.latency.runtime import onnx_bytes

    arch = model.arch
    example = torch.randn(2, arch.in_chans, arch.image_size, arch.image_size)
    write_bytes(path, onnx_bytes(model, model, example))


def to_torchscript(model: ViT, path: Path) -> None:
    arch = model.arch
    example = torch.randn(2, arch.in_chans, arch.image_size, arch.image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
        torch.jit.save(traced, str(path))


def preprocessing(dataset, arch) -> dict:
    """What a model input is, as evaluated: images scaled to [0, 1], resized (bilinear, antialiased)
    to the arch's size (streamed ImageFolders: resized to size / 0.875, then centre-cropped),
    normalised with the dataset's per-channel mean and std. timm's keys."""
    return {
        "input_size": [arch.in_chans, arch.image_size, arch.image_size],
        "interpolation": "bilinear",
        "crop_pct": dataset.crop_pct,
        "crop_mode": "center",
        "mean": [round(float(v), 6) for v in dataset.mean.flatten()],
        "std": [round(float(v), 6) for v in dataset.std.flatten()],
        "pixel_range": [0.0, 1.0],
    }


def export(
    run_dir: Path,
    candidate: Candidate,
    out_dir: Path,
    formats: tuple[str, ...] = FORMATS,
    finetune_epochs: int = 0,
    overwrite: bool = False,
    device: str | None = None,
    progress=print,
    compute: Compute = CPU,
    budget_ms: float | None = None,
    measured_ms: float | None = None,
    pick: list[dict] | None = None,
    verified: dict | None = None,
) -> dict:
    """Write the standalone model of `candidate` into `out_dir`; returns the metadata.

    The model's latency is measured here (on the run's device, when this machine is it), or
    taken as `measured_ms` when the caller has just measured it (nas run's pick). With
    `budget_ms`, a measured latency over it is a warning line and `over_budget` in the metadata.
    `pick`: the candidates measured to choose this one (nas.selection.pick_within_budget), recorded.
    `verified`: the candidate's row of the run's verification (nas.verify): its standalone-trained
    weights (its saved state) are exported instead of the inherited ones, and both figures recorded."""
    from nas.latency.profiler import Profiler

    unknown = [f for f in formats if f not in FORMATS]
    if unknown or "safetensors" not in formats:
        raise NasError(f"--format: use a comma-separated subset of {', '.join(FORMATS)} that includes safetensors")
    if out_dir.exists() and not overwrite:
        raise NasError(f"{out_dir} already exists; pass --overwrite to replace it or choose another --out")
    if finetune_epochs < 0:
        raise NasError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    if verified is not None and finetune_epochs:
        raise NasError(
            "--finetune-epochs: a verified arch is exported with its standalone-trained weights; fine-tuning applies to inherited weights only"
        )
    fp, measurable = check_device(run_dir, device)
    run = RunDir(run_dir)
    space, data = run.space_and_data()
    arch = space.validate(candidate.arch)
    dataset = run.dataset(space, data)
    table = run.table(space)

    model = extract(run.supernet(space), arch).eval()
    inherited = {"val": top1(model, dataset, "val", compute), "test": top1(model, dataset, "test", compute)}
    progress(
        f"trial {candidate.trial}: inherited weights, val top-1 {inherited['val']:.4f}, test {inherited['test']:.4f}"
    )
    finetuned, kept, standalone = None, "inherited", None
    if verified is not None:
        model, standalone = verified_model(run_dir, arch, verified, dataset, compute)
        kept = "verified"
        progress(
            f"trial {candidate.trial}: verified weights ({standalone['epochs']} epochs standalone), val top-1 {standalone['val']:.4f}, "
            f"test {standalone['test']:.4f}"
        )
    if finetune_epochs:
        tuned = copy.deepcopy(model)
        finetune(tuned, dataset, finetune_epochs, progress=progress, compute=compute)
        finetuned = {"val": top1(tuned, dataset, "val", compute), "test": top1(tuned, dataset, "test", compute)}
        progress(
            f"fine-tuned {finetune_epochs} epoch(s): val top-1 {finetuned['val']:.4f}, test {finetuned['test']:.4f}"
        )
        if finetuned["val"] >= inherited["val"]:
            model, kept = tuned, "finetuned"
        else:
            progress("fine-tuning lowered validation accuracy: the inherited weights are exported")
    model = model.cpu()  # written, traced and measured from the CPU copy

    measure_note = None
    if measured_ms is None and measurable:
        profiler = Profiler.like(fp)
        profiler.anchor_to(table.reference_ms)  # at the speed of the run's table, as the search measured
        if profiler.fingerprint() == fp:
            measured_ms = profiler.measure_models([arch])[0]
        else:
            measure_note = "this machine's fingerprint differs from the run's: " + "; ".join(
                fp.differences(profiler.fingerprint())
            )
    elif measured_ms is None:
        measure_note = f"not measured: this machine is not {fp.device_name}"
    predicted_ms = table.predict(arch)
    cost = flops.count(arch)
    over_budget = None if budget_ms is None or measured_ms is None else measured_ms > budget_ms
    if over_budget:
        progress(
            f"!! warning: trial {candidate.trial} measures {measured_ms:.4f} ms on this machine, over the budget {budget_ms} ms "
            f"({measured_ms / budget_ms - 1:+.1%}); metadata.json records it"
        )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        subnet.save(model, staging)
        started = time.perf_counter()
        if "onnx" in formats:
            to_onnx(model, staging / "model.onnx")
        if "torchscript" in formats:
            to_torchscript(model, staging / "model.pt")
        metadata = {
            "arch_digest": arch.digest,
            "source": {"run": str(run_dir), "trial": candidate.trial},
            "accuracy": {
                "split_of": dataset.name,
                "inherited": inherited,
                "finetuned": finetuned,
                "verified": standalone,
                "finetune_epochs": finetune_epochs,
                "exported_weights": kept,
                "computed_on": compute.record(),
            },
            "latency": {
                "predicted_ms": predicted_ms,
                "measured_ms": measured_ms,
                "note": measure_note,
                "error": None if measured_ms is None else (predicted_ms - measured_ms) / measured_ms,
                "search_ms": candidate.latency_ms,
                "budget_ms": budget_ms,
                "over_budget": over_budget,
                "pick": pick,
                "fingerprint": fp.to_dict(),
                "protocol": table.protocol,
            },
            "preprocessing": preprocessing(dataset, arch),
            "classes": list(dataset.classes),
            "macs": cost.macs,
            "params": cost.params,
            "formats": list(formats),
            "export_seconds": round(time.perf_counter() - started, 2),
            "versions": versions(),
        }
        write_json(staging / "metadata.json", metadata)
        from nas.timm_compat import timm_config

        write_json(
            staging / "config.json", timm_config(arch, metadata)
        )  # timm's local-dir: and overlay loading read it
        os.chmod(staging, 0o755)
        for path in staging.iterdir():
            os.chmod(path, 0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return metadata
