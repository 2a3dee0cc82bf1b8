"""Learning-rate transfer across width: loss against a 2^k learning-rate grid per width.

    python -m eval.lr_transfer --config configs/default.py:size=tiny --widths 32,64,128 \
        --lr-exponents -11,-10,-9,-8,-7,-6 --parametrizations sp,mup --steps 300 \
        --workdir runs/lr_transfer --json lr.json [--plot lr.png]

`lr_sweep_points` is the `lr_sweep` scheme (sizes x a 2^k learning-rate grid): one config per
(parametrization, width, learning rate), the width changed as in eval/coord_check.py (head
count and mlp ratio kept) with the smallest width as the muP base. Each point is an ordinary
run of the trainer in its own directory under --workdir (a finished point is read back, not
retrained); its final validation loss goes into the table. `best_lr_shift` says, per
parametrization, which grid learning rate is best at each width and how many grid steps the
best moves across widths: under muP it should stay put, under sp it moves down with width.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Sequence

from eval import coord_check
from model.config import ModelConfig
from train import cli
from train import trainer


def point_name(parametrization: str, width: int, lr_exponent: int) -> str:
  return f"{parametrization}_w{width}_lr2^{lr_exponent}"


def lr_sweep_points(
    config,
    widths: Sequence[int],
    lr_exponents: Sequence[int],
    parametrizations: Sequence[str] = ("sp", "mup"),
) -> list[tuple[str, dict, object]]:
  """[(name, {parametrization, width, lr_exponent, learning_rate}, config)] for the grid."""
  base = ModelConfig.from_config(config.model)
  points = []
  for par in parametrizations:
    for width in widths:
      model = coord_check.model_at(
          base, width=width, parametrization=par, base_width=min(widths), base_depth=base.num_layers
      )
      for k in lr_exponents:
        c = config.copy_and_resolve_references()
        c.model.update(model.to_dict())
        c.train.learning_rate = 2.0**k
        c.name = point_name(par, width, k)
        meta = dict(parametrization=par, width=width, lr_exponent=k, learning_rate=2.0**k)
        points.append((c.name, meta, c))
  return points


def best_lr_shift(rows: Sequence[dict]) -> dict:
  """Per parametrization: the best lr exponent at each width and the spread of those (grid
  steps between the largest and smallest best exponent). Non-finite losses never win."""
  out = {}
  for par in sorted({r["parametrization"] for r in rows}):
    best = {}
    for width in sorted({r["width"] for r in rows if r["parametrization"] == par}):
      mine = [
          r
          for r in rows
          if r["parametrization"] == par and r["width"] == width and math.isfinite(r["val_loss"])
      ]
      if mine:
        best[width] = min(mine, key=lambda r: r["val_loss"])["lr_exponent"]
    out[par] = dict(
        best_lr_exponent=best,
        shift_grid_steps=(max(best.values()) - min(best.values())) if best else None,
    )
  return out


def run_point(name: str, config, workdir: str) -> dict:
  """Trains one point (or reads its finished result) and returns its final metrics."""
  run_dir = os.path.join(workdir, name)
  done = os.path.join(run_dir, "lr_transfer_result.json")
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  try:
    out = trainer.train_and_evaluate(config, run_dir)
    result = dict(val_loss=float(out["val_loss"]), train_loss=float(out["train_loss"]))
  except trainer.NonFiniteError as e:  # a diverged learning rate is a result, not a crash
    result = dict(val_loss=float("nan"), train_loss=float("nan"), error=str(e).split("\n")[0])
  with open(done, "w") as f:
    json.dump(result, f)
  return result


def plot(rows: Sequence[dict], path: str) -> None:
  import matplotlib  # noqa: PLC0415 (Agg only when plotting)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415 (after matplotlib.use)

  pars = sorted({r["parametrization"] for r in rows})
  fig, axes = plt.subplots(1, len(pars), figsize=(4.5 * len(pars), 3.5), squeeze=False, sharey=True)
  for ax, par in zip(axes[0], pars):
    for width in sorted({r["width"] for r in rows}):
      mine = sorted(
          (r for r in rows if r["parametrization"] == par and r["width"] == width),
          key=lambda r: r["lr_exponent"],
      )
      ax.plot(
          [r["learning_rate"] for r in mine],
          [r["val_loss"] for r in mine],
          marker="o",
          label=f"width {width}",
      )
    ax.set(xscale="log", xlabel="learning rate", title=par)
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel("final validation loss")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _ints(text: str) -> list[int]:
  try:
    return [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m eval.lr_transfer", description=__doc__.split("\n")[0])
  cli.add_config(p, lock_config=False)
  p.add_argument("--widths", type=_ints, required=True)
  p.add_argument("--lr-exponents", type=_ints, required=True, help="k of 2^k, e.g. -10,-9,-8")
  p.add_argument("--parametrizations", default="sp,mup")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--eval-batches", type=int, default=8, help="validation batches per point")
  p.add_argument("--workdir", required=True)
  p.add_argument("--json", required=True)
  p.add_argument("--plot", default=None)
  args = cli.parse_args(p, argv)
  config = args.config
  config.train.update(steps=args.steps, warmup_steps=max(args.steps // 20, 1))
  config.eval.update(every=args.steps, batches=args.eval_batches)
  config.checkpoint.update(every=args.steps, keep=1)
  config.data.prepared_dir = os.path.join(os.path.abspath(args.workdir), "_data")
  rows = []
  for name, meta, c in lr_sweep_points(
      config, args.widths, args.lr_exponents, args.parametrizations.split(",")
  ):
    rows.append(dict(meta, name=name, **run_point(name, c, args.workdir)))
    print(json.dumps(rows[-1]), flush=True)
  result = dict(rows=rows, best=best_lr_shift(rows), steps=args.steps, config=args.config_spec)
  with open(args.json, "w") as f:
    json.dump(result, f, indent=1)
  if args.plot:
    plot(rows, args.plot)
  print(json.dumps(result["best"]))
  return 0


if __name__ == "__main__":
  cli.run(main)
