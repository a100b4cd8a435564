#!/usr/bin/env bash
# Issue 27, item 4: everything a session lent a GPU should measure, in one device call.
#
# Prepare here (pip reaches the registry): python -m nas.bundle --out .whl
# Then, with the device tool: run(command="bash results/bench/gpu_session.sh", carry=[".whl"], timeout_s=600).
# Everything lands under $OUT (the device tool brings it back): copy it to results/bench/ with the device name.
#
# Steps, each bounded by its own timeout so that one slow step leaves the others their time (at most 60 + 120 + 90 + 2 × 75 + 170 = 590 s):
#   1. the gpu-marked tests (kernels, fused Triton core, latency, timer, placement);
#   2. nas bench kernels, bf16, eager vs compiled vs fused, 256 … 16,384 tokens, with the roofline figures;
#   3. CUDA latency tables (cuda-graph runtime, bf16, --kernels auto: the fused path where Triton runs) of the deit-tiny
#      and hires spaces, validated on held-out archs;
#   4. nas run end to end on the GPU without Ray (the embedded default, fewer trials and epochs to fit the call).
# DRY=1 runs the same commands on the CPU with tiny settings (checks that every command line parses and runs).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
if [ -d .whl ] && ! python3 -c "import optuna, fvcore" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1
if [ "${DRY:-0}" = 1 ]; then
  device=cpu; dtype=fp32; tokens=64,256; paths=eager; compiled_at=64; tests="tests/test_timer.py"; spaces="digits-tiny"
  run_args=(--space digits-tiny --epochs 1 --trials 4 --verify 2 --calibrate 0 --validate 0 --budget-ms 1000)
else
  device=cuda; dtype=bf16; tokens=256,1024,4096,16384; paths=eager,fused; compiled_at=1024
  tests="tests/test_kernels.py tests/test_fused.py tests/test_latency.py tests/test_timer.py tests/test_placement.py"; spaces="deit-tiny hires"
  run_args=(--epochs 3 --trials 40 --verify 4 --target-device cuda --compute-device cuda --precision bf16)
fi
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')" | tee "$OUT/device.txt"
nvidia-smi >> "$OUT/device.txt" 2>&1 || true

# 1. gpu-marked tests (ray is absent there: the files that need it are skipped at collection)
# shellcheck disable=SC2086
timeout 60 python3 -m pytest -q -m gpu $tests 2>&1 | tee "$OUT/gpu_tests.log"
# 2. kernels against the roofline: eager and fused over the sweep; compiled (one compilation per kernel and N) at 1,024
timeout 120 python3 -m nas bench kernels --device "$device" --dtype "$dtype" --tokens "$tokens" --paths "$paths" \
  --out "$OUT/kernels" 2>&1 | tee "$OUT/kernels.log"
timeout 90 python3 -m nas bench kernels --device "$device" --dtype "$dtype" --tokens "$compiled_at" --modes fwd --paths eager,compiled \
  --out "$OUT/kernels_compiled" 2>&1 | tee "$OUT/kernels_compiled.log"
# 3. latency tables of the large spaces on the fastest runtime
for space in $spaces; do
  runtime=cuda-graph; [ "$device" = cpu ] && runtime=eager
  timeout 75 python3 -m nas latency --space "$space" --target-device "$device" --dtype "$dtype" --runtime "$runtime" \
    --out "$OUT/latency_${space}_${device}_${dtype}_${runtime}.json" 2>&1 | tee "$OUT/latency_${space}.log"
done
# 4. the whole pipeline on the GPU, in one process
timeout 170 python3 -m nas run "${run_args[@]}" --out "$OUT/run" 2>&1 | tee "$OUT/nas_run.log"
rm -f "$OUT"/run/*.safetensors "$OUT"/run/study.db  # the figures and logs come back; weights stay there
ls -la "$OUT"
