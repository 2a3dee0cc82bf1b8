"""Scaling ladders: train a grid of sizes x token budgets (or IsoFLOP grids) and tabulate them.

    python -m eval.ladder --config configs/ladder.py:cpu --workdir DIR [--config.ladder.parallel=2]
    python -m eval.ladder --config ... --workdir SHARED_DIR --executor ray [--ray-address ADDR]

A point is "a config + a workdir" (DIR/points/<name>), trained by the same
`train.trainer.train_and_evaluate` the CLI uses, so each point resumes from its own
checkpoints when killed. When a point finishes, one row is appended to DIR/results.csv
(columns `RESULT_COLUMNS`, then `task/metric` columns when `ladder.tasks` names zero-shot tasks:
eval.zeroshot.ladder_columns of the point's final parameters); points whose name is already
there are skipped, so rerunning the command after a kill resumes the whole ladder. FLOPs come
from `model.summary`. DIR may be a bucket URL (gs://...; train/paths.py).

Executors: `local` runs the points in this process (or `ladder.parallel` worker processes,
split by size); `ray` makes each point a Ray task (eval/ladder.py's "Ray executor" section)
with the resources `ladder.resources` asks for, on a cluster whose nodes all see DIR.
Both split a CPU host into the devices `python -m train` would use (train/cpu_devices.py).

Schemes (config.ladder.scheme):
  grid     every size x every budget (config.ladder.steps) as an independent run.
  isoflop  for each FLOP budget C and size, steps = C / (flops_per_token * batch * seq_len).
  wsd      per size, one constant-LR run to the largest branch point; for each budget T a
           cooldown branch copies that run's checkpoint at T - decay_fraction*T (params,
           optimizer state, data position) and finishes with the WSD cooldown
           (Hägele et al. 2024). The constant run is shared, so S budgets cost about one run.
  lr_sweep every size x budget x learning rate 2^k (ladder.lr_exponents) x parametrization
           (ladder.parametrizations), independent runs; rows carry `lr_exponent`, and
           eval.lr_transfer tabulates the best learning rate per width (a diverged point is a
           row with a NaN loss, not a failure).

`ladder.recipe` derives each size (depth and heads from the width) and its hyperparameters
(learning rate, epsilon, beta2 under the parametrization, warmup as a fraction of the run, WSD
with a 1-sqrt cooldown), and `ladder.seeds` trains every point with several seeds; each row
records what its point was trained with (lr, warmup_steps, schedule, cooldown, b2, eps,
num_heads, parametrization, seed, and `point`: the name shared by a point's seeds).
  epochs   data-constrained: every size x every repetition count e (config.ladder.epochs) of
           a fixed subset of ladder.unique_tokens tokens (data.max_unique_tokens), as
           independent runs of e * unique_tokens tokens (Muennighoff et al. 2023); for each
           e > 1 also a `_fresh` twin of as many tokens on the whole split, so the
           single-epoch rows that fit the Chinchilla part of `eval.fit constrained` span the
           same token range as the repeated ones (else R_D* absorbs the extrapolation error).
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import socket
import subprocess
import sys
import time
import uuid
from typing import Callable

from absl import logging
import ml_collections
import numpy as np
import bisect
from eval import fit as fitlib
from model import parametrization
from model.config import ModelConfig

from train import cli
from train import cpu_devices
from train import spec as spec_lib
from train import paths

# New columns go at the end: an older results.csv gains them (empty in its rows) when appended to.
RESULT_COLUMNS = (
    "name",
    "size",
    "scheme",
    "params_total",
    "params_non_embedding",
    "d_model",
    "num_layers",
    "steps",
    "batch_size",
    "seq_len",
    "tokens",
    "flops_per_token",
    "flops",
    "budget",
    "train_loss",
    "val_loss",
    "val_bpb",
    "wall_s",
    "val_loss_se",
    "seed",
    "unique_tokens",
    "flops_6nd",
    # Estimates from the run's `cost` (train/cost.py); blank where an input is unknown.
    "chip_hours",
    "kwh",
    "usd",
    "kgco2e",
    "point",
    "parametrization",
    "num_heads",
    "lr",
    "lr_exponent",
    "lr_hidden",
    "eps",
    "eps_hidden",
    "b2",
    "warmup_steps",
    "schedule",
    "cooldown",
    "params_active",
    "epochs",
)


@dataclasses.dataclass
class Point:
  """One training run of the ladder."""

  name: str
  size: str
  config: ml_collections.ConfigDict  # the full training config (no `ladder` section)
  kind: str = "run"  # run | constant | cooldown
  budget: float = float("nan")  # the FLOP budget (isoflop) it belongs to
  branch_from: str | None = None  # cooldown: the constant run it branches from
  branch_step: int = 0  # cooldown: the step it branches at
  needs_steps: tuple = ()  # constant: steps whose checkpoints must survive
  meta: dict = dataclasses.field(default_factory=dict)  # lr_sweep grid values, seed replicas
  tasks: tuple = ()  # zero-shot task specs (KIND:PATH) scored when the point finishes
  task_limit: int = 0  # first N items per task (0: all)

  @property
  def record(self) -> bool:
    return self.kind != "constant"


# ----------------------------------------------------------------------------- expansion


def _train_config(config, size, name) -> ml_collections.ConfigDict:
  """The base config with this size's shape and without the `ladder` section (so that
  changing ladder options never invalidates a point's checkpoints)."""
  c = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  with c.unlocked():
    del c["ladder"]
  size_name, d_model, num_layers, num_heads = size
  if d_model % num_heads:
    raise ValueError(
        f"ladder size {size_name}: d_model={d_model} is not divisible by " f"num_heads={num_heads}"
    )
  c.model.d_model = int(d_model)
  c.model.num_layers = int(num_layers)
  c.model.num_heads = c.model.num_kv_heads = int(num_heads)
  c.model.head_dim = int(d_model) // int(num_heads)
  c.model.mlp_dim = int(config.ladder.mlp_ratio * d_model)
  c.name = name
  return c


def _point(config, size, name: str, steps: int, **fields) -> Point:
  """A point of `size` trained for `steps` steps; `fields` set the other Point fields."""
  c = _train_config(config, size, name)
  c.train.steps = int(steps)
  return Point(name, size[0], c, **fields)


def flops_per_token(config) -> float:
  from model import summary  # noqa: PLC0415 (jax after XLA_FLAGS)

  return float(summary.flops_per_token_train(config.model, int(config.data.seq_len)))


def branch_step(steps: int, decay_fraction: float) -> int:
  """Where a WSD cooldown to `steps` starts: the trainer's schedule decays over
  max(round(decay_fraction * steps), 1) final steps."""
  return steps - max(int(round(decay_fraction * steps)), 1)


# ----------------------------------------------------------------------------- recipe
#
# One learning rate, warmup and shape rule for a 20x range of sizes trains the small and the
# large rungs unequally, so fitted exponents partly measure tuning. `ladder.recipe` states the
# rule: depth and heads from the width, the tuned base (learning rate, epsilon, beta2) carried
# to every width by the parametrization, warmup a fraction of each run, WSD with a 1-sqrt
# cooldown (Hägele et al. 2024).

RECIPE_PARAMETRIZATIONS = ("sp", "mup", "completep")


