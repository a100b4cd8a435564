"""`nas bench zoo`: the per-kernel trade-off table — accuracy, MACs, params and CPU latency.

For each kernel choice of a space, and each kernel variant kept as an option (`window`
without its position bias, `angular` in the paper's ratio form, `taylor` compact without
the authors' shortcut and positional encoding, `l2vit` without its CPE), a uniform arch — the
space's largest, every layer that kernel — is trained standalone from scratch on the
space's embedded task with one fixed recipe (`nas.standalone.Recipe`, the ground truth's) and S
seeds, and scored on the validation split. Next to it: its MACs and parameters (fvcore
plus the kernels' formulas) and the CPU latency of one of its layers (a transformer block
at the arch's widths) at 196 and 1,024 tokens, measured with the latency tables' protocol:
all rows in interleaved passes, each figure the minimum of its per-pass medians.

Deviations measured alongside (`deviations`): the relative size of each remaining forced
difference from the authors' operator, on random inputs.

Castling-ViT ablation: the `angular` rows are trained twice, without and with the
auxiliary masked-softmax branch annealed from weight 1 to 0 over the first half of the
steps (`+aux`, the recipe's default), everything else equal; the branch is gone at evaluation either way.
"""

from __future__ import annotations

import csv
import io
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from nas.arch import Arch
from nas.bench.fidelity import _init_worker, train_standalone
from nas.io import write_json, write_text
from nas.kernels import KernelSpec
from nas.pools import spawn_pool
from nas.space import SearchSpace
from nas.standalone import Recipe

# Variants that are kernel options rather than search choices: (row name, kernel choice, options): the kernels before revision 2.
OPTION_VARIANTS = (
    ("window-plain", KernelSpec("window"), {"variant": "plain"}),
    ("angular-paper", KernelSpec("angular"), {"variant": "paper"}),
    (
        "taylor-o2-compact-plain",
        KernelSpec("taylor", {"order": 2, "variant": "compact"}),
        {"shortcut": False, "positional_encoding": False},
    ),
    ("l2vit-no-cpe", KernelSpec("l2vit"), {"cpe": False}),
)
LATENCY_TOKENS = (196, 1024)


@dataclass(frozen=True)
class ZooConfig:
    seeds: int = 2
    recipe: Recipe = Recipe()
    jobs: int = 2
    tokens: tuple[int, ...] = LATENCY_TOKENS
    ablation: bool = True  # also train the angular rows with the annealed auxiliary branch


def cases(space: SearchSpace, ablation: bool = True) -> list[tuple[str, Arch, bool]]:
    """(row name, uniform arch, with the Castling auxiliary branch) for every kernel choice and option variant."""
    rows = []
    for spec in space.kernel_choices():
        arch = space.validate(space.largest(kernel=spec))
        rows.append((spec.label, arch, False))
        if ablation and spec.name == "angular":
            rows.append((f"{spec.label}+aux", arch, True))
    for name, spec, options in OPTION_VARIANTS:
        if spec not in space.kernel_choices():
            continue
        kernel = spec.name
        variant_space = replace(
            space, kernel_options={**space.kernel_options, kernel: {**space.kernel_options.get(kernel, {}), **options}}
        )
        arch = variant_space.validate(variant_space.largest(kernel=spec))
        rows.append((name, arch, False))
        if ablation and kernel == "angular":
            rows.append((f"{name}+aux", arch, True))
    return rows


def layer_unit(arch: Arch, tokens: int, protocol) -> Callable[[], float]:
    """One timed pass (median ms per call) of one block of `arch` (its first layer's kernel and widths) on
    `tokens` tokens, batch 1, on the CPU; the first pass warms up."""
    from nas.latency.probe import timed_unit
    from nas.subnet import Block

    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise ValueError(f"tokens must be a square number, got {tokens}")
    layer = arch.layers[0]
    kernel = arch.kernel_spec(0).build(arch.head_dim, layer.heads, grid=(side, side), embed_dim=arch.embed_dim)
    block = Block(arch.embed_dim, layer.heads, arch.head_dim, layer.hidden_dim(arch.embed_dim), kernel).eval()
    return timed_unit(lambda x: block(x, (side, side)), lambda: torch.randn(1, tokens, arch.embed_dim), protocol)


