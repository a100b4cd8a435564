#!/usr/bin/env bash
# Issue 23, 3: the verified pick judged on the settled ground truth (truth_odd-one-out_24-epochs.jsonl, seed sd 1.05
# points) instead of the 12-epoch one (seed sd 3.74), which verified_pick.sh used.
# The verification (verified_pick/verify-8_verify.json: 8 candidates halved at 2, 3, 6, 12 epochs of a 12-epoch recipe)
# picked trial 98; the pick by inherited accuracy alone was trial 58; verify-4's pick was trial 32, one of the 8 too.
# This trains all 8 candidates standalone with the 24-epoch truth's own recipe and seed (nas.bench.truth.run, one
# thread per run, 2 processes; one line per candidate in verified_pick/candidates_24-epochs.jsonl, resumable: run
# it again after a stop), then compares, for each of the two `nas bench pick` files (the ground-truth archs measured
# within the run's 0.784 ms budget with the run's own profiler, as that bench did), the picks' 24-epoch figures with the
# best ground-truth arch within the budget (issue 23's target: pick >= that - one seed sd).
# Last, with no training: other rung schedules replayed on the recorded curves (the 24-epoch truth's, the 12-epoch
# truth's for a 12-epoch recipe, the candidates' own): which of the 8 candidates each would pick, and over 3,000 random
# sets of 8 ground-truth archs (of all 33, and of the 18 within the budget) its mean regret against the best of the set
# at 24 epochs. A rung's figure is the curve's value after that many epochs: halving trains on without restarting, so
# that is what it would see. Bias: a schedule ending at 24 epochs scores its finalist with the truth's own run (as the
# target does), so its regret has no seed noise; one ending at 12 carries the noise between the two schedules.
# Log: verified_pick/pick_24-epochs.log (appended per invocation).
set -euo pipefail
cd "$(dirname "$0")/../.."
# (python -c, not a heredoc on stdin: the spawned workers re-import __main__, which stdin cannot give them)
code=$(cat <<'PY'
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from nas.arch import Arch
from nas.bench import truth
from nas.space_file import load_space
from nas.standalone import Recipe

bench = Path("results/bench")
records, _ = truth.read(bench / "truth_odd-one-out_24-epochs.jsonl")
summary = truth.summarize(records)
sd = summary["seed_sd_points"] / 100
first = records[0]
verify = json.loads((bench / "verified_pick/verify-8_verify.json").read_text())
out = bench / "verified_pick/candidates_24-epochs.jsonl"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit}, {os.cpu_count()}-core {cpu}")

# nas bench truth's own resumable training (one line per run; it checks the file's space, data, split and recipe):
# the candidates as its archs, seed 0 only, the picks first (the figures the target needs).
picks = (verify["pick"]["trial"], 32, verify["inherited_pick"]["trial"])
ordered = sorted(verify["candidates"], key=lambda c: c["trial"] not in picks)
space = load_space(first["space"])
config = truth.TruthConfig(recipe=Recipe(**first["recipe"]), second_seeds=0, jobs=2)
archs = [Arch.from_dict(c["arch"]) for c in ordered]
done = {r["digest"]: r for r in truth.run(space, first["data"], out, config, archs=archs)}

full = {d: r["curve"][-1] for d, r in done.items()}
print(f"\n{'trial':>5} {'ms':>6} {'inherited':>9} {'verified (epochs)':>17} {'24 epochs':>9}")
for c in sorted(verify["candidates"], key=lambda c: -full[c["digest"]]):
    print(f"{c['trial']:>5} {c['measured_ms']:>6.3f} {c['inherited_accuracy']:>9.4f} "
          f"{c['verified_accuracy']:>11.4f} ({c['verified_epochs']:>2}) {full[c['digest']]:>9.4f}")
best_candidate = max(verify["candidates"], key=lambda c: full[c["digest"]])
print(f"the verification picked trial {verify['pick']['trial']}; the best of its 8 candidates at 24 epochs: trial "
      f"{best_candidate['trial']} ({full[best_candidate['digest']]:.4f})")