def recipe_on(lad) -> bool:
  """Whether `ladder.recipe` is in use (its parametrization is set)."""
  recipe = lad.get("recipe")
  return bool(recipe and recipe.get("parametrization"))


def _round_half_up(x: float) -> int:
  """Python's round() sends 2.5 to 2; a stated rule should not depend on parity."""
  return int(math.floor(x + 0.5))


def recipe_shape(recipe, width: int) -> tuple[int, int]:
  """(num_layers, num_heads) of a width: round(width / aspect_ratio) layers (at least 1) and
  width / head_dim heads (head_dim fixed, as in GPT-2/3 and Llama families)."""
  width, head_dim = int(width), int(recipe.head_dim)
  if head_dim <= 0 or width % head_dim:
    raise ValueError(
        f"ladder.recipe.head_dim={head_dim}: width {width} is not a positive multiple of it; "
        "use widths that are multiples of head_dim or another head_dim"
    )
  if not float(recipe.aspect_ratio) > 0:
    raise ValueError(f"ladder.recipe.aspect_ratio={recipe.aspect_ratio} must be > 0")
  return max(1, _round_half_up(width / float(recipe.aspect_ratio))), width // head_dim


def ladder_sizes(config) -> tuple:
  """(name, d_model, num_layers, num_heads) per size: `ladder.sizes`, or under a recipe the
  recipe's shape of each width (recipe.widths, else the d_model of each of `sizes`)."""
  lad = config.ladder
  if not recipe_on(lad):
    return tuple(tuple(s) for s in lad.sizes)
  widths = tuple(lad.recipe.widths) or tuple(s[1] for s in lad.sizes)
  if not widths:
    raise ValueError("ladder.recipe.widths is empty and so is ladder.sizes: list the widths")
  out = []
  for width in widths:
    layers, heads = recipe_shape(lad.recipe, width)
    out.append((f"d{int(width)}l{layers}", int(width), layers, heads))
  return tuple(out)


def check_recipe(recipe) -> None:
  """A recipe field that would silently train something else is an error naming it."""
  par = recipe.parametrization
  if par not in RECIPE_PARAMETRIZATIONS:
    raise ValueError(
        f"ladder.recipe.parametrization={par!r}: use sp, mup or completep ('' for no recipe)"
    )
  if not int(recipe.base_width) > 0:
    raise ValueError(
        f"ladder.recipe.base_width={recipe.base_width}: the recipe ({par}) scales from the "
        "width base_lr and eps were tuned at; set --config.ladder.recipe.base_width=<its d_model>"
    )
  for field in ("base_lr", "eps"):
    if not float(recipe[field]) > 0:
      raise ValueError(f"ladder.recipe.{field}={recipe[field]} must be > 0")
  if not 0.0 <= float(recipe.b2) < 1.0:
    raise ValueError(f"ladder.recipe.b2={recipe.b2} is not a moment decay in [0, 1)")
  if not 0.0 <= float(recipe.warmup_fraction) < 1.0:
    raise ValueError(f"ladder.recipe.warmup_fraction={recipe.warmup_fraction} must be in [0, 1)")

  if recipe.cooldown not in spec_lib.COOLDOWNS:
    raise ValueError(f"ladder.recipe.cooldown={recipe.cooldown!r}: use one of {spec_lib.COOLDOWNS}")


def recipe_warmup(recipe, steps: int) -> int:
  """max(1, round(warmup_fraction x steps))."""
  return max(1, _round_half_up(float(recipe.warmup_fraction) * int(steps)))


def recipe_hparams(recipe, width: int, steps: int) -> dict:
  """What the recipe trains a `width`-wide run of `steps` steps with (config field values).

  mup/completep: train.learning_rate / eps / b2 are the tuned base's, and model.base_width
  (base_depth: the base width's depth; base_head_dim: the fixed head_dim) makes
  model/parametrization.py scale each parameter group from them. sp has one group: its
  learning rate is base_lr * (base_width / width)^sp_lr_exponent; eps and b2 are kept.
  beta2 is width-independent under all three (muP's Adam rules leave the betas alone).
  """
  par = recipe.parametrization
  base_width = int(recipe.base_width)
  lr = float(recipe.base_lr)
  if par == "sp":
    lr *= (base_width / float(width)) ** float(recipe.sp_lr_exponent)
  return dict(
      parametrization=par,
      base_width=0 if par == "sp" else base_width,
      base_depth=recipe_shape(recipe, base_width)[0] if par == "completep" else 0,
      base_head_dim=0 if par == "sp" else int(recipe.head_dim),
      learning_rate=lr,
      eps=float(recipe.eps),
      b2=float(recipe.b2),
      warmup_steps=recipe_warmup(recipe, steps),
      cooldown=recipe.cooldown,
  )


def recipe_config(config):
  """The config every point starts from: under a recipe, WSD with its cooldown for every run
  and, for the wsd scheme, the warmup of the smallest budget (its branches share it)."""
  if not recipe_on(config.ladder):
    return config
  check_recipe(config.ladder.recipe)
  c = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  recipe = c.ladder.recipe
  c.train.schedule = "wsd"
  c.train.cooldown = c.ladder.cooldown = recipe.cooldown
  c.train.decay_fraction = float(c.ladder.decay_fraction)
  if c.ladder.scheme == "wsd":
    c.train.warmup_steps = recipe_warmup(recipe, min(int(s) for s in c.ladder.steps))
  return c


def _apply_recipe(c, lad, scheme: str) -> None:
  hp = recipe_hparams(lad.recipe, int(c.model.d_model), int(c.train.steps))
  for field in ("parametrization", "base_width", "base_depth", "base_head_dim"):
    c.model[field] = hp[field]
  c.train.learning_rate, c.train.eps, c.train.b2 = hp["learning_rate"], hp["eps"], hp["b2"]
  if scheme != "wsd":  # wsd: recipe_config set the warmup its branches share
    c.train.warmup_steps = hp["warmup_steps"]


def finish_point(point: Point, config) -> Point:
  """A point's config with the recipe's hyperparameters for its width and steps, then (an
  lr_sweep point) its grid learning rate and parametrization."""
  lad = config.ladder
  c = point.config
  if recipe_on(lad):
    _apply_recipe(c, lad, lad.scheme)
  if "lr_exponent" in point.meta:
    _apply_sweep(c, point.meta, config)
  return point


# ----------------------------------------------------------------------------- lr_sweep


def lr_sweep_name(size_name: str, parametrization: str, steps: int, lr_exponent: int) -> str:
  return f"{size_name}_{parametrization}_s{int(steps)}_lr2^{int(lr_exponent)}"


def sweep_parametrizations(config) -> tuple[str, ...]:
  """ladder.parametrizations, else the recipe's, else the model's."""
  lad = config.ladder
  if lad.get("parametrizations"):
    return tuple(lad.parametrizations)
  if recipe_on(lad):
    return (lad.recipe.parametrization,)
  return (config.model.parametrization,)


def lr_sweep_points(config, size) -> list[Point]:
  """One size's lr_sweep points: every parametrization x budget x 2^k learning rate."""
  lad = config.ladder
  if not lad.get("lr_exponents"):
    raise ValueError("ladder.lr_exponents is empty: the lr_sweep scheme needs a 2^k grid")
  points = []
  for par in sweep_parametrizations(config):
    for steps in lad.steps:
      for k in lad.lr_exponents:
        name = lr_sweep_name(size[0], par, steps, k)
        meta = dict(parametrization=par, lr_exponent=int(k))
        points.append(_point(config, size, name, steps, meta=meta))
  return points


