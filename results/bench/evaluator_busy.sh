#!/usr/bin/env bash
# Issue 26, 3: how busy the evaluators are, batches (commit af9f8e8, before the asynchronous loop, checked out in a git worktree
# at $BATCH_TREE) against the asynchronous loop (this commit), with the table deciding each trial's latency (--latency predicted:
# the asynchronous loop needs no measurement on this machine). A copy of the default run (/tmp/runs/default, see search_*.json)
# with its latency table rebuilt for taylor's revision 3. 2 evaluators, 100 trials, TPE, seeds 0 and 1; output: evaluator_busy.log.
# 2026-12-02, 2-core AMD EPYC, quiet.
set -euo pipefail
R=${R:-/tmp/runs/async}
BATCH_TREE=${BATCH_TREE:-/tmp/ci-wt}
rm -rf $R && mkdir -p $R && cp /tmp/runs/default/{config.yaml,split.json,supernet.safetensors,train_state.json,manifest.json} $R/
cd "$(dirname "$0")/../.."
nas latency --space odd-one-out --out $R/latency_table.json --calibrate 10 --validate 0 2>&1 | tail -1
for s in 0 1; do
  echo "== batches, seed $s"
  (cd $BATCH_TREE && python -m nas.cli search --run $R --storage sqlite:///$R/batch.db --study-name batch-s$s --seed $s --budget-ms 0.784 \
     --latency predicted --accept-poor-fit --report-dir $R/report-batch-s$s) 2>&1 | grep -E "evaluators: busy|trials finished \(" | tail -2
  echo "== asynchronous, seed $s"
  python -m nas.cli search --run $R --storage sqlite:///$R/async.db --study-name async-s$s --seed $s --budget-ms 0.784 \
     --latency predicted --accept-poor-fit --report-dir $R/report-async-s$s 2>&1 | grep -E "evaluators: busy|trials finished \(" | tail -2
done
