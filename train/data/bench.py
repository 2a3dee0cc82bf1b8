"""Loader benchmark: tokens/s delivered per process from prepared shards (prints, never asserts).

    python -m train.data.bench [--source embedded] [--tokenizer byte] [--dir DIR] [--steps 200]

Prepares the source if needed (default: a cache dir under /tmp/unleash-bench), then times `next()`
on the train iterator for a few (seq_len, global batch, threads) settings, after a warm-up, and
also as one of 2 simulated processes (each builds only its half of every global batch). The goal on
a 2-core machine is >= 1M tokens/s per process. The trainer-side consumption rate (tokens/s a
training step eats) belongs to the trainer's benchmark (train/bench.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import ml_collections

from train import cli
from train.data import pipeline


def measure(
    data_cfg,
    prepared_dir,
    *,
    global_batch_size,
    process_count=1,
    num_threads=2,
    steps=200,
    warmup=10,
) -> float:
  td = pipeline.load_for_training(
      data_cfg,
      prepared_dir,
      global_batch_size=global_batch_size,
      seed=0,
      process_index=0,
      process_count=process_count,
      num_threads=num_threads,
      progress=False,
  )
  it = td.train_iter
  for _ in range(warmup):
    next(it)
  tokens, t = 0, time.perf_counter()
  for _ in range(steps):
    tokens += next(it)["inputs"].size
  return tokens / (time.perf_counter() - t)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m train.data.bench")
  p.add_argument("--source", default="embedded")
  p.add_argument("--tokenizer", default="byte")
  p.add_argument("--dir", default="")
  p.add_argument("--steps", type=int, default=200)
  a = p.parse_args(argv)
  if a.steps < 1:
    raise ValueError(f"--steps must be >= 1, got {a.steps}")
  base = ml_collections.ConfigDict(dict(source=a.source, tokenizer=a.tokenizer, val_fraction=0.01))
  cache_root = f"{tempfile.gettempdir()}/unleash-bench"
  prepared = a.dir or str(pipeline.default_prepared_dir(base, cache_root))
  t = time.perf_counter()
  m = pipeline.prepare_lib.prepare(a.source, a.tokenizer, prepared, progress=False)
  print(
      json.dumps(
          {
              "prepare_or_open_s": round(time.perf_counter() - t, 2),
              "train_tokens": m["splits"]["train"]["tokens"],
              "dir": str(prepared),
          }
      )
  )
  rows = []
  for seq_len, batch, procs, threads in [
      (256, 16, 1, 0),
      (256, 16, 1, 2),
      (256, 64, 1, 2),
      (1024, 16, 1, 2),
      (1024, 64, 1, 2),
      (256, 32, 2, 2),
  ]:
    cfg = ml_collections.ConfigDict(
        dict(
            source=a.source,
            tokenizer=a.tokenizer,
            seq_len=seq_len,
            prepared_dir=prepared,
            val_fraction=0.01,
            num_workers=0,
        )
    )
    tps = measure(
        cfg,
        prepared,
        global_batch_size=batch,
        process_count=procs,
        num_threads=threads,
        steps=a.steps,
    )
    rows.append(
        dict(
            seq_len=seq_len,
            global_batch=batch,
            processes=procs,
            threads=threads,
            tokens_per_s_per_process=round(tps),
        )
    )
    print(json.dumps(rows[-1]), flush=True)
  return 0


if __name__ == "__main__":
  cli.run(main)