def layer_latencies(rows: list[tuple[str, Arch, bool]], tokens: tuple[int, ...]) -> dict[tuple[str, int], dict]:
    """The latency tables' protocol (`nas.latency.robust.measure_units`): every row's layer at every token count
    timed in interleaved passes (a burst of interference hits one pass of many rows, not every pass of one),
    each figure the minimum of its per-pass medians, re-timed when no second pass confirms it."""
    from nas.latency.probe import Protocol
    from nas.latency.robust import measure_units

    protocol = Protocol()
    units = {(name, t): layer_unit(arch, t, protocol) for name, arch, aux in rows if not aux for t in tokens}
    measured = measure_units(units, protocol)
    # a +aux row is its row's arch (the branch is gone at evaluation): the same measurement
    return {(name, t): measured[(name.removesuffix("+aux"), t)] for name, _, _ in rows for t in tokens}


def deviations(seed: int = 0) -> dict:
    """Relative L2 size, ‖ours − authors'‖ / ‖authors'‖, of the differences forced by weight sharing, on random inputs.

    l2vit_lcm_norm: the LCM's norm is `ImageNorm` (each channel over its image's grid) where the authors use
    BatchNorm (in training mode, batch statistics; the same conv weights, default affine), measured on the
    LCM's output for 8 images of 196 tokens × 64 channels, LN'd tokens as its input.

    taylor_compact_shortcut_norm: QT-ViT's shortcut GELU(norm(v)) with our per-image norm over the tokens where
    the authors use BatchNorm2d over the d channels (training mode: statistics over the batch, heads and tokens),
    measured on the whole compact kernel's output (attention + shortcut; every parameter at its init), 8 images
    × 4 heads × 196 tokens × d 16, with q, k, v the model's projection at its initialisation (weights
    N(0, 0.02)) of LN'd tokens."""
    import torch.nn.functional as F

    from nas import kernels

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the convs' initialisation
    kernel = kernels.get("l2vit", 16, 4, embed_dim=64)
    x = torch.randn(8, 196, 64, generator=generator)
    with torch.no_grad():
        ours = kernel.residual(x, (14, 14))
        y = F.layer_norm(x, (64,)).transpose(1, 2).reshape(8, 64, 14, 14)
        y = F.gelu(F.conv2d(y, kernel.lcm_conv1.weight, kernel.lcm_conv1.bias, padding=3, groups=64))
        y = F.batch_norm(y, None, None, training=True)
        authors = (
            F.conv2d(y, kernel.lcm_conv2.weight, kernel.lcm_conv2.bias, padding=3, groups=64)
            .reshape(8, 64, 196)
            .transpose(1, 2)
        )
        lcm = float((ours - authors).norm() / authors.norm())
        taylor = kernels.get("taylor", 16, 4, grid=(14, 14), order=2, variant="compact")
        attention = kernels.get("taylor", 16, 4, grid=(14, 14), order=2, variant="compact", shortcut=False)
        projection = torch.randn(3 * 64, 64, generator=generator) * 0.02
        q, k, v = (F.layer_norm(x, (64,)) @ projection.T).reshape(8, 196, 3, 4, 16).permute(2, 0, 3, 1, 4)
        ours = taylor(q, k, v, (14, 14))
        per_channel = v.transpose(2, 3).reshape(8 * 4, 16, 196)  # the authors' (b·heads, d, H, W) layout
        normalised = F.batch_norm(per_channel, None, None, training=True).reshape(8, 4, 16, 196).transpose(2, 3)
        authors = attention(q, k, v, (14, 14)) + F.gelu(normalised)
    return {"l2vit_lcm_norm": lcm, "taylor_compact_shortcut_norm": float((ours - authors).norm() / authors.norm())}