def sweep_base(config) -> tuple[int, int, int]:
  """(base_width, base_depth, base_head_dim) of an lr_sweep's mup/completep points: the
  model's when set, else the recipe's, else the smallest size (its head count kept)."""
  m, lad = config.model, config.ladder
  if recipe_on(lad):
    width = int(lad.recipe.base_width)
    depth, head_dim = recipe_shape(lad.recipe, width)[0], int(lad.recipe.head_dim)
  else:
    smallest = min(ladder_sizes(config), key=lambda s: s[1])
    width, depth, head_dim = int(smallest[1]), int(smallest[2]), 0
  return (
      int(m.base_width) or width,
      int(m.base_depth) or depth,
      int(m.get("base_head_dim", 0)) or head_dim,
  )


def _apply_sweep(c, meta: dict, config) -> None:
  par = meta["parametrization"]
  base_width, base_depth, base_head_dim = sweep_base(config)
  c.model.parametrization = par
  c.model.base_width = 0 if par == "sp" else base_width
  c.model.base_depth = base_depth if par == "completep" else 0
  c.model.base_head_dim = 0 if par == "sp" else base_head_dim
  c.train.learning_rate = 2.0 ** int(meta["lr_exponent"])


def diverged_result(point: Point, error: Exception, log=print) -> dict:
  """An lr_sweep point whose loss went non-finite: a result (NaN losses), not a failure."""
  log(f"[ladder] {point.name} diverged: {str(error).splitlines()[0]}")
  nan = math.nan
  return dict(step=int(point.config.train.steps), val_loss=nan, train_loss=nan, val_bpb=nan)


# ----------------------------------------------------------------------------- seeds, checks


def replicate_seeds(points: list[Point], config) -> list[Point]:
  """Every point trained with ladder.seeds seeds (config.seed + i). Seed i > 0 is named
  <name>_seed<seed> (so raising ladder.seeds keeps the rows already trained); a cooldown
  branches from the constant run of its own seed; meta["point"] is the shared name."""
  n = int(config.ladder.get("seeds", 1))
  if n < 1:
    raise ValueError(f"ladder.seeds={n}: train each point with at least 1 seed")
  base = int(config.seed)
  out = []
  for i in range(n):
    suffix = f"_seed{base + i}" if i else ""
    for p in points:
      c = ml_collections.ConfigDict(copy.deepcopy(p.config.to_dict()))
      c.seed, c.name = base + i, p.name + suffix
      branch = p.branch_from + suffix if p.branch_from else None
      meta = dict(p.meta, point=p.name)
      out.append(dataclasses.replace(p, name=c.name, config=c, branch_from=branch, meta=meta))
  return out


def check_points(points: list[Point]) -> None:
  """Each point's model and optimizer settings are valid before anything trains (a ladder
  should not fail at its fifth point on a field the first could have named)."""
  for p in points:
    spec_lib.resolve(p.config)


def hyperparameter_columns(point: Point) -> dict:
  """The results.csv columns that say what a point was trained with. lr_hidden / eps_hidden
  are the attention and MLP matrices' effective values (the base's times the group's muP /
  CompleteP multipliers; equal to lr / eps under sp)."""

  c = point.config
  mcfg = ModelConfig.from_config(c.model)
  hidden = parametrization.group_rules(mcfg, muon=c.train.optimizer == "muon")["hidden"]
  wsd = c.train.schedule == "wsd"
  return dict(
      point=point.meta.get("point", point.name),
      parametrization=mcfg.parametrization,
      num_heads=mcfg.num_heads,
      lr=float(c.train.learning_rate),
      lr_exponent=point.meta.get("lr_exponent", ""),
      lr_hidden=float(c.train.learning_rate) * hidden.lr,
      eps=float(c.train.eps),
      eps_hidden=float(c.train.eps) * hidden.eps,
      b2=spec_lib.betas(c.train)[1],
      warmup_steps=int(c.train.warmup_steps),
      schedule=c.train.schedule,
      cooldown=c.train.cooldown if wsd else "",
  )


def epoch_points(config, size) -> list[Point]:
  """The `epochs` scheme's points of one size: e * ladder.unique_tokens tokens each (rounded
  to whole steps; results.csv records the exact epochs = tokens / unique_tokens), and for
  e > 1 a twin on fresh data (the whole split)."""
  lad = config.ladder
  unique = int(lad.unique_tokens)
  tokens_per_step = int(config.train.batch_size) * int(config.data.seq_len)
  points = []
  for e in lad.epochs:
    steps = int(round(float(e) * unique / tokens_per_step))
    if steps < 1:
      raise ValueError(
          f"ladder.epochs entry {e} of ladder.unique_tokens={unique} is less than one step "
          f"of {tokens_per_step} tokens; use larger epochs or more unique tokens"
      )
    for fresh in (False, True) if float(e) > 1 else (False,):
      point = _point(config, size, f"{size[0]}_e{float(e):g}" + ("_fresh" if fresh else ""), steps)
      point.config.data.max_unique_tokens = 0 if fresh else unique
      points.append(point)
  return points


def expand(config) -> list[Point]:
  """The ladder's points in dependency order (a constant run before its cooldowns)."""
  config = recipe_config(config)
  lad = config.ladder
  scheme = lad.scheme
  points: list[Point] = []
  for size in ladder_sizes(config):
    size_name = size[0]
    if scheme == "grid":
      points += [_point(config, size, f"{size_name}_s{steps}", steps) for steps in lad.steps]
    elif scheme == "isoflop":
      probe = _train_config(config, size, size_name)
      tokens_per_step = int(probe.train.batch_size) * int(probe.data.seq_len)
      fpt = flops_per_token(probe)
      for budget in lad.flop_budgets:
        steps = int(round(float(budget) / (fpt * tokens_per_step)))
        if not lad.min_steps <= steps <= lad.max_steps:
          continue
        name = f"{size_name}_C{float(budget):.0e}"
        points.append(_point(config, size, name, steps, budget=float(budget)))
    elif scheme == "wsd":
      starts = sorted({branch_step(int(s), lad.decay_fraction) for s in lad.steps})
      if starts[0] <= int(config.train.warmup_steps):
        raise ValueError(
            f"ladder.steps={tuple(lad.steps)}: the smallest cooldown starts at step "
            f"{starts[0]}, inside the {config.train.warmup_steps}-step warmup; use "
            "larger budgets or a shorter train.warmup_steps"
        )
      name = f"{size_name}_constant"
      const = _point(config, size, name, starts[-1], kind="constant", needs_steps=tuple(starts))
      c = const.config
      c.train.schedule = "constant"
      c.checkpoint.every = c.checkpoint.keep_every = math.gcd(*starts)  # keep every branch point
      c.checkpoint.keep = 2
      c.eval.batches = 0  # its rows come from the cooldowns
      points.append(const)
      for steps in lad.steps:
        cool = _point(config, size, f"{size_name}_s{steps}", steps, kind="cooldown")
        cool.branch_from, cool.branch_step = const.name, branch_step(int(steps), lad.decay_fraction)
        c = cool.config
        c.train.schedule = "wsd"
        c.train.decay_fraction = float(lad.decay_fraction)
        c.train.cooldown = lad.cooldown
        points.append(cool)
    elif scheme == "lr_sweep":
      points.extend(lr_sweep_points(config, size))
    elif scheme == "epochs":
      points.extend(epoch_points(config, size))
    else:
      raise ValueError(f"ladder.scheme={scheme!r}: use grid, isoflop, wsd, lr_sweep or epochs")
  points = replicate_seeds([finish_point(p, config) for p in points], config)
  points = _with_tasks(points, tuple(lad.get("tasks", ())), int(lad.get("task_limit", 0)))
  check_points(points)
  if not any(p.record for p in points):
    raise ValueError(
        "the ladder has no points: check ladder.steps / ladder.flop_budgets and "
        "ladder.min_steps / max_steps"
    )
  return points


