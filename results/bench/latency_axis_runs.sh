#!/usr/bin/env bash
# The latency axis, measured as a user meets it: `nas run` with no arguments (odd-one-out, this CPU),
# quiet and with a neighbour that busy-loops on one core for the run's first 5 minutes; after each,
# `nas bench latency --run` re-measures 30 of its measured trials (the export first) on the quiet machine.
# One JSON line per finished run in latency_axis_runs.jsonl; a run already there is skipped (resumable).
# Usage: bash results/bench/latency_axis_runs.sh quiet-1 busy-1 quiet-2 ...   (run dirs under $AXIS_DIR, default /tmp/axis)
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dirs=${AXIS_DIR:-/tmp/axis}
mkdir -p "$dirs" "$here/latency_axis_logs"
for name in "$@"; do
  grep -q "\"name\": \"$name\"" "$here/latency_axis_runs.jsonl" 2>/dev/null && { echo "$name: done already"; continue; }
  run="$dirs/$name"; rm -rf "$run"; log="$here/latency_axis_logs/$name.log"
  neighbour=""
  if [[ $name == busy* ]]; then
    python3 -c "import time; t = time.time()
while time.time() - t < 300: pass" & neighbour=$!
  fi
  started=$(date +%s)
  nas run --out "$run" > "$log" 2>&1; code=$?
  wall=$(( $(date +%s) - started ))
  [ -n "$neighbour" ] && kill "$neighbour" 2>/dev/null
  remeasure=""
  if [ "$code" = 0 ]; then
    nas bench latency --run "$run" --archs 30 --note "quiet, after the run ($name)" --out "$here/latency_axis_logs" >> "$log" 2>&1
    remeasure="$here/latency_axis_logs/remeasure_$name.json"
  fi
  python3 - "$name" "$code" "$wall" "$run" "$remeasure" >> "$here/latency_axis_runs.jsonl" <<'PY'
import json, os, platform, sys
name, code, wall, run, remeasure = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
line = {"name": name, "exit": code, "wall_s": wall, "neighbour": "one core busy-looping for the first 300 s" if name.startswith("busy") else None,
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"}
try:
    m = json.load(open(os.path.join(run, "manifest.json")))
    line["fingerprint"] = m.get("fingerprint", {}).get("device_name")
    line["stages_s"] = {k: v.get("seconds") for k, v in m.get("stages", {}).items()}
    line["search"] = {k: m["stages"].get("search", {}).get(k) for k in ("latency_measured", "latency_seconds", "prefiltered")}
    r = m.get("result") or {}
    line["budget_ms"] = r.get("budget_ms") or m.get("settings", {}).get("budget_ms_resolved")
    line["pick"] = {k: r.get(k) for k in ("trial", "val_accuracy", "test_accuracy", "predicted_latency_ms", "search_latency_ms", "measured_latency_ms")}
    line["pick_candidates_measured"] = len(r.get("pick") or [])
except (OSError, ValueError) as error:
    line["manifest_error"] = str(error)
if remeasure and os.path.exists(remeasure):
    b = json.load(open(remeasure))
    line["remeasure"] = {k: b[k] for k in ("archs", "mape", "within_5pct", "kendall_tau", "export")}
print(json.dumps(line))
PY
  echo "$name: exit $code in $wall s"
done
