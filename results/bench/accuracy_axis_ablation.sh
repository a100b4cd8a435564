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
# row 3b (2c): four times the epochs (2026-12-07 evening, 2-core Intel Xeon, 69.6 min on one thread)
[ -f /tmp/ablation/e28/supernet.safetensors ] || \
  nas train --space odd-one-out --epochs 28 --threads 1 --out /tmp/ablation/e28 \
    2>&1 | tee results/bench/fidelity_odd-one-out_28-epochs_train.log
nas bench fidelity --run /tmp/ablation/e28 --truth "$truth" --tag truth-28-epochs --out results/bench
# row 4 (2a): one qkv / proj group per kernel choice and layer, tied (shared) for the first 30 % of the epochs, then split
[ -f /tmp/ablation/groups/supernet.safetensors ] || \
  nas train --space results/bench/spaces/odd-one-out_kernel-projections.yaml --threads 1 --out /tmp/ablation/groups \
    2>&1 | tee results/bench/fidelity_odd-one-out_kernel-projections_train.log
nas bench fidelity --run /tmp/ablation/groups --truth "$truth" --tag truth-kernel-projections --out results/bench
# rows 5-6: the reference recipe (nas train's defaults for odd-one-out: 7 epochs, --teacher fair) with seeds 1 and 2,
# so that the default recipe is reported for three supernet seeds (2026-12-06, both trained at once beside the
# block-wise bench, 38.7-38.9 min each)
for s in 1 2; do
  [ -f /tmp/seeds/seed$s/supernet.safetensors ] || \
    nas train --space odd-one-out --seed $s --threads 1 --out /tmp/seeds/seed$s \
      2>&1 | tee results/bench/fidelity_odd-one-out_truth-supernet-seed${s}_train.log
  nas bench fidelity --run /tmp/seeds/seed$s --truth "$truth" --tag truth-supernet-seed$s --out results/bench
done
# row 7 (2d): block-wise local distillation from standalone softmax parents, a second estimator beside the supernet;
# resumable (results/bench/blockwise_odd-one-out.jsonl, one line per (embed dim, layer)); writes fidelity_*_truth-blockwise.*
nas bench blockwise --space odd-one-out --truth "$truth" --jobs 2 --out results/bench \
  2>&1 | tee -a results/bench/blockwise_odd-one-out.log