def run(space: SearchSpace, config: ZooConfig, progress: Callable[[str], None] = print) -> list[dict]:
    from nas import flops
    from nas.data import load_dataset

    dataset = load_dataset(space.data, space.image_size, space.in_chans)
    rows = cases(space, config.ablation)
    plain, with_aux = (
        replace(config.recipe, angular_aux=0.0),
        replace(config.recipe, angular_aux=1.0, angular_aux_until=0.5),
    )
    jobs = [(name, arch, aux, seed) for name, arch, aux in rows for seed in range(config.seeds)]
    progress(
        f"zoo: {len(rows)} uniform archs of {space.name} x {config.seeds} seed(s), {config.recipe.epochs} epochs of batch "
        f"{config.recipe.batch_size}; {len(jobs)} standalone runs in {config.jobs} process(es)"
    )
    accuracies: dict[tuple[str, int], float] = {}
    started = time.perf_counter()
    init = (space.data, space.image_size, space.in_chans, dataset.split)
    with spawn_pool(config.jobs, _init_worker, init) as ex:
        futures = {
            ex.submit(train_standalone, arch.to_json(), seed, with_aux if aux else plain): (name, seed)
            for name, arch, aux, seed in jobs
        }
        for done, future in enumerate(futures, 1):
            name, seed = futures[future]
            out = future.result()
            accuracies[(name, seed)] = out["accuracy"]
            eta = (time.perf_counter() - started) / done * (len(jobs) - done)
            progress(
                f"[{done}/{len(jobs)}] {name} seed {seed}: val {out['accuracy']:.4f} ({out['seconds']:.0f} s; ETA {eta / 60:.1f} min)"
            )
    progress(
        f"latency of one layer at {', '.join(map(str, config.tokens))} tokens (CPU, {torch.get_num_threads()} threads, interleaved passes)"
    )
    latency = layer_latencies(rows, config.tokens)
    result = []
    for name, arch, aux in rows:
        seeds = [accuracies[(name, s)] for s in range(config.seeds)]
        cost = flops.count(arch)
        result.append(
            {
                "kernel": name,
                "aux": aux,
                "accuracy": statistics.fmean(seeds),
                "accuracy_sd": statistics.stdev(seeds) if len(seeds) > 1 else 0.0,
                "seeds": seeds,
                "macs": cost.macs,
                "params": cost.params,
                "layer_ms": {str(t): latency[(name, t)]["ms"] for t in config.tokens},
                "layer_dispersion": {str(t): latency[(name, t)]["dispersion"] for t in config.tokens},
                "arch": arch.to_json(indent=None),
            }
        )
    return result


def format_table(rows: list[dict]) -> str:
    tokens = list(rows[0]["layer_ms"]) if rows else []
    head = f"{'kernel':<24} {'val acc':>14} {'MACs':>10} {'params':>8} " + " ".join(f"{'ms @' + t:>9}" for t in tokens)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['kernel']:<24} {r['accuracy']:>7.4f} ± {r['accuracy_sd']:.3f} {r['macs'] / 1e6:>9.2f}M {r['params'] / 1e3:>7.1f}k "
            + " ".join(f"{r['layer_ms'][t]:>9.3f}" for t in tokens)
        )
    return "\n".join(lines)


def write(
    rows: list[dict], config: ZooConfig, space_name: str, out: Path, command: str | None, machine: dict, seconds: float
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"zoo_{space_name}"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    tokens = list(config.tokens)
    writer.writerow(
        [
            "kernel",
            "aux",
            "accuracy",
            "accuracy_sd",
            "seeds",
            "macs",
            "params",
            *[f"layer_ms_{t}" for t in tokens],
            "arch",
        ]
    )
    for r in rows:
        writer.writerow(
            [
                r["kernel"],
                r["aux"],
                f"{r['accuracy']:.4f}",
                f"{r['accuracy_sd']:.4f}",
                " ".join(f"{s:.4f}" for s in r["seeds"]),
                r["macs"],
                r["params"],
                *[f"{r['layer_ms'][str(t)]:.4f}" for t in tokens],
                r["arch"],
            ]
        )
    write_text(stem.with_suffix(".csv"), buffer.getvalue())
    write_json(
        stem.with_suffix(".json"),
        {
            "command": command,
            "machine": machine,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds),
            "config": asdict(config),
            "rows": rows,
            "table": format_table(rows),
            "deviations": {str(seed): deviations(seed) for seed in range(3)},
        },
    )
    return [stem.with_suffix(".csv"), stem.with_suffix(".json")]
