"""Training throughput and MFU of GPT-3 125M / 350M / 1.3B on one GPU, through the real step.

    python scripts/gpu_bench.py [--sizes 125M,350M,1.3B] [--steps 10] [--json-dir DIR]
    python scripts/gpu_bench.py --reduced          # same code path, tiny shapes, on a CPU

Every candidate (size, remat policy, global batch in sequences of 2048) is built with
`train.build.build` via `train.bench.run` (the model, optimizer, shardings and donation of
`python -m train`), in bf16 compute with fp32 master weights and AdamW state, cuDNN flash
attention (`model.attention_impl=cudnn`). Candidates that do not fit (out of memory) are
reported and skipped; the best MFU per size is printed last. All candidates run in this one
process (compiling each), so a whole sweep fits in a few minutes of GPU time.

MFU = model.summary's training FLOPs per token (6N-style plus causal attention at half; remat
recomputation NOT counted) x tokens/s / the GPU's dense bf16 data-sheet peak (H100/H200:
989 TFLOP/s, train/metrics.py). The XLA flags in effect are recorded with every result.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import sys
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run by path

from configs import gpt3  # noqa: E402
from train import bench  # noqa: E402

# size: candidates (remat, batch) in the order tried; the largest batch that fits wins on MFU.
CANDIDATES = {
    "125M": [("none", 32), ("none", 64)],
    "350M": [("none", 32), ("none", 48)],
    "1.3B": [("none", 16), ("dots_saveable", 24), ("full", 32)],
}
REDUCED = {"tiny": [("none", 4), ("full", 4)]}


def config_for(size: str, remat: str, batch: int, reduced: bool):
  c = gpt3.get_config("size=125M" if reduced else f"size={size}")
  c.model.update(dtype="bfloat16", param_dtype="float32", remat=remat)
  c.train.batch_size = batch
  if reduced:  # the same preset shrunk to seconds on a CPU, XLA attention
    c.model.update(
        num_layers=2,
        d_model=64,
        num_heads=2,
        num_kv_heads=2,
        head_dim=32,
        mlp_dim=256,
        vocab_size=512,
        max_seq_len=128,
        attention_impl="xla",
    )
    c.data.seq_len = 128
  else:
    c.model.attention_impl = "cudnn"
    c.data.seq_len = 2048
  return c


def _is_oom(e: BaseException) -> bool:
  text = f"{type(e).__name__}: {e}"
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def run_candidate(size, remat, batch, steps, reduced) -> dict:
  config = config_for(size, remat, batch, reduced)
  row = dict(size=size, remat=remat, batch=batch, xla_flags=os.environ.get("XLA_FLAGS", ""))
  t0 = time.perf_counter()
  try:
    row.update(bench.run(config, steps=steps, warmup=2))
    row["status"] = "ok"
  except Exception as e:  # pylint: disable=broad-except  (one candidate must not end the sweep)
    row["status"] = "oom" if _is_oom(e) else "failed"
    row["error"] = " ".join(f"{type(e).__name__}: {e}".split())[:400]
  row["wall_s"] = round(time.perf_counter() - t0, 1)
  gc.collect()
  jax.clear_caches()
  return row


def _line(r: dict) -> str:
  head = f"{r['size']:>5} remat={r['remat']:<14} batch={r['batch']:<3}"
  if r["status"] != "ok":
    return f"{head} {r['status']}: {r.get('error', '')[:160]}"
  return (
      f"{head} MFU {100 * r['mfu']:5.1f}%  {r['tokens_per_s']:>10.0f} tok/s  "
      f"step {r['step_ms_median']:8.1f} ms  compile {r['compile_s']:5.1f} s  "
      f"peak mem {r.get('device_peak_bytes', 0) / 2**30:6.1f} GiB"
  )


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", default="125M,350M,1.3B")
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--json-dir", default=os.environ.get("OUT_DIR", "/tmp/gpu_bench"))
  ap.add_argument("--reduced", action="store_true", help="tiny shapes on any backend")
  ap.add_argument(
      "--budget-s", type=float, default=1e9, help="stop starting candidates after this many seconds"
  )
  a = ap.parse_args(argv)
  table = REDUCED if a.reduced else {s: CANDIDATES[s] for s in a.sizes.split(",")}
  out_dir = pathlib.Path(a.json_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  print(
      f"backend {jax.default_backend()}, {jax.devices()[0].device_kind}, jax {jax.__version__}, "
      f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
      flush=True,
  )
  t0, rows = time.perf_counter(), []
  for size, cands in table.items():
    for remat, batch in cands:
      if time.perf_counter() - t0 > a.budget_s:
        print(f"{size} remat={remat} batch={batch}: skipped (time budget)", flush=True)
        continue
      r = run_candidate(size, remat, batch, a.steps, a.reduced)
      rows.append(r)
      print(_line(r), flush=True)
      (out_dir / f"gpt3_{size}_{remat}_b{batch}.json").write_text(json.dumps(r) + "\n")
      with open(out_dir / "all.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(r) + "\n")
  print("=== best per size")
  ok = False
  for size in table:
    good = [r for r in rows if r["size"] == size and r["status"] == "ok"]
    if good:
      ok = True
      print(_line(max(good, key=lambda r: r["mfu"])))
    else:
      print(f"{size}: no candidate ran")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
