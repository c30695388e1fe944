#!/bin/bash
# The GPU check: one H100/H200-class GPU, ~8 minutes, no network. Prepare here with
# `bash bench/gpu_wheels.sh`, then on the GPU machine (the device tool: carry ["gpu_bundle"]):
#   bash bench/gpu_check.sh            # results: $OUT/{environment,attention,converge,throughput}.json + log
#   bash bench/gpu_check.sh --cpu-smoke   # the same parts with tiny sizes on CPU (no install step)
# (a) document attention on CUDA = float64 reference (forward + backward)
# (b) gpt-125m, 50 steps: bf16 (flex attention) vs fp32 (SDPA, the CPU path's maths) loss curves
# (c) tokens/s, TFLOP/s/GPU and MFU of gpt-125m and gpt-1b at seq 2048, data loading included
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
SMOKE=""
if [ "${1:-}" = "--cpu-smoke" ]; then
  SMOKE="--cpu-smoke"
  PY=${PY:-.venv/bin/python}
else
  PY=${PY:-python3}
  # Install: wheels into /tmp/site (the image's own packages stay as they are), then glotta itself
  # (builds the C++ loader extension with the image's compiler and pybind11; no build isolation).
  SITE=/tmp/site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" gpu_bundle/wheels/*.whl || exit 1
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$SITE/glotta_pkg" . || exit 1
  export PYTHONPATH=$SITE/glotta_pkg:$PYTHONPATH
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.draw --format=csv | tee "$OUT/nvidia-smi.csv"
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} CUDA_DEVICE_MAX_CONNECTIONS=1
export MASTER_ADDR=127.0.0.1 MASTER_PORT=${MASTER_PORT:-29611}
if [ -n "$SMOKE" ]; then
  DATA=${DATA:-$OUT/smoke_data}  # small corpus and vocabulary: the smoke run checks that the parts run
  [ -f "$DATA/sp.model" ] || "$PY" bench/gpu_check.py prepare "$DATA" --vocab 2000 --docs-per-lang 40 || exit 1
fi
DATA=${DATA:-gpu_bundle/data}
status=0
# Each part in its own process with a time limit, so one slow part cannot eat the others' time.
timeout 120 "$PY" bench/gpu_check.py attention --out "$OUT" $SMOKE 2>&1 | tee "$OUT/attention.log" || status=1
timeout 150 "$PY" bench/gpu_check.py converge --data "$DATA" --out "$OUT" $SMOKE 2>&1 | tee "$OUT/converge.log" || status=1
timeout 180 "$PY" bench/gpu_check.py throughput --data "$DATA" --out "$OUT" $SMOKE 2>&1 | tee "$OUT/throughput.log" || status=1
# Short summary last (the device tool returns the end of the output).
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(n):
    f = out / f"{n}.json"
    return json.loads(f.read_text()) if f.is_file() else None
env, att, conv, thr = (load(n) for n in ("environment", "attention", "converge", "throughput"))
print("== gpu_check summary ==")
print("environment:", env)
print("(a) attention:", "missing" if att is None else ("PASS" if att["pass"] else "FAIL"),
      "" if att is None else max(max(r[k] for k in r if k.startswith("rel_err")) for r in att["rows"]))
if conv:
    print(f"(b) bf16 vs fp32: mean rel diff {100*conv['mean_rel_diff_after_10']:.2f}%  max {100*conv['max_rel_diff']:.2f}%  "
          f"{'PASS' if conv['pass'] else 'FAIL'}")
else:
    print("(b) converge: missing")
for name, r in (thr or {}).items():
    mfu = "n/a" if r["mfu"] is None else f"{100*r['mfu']:.1f}%"
    print(f"(c) {name}: {r['tokens_per_s']:,.0f} tokens/s  {r['tflops_per_gpu']:.1f} TFLOP/s/GPU  MFU {mfu}  (mbs {r['micro_batch_size']}, gbs {r['global_batch_size']})")
if not thr:
    print("(c) throughput: missing")
PYEOF
exit $status
