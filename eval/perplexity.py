"""Held-out loss, perplexity and bits-per-byte per domain, with standard errors.

    python -m eval.perplexity --workdir RUN [--data SOURCE] [--batches N] [--batch_size B]
        [--val_fraction F] [--step S] [--json OUT]

Loads the run with the trainer's own API (`train.trainer.load_run`: config, params sharded
over the run's mesh, tokenizer) and evaluates with the trainer's eval step and aggregation
(`train.evaluate`), so these numbers are the ones training reports. `--data` evaluates on
another source (any `data.source` spec: embedded, text:<glob>, synthetic:markov, ...),
prepared under RUN/eval_data/ with the run's tokenizer. Bits per byte divide the loss by the
bytes each token stands for, so they compare across tokenizers. Standard errors treat rows
(windows of text) as the sampling unit; perplexity's SE is the delta method, ppl * loss_se.
"""

from __future__ import annotations

import json
import math
import os
import sys


def evaluate_run(workdir: str, *, data: str | None = None, batches: int | None = None,
                 batch_size: int | None = None, step: int | None = None,
                 val_fraction: float | None = None) -> dict:
  """{domain: {loss, loss_se, ppl, ppl_se, bpb, bpb_se, tokens, rows}, "all": {...}} plus
  run metadata (step, source, params)."""
  import jax
  from train import evaluate as eval_lib
  from train import trainer
  from train.data import pipeline

  run = trainer.load_run(workdir, step=step)
  config = run.config
  if data:
    config.data.source = data
    if val_fraction is not None:
      config.data.val_fraction = float(val_fraction)
    config.data.prepared_dir = os.fspath(pipeline.default_prepared_dir(
        config.data, os.path.join(workdir, "eval_data")))
  gbs = int(batch_size or config.train.batch_size)
  dp = run.mesh.shape.get("data", 1) * run.mesh.shape.get("fsdp", 1)
  if gbs % dp:
    raise ValueError(f"--batch_size {gbs} must be a multiple of the mesh's data x fsdp = {dp}")
  td = trainer.load_data(config, workdir) if not data else pipeline.load_for_training(
      config.data, config.data.prepared_dir, global_batch_size=gbs, seed=int(config.seed),
      process_index=jax.process_index(), process_count=jax.process_count(),
      model_vocab_size=int(config.model.vocab_size), progress=False)
  shardings = jax.tree_util.tree_map(lambda x: x.sharding, run.params)
  eval_step = eval_lib.build_eval_step(config, run.mesh, run.model, shardings,
                                       mask_id=run.tokenizer.mask_id)
  max_batches = batches if batches is not None else int(config.eval.batches)
  results = eval_lib.evaluate(eval_step, run.params, td.eval_source, global_batch_size=gbs,
                              max_batches=None if max_batches < 0 else max_batches,
                              process_index=jax.process_index(),
                              process_count=jax.process_count())
  for r in results.values():
    if "loss" in r and math.isfinite(r["loss"]):
      r["ppl"] = math.exp(r["loss"])
      if "loss_se" in r:
        r["ppl_se"] = r["ppl"] * r["loss_se"]
  return dict(workdir=os.fspath(workdir), step=run.step, source=config.data.source,
              tokenizer=config.data.tokenizer, batches=max_batches, global_batch_size=gbs,
              domains=results)


def format_table(res: dict) -> str:
  lines = [f"{res['workdir']} @ step {res['step']} on {res['source']} "
           f"({res['batches']} batches of {res['global_batch_size']} rows per domain)",
           f"{'domain':<10} {'loss':>16} {'perplexity':>18} {'bits/byte':>16} {'tokens':>9}"]
  for d, r in res["domains"].items():
    se = lambda k: f" ±{r[k]:.4f}" if k in r and math.isfinite(r.get(k, float("nan"))) else ""  # noqa: E731
    lines.append(f"{d:<10} {r['loss']:>9.4f}{se('loss_se'):>7} {r.get('ppl', float('nan')):>10.3f}"
                 f"{se('ppl_se'):>8} {r.get('bpb', float('nan')):>9.4f}{se('bpb_se'):>7} "
                 f"{int(r.get('tokens', 0)):>9}")
  return "\n".join(lines)


def main(argv=None) -> int:
  import argparse
  p = argparse.ArgumentParser(prog="python -m eval.perplexity", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="a training run directory")
  p.add_argument("--data", default=None, help="data source spec (default: the run's own)")
  p.add_argument("--batches", type=int, default=None,
                 help="batches per domain (default: the run's eval.batches; -1: all)")
  p.add_argument("--batch_size", type=int, default=None, help="global batch (default: training's)")
  p.add_argument("--val_fraction", type=float, default=None,
                 help="held-out fraction when preparing --data (default: the run's)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--json", default=None)
  a = p.parse_args(argv)
  if not os.path.isdir(os.path.join(a.workdir, "checkpoints")):
    print(f"error: {a.workdir} has no checkpoints/; train it first (python -m train ...)",
          file=sys.stderr)
    return 1
  res = evaluate_run(a.workdir, data=a.data, batches=a.batches, batch_size=a.batch_size,
                     step=a.step, val_fraction=a.val_fraction)
  print(format_table(res))
  if a.json:
    with open(a.json, "w") as f:
      json.dump(res, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
