"""Held-out loss, perplexity and bits-per-byte per domain, with standard errors.

    python -m eval.perplexity --workdir RUN [--data SOURCE] [--split val|all] [--batches N]
        [--batch_size B] [--val_fraction F] [--step S] [--json OUT]

Loads the run with the trainer's own API (`train.run.load_run`: config, params sharded
over the run's mesh, tokenizer) and evaluates with the trainer's eval step and aggregation
(`train.evaluate`), so these numbers are the ones training reports. `--data` evaluates on
another source (any `data.source` spec: embedded, text:<glob>, synthetic:markov, ...),
prepared under RUN/eval_data/ with the run's tokenizer; `--split val` (default) scores its
validation split (`--val_fraction`, default the run's), `--split all` scores every byte of it
(an external held-out file or set: evaluation only, all batches). Each domain reports the
tokens and bytes scored. Bits per byte divide the loss by exactly the bytes of the scored
tokens, so they compare across tokenizers. Standard errors take documents as clusters;
perplexity's SE is the delta method, ppl * loss_se.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import jax

from train import cli
from train import evaluate as eval_lib
from train import mesh as mesh_lib
from train import run as run_lib
from train import trainer
from train.data import pipeline
from train.data import prepare as prepare_lib
from train.data import sources
from train.data import split as split_lib
from train.data import tokenizer as tok_lib
from train import step as step_lib


def _eval_data(config, workdir: str, data: str, split: str, val_fraction: float | None, tokenizer):
  """The EvalSource of `data` (its validation split, or all of it), prepared once under
  RUN/eval_data/ (reused while the source is unchanged)."""
  config.data.source = data
  if split == "all":
    config.data.val_fraction = 1.0
  elif val_fraction is not None:
    config.data.val_fraction = float(val_fraction)
  directory = pipeline.default_prepared_dir(
      config.data, os.path.join(workdir, "eval_data"), tokenizer
  )
  config.data.prepared_dir = os.fspath(directory)
  manifest = prepare_lib.prepare(
      data,
      tokenizer,
      directory,
      val_fraction=float(config.data.val_fraction),
      progress=False,
  )
  _, stores = pipeline.open_prepared(directory)
  return pipeline.EvalSource(stores["val"], manifest, tokenizer, int(config.data.seq_len))


def evaluate_run(
    workdir: str,
    *,
    data: str | None = None,
    batches: int | None = None,
    batch_size: int | None = None,
    step: int | None = None,
    val_fraction: float | None = None,
    split: str = "val",
) -> dict:
  """{domain: {loss, loss_se, ppl, ppl_se, bpb, bpb_se, tokens, bytes, docs}, "all": {...}}
  plus run metadata (step, source, split, batches)."""
  if split not in ("val", "all"):
    raise ValueError(f"--split must be val or all, got {split!r}")
  if split == "all" and not data:
    raise ValueError(
        "--split all scores every byte of a source given with --data SPEC "
        "(the run's own source would include its training documents)"
    )
  if split == "all" and batches is not None:
    raise ValueError("--split all scores every batch; drop --batches (or use --split val)")
  if data:  # bad specs, globs and fractions fail here, before the checkpoint is read
    sources.open_source(data)
    if val_fraction is not None:
      split_lib.check_val_fraction(val_fraction)
  run = run_lib.load_run(workdir, step=step)
  config, spec = run.config, run.spec
  tok_lib.check_vocab_size(run.tokenizer, spec.model.vocab_size)
  gbs = batch_size or spec.train.batch_size
  dp = mesh_lib.data_parallel_size(run.mesh, spec.mesh.axis_rules)
  if gbs % (dp * jax.process_count()):
    raise ValueError(
        f"--batch_size {gbs} must be a multiple of the {dp} ways the mesh splits "
        f"the batch (and of the {jax.process_count()} processes)"
    )
  eval_source = (
      _eval_data(config, workdir, data, split, val_fraction, run.tokenizer)
      if data
      else trainer.load_data(spec, workdir, run.tokenizer, progress=False).eval_source
  )
  shardings = jax.tree_util.tree_map(lambda x: x.sharding, run.params)
  opts = step_lib.StepOptions.from_spec(spec, run.tokenizer.mask_id)
  eval_step = eval_lib.build_eval_step(opts, run.mesh, spec.mesh.axis_rules, run.model, shardings)
  max_batches = -1 if split == "all" else (batches if batches is not None else spec.eval.batches)
  with run.context():
    results = eval_lib.evaluate(
        eval_step,
        run.params,
        eval_source,
        global_batch_size=gbs,
        max_batches=None if max_batches < 0 else max_batches,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
  for r in results.values():
    if "loss" in r and math.isfinite(r["loss"]):
      r["ppl"] = math.exp(r["loss"])
      r["ppl_se"] = r["ppl"] * r["loss_se"]
  return dict(
      workdir=os.fspath(workdir),
      step=run.step,
      source=config.data.source,
      split=split,
      tokenizer=config.data.tokenizer,
      batches=max_batches,
      global_batch_size=gbs,
      domains=results,
  )


def format_table(res: dict) -> str:
  batches = "all" if res["batches"] < 0 else res["batches"]
  lines = [
      f"{res['workdir']} @ step {res['step']} on {res['source']} [{res['split']}] "
      f"({batches} batches of {res['global_batch_size']} rows per domain; SEs clustered "
      "by document)",
      f"{'domain':<10} {'loss':>16} {'perplexity':>18} {'bits/byte':>16} {'tokens':>9} "
      f"{'bytes':>10} {'docs':>6}",
  ]
  for d, r in res["domains"].items():
    se = lambda k: f" ±{r[k]:.4f}" if k in r and math.isfinite(r.get(k, float("nan"))) else ""  # noqa: E731
    lines.append(
        f"{d:<10} {r['loss']:>9.4f}{se('loss_se'):>7} {r.get('ppl', float('nan')):>10.3f}"
        f"{se('ppl_se'):>8} {r.get('bpb', float('nan')):>9.4f}{se('bpb_se'):>7} "
        f"{int(r.get('tokens', 0)):>9} {int(r.get('bytes', 0)):>10} "
        f"{int(r.get('docs', 0)):>6}"
    )
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m eval.perplexity", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="a training run directory")
  p.add_argument("--data", default=None, help="data source spec (default: the run's own)")
  p.add_argument(
      "--batches",
      type=int,
      default=None,
      help="batches per domain (default: the run's eval.batches; -1: all)",
  )
  p.add_argument("--batch_size", type=int, default=None, help="global batch (default: training's)")
  p.add_argument(
      "--val_fraction",
      type=float,
      default=None,
      help="held-out fraction when preparing --data (default: the run's)",
  )
  p.add_argument(
      "--split",
      choices=("val", "all"),
      default="val",
      help="val: the validation split; all: every byte of --data (evaluation only)",
  )
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--json", default=None)
  a = p.parse_args(argv)
  if not os.path.isdir(os.path.join(a.workdir, "checkpoints")):
    raise FileNotFoundError(
        f"{a.workdir} has no checkpoints/; train it first " "(python -m train ...)"
    )
  opts = {k: v for k, v in vars(a).items() if k not in ("workdir", "json")}
  res = evaluate_run(a.workdir, **opts)  # every other flag's dest is an evaluate_run keyword
  print(format_table(res))
  if a.json:
    with open(a.json, "w") as f:
      json.dump(res, f, indent=2)
  return 0


if __name__ == "__main__":
  cli.run(main)
