#!/usr/bin/env bash
# The ground truth of the accuracy axis (issue 23): 33 archs of the default space, 12 epochs each,
# a second seed for 12 of them; one JSON line per (arch, seed) in truth_odd-one-out.jsonl.
# Resumable: run it again after a stop and it trains only what the file lacks.
# Made on the 2-core CPU machine (see truth_odd-one-out_summary.json), next to other work at times:
# the figures are accuracies, which do not depend on the machine's load.
set -euo pipefail
cd "$(dirname "$0")/../.."
nas bench truth --space odd-one-out --jobs 2 --archs-from results/bench/truth_odd-one-out.jsonl --out results/bench/truth_odd-one-out.jsonl \
  2>&1 | tee -a results/bench/truth_odd-one-out.log
