#!/usr/bin/env bash
# The GPU checks in one run (docs/gpu.md): versions, the GPU tests (cuDNN attention vs XLA,
# bf16 training on the GPU vs fp32 on the CPU) and the GPT-3 throughput/MFU sweep.
#
#   bash scripts/gpu_check.sh            # on a GPU host, from the repository root
#
# Wheels in .whl/ (if present) are installed into /tmp/site first: a GPU image that has JAX
# with CUDA but not the project's other dependencies can run it without a network.
# Logs and per-candidate JSON go to $OUT (default /tmp/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
PY=${PY:-python3}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  "$PY" -c "import jax, jaxlib, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__); print(jax.devices())"
} 2>&1 | tee "$OUT/versions.txt"
JAX_PLATFORMS=cuda timeout "${TEST_TIMEOUT:-300}" "$PY" -m pytest -q -p no:cacheprovider -s \
    tests/test_gpu.py "tests/test_model.py::test_cudnn_attention_matches_xla" 2>&1 \
    | tee "$OUT/tests.log" | tail -40
XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 timeout "${BENCH_TIMEOUT:-330}" "$PY" scripts/gpu_bench.py \
    --json-dir /tmp/gpu_bench --budget-s "${BENCH_BUDGET:-240}" "$@" 2>&1 | tee "$OUT/bench.log"
cp /tmp/gpu_bench/all.jsonl "$OUT/bench.jsonl" 2>/dev/null || true
