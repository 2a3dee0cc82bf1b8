#!/usr/bin/env bash
# GPT-3 1.3B training throughput and MFU on one GPU (H100/H200), through train.bench (the real
# step): seq 2048, bf16 compute with fp32 master weights and AdamW state, cuDNN flash attention
# via jax.nn.dot_product_attention (model.attention_impl=cudnn).
#
#   bash scripts/gpu_bench.sh                 # on the GPU machine; ~1-2 min per candidate
#   REDUCED=1 bash scripts/gpu_bench.sh       # a tiny same-shaped run that works on a CPU
#
# "Largest batch that fits" is searched: CANDIDATES lists remat:batch pairs (global batch in
# sequences of 2048) and every one that compiles and runs is timed; an out-of-memory candidate
# is reported and skipped. The best MFU is printed last. Override with e.g.
#   CANDIDATES="none:8 dots_saveable:16" STEPS=20 bash scripts/gpu_bench.sh
# Per-candidate JSON lands in $OUT_DIR (default /tmp/gpu_bench). MFU = model.summary's train
# FLOPs (6N-style, causal attention at half, remat recompute NOT counted) x tokens/s / 989
# TFLOP/s (H100/H200 dense bf16 data sheet).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT_DIR=${OUT_DIR:-/tmp/gpu_bench}
mkdir -p "$OUT_DIR"

if [ "${REDUCED:-0}" = "1" ]; then
  # Same preset and code path, shrunk to seconds on a CPU; XLA attention (no cuDNN there).
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
  CANDIDATES=${CANDIDATES:-"none:4 full:4"}
  STEPS=${STEPS:-2}
  SHAPE=(--config.model.num_layers=2 --config.model.d_model=64 --config.model.num_heads=2
         --config.model.num_kv_heads=2 --config.model.head_dim=32 --config.model.mlp_dim=256
         --config.model.vocab_size=512 --config.model.max_seq_len=128 --config.data.seq_len=128
         --config.model.attention_impl=xla)
else
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
  CANDIDATES=${CANDIDATES:-"none:16 none:12 none:8 dots_saveable:16 dots_saveable:12 full:32 full:24 full:16"}
  STEPS=${STEPS:-10}
  SHAPE=(--config.model.attention_impl=cudnn --config.data.seq_len=2048)
fi

best=""
best_mfu=0
for cand in $CANDIDATES; do
  remat=${cand%%:*}
  batch=${cand##*:}
  out="$OUT_DIR/gpt3_1.3B_${remat}_b${batch}.json"
  rm -f "$out"
  echo "=== remat=$remat batch=$batch"
  "$PY" -m train.bench --config configs/gpt3.py:size=1.3B "${SHAPE[@]}" \
      --config.model.dtype=bfloat16 --config.model.param_dtype=float32 \
      --config.model.remat="$remat" --config.train.batch_size="$batch" \
      --steps "$STEPS" --warmup 2 --json "$out" 2>"$OUT_DIR/last_stderr.txt" | tail -1
  if [ ! -s "$out" ]; then
    if grep -q -i "RESOURCE_EXHAUSTED\|out of memory" "$OUT_DIR/last_stderr.txt"; then
      echo "    does not fit (out of memory)"
    else
      echo "    failed:"; tail -5 "$OUT_DIR/last_stderr.txt"
    fi
    continue
  fi
  mfu=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['mfu'])" "$out")
  echo "    mfu=$mfu"
  if "$PY" -c "import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)" \
      "$mfu" "$best_mfu"; then
    best_mfu=$mfu
    best="$out"
  fi
done
if [ -z "$best" ]; then
  echo "no candidate ran" >&2
  exit 1
fi
echo "=== best: $best"
"$PY" -c "
import json, sys
r = json.load(open(sys.argv[1]))
print(f\"MFU {100 * r['mfu']:.1f}%  ({r['model_gflops_per_s'] / 1e3:.1f} TFLOP/s of \"
      f\"{r['peak_gflops_per_s'] / 1e3:.0f}; {r['tokens_per_s']:.0f} tokens/s; batch \"
      f\"{r['batch_size']} x {r['seq_len']}; step {r['step_ms_median']:.0f} ms; \"
      f\"{r['peak_source']})\")" "$best"