def _with_tasks(points: list[Point], tasks: tuple, limit: int) -> list[Point]:
  """The recorded points with the zero-shot tasks they are scored on; the task files are read
  here, so a bad spec or file stops the ladder before any training."""
  from eval import zeroshot  # noqa: PLC0415 (jax after XLA_FLAGS)

  for spec in tasks:
    zeroshot.load_task(spec, limit)
  return [dataclasses.replace(p, tasks=tasks, task_limit=limit) if p.record else p for p in points]


# ----------------------------------------------------------------------------- results


def finished_names(workdir: pathlib.Path) -> set[str]:
  """Names in DIR/results.csv (any header that has a `name` column, old or new)."""
  path = paths.path(workdir) / "results.csv"
  if not path.exists():
    return set()
  with path.open("r") as f:
    reader = csv.DictReader(f)
    if reader.fieldnames and "name" not in reader.fieldnames:
      raise ValueError(
          f"{path} has no `name` column (header {reader.fieldnames}): it is not a "
          "ladder's results file; use another --workdir or move the file away"
      )
    return {row["name"] for row in reader}


def append_row(workdir: pathlib.Path, row: dict) -> None:
  """Append one row atomically (the whole file is rewritten to a temporary name and renamed,
  so a reader or a kill never sees half a row), under an exclusive lock for the local
  executor's parallel workers. A row with columns the file lacks (a newer RESULT_COLUMNS, the
  `task/metric` columns of ladder.tasks) extends the header at the end; older rows keep their
  values and leave the new columns empty."""
  path = paths.path(workdir) / "results.csv"
  with paths.locked(path):
    text = path.read_text() if path.exists() else ""
    header = next(csv.reader(io.StringIO(text)), None) if text.strip() else None
    if text and not text.endswith("\n"):
      text += "\n"
    columns = list(header or RESULT_COLUMNS)
    columns += [k for k in row if k not in columns]
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    if header != columns:
      w.writeheader()
      w.writerows(csv.DictReader(io.StringIO(text)) if header else [])
      text = ""
    w.writerow(row)
    paths.write_text_atomic(path, text + out.getvalue())


def _json_lines(path: str):
  """The records of a JSON-lines file, skipping a line cut short (a worker killed while
  writing it: the resumed run appends after it)."""
  with paths.path(path).open("r") as f:
    for line in f:
      try:
        yield json.loads(line)
      except ValueError:
        continue


def _last_train_loss(metrics_path: str, fallback: float) -> float:
  """Mean train loss over the last logging window (less noisy than the last step's)."""
  try:
    train = [r for r in _json_lines(metrics_path) if r.get("kind") == "train"]
    return float(train[-1].get("loss_mean", fallback) if train else fallback)
  except (OSError, TypeError):
    return float(fallback)


def unique_tokens(config) -> int | str:
  """Tokens of the train split the point could see: data.max_unique_tokens when set (a
  data-constrained point), else the data manifest's splits.train.tokens, or "" when the data
  is not prepared."""
  from train.data import prepare as prepare_lib  # noqa: PLC0415 (jax via grain, after XLA_FLAGS)

  if config.data.get("max_unique_tokens", 0):
    return int(config.data.max_unique_tokens)
  if not config.data.prepared_dir:
    return ""
  manifest = prepare_lib.read_manifest(config.data.prepared_dir) or {}
  return manifest.get("splits", {}).get("train", {}).get("tokens", "")


def _val_loss_se(out: dict) -> float | str:
  """The standard error of the combined validation loss, when the evaluator reports one."""
  se = (out.get("val") or {}).get("all", {}).get("loss_se")
  return "" if se is None else float(se)


def result_row(point: Point, out: dict, wall_s: float, scheme: str) -> dict:
  """The results.csv row of a finished point.

  `flops` are counted FLOPs (model.summary: matmuls and attention, forward + backward);
  `flops_6nd` = 6 * N * D with N = params_active (embeddings included; = params_total unless
  the model is an MoE, whose tokens use k of E experts) and D = tokens, the
  convention of the Chinchilla-style allocation formulas, so fits can use either.
  `params_active` is what one token uses (= params_total for dense models; MoE: the k routed
  experts of E), so `eval.fit --n-col params_active|params_total` fits either N.
  """
  from model import summary  # noqa: PLC0415 (jax after XLA_FLAGS)

  c = point.config
  counts = summary.param_counts(c.model)
  tokens = int(c.train.steps) * int(c.train.batch_size) * int(c.data.seq_len)
  fpt = flops_per_token(c)
  unique = unique_tokens(c)
  train_loss = _last_train_loss(out.get("metrics_jsonl", ""), out.get("train_loss", math.nan))
  return dict(
      name=point.name,
      size=point.size,
      scheme=scheme,
      params_total=counts["total"],
      params_non_embedding=counts["non_embedding"],
      d_model=c.model.d_model,
      num_layers=c.model.num_layers,
      steps=int(c.train.steps),
      batch_size=int(c.train.batch_size),
      seq_len=int(c.data.seq_len),
      tokens=tokens,
      flops_per_token=fpt,
      flops=fpt * tokens,
      budget="" if math.isnan(point.budget) else point.budget,
      train_loss=train_loss,
      val_loss=out.get("val_loss", math.nan),
      val_bpb=out.get("val_bpb", math.nan),
      wall_s=round(wall_s, 2),
      val_loss_se=_val_loss_se(out),
      seed=int(c.seed),
      unique_tokens=unique,
      flops_6nd=6.0 * counts["active"] * tokens,
      **_cost_columns(out),
      **hyperparameter_columns(point),
      params_active=counts["active"],
      epochs=tokens / unique if unique else "",
  )


def _cost_columns(out: dict) -> dict:
  """chip_hours, kwh, usd, kgco2e of a finished run's cost estimate ("" where unknown)."""
  cost = out.get("cost") or {}
  keys = ("chip_hours", "kwh", "usd", "kgco2e")
  return {k: "" if cost.get(k) is None else cost[k] for k in keys}


# ----------------------------------------------------------------------------- running


def _checkpoint_steps(workdir: pathlib.Path) -> set[int]:
  d = workdir / "checkpoints"
  if not d.is_dir():
    return set()
  # Orbax writes into a temporary name and renames on commit: a bare number is complete.
  return {int(p.name) for p in d.iterdir() if p.name.isdigit()}


