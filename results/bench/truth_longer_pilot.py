"""Do the ground truth's slow archs settle with a longer schedule? (issue 23)

Trains chosen archs of `truth_odd-one-out.jsonl` standalone with the truth's recipe but `--epochs` epochs (the cosine
schedule stretched over them), one JSON line per (arch, seed) appended to `--out`; a stopped run continues with the same
command. Usage (2026-12-07, 2-core AMD EPYC, one thread per run, the runs log in truth_longer_pilot_24.log):
python results/bench/truth_longer_pilot.py --epochs 24 --out results/bench/truth_longer_pilot_24.jsonl
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

# the archs whose 12-epoch runs were slowest to leave the ~35 % plateau, then two controls (softmax, window)
PICK = [  # (kernels of its layers, embed dim, seed)
    (("relu", "relu", "relu"), 48, 0),
    (("relu", "relu", "relu"), 48, 1),
    (("angular", "angular", "angular"), 48, 0),
    (("relu", "relu"), 32, 0),
    (("relu", "taylor", "relu", "taylor"), 64, 0),
    (("softmax", "softmax", "softmax"), 48, 0),
    (("window", "window", "window"), 48, 0),
]


def _train(arch_json: str, seed: int, epochs: int) -> dict:
    import torch

    from nas.arch import Arch
    from nas.data import load_dataset
    from nas.standalone import Recipe, train

    torch.set_num_threads(1)
    arch = Arch.from_json(arch_json)
    dataset = load_dataset("odd-one-out", arch.image_size, arch.in_chans)
    return train(arch, seed, replace(Recipe(), epochs=epochs), dataset)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--truth", type=Path, default=Path("results/bench/truth_odd-one-out.jsonl"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    truth = [json.loads(line) for line in args.truth.read_text().splitlines() if line.strip()]
    done = set()
    if args.out.exists():
        done = {(r["digest"], r["seed"]) for r in map(json.loads, args.out.read_text().splitlines()) if r}
    jobs = []
    for kernels, embed, seed in PICK:
        record = next(
            r
            for r in truth
            if r["arch"]["embed_dim"] == embed and tuple(layer["kernel"] for layer in r["arch"]["layers"]) == kernels
        )
        if (record["digest"], seed) not in done:
            jobs.append((record, seed))
    print(f"{len(jobs)} runs of {args.epochs} epochs to train", flush=True)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = {pool.submit(_train, json.dumps(r["arch"]), s, args.epochs): (r, s) for r, s in jobs}
        for future in as_completed(futures):
            record, seed = futures[future]
            result = future.result()
            line = {
                "digest": record["digest"],
                "arch": record["arch"],
                "seed": seed,
                "epochs": args.epochs,
                "truth_12_epochs": next(
                    (r["curve"] for r in truth if r["digest"] == record["digest"] and r["seed"] == seed), None
                ),
                **result,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            with args.out.open("a") as f:
                f.write(json.dumps(line) + "\n")
            kernels = ",".join(layer["kernel"] for layer in record["arch"]["layers"])
            print(
                f"{kernels} e{record['arch']['embed_dim']} seed {seed}: {args.epochs} epochs {result['curve'][-1]:.4f} "
                f"(12-epoch truth {line['truth_12_epochs'][-1] if line['truth_12_epochs'] else None}); {result['seconds']:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
