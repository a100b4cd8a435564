#!/usr/bin/env bash
# The ground truth of the accuracy axis (issue 23) with twice the schedule: the same 33 archs of the default space and
# the same recipe as truth_odd-one-out.sh, but 24 epochs (the cosine schedule stretched over them), a second seed for
# the same 12 archs; one JSON line per (arch, seed) in truth_odd-one-out_24-epochs.jsonl.
# Why: at 12 epochs the archs with ReLU-linear and angular layers had not finished learning (see results/bench/README.md,
# "The ground truth's schedule"). Resumable: run it again after a stop and it trains only what the file lacks.
# Made on the 2-core CPU machine, next to other work at times: the figures are accuracies, which do not depend on the
# machine's load (a run is seeded: the same (arch, seed) gives the same curve).
set -euo pipefail
cd "$(dirname "$0")/../.."
nas bench truth --space odd-one-out --epochs 24 --jobs 2 --archs-from results/bench/truth_odd-one-out.jsonl \
  --out results/bench/truth_odd-one-out_24-epochs.jsonl \
  2>&1 | tee -a results/bench/truth_odd-one-out_24-epochs.log
