#!/usr/bin/env bash
# The verified pick (issue 23, 3) on the default task, against the ground truth; 2026-12-01, 2-core AMD EPYC.
# Files in results/bench/verified_pick/ and pick_odd-one-out*.json.
#  1. `nas run` with no arguments at commit 014ba35, whose verify stage had 4 candidates and rungs at 4 and 12 epochs
#     (run_verify-4.*; the current code's `nas run --verify 4` halves at 3, 6 and 12 epochs instead):
#       git checkout 014ba35 && nas run --out "$RUN"
#  2. the current default verification (8 candidates; 2, 3, 6, 12 epochs) on a copy of that run, reusing the states
#     its candidates had trained (verify-8.*; beside the ground truth's two training processes);
#  3. `nas bench pick` on both: the best ground-truth arch that measures within the same budget on this machine now.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${RUN:-/tmp/runs/default}
out=results/bench/verified_pick
rm -rf "$RUN-v8" && cp -r "$RUN" "$RUN-v8"  # verify/candidates.json holds 4 candidates: chosen again for 8
nas verify --run "$RUN-v8" 2>&1 | tee "$out/verify-8.log"
nas bench pick --run "$RUN" --truth results/bench/truth_odd-one-out.jsonl --out "$out" && mv "$out/pick_odd-one-out.json" "$out/pick_verify-4.json"
nas bench pick --run "$RUN-v8" --truth results/bench/truth_odd-one-out.jsonl --out "$out" && mv "$out/pick_odd-one-out.json" "$out/pick_verify-8.json"