truth_seed0 = {r["digest"]: r["curve"][-1] for r in records if r["seed"] == 0}
for name, trial in (("verify-8", verify["pick"]["trial"]), ("verify-4", 32)):
    pick = json.loads((bench / f"verified_pick/pick_{name}.json").read_text())
    within = [d["digest"] for d in pick["truth_within_budget"]]
    best = max(within, key=truth_seed0.get)
    pick_digest = next(c["digest"] for c in verify["candidates"] if c["trial"] == trial)
    inherited = verify["inherited_pick"]["digest"]
    target = truth_seed0[best] - sd
    print(f"\n{name} ({len(within)} of {len(truth_seed0)} ground-truth archs within {pick['budget_ms']} ms, as "
          f"pick_{name}.json measured them): best {best} at {truth_seed0[best]:.4f}; target (minus one seed sd, "
          f"{100 * sd:.2f} points) {target:.4f}")
    print(f"  verified pick, trial {trial}: {full[pick_digest]:.4f} at 24 epochs: "
          + ("met" if full[pick_digest] >= target else f"not met ({100 * (target - full[pick_digest]):.1f} points short)"))
    print(f"  pick by inherited accuracy, trial {verify['inherited_pick']['trial']}: {full[inherited]:.4f}")
PY
)
python -c "$code" 2>&1 | tee -a results/bench/verified_pick/pick_24-epochs.log
sim=$(cat <<'PY'
import json, random, statistics

read = lambda p, seed=0: {r["digest"]: r["curve"] for r in map(json.loads, open(p)) if r["seed"] == seed}  # noqa: E731
c24, c12 = read("results/bench/truth_odd-one-out_24-epochs.jsonl"), read("results/bench/truth_odd-one-out.jsonl")
trial_of = {c["digest"]: c["trial"] for c in json.load(open("results/bench/verified_pick/verify-8_verify.json"))["candidates"]}
mine = {
    trial_of[r["digest"]]: r["curve"] for r in map(json.loads, open("results/bench/verified_pick/candidates_24-epochs.jsonl"))
}
within = [d["digest"] for d in json.load(open("results/bench/verified_pick/pick_verify-4.json"))["truth_within_budget"]]


def halve(curve, names, rungs, keep=0.5):
    alive, cost, before = list(names), 0, 0
    for number, epochs in enumerate(rungs):
        cost += len(alive) * (epochs - before)
        before = epochs
        if number < len(rungs) - 1:
            alive = sorted(alive, key=lambda n: -curve[n][epochs - 1])[: max(1, round(len(alive) * keep))]
    return max(alive, key=lambda n: curve[n][rungs[-1] - 1]), cost


schedules = [  # (candidates, recipe, rungs)
    (8, 12, [2, 3, 6, 12]), (8, 12, [12]), (8, 24, [3, 6, 12, 24]), (8, 24, [4, 8, 16, 24]), (8, 24, [6, 12, 24]),
    (8, 24, [8, 24]), (4, 12, [6, 12]), (4, 24, [8, 24]), (4, 24, [6, 12, 24]),
]
print("\nrung schedules replayed on the recorded curves (the first k of a set of 8 are verified, k = candidates)")
print(f"{'schedule':>28} {'arch-epochs':>11} {'this run picks':>14} | {'all 33: regret':>14} {'<=1.05':>6} | "
      f"{'within budget':>13} {'<=1.05':>6}")
for k, epochs, rungs in schedules:
    name = f"{k} x {epochs}-epoch, {','.join(map(str, rungs))}"
    here = "-"
    if epochs == 24 and k == 8:
        pick, _ = halve(mine, list(mine), rungs)
        here = f"{pick} {mine[pick][-1]:.4f}"
    figures = []
    for pool in (list(c24), within):
        rng = random.Random(0)
        regrets = []
        for _ in range(3000):
            names = rng.sample(pool, 8)
            pick, cost = halve(c24 if epochs == 24 else c12, names[:k], rungs)
            regrets.append(100 * (max(c24[n][-1] for n in names) - c24[pick][-1]))
        figures += [statistics.fmean(regrets), sum(r <= 1.05 for r in regrets) / len(regrets)]
    print(f"{name:>28} {cost:>11} {here:>14} | {figures[0]:>11.2f} pt {figures[1]:>6.2f} | {figures[2]:>10.2f} pt "
          f"{figures[3]:>6.2f}")
PY
)
python -c "$sim" 2>&1 | tee -a results/bench/verified_pick/pick_24-epochs.log
