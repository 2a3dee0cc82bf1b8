"""Learning-rate transfer across width: loss against a 2^k learning-rate grid per width.

    python -m eval.lr_transfer --config configs/default.py:size=tiny --widths 32,64,128 \
        --lr-exponents -11,-10,-9,-8,-7,-6 --parametrizations sp,mup --steps 300 \
        --workdir runs/lr_transfer --json lr.json [--plot lr.png] [--seeds 2]
    python -m eval.lr_transfer --workdir DIR --json lr.json [--plot lr.png]

The sweep is the ladder's `lr_sweep` scheme (eval/ladder.py): `ladder_config` turns the flags
into a ladder section (each width at the config's depth with its head count kept, so head_dim
grows, and its mlp ratio kept; the smallest width is the muP base) and `eval.ladder` trains the
points into --workdir (results.csv, points/<name>; finished points are skipped, a diverged
learning rate is a row with a NaN loss). Without --config the command only reads the
results.csv of an lr_sweep ladder already in --workdir (e.g. `python -m eval.ladder --config
configs/ladder.py:cpu_lr_sweep`). `best_lr_shift` says, per parametrization, which grid
learning rate is best at each width and how many grid steps the best moves across widths:
under muP it should stay put, under sp it moves down with width.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pathlib
from typing import Sequence

import ml_collections

from eval import coord_check
from eval import ladder
from model.config import ModelConfig
from train import cli


def ladder_config(
    config,
    widths: Sequence[int],
    lr_exponents: Sequence[int],
    parametrizations: Sequence[str] = ("sp", "mup"),
    steps: int | None = None,
    seeds: int = 1,
) -> ml_collections.ConfigDict:
  """`config` with an lr_sweep `ladder` section over `widths` (one budget: `steps`, else
  config.train.steps), each point trained with `seeds` seeds (config.seed + i)."""
  base = ModelConfig.from_config(config.model)
  for width in widths:
    coord_check.model_at(base, width=width)  # a width the head count does not divide: error
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.ladder = ml_collections.ConfigDict(
        dict(
            scheme="lr_sweep",
            sizes=tuple((f"w{w}", int(w), base.num_layers, base.num_heads) for w in widths),
            mlp_ratio=base.mlp_dim / base.d_model,
            steps=(int(steps or config.train.steps),),
            lr_exponents=tuple(int(k) for k in lr_exponents),
            parametrizations=tuple(parametrizations),
            seeds=int(seeds),
            parallel=1,
        )
    )
  return c


def sweep_rows(workdir) -> list[dict]:
  """The lr_sweep rows of DIR/results.csv as {name, parametrization, width, lr_exponent,
  learning_rate, steps, seed, val_loss, train_loss} (NaN losses for diverged points)."""
  path = pathlib.Path(workdir) / "results.csv"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: run the sweep first (with --config)")
  with open(path, newline="") as f:
    table = [r for r in csv.DictReader(f) if r.get("lr_exponent") not in (None, "")]
  if not table:
    raise ValueError(f"{path} has no lr_sweep rows (no `lr_exponent` values)")
  num = lambda v: float(v) if v not in (None, "") else math.nan
  return [
      dict(
          name=r["name"],
          parametrization=r["parametrization"],
          width=int(r["d_model"]),
          lr_exponent=int(float(r["lr_exponent"])),
          learning_rate=num(r["lr"]),
          steps=int(r["steps"]),
          seed=int(r["seed"]),
          val_loss=num(r["val_loss"]),
          train_loss=num(r["train_loss"]),
      )
      for r in table
  ]


def seed_means(rows: Sequence[dict], par: str, width: int) -> dict[int, float]:
  """{lr exponent: validation loss averaged over seeds} of one parametrization and width; NaN
  where any seed diverged (a learning rate that diverges for one seed is not a safe best)."""
  by_lr = {}
  for r in rows:
    if r["parametrization"] == par and r["width"] == width:
      by_lr.setdefault(r["lr_exponent"], []).append(r["val_loss"])
  return {k: sum(v) / len(v) for k, v in sorted(by_lr.items())}


def best_lr_shift(rows: Sequence[dict]) -> dict:
  """Per parametrization: the best lr exponent at each width and the spread of those (grid
  steps between the largest and smallest best exponent). Non-finite losses never win; a
  width's seeds are averaged per learning rate first."""
  out = {}
  for par in sorted({r["parametrization"] for r in rows}):
    best = {}
    for width in sorted({r["width"] for r in rows if r["parametrization"] == par}):
      mean = {k: v for k, v in seed_means(rows, par, width).items() if math.isfinite(v)}
      if mean:
        best[width] = min(mean, key=mean.get)
    out[par] = dict(
        best_lr_exponent=best,
        shift_grid_steps=(max(best.values()) - min(best.values())) if best else None,
    )
  return out


def plot(rows: Sequence[dict], path: str) -> None:
  """Validation loss against learning rate, one panel per parametrization, a line per width
  (seeds averaged)."""
  from eval.plots import plt  # noqa: PLC0415 (matplotlib, Agg, only when plotting)

  pars = sorted({r["parametrization"] for r in rows})
  fig, axes = plt.subplots(1, len(pars), figsize=(4.5 * len(pars), 3.5), squeeze=False, sharey=True)
  for ax, par in zip(axes[0], pars):
    for width in sorted({r["width"] for r in rows}):
      mean = seed_means(rows, par, width)
      if mean:
        ax.plot([2.0**k for k in mean], list(mean.values()), marker="o", label=f"width {width}")
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


def run_sweep(args) -> None:
  """Trains the sweep the flags describe into args.workdir (finished points are skipped)."""
  if not args.widths or not args.lr_exponents:
    raise ValueError("--config needs --widths and --lr-exponents (the grid to train)")
  config = cli.load_config(args.config, lock_config=False)
  config.train.update(steps=args.steps, warmup_steps=max(args.steps // 20, 1))
  config.eval.update(every=args.steps, batches=args.eval_batches)
  config.checkpoint.update(every=args.steps, keep=1)
  config = ladder_config(
      config,
      args.widths,
      args.lr_exponents,
      args.parametrizations.split(","),
      args.steps,
      args.seeds,
  )
  ladder.run_ladder(config, os.path.abspath(args.workdir))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m eval.lr_transfer", description=__doc__.split("\n")[0])
  p.add_argument("--config", default=None, help="train this sweep (absent: read --workdir's)")
  p.add_argument("--widths", type=_ints, default=None)
  p.add_argument("--lr-exponents", type=_ints, default=None, help="k of 2^k, e.g. -10,-9,-8")
  p.add_argument("--parametrizations", default="sp,mup")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--eval-batches", type=int, default=8, help="validation batches per point")
  p.add_argument(
      "--seeds",
      type=int,
      default=1,
      help="initialisations per point, averaged per learning rate (raising it in the same "
      "--workdir trains only the new seeds)",
  )
  p.add_argument("--workdir", required=True)
  p.add_argument("--json", required=True)
  p.add_argument("--plot", default=None)
  args = p.parse_args(argv)
  if args.config:
    run_sweep(args)
  rows = sweep_rows(args.workdir)
  result = dict(rows=rows, best=best_lr_shift(rows), config=args.config, workdir=args.workdir)
  with open(args.json, "w") as f:
    json.dump(result, f, indent=1)
  if args.plot:
    plot(rows, args.plot)
  print(json.dumps(result["best"]))
  return 0


if __name__ == "__main__":
  cli.run(main)