def _branch(point: Point, src: pathlib.Path, dst: pathlib.Path) -> None:
  """Seed a cooldown's workdir with the constant run's checkpoint at the branch step, its
  stored config replaced by the cooldown's (same model/data/optimizer; the schedule differs
  only after the branch step, which is what makes the resume exact)."""
  from train import checkpoint as ckpt_lib  # noqa: PLC0415 (jax after XLA_FLAGS)

  step_dir = src / "checkpoints" / str(point.branch_step)
  if not step_dir.is_dir():
    raise FileNotFoundError(
        f"{step_dir} missing: the constant run {point.branch_from} did not "
        "keep its checkpoint at the branch step; delete its workdir and rerun"
    )
  target = dst / "checkpoints" / str(point.branch_step)
  tmp = target.with_name(target.name + ".branching")
  if tmp.exists():
    tmp.rmtree()
  paths.copy_tree(step_dir, tmp)
  (tmp / "config" / "metadata").write_text(json.dumps(ckpt_lib.config_to_json(point.config)))
  tmp.rename(target)


def _constant_complete(point: Point, workdir: pathlib.Path) -> bool:
  """A constant run that already kept every checkpoint its cooldowns branch from."""
  have = _checkpoint_steps(workdir / "points" / point.name)
  return point.kind == "constant" and all(s in have for s in point.needs_steps)


def _record_attempt(pdir: pathlib.Path, event: str, **fields) -> None:
  """One line per start/end of a point in DIR/points/<name>/attempts.jsonl: which process
  on which host trained it, how many times it was started, on how many devices."""
  pdir.mkdir(parents=True, exist_ok=True)
  rec = dict(event=event, pid=os.getpid(), host=socket.gethostname(), time=time.time(), **fields)
  paths.append_text(pdir / "attempts.jsonl", json.dumps(rec) + "\n")


def run_point(
    point: Point, workdir: pathlib.Path, scheme: str, log=print, hooks: Callable | None = None
) -> dict | None:
  """Train (or resume) one point; returns its results row (None for constant runs).
  `hooks(point)` may return trainer.Hooks for this point (fault-injection tests)."""
  from train import trainer  # noqa: PLC0415 (jax after XLA_FLAGS)

  pdir = workdir / "points" / point.name
  if _constant_complete(point, workdir):
    return None
  if point.kind == "cooldown" and not _checkpoint_steps(pdir):
    _branch(point, workdir / "points" / point.branch_from, pdir)
  t0 = time.time()
  log(f"[ladder] {point.name}: {point.kind}, {int(point.config.train.steps)} steps")
  _record_attempt(pdir, "start")
  kwargs = {"hooks": hooks(point)} if hooks else {}
  try:
    out = trainer.train_and_evaluate(point.config, os.fspath(pdir), **kwargs)
  except trainer.NonFiniteError as e:
    if scheme != "lr_sweep":
      raise
    out = diverged_result(point, e, log)
  wall = time.time() - t0
  if out.get("preempted"):
    raise KeyboardInterrupt(f"{point.name} was stopped at step {out['step']}; rerun to resume")
  import jax  # noqa: PLC0415 (jax after XLA_FLAGS)

  _record_attempt(
      pdir,
      "end",
      step=int(out["step"]),
      devices=jax.device_count(),
      platform=jax.devices()[0].platform,
  )
  if not point.record:
    return None
  return dict(result_row(point, out, wall, scheme), **task_columns(point, pdir))


def task_columns(point: Point, pdir: pathlib.Path) -> dict:
  """`task/metric` columns of the point's zero-shot tasks (eval.zeroshot.ladder_columns),
  scored with the point's final parameters."""
  if not point.tasks:
    return {}
  from eval import zeroshot  # noqa: PLC0415 (jax after XLA_FLAGS)
  from train import run as run_lib  # noqa: PLC0415 (jax after XLA_FLAGS)

  run = run_lib.load_run(os.fspath(pdir))
  with run.context():
    return zeroshot.ladder_columns(run, point.tasks, limit=point.task_limit)


def prepare_data(config, workdir: pathlib.Path) -> None:
  """Sets config.data.prepared_dir, unless given, to one prepared copy of the corpus for
  every point (DIR/data/prepared-*)."""
  from train.data import pipeline  # noqa: PLC0415 (jax after XLA_FLAGS)

  if not config.data.prepared_dir:
    with config.unlocked():
      config.data.prepared_dir = os.fspath(
          pipeline.default_prepared_dir(config.data, workdir / "data")
      )


def prepare_corpus(config) -> dict:
  """Prepare config.data into config.data.prepared_dir once, before points run concurrently
  (the same call the trainer makes; a no-op when the manifest is already there)."""
  from train.data import prepare as prepare_lib  # noqa: PLC0415 (jax after XLA_FLAGS)

  d = config.data
  return prepare_lib.prepare(
      d.source,
      d.tokenizer,
      d.prepared_dir,
      val_fraction=float(d.val_fraction),
      num_workers=(d.get("num_workers") or None),
      progress=False,
  )


def unfinished(points: list[Point], workdir: pathlib.Path) -> list[Point]:
  """The points still to run: not in results.csv, and constant runs only while a cooldown
  still needs them (and they have not kept every branch checkpoint yet)."""
  done = finished_names(workdir)
  todo = []
  for p in points:
    if p.record and p.name in done:
      continue
    if p.kind == "constant" and (
        _constant_complete(p, workdir)
        or all(q.name in done for q in points if q.branch_from == p.name)
    ):
      continue
    todo.append(p)
  return todo


def _unfinished_points(config, workdir) -> tuple[pathlib.Path, list[Point]]:
  """(DIR, created if missing; the points still to run), the corpus's copy set in `config`."""
  workdir = paths.path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  prepare_data(config, workdir)
  return workdir, unfinished(expand(config), workdir)


def _cost(point: Point) -> float:
  """FLOPs a point still has to train (a cooldown starts at its branch step)."""
  c = point.config
  steps = int(c.train.steps) - (point.branch_step if point.kind == "cooldown" else 0)
  return flops_per_token(c) * steps * int(c.train.batch_size) * int(c.data.seq_len)


class Progress:
  """A line per finished point with an ETA: the time so far scaled by the FLOPs still to
  train (constant runs cost several cooldowns, so counting points would mislead)."""

  def __init__(self, points: list[Point], log=print):
    self.total = sum(_cost(p) for p in points) or 1.0
    self.count, self.done, self.flops, self.t0, self.log = len(points), 0, 0.0, time.time(), log

  def finished(self, point: Point, row: dict | None) -> None:
    self.done += 1
    self.flops += _cost(point)
    elapsed = time.time() - self.t0
    eta = elapsed * (self.total - self.flops) / self.flops if self.flops else math.nan
    loss = f", val_loss {float(row['val_loss']):.4f}" if row else ""
    self.log(
        f"[ladder] {self.done}/{self.count} done: {point.name} ({point.kind}{loss}); "
        f"elapsed {_hms(elapsed)}, ETA {_hms(eta)}"
    )


