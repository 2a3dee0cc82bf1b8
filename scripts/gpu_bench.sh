#!/usr/bin/env bash
# GPT-3 125M / 350M / 1.3B training throughput and MFU on one GPU (H100/H200): seq 2048, bf16
# compute with fp32 master weights and AdamW state, cuDNN flash attention, the real step.
# See scripts/gpu_bench.py for the candidates (remat x batch) and the MFU definition.
#
#   bash scripts/gpu_bench.sh                 # on the GPU machine; a few minutes in all
#   bash scripts/gpu_bench.sh --sizes 1.3B    # one size
#   REDUCED=1 bash scripts/gpu_bench.sh       # the same code path, tiny shapes, on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ "${REDUCED:-0}" = "1" ]; then
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
  exec "$PY" scripts/gpu_bench.py --reduced --steps "${STEPS:-2}" "$@"
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
exec "$PY" scripts/gpu_bench.py --steps "${STEPS:-10}" "$@"
