#!/usr/bin/env bash
# The one command to run on the GPU machine (bench/gpu/README.md gives the call): installs the wheels carried
# in .whl/ into /tmp/site, prints the GPU, runs bench/bench_gpu.py within BENCH_BUDGET_S seconds (default 450,
# so the whole command ends within about 8 minutes), and leaves in $OUT: bench_gpu.json, bench_gpu.md (the
# tables), bench_gpu.log (everything printed), nvidia-smi.txt and worker_logs.tgz (each worker's stderr).
# Extra arguments go to bench_gpu.py (e.g. --parts inference --backends torch). Results are rewritten in $OUT
# after every worker process, so even a run stopped from outside leaves what it measured.
set -uo pipefail
cd "$(dirname "$0")/../.."

OUT=${OUT:-bench_output/device}
BUDGET=${BENCH_BUDGET_S:-450}
WORK=${BENCH_WORK_DIR:-/tmp/bench_gpu_work}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "run_on_device.sh: installing .whl/*.whl failed" >&2; exit 3; }
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "run_on_device.sh: no .whl/ wheels (bench/gpu/prepare_wheels.sh, and carry [\".whl\"]); using what is installed"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt"
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT/nvidia-smi.txt"
import importlib
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")  # keras' default, tensorflow, is not on the GPU machine
print("python", sys.version.split()[0])
for name in ("numpy", "keras", "torch", "torchvision", "jax", "jaxlib", "optree", "namex"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as exc:  # reported, and bench_gpu.py records the failing cases
        print(name, "NOT IMPORTABLE:", type(exc).__name__, exc)
EOF

"$PY" bench/bench_gpu.py --time-budget-s "$BUDGET" --out-dir "$OUT" --work-dir "$WORK" "$@" 2>&1 \
    | tee "$OUT/bench_gpu.log"
code=${PIPESTATUS[0]}
(cd "$WORK" 2>/dev/null && tar czf "$OUT/worker_logs.tgz" ./*.stderr 2>/dev/null) || true
exit "$code"
