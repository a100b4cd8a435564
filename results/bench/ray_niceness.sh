#!/usr/bin/env bash
# Ray workers' priority next to other work (workers/cluster.py: init_ray). Two busy loops at niceness 0 stand for
# "other work" on this 2-core machine; beside them, a local Ray instance (init_ray, 2 CPUs) starts one evaluator actor
# on the tests' tiny trained run (tests/runs.py) and scores 20 random archs, then two actors score them again.
# Alternates Ray's own default (RAY_worker_niceness=15) with ours (0, init_ray's default), REPEATS (1) times each;
# a run is cut after 900 s.
# Log: results/bench/ray_niceness.log (stage times in seconds since the Ray instance was up).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPEATS=${REPEATS:-1}
log=results/bench/ray_niceness.log
code=$(cat <<'PY'
import os, random, sys, time
sys.path.insert(0, "tests")
from runs import make_run
from nas.evaluate import evaluation_state
from nas.rundir import RunDir
from workers.cluster import init_ray
from workers.evaluator import EvaluatorPool

run = sys.argv[1]
if not os.path.exists(os.path.join(run, "supernet.safetensors")):
    make_run(run)
init_ray(None, num_cpus=2)
t0 = time.perf_counter()
state = evaluation_state(run)
space, _ = RunDir(run).space_and_data()
rng = random.Random(0)
archs = [space.sample(rng) for _ in range(20)]
print(f"RAY_worker_niceness={os.environ['RAY_worker_niceness']}:", end="", flush=True)
def mark(name):  # each mark as it comes: a run cut by the timeout still shows how far it got
    print(f" {name} {time.perf_counter() - t0:.1f},", end="", flush=True)
pool = EvaluatorPool(state, 1)
pool.evaluate(archs[:1]); mark("1 actor up")
pool.evaluate(archs); mark("20 archs scored")
pool.shutdown()
pool = EvaluatorPool(state, 2)
pool.evaluate(archs[:2]); mark("2 actors up")
pool.evaluate(archs); mark("20 archs scored")
pool.shutdown()
print(" done", flush=True)
PY
)
run=$(mktemp -d)/run
busy=()
trap 'kill "${busy[@]}" 2>/dev/null || true; rm -rf "$(dirname "$run")"' EXIT
python -c "$code" "$run" >/dev/null 2>&1 || true  # the tiny run, made once, before the load starts
{
  echo "# $(date -u '+%Y-%m-%d %H:%M') UTC, commit $(git rev-parse --short HEAD), $(nproc)-core $(lscpu | sed -n 's/^Model name: *//p')"
  echo "# ray $(python -c 'import ray; print(ray.__version__)'), two busy loops at niceness 0 beside each run"
} | tee -a "$log"
for _ in 1 2; do python -c "while True: pass" & busy+=($!); done
for _ in $(seq "$REPEATS"); do
  for niceness in 15 0; do
    RAY_worker_niceness=$niceness timeout 900 python -c "$code" "$run" 2>/dev/null | tee -a "$log" || echo " cut at 900 s" | tee -a "$log"
  done
done