def _hms(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  s = int(round(seconds))
  return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def run_ladder(
    config, workdir, *, worker: tuple[int, int] = (0, 1), log=print, hooks: Callable | None = None
) -> list[dict]:
  """Run every unfinished point (those of this worker's sizes) in this process; returns the
  new rows."""
  workdir, todo = _unfinished_points(config, workdir)
  sizes = [s[0] for s in ladder_sizes(config)]
  mine = {s for i, s in enumerate(sizes) if i % worker[1] == worker[0]}
  todo = [p for p in todo if p.size in mine]
  progress = Progress(todo, log)
  rows = []
  for p in todo:
    row = run_point(p, workdir, config.ladder.scheme, log, hooks)
    if row is not None:
      append_row(workdir, row)
      rows.append(row)
    progress.finished(p, row)
  return rows


# ----------------------------------------------------------------------------- Ray executor
#
# The driver (this process) expands the ladder, prepares the corpus once, and submits one Ray
# task per unfinished point; a cooldown task takes its constant run's result as an argument,
# so Ray starts it only after that run finished. Each task runs in a fresh worker process
# (max_calls=1: the CPU device split is set before jax is imported, and accelerator memory is
# released between points) and returns its row; only the driver writes results.csv. A task
# whose worker dies is retried (ladder.retries) and resumes from its point's checkpoints.

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


class PointsFailed(RuntimeError):
  """Some points raised (or their workers died more often than ladder.retries)."""


def _import_ray():
  try:
    import ray  # noqa: PLC0415 (`ray` extra)
  except ImportError as e:
    raise ImportError("--executor ray needs Ray: pip install -e '.[ray]'") from e
  return ray


def ray_options(resources) -> dict:
  """Ray task options for ladder.resources: CPU and GPU counts become num_cpus / num_gpus,
  anything else (TPU, an accelerator type, a custom node label) a custom resource."""
  req = dict(resources.to_dict() if hasattr(resources, "to_dict") else resources)
  req = {str(k): float(v) for k, v in req.items()}
  bad = {k: v for k, v in req.items() if not v >= 0}
  if bad or not any(req.values()):
    raise ValueError(
        f"ladder.resources={req}: ask for a positive amount of at least one "
        "resource per point, e.g. {'CPU': 1}, {'GPU': 1} or {'TPU': 4}"
    )
  opts = {"num_cpus": req.pop("CPU", 0.0), "num_gpus": req.pop("GPU", 0.0)}
  if req:
    opts["resources"] = req
  return opts


def _request(opts: dict) -> dict:
  """ray_options back as one {resource: amount} dict (what a node must offer)."""
  need = {"CPU": opts["num_cpus"], "GPU": opts["num_gpus"], **opts.get("resources", {})}
  return {k: v for k, v in need.items() if v}


def check_address(address: str, timeout_s: float = 5.0) -> None:
  """Fail fast on an address nothing listens on (ray.init would retry for minutes)."""
  if address in ("", "auto", "local"):
    return
  host, _, port = address.split("://", 1)[-1].rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(
        f"--ray-address={address!r}: use HOST:PORT (the head's GCS port, 6379 by "
        "default), ray://HOST:10001, or auto"
    )
  try:
    socket.create_connection((host, int(port)), timeout=timeout_s).close()
  except OSError as e:
    raise ConnectionError(
        f"--ray-address={address}: no Ray head answers there "
        f"({e.strerror or e}); start one with `ray start --head --port={port}` "
        f"on {host}, or fix the address"
    ) from None


def _offers(node: dict) -> dict:
  return {
      k: v
      for k, v in node["Resources"].items()
      if not k.startswith("node:") and k not in ("memory", "object_store_memory")
  }


def wait_for_resources(ray, opts: dict, timeout_s: float) -> list[dict]:
  """The alive nodes that can run a point; waits up to timeout_s for one to join (an
  autoscaler may be adding it), then raises naming what is missing instead of hanging."""
  need = _request(opts)
  deadline = time.time() + timeout_s
  while True:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    fits = [n for n in nodes if all(n["Resources"].get(k, 0) >= v for k, v in need.items())]
    if fits:
      return fits
    if time.time() >= deadline:
      missing = {
          k: v
          for k, v in need.items()
          if max((n["Resources"].get(k, 0) for n in nodes), default=0) < v
      }
      raise ValueError(
          f"no node of the Ray cluster can run a point: ladder.resources asks for {need} per "
          f"point and no node has {missing or need} (nodes offer: "
          f"{[_offers(n) for n in nodes]}); waited {timeout_s:g}s "
          "(ladder.schedule_timeout_s) for one to join: lower ladder.resources or add such nodes"
      )
    time.sleep(min(2.0, max(deadline - time.time(), 0.1)))


def _probe_workdir(marker: str, token: str) -> tuple[str, bool]:
  """Runs on a node: (hostname, whether it reads the driver's marker file)."""
  try:
    seen = paths.path(marker).read_text() == token
  except OSError:
    seen = False
  return socket.gethostname(), seen


def probe_workdir(
    ray, workdir: pathlib.Path, nodes: list[dict], token: str, timeout_s: float
) -> None:
  """Raises unless every node in `nodes` reads `token` in workdir/.ladder-probe."""
  from ray.util.scheduling_strategies import (  # noqa: PLC0415 (`ray` extra)
      NodeAffinitySchedulingStrategy,
  )

  probe = ray.remote(_probe_workdir)
  refs = [
      probe.options(
          num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
      ).remote(os.fspath(workdir / ".ladder-probe"), token)
      for n in nodes
  ]
  try:
    seen = ray.get(refs, timeout=timeout_s)
  except ray.exceptions.GetTimeoutError:
    raise TimeoutError(
        f"the workdir check on the Ray nodes did not answer in {timeout_s:g}s "
        "(ladder.schedule_timeout_s)"
    ) from None
  blind = [f"{n['NodeManagerAddress']} ({host})" for n, (host, ok) in zip(nodes, seen) if not ok]
  if blind:
    raise ValueError(
        f"--workdir {workdir} is not visible from the Ray node(s) {', '.join(blind)}:"
        " put it on storage every node mounts at the same path (NFS, Filestore, "
        "GCS FUSE; see docs/launch.md)"
    )


def check_workdir(ray, workdir: pathlib.Path, nodes: list[dict], timeout_s: float) -> None:
  """Writes a random token next to results.csv and has every node that may train read it."""
  token = uuid.uuid4().hex
  (workdir / ".ladder-probe").write_text(token)
  probe_workdir(ray, workdir, nodes, token, timeout_s)


def _train_point_task(point: Point, workdir: str, scheme: str, hooks, *after) -> dict | None:
  """One point on a Ray worker, set up as `python -m train` sets up its process. `after`
  holds the results of the tasks it depends on (Ray resolves them before starting it)."""
  del after
  cpu_devices.configure(point.config)  # before jax is imported in this fresh process
  _quiet_and_cached()
  return run_point(point, paths.path(workdir), scheme, hooks=hooks)


def _runtime_env() -> dict:
  """Workers import this checkout (the same path on every node, or the package installed)."""
  path = os.pathsep.join(p for p in (os.fspath(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
  return {"env_vars": {"PYTHONPATH": path}}


def _failure(ray, e: Exception) -> str:
  """One line for a failed point: the exception its task raised, or Ray's own reason (a
  worker that died more often than ladder.retries, a failed dependency)."""
  cause = getattr(e, "cause", None)
  if isinstance(e, ray.exceptions.RayTaskError) and isinstance(cause, Exception):
    return f"{type(cause).__name__}: {cli.message(cause)}"
  return str(e).strip().splitlines()[0]


def _submit(ray, todo: list[Point], workdir: pathlib.Path, config, opts: dict, hooks) -> dict:
  """{ObjectRef: point}, cooldowns depending on their constant run's task."""
  task = ray.remote(max_calls=1, max_retries=int(config.ladder.retries), **opts)(_train_point_task)
  refs, pending = {}, {}
  for p in todo:
    after = [refs[p.branch_from]] if p.branch_from in refs else []
    refs[p.name] = task.remote(p, os.fspath(workdir), config.ladder.scheme, hooks, *after)
    pending[refs[p.name]] = p
  return pending


def _collect(ray, pending: dict, workdir: pathlib.Path, log) -> list[dict]:
  """Rows in finishing order, each appended to results.csv as it arrives."""
  progress = Progress(list(pending.values()), log)
  rows, failed = [], []
  while pending:
    (ref,), _ = ray.wait(list(pending), num_returns=1)
    point = pending.pop(ref)
    try:
      row = ray.get(ref)
    except ray.exceptions.RayError as e:
      failed.append(f"{point.name}: {_failure(ray, e)}")
      log(f"[ladder] {point.name} failed: {failed[-1]}")
      continue
    if row is not None:
      append_row(workdir, row)
      rows.append(row)
    progress.finished(point, row)
  if failed:
    raise PointsFailed(
        f"{len(failed)} point(s) failed ({'; '.join(failed)}); rerun the same "
        "command to retry them (finished points are skipped)"
    )
  return rows


def run_ladder_ray(
    config, workdir, *, address: str = "", log=print, hooks: Callable | None = None
) -> list[dict]:
  """Run every unfinished point as a Ray task on the cluster at `address` ("" starts a
  one-machine Ray; "auto" joins the cluster this machine belongs to); returns the new rows."""
  ray = _import_ray()
  opts = ray_options(config.ladder.resources)
  timeout_s = float(config.ladder.schedule_timeout_s)
  check_address(address)
  workdir, todo = _unfinished_points(config, workdir)
  if not todo:
    return []
  owner = not ray.is_initialized()
  if owner:
    ray.init(address=address or None, runtime_env=_runtime_env(), log_to_driver=True)
  try:
    check_workdir(ray, workdir, wait_for_resources(ray, opts, timeout_s), timeout_s)
    prepare_corpus(config)  # once, here, before the points race to do it
    return _collect(ray, _submit(ray, todo, workdir, config, opts, hooks), workdir, log)
  finally:
    if owner:
      ray.shutdown()


# ----------------------------------------------------------------------------- predict, check
#
# `--predict-budget C` fits approach 3 to the finished rungs, predicts the compute-optimal N, D
# and loss at C, trains the ladder-shaped model nearest that N for C FLOPs, and records
# predicted vs achieved in DIR/prediction.json (eval.report's "Prediction check"). The point
# trains in DIR/points/predict_C<C> and is not a row of results.csv, so later fits of the
# ladder never see it.

PREDICTION_FILE = "prediction.json"


def shape_family(sizes) -> Callable[[int], tuple]:
  """The ladder's shape rule as a function of d_model: depth log-linear in width (least
  squares over the ladder's sizes, at least 1 layer) and the ladder's median head dimension."""

  width = np.array([float(s[1]) for s in sizes])
  depth = np.array([float(s[2]) for s in sizes])
  head_dim = float(np.median([s[1] / s[3] for s in sizes]))
  slope, icpt = np.polyfit(np.log(width), depth, 1) if len(set(width)) > 1 else (0.0, depth[0])

  def shape(d_model: int) -> tuple:
    layers = max(1, int(round(icpt + slope * math.log(d_model))))
    heads = max(1, int(round(d_model / head_dim)))
    while d_model % heads:
      heads -= 1
    return (f"d{d_model}l{layers}", d_model, layers, heads)

  return shape


def nearest_shape(config, n_target: float, n_col: str = "params_total") -> tuple:
  """The shape of `shape_family` (d_model a multiple of 8) whose parameter count (n_col's
  convention) is nearest n_target in log; the count grows with d_model, so a bisection."""
  from model import summary  # noqa: PLC0415 (jax after XLA_FLAGS)

  family = shape_family(config.ladder.sizes)
  key = dict(params_total="total", params_non_embedding="non_embedding")[n_col]
  widths = range(8, 8193, 8)
  count = lambda d: summary.param_counts(_train_config(config, family(d), "probe").model)[key]
  i = bisect.bisect_left(widths, n_target, key=count)
  near = [widths[j] for j in (i - 1, i) if 0 <= j < len(widths)]
  return family(min(near, key=lambda d: abs(math.log(count(d) / n_target))))


def predict_optimum(
    workdir: pathlib.Path, budget: float, *, n_boot: int = 100, seed: int = 0, grid: str = "full"
):
  """Approach 3 on DIR/results.csv (params_total, tokens, counted flops, val_loss): the law,
  its bootstrap rows, the log residuals, the FLOP convention k = C/(N D) and the predicted
  compute-optimal N, D, loss (with intervals) at `budget`."""
  from eval import report  # noqa: PLC0415 (jax after XLA_FLAGS)

  df = report.read_results(workdir, "params_total", "val_loss", "flops")
  N, D, C, L = (df[c].to_numpy(float) for c in ("params_total", "tokens", "flops", "val_loss"))
  if budget <= C.max():
    raise ValueError(
        f"--predict-budget={budget:g} is not above the largest rung ({C.max():.3g} FLOPs): a "
        "prediction check extrapolates; use 4-10x the largest rung"
    )
  if len(L) < 8 or len(np.unique(N)) < 3 or len(np.unique(D)) < 2:
    raise ValueError(
        f"{workdir}/results.csv has {len(L)} rows, {len(np.unique(N))} sizes: approach 3 needs"
        " >= 8 finished rungs with >= 3 sizes and >= 2 token counts before --predict-budget"
    )
  law = fitlib.fit_chinchilla(N, D, L, grid=grid)
  samples = fitlib.bootstrap_chinchilla(N, D, L, law, n_boot, seed=seed) if n_boot else None
  k = float(np.median(C / (N * D)))
  predicted = fitlib.chinchilla_optimal_with_intervals(law, budget, samples, k)
  resid = np.log(L) - np.log(law.loss(N, D))
  return dict(law=law, samples=samples, resid=resid, k=k, predicted=predicted, top=C.max())


def _predict_point(config, size: tuple, budget: float) -> Point:
  c = _train_config(config, size, f"predict_C{budget:.3g}")
  tokens_per_step = int(c.train.batch_size) * int(c.data.seq_len)
  c.train.steps = max(1, int(round(budget / (flops_per_token(c) * tokens_per_step))))
  return Point(c.name, size[0], c, budget=float(budget))


def predict_then_check(
    config, workdir, budget: float, *, n_boot: int = 100, seed: int = 0, grid="full", log=print
) -> dict:
  """Predict the compute-optimal point at `budget` from the finished rungs, train it, and
  write predicted vs achieved (DIR/prediction.json, one entry per budget)."""
  from eval import report  # noqa: PLC0415 (jax after XLA_FLAGS)

  workdir = pathlib.Path(workdir).resolve()
  prepare_data(config, workdir)
  fit = predict_optimum(workdir, budget, n_boot=n_boot, seed=seed, grid=grid)
  law, samples, predicted = fit["law"], fit["samples"], fit["predicted"]
  point = _predict_point(config, nearest_shape(config, predicted["N"]), budget)
  log(
      f"[ladder] predicted at C={budget:.3g}: N={predicted['N']:.3g}, D={predicted['D']:.3g}, "
      f"loss {predicted['loss']:.4f}; training {point.size} for {point.config.train.steps} steps"
  )
  row = run_point(point, workdir, "predict", log)
  se = row["val_loss_se"] if row["val_loss_se"] != "" else 0.0
  at_trained = report.prediction_interval(
      law, samples, fit["resid"], row["params_total"], row["tokens"], se, seed=seed
  )
  check = dict(
      budget=float(budget),
      rungs=law.n_points,
      largest_rung_flops=float(fit["top"]),
      law=law.to_dict(),
      flops_per_param_token=fit["k"],
      n_boot=0 if samples is None else len(samples),
      predicted=predicted,
      trained={key: row[key] for key in ("name", "size", "params_total", "steps", "tokens")},
      trained_flops=float(row["flops"]),
      predicted_at_trained=at_trained,
      achieved=dict(val_loss=float(row["val_loss"]), val_loss_se=se or None),
      error=float(at_trained["loss"] - row["val_loss"]),
      rel_error=float((at_trained["loss"] - row["val_loss"]) / row["val_loss"]),
      inside=bool(at_trained["interval"][0] <= row["val_loss"] <= at_trained["interval"][1]),
  )
  path = workdir / PREDICTION_FILE
  checks = json.loads(path.read_text())["checks"] if path.exists() else []
  checks = [c for c in checks if c["budget"] != check["budget"]] + [check]
  path.write_text(json.dumps(dict(checks=checks), indent=2) + "\n")
  log(
      f"[ladder] prediction check: predicted {at_trained['loss']:.4f} "
      f"[{at_trained['interval'][0]:.4f}, {at_trained['interval'][1]:.4f}], achieved "
      f"{row['val_loss']:.4f} ({'inside' if check['inside'] else 'outside'} the interval)"
  )
  return check


# ----------------------------------------------------------------------------- CLI


def _spawn_workers(argv: list[str], n: int) -> int:
  """Run n copies of this command, each on the sizes i, i+n, ... ; returns the worst exit code."""
  procs = [
      subprocess.Popen([sys.executable, "-m", "eval.ladder", *argv, f"--worker={i}/{n}"])
      for i in range(n)
  ]
  return max(p.wait() for p in procs)


def _quiet_and_cached() -> None:
  """As `python -m train` does: Orbax INFO logs off, persistent XLA compilation cache on (the
  points of one size share shapes, so later points skip most compilation)."""
  logging.set_verbosity(logging.WARNING)
  import jax  # noqa: PLC0415 (jax after XLA_FLAGS)

  path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "unleash", "jax"
  )
  jax.config.update("jax_compilation_cache_dir", path)


def _run_local(config, workdir: pathlib.Path, worker: str) -> None:
  """Points in this process, or in ladder.parallel worker processes split by size; each
  process splits a CPU host into the devices `python -m train` would use."""
  cpu_devices.configure(config)  # the fields it reads are the same for every point
  _quiet_and_cached()
  if worker:
    i, n = (int(x) for x in worker.split("/"))
    run_ladder(config, workdir, worker=(i, n))
    return
  n = int(config.ladder.parallel)
  if n > 1:
    prepare_data(config, paths.path(workdir))  # once, before the workers race to prepare it
    prepare_corpus(config)
    code = _spawn_workers(sys.argv[1:], n)
    if code:
      sys.exit(code)
  else:
    run_ladder(config, workdir)


def _prediction_fit(args) -> dict:
  """predict_then_check's n_boot and grid from --predict-bootstrap / --predict-grid (unset:
  its defaults, 100 resamples on the full grid)."""
  fit = dict(n_boot=args.predict_bootstrap, grid=args.predict_grid)
  fit = {k: v for k, v in fit.items() if v is not None}
  if fit and args.predict_budget is None:
    raise ValueError("--predict-bootstrap and --predict-grid need --predict-budget C")
  if fit.get("n_boot", 0) < 0:
    raise ValueError(
        f"--predict-bootstrap={fit['n_boot']}: use a number of resamples >= 0 (0: the fit "
        "alone, no parameter intervals)"
    )
  return fit


def main(argv=None) -> None:
  args = cli.parse_args(_parser(), argv)
  config = args.config
  workdir = paths.path(args.workdir)
  fit_settings = _prediction_fit(args)
  if args.executor == "ray" and args.predict_budget is not None:
    raise ValueError(
        "--predict-budget trains its point in this process: run the ladder with --executor "
        "ray, then the same command with --executor local --predict-budget C (finished rungs "
        "are skipped)"
    )
  if args.executor == "ray":
    _quiet_and_cached()
    import jax  # noqa: PLC0415 (jax after XLA_FLAGS)

    jax.config.update("jax_platforms", "cpu")  # the driver only counts FLOPs; workers train
    # Through the module, not __main__, so Ray pickles its functions by reference.
    from eval import ladder  # noqa: PLC0415 (by reference, see above)

    try:
      ladder.run_ladder_ray(config, workdir, address=args.ray_address)
    except ladder.PointsFailed as e:
      raise SystemExit(f"error: {e}") from None
  else:
    if args.ray_address:
      raise ValueError("--ray-address needs --executor ray")
    _run_local(config, workdir, args.worker)
  if args.predict_budget is not None and not args.worker:
    predict_then_check(config, workdir, args.predict_budget, **fit_settings)
  print(
      f"[ladder] results: {workdir / 'results.csv'} ({len(finished_names(workdir))} rows); "
      f"report: python -m eval.report --workdir {workdir}"
  )


def _parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="python -m eval.ladder", description=__doc__.split("\n\n")[0])
  cli.add_config(ap, lock_config=False)
  ap.add_argument(
      "--workdir",
      required=True,
      help="ladder directory (results.csv, points/); with "
      "--executor ray a path every node of the cluster sees",
  )
  ap.add_argument(
      "--executor",
      default="local",
      choices=["local", "ray"],
      help="local: this machine (ladder.parallel processes); ray: one Ray task per point",
  )
  ap.add_argument(
      *cli.flag_names("ray-address"),
      default="",
      help="Ray cluster to join (HOST:PORT, ray://HOST:PORT or auto); empty starts a "
      "one-machine Ray",
  )
  ap.add_argument(
      *cli.flag_names("predict_budget"),
      type=float,
      default=None,
      help="after the ladder: fit its rungs, predict the compute-optimal N, D and loss at "
      "this FLOP budget (4-10x the largest rung), train that point here and record predicted "
      "vs achieved in DIR/prediction.json (eval.report: Prediction check)",
  )
  ap.add_argument(
      *cli.flag_names("predict_bootstrap"),
      type=int,
      default=None,
      help="bootstrap resamples behind the prediction's intervals (default 100; 0: none)",
  )
  ap.add_argument(
      *cli.flag_names("predict_grid"),
      default=None,
      choices=["full", "coarse", "quick"],
      help="starts of the prediction's Chinchilla fit, as eval.report --grid (default full)",
  )
  ap.add_argument("--worker", default="", help=argparse.SUPPRESS)  # i/n: sizes i, i+n, ...
  return ap


if __name__ == "__main__":
  cli.run(main)
