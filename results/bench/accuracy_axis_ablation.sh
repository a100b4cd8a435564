#!/usr/bin/env bash
# The accuracy-axis ablation (issue 23): supernets scored against the ground truth
# (results/bench/truth_odd-one-out.jsonl, made by truth_odd-one-out.sh) without training anything.
# Made on the 2-core CPU machine beside the ground truth's own training (the figures are accuracies).
set -euo pipefail
cd "$(dirname "$0")/../.."
truth=${TRUTH:-results/bench/truth_odd-one-out.jsonl}
# row 1: the committed reference supernet (7 epochs, random kernel sampling, --teacher fair)
nas bench fidelity --run results/reference-odd-one-out --truth "$truth" --tag truth-reference --out results/bench
# row 2 (2b): the same recipe with FairNAS strict fairness
[ -f /tmp/ablation/fair/supernet.safetensors ] || \
  nas train --space odd-one-out --kernel-sampling fair --threads 1 --out /tmp/ablation/fair \
    2>&1 | tee results/bench/fidelity_odd-one-out_fair-sampling_train.log
nas bench fidelity --run /tmp/ablation/fair --truth "$truth" --tag truth-fair-sampling --out results/bench
# row 3 (2c): twice the epochs, random kernel sampling
[ -f /tmp/ablation/e14/supernet.safetensors ] || \
  nas train --space odd-one-out --epochs 14 --threads 1 --out /tmp/ablation/e14 \
    2>&1 | tee results/bench/fidelity_odd-one-out_14-epochs_train.log
nas bench fidelity --run /tmp/ablation/e14 --truth "$truth" --tag truth-14-epochs --out results/bench
# row 4 (2a): one qkv / proj group per kernel choice and layer, tied (shared) for the first 30 % of the epochs, then split
[ -f /tmp/ablation/groups/supernet.safetensors ] || \
  nas train --space results/bench/spaces/odd-one-out_kernel-projections.yaml --threads 1 --out /tmp/ablation/groups \
    2>&1 | tee results/bench/fidelity_odd-one-out_kernel-projections_train.log
nas bench fidelity --run /tmp/ablation/groups --truth "$truth" --tag truth-kernel-projections --out results/bench
