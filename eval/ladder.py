"""Scaling ladders: train a grid of sizes x token budgets (or IsoFLOP grids) and tabulate them.

    python -m eval.ladder --config configs/ladder.py:cpu --workdir DIR [--config.ladder.parallel=2]

A point is "a config + a workdir" (DIR/points/<name>), trained by the same
`train.trainer.train_and_evaluate` the CLI uses, so each point resumes from its own
checkpoints when killed. When a point finishes, one row is appended to DIR/results.csv
(columns `RESULT_COLUMNS`); points whose name is already there are skipped, so rerunning the
command after a kill resumes the whole ladder. FLOPs come from `model.summary`.

Schemes (config.ladder.scheme):
  grid     every size x every budget (config.ladder.steps) as an independent run.
  isoflop  for each FLOP budget C and size, steps = C / (flops_per_token * batch * seq_len).
  wsd      per size, one constant-LR run to the largest branch point; for each budget T a
           cooldown branch copies that run's checkpoint at T - decay_fraction*T (params,
           optimizer state, data position) and finishes with the WSD cooldown
           (Hägele et al. 2024). The constant run is shared, so S budgets cost about one run.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import fcntl
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import time

import ml_collections

RESULT_COLUMNS = ("name", "size", "scheme", "params_total", "params_non_embedding", "d_model",
                  "num_layers", "steps", "batch_size", "seq_len", "tokens", "flops_per_token",
                  "flops", "budget", "train_loss", "val_loss", "val_bpb", "wall_s")


@dataclasses.dataclass
class Point:
  """One training run of the ladder."""
  name: str
  size: str
  config: ml_collections.ConfigDict      # the full training config (no `ladder` section)
  kind: str = "run"                      # run | constant | cooldown
  budget: float = float("nan")           # the FLOP budget (isoflop) it belongs to
  branch_from: str | None = None         # cooldown: the constant run it branches from
  branch_step: int = 0                   # cooldown: the step it branches at
  needs_steps: tuple = ()                # constant: steps whose checkpoints must survive

  @property
  def record(self) -> bool:
    return self.kind != "constant"


# ----------------------------------------------------------------------------- expansion


def _train_config(config, size, mlp_ratio, name) -> ml_collections.ConfigDict:
  """The base config with this size's shape and without the `ladder` section (so that
  changing ladder options never invalidates a point's checkpoints)."""
  c = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  with c.unlocked():
    del c["ladder"]
  size_name, d_model, num_layers, num_heads = size
  if d_model % num_heads:
    raise ValueError(f"ladder size {size_name}: d_model={d_model} is not divisible by "
                     f"num_heads={num_heads}")
  c.model.d_model = int(d_model)
  c.model.num_layers = int(num_layers)
  c.model.num_heads = c.model.num_kv_heads = int(num_heads)
  c.model.head_dim = int(d_model) // int(num_heads)
  c.model.mlp_dim = int(mlp_ratio * d_model)
  c.name = name
  return c


def flops_per_token(config) -> float:
  from model import summary
  return float(summary.flops_per_token_train(config.model, int(config.data.seq_len)))


def branch_step(steps: int, decay_fraction: float) -> int:
  """Where a WSD cooldown to `steps` starts: the trainer's schedule decays over
  max(round(decay_fraction * steps), 1) final steps."""
  return steps - max(int(round(decay_fraction * steps)), 1)


def expand(config) -> list[Point]:
  """The ladder's points in dependency order (a constant run before its cooldowns)."""
  lad = config.ladder
  scheme = lad.scheme
  points: list[Point] = []
  for size in lad.sizes:
    size_name = size[0]
    if scheme == "grid":
      for steps in lad.steps:
        c = _train_config(config, size, lad.mlp_ratio, f"{size_name}_s{steps}")
        c.train.steps = int(steps)
        points.append(Point(c.name, size_name, c))
    elif scheme == "isoflop":
      probe = _train_config(config, size, lad.mlp_ratio, size_name)
      tokens_per_step = int(probe.train.batch_size) * int(probe.data.seq_len)
      fpt = flops_per_token(probe)
      for budget in lad.flop_budgets:
        steps = int(round(float(budget) / (fpt * tokens_per_step)))
        if not lad.min_steps <= steps <= lad.max_steps:
          continue
        c = _train_config(config, size, lad.mlp_ratio, f"{size_name}_C{float(budget):.0e}")
        c.train.steps = steps
        points.append(Point(c.name, size_name, c, budget=float(budget)))
    elif scheme == "wsd":
      starts = sorted({branch_step(int(s), lad.decay_fraction) for s in lad.steps})
      if starts[0] <= int(config.train.warmup_steps):
        raise ValueError(f"ladder.steps={tuple(lad.steps)}: the smallest cooldown starts at step "
                         f"{starts[0]}, inside the {config.train.warmup_steps}-step warmup; use "
                         "larger budgets or a shorter train.warmup_steps")
      const = _train_config(config, size, lad.mlp_ratio, f"{size_name}_constant")
      const.train.schedule = "constant"
      const.train.steps = starts[-1]
      every = math.gcd(*starts)
      const.checkpoint.every = every
      const.checkpoint.keep_every = every   # keep every branch point
      const.checkpoint.keep = 2
      const.eval.batches = 0                # its rows come from the cooldowns
      points.append(Point(const.name, size_name, const, kind="constant",
                          needs_steps=tuple(starts)))
      for steps in lad.steps:
        c = _train_config(config, size, lad.mlp_ratio, f"{size_name}_s{steps}")
        c.train.schedule = "wsd"
        c.train.steps = int(steps)
        c.train.decay_fraction = float(lad.decay_fraction)
        c.train.cooldown = lad.cooldown
        points.append(Point(c.name, size_name, c, kind="cooldown", branch_from=const.name,
                            branch_step=branch_step(int(steps), lad.decay_fraction)))
    else:
      raise ValueError(f"ladder.scheme={scheme!r}: use grid, isoflop or wsd")
  if not any(p.record for p in points):
    raise ValueError("the ladder has no points: check ladder.steps / ladder.flop_budgets and "
                     "ladder.min_steps / max_steps")
  return points


# ----------------------------------------------------------------------------- results


def finished_names(workdir: pathlib.Path) -> set[str]:
  path = workdir / "results.csv"
  if not path.exists():
    return set()
  with open(path, newline="") as f:
    return {row["name"] for row in csv.DictReader(f)}


def append_row(workdir: pathlib.Path, row: dict) -> None:
  """Append under an exclusive lock (parallel workers share the file)."""
  path = workdir / "results.csv"
  with open(workdir / ".results.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
      w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
      if new:
        w.writeheader()
      w.writerow(row)
    fcntl.flock(lock, fcntl.LOCK_UN)


def _last_train_loss(metrics_path: str, fallback: float) -> float:
  """Mean train loss over the last logging window (less noisy than the last step's)."""
  try:
    last = None
    with open(metrics_path) as f:
      for line in f:
        rec = json.loads(line)
        if rec.get("kind") == "train":
          last = rec
    v = last.get("loss_mean", fallback) if last else fallback
    return float(v)
  except (OSError, ValueError, TypeError):
    return float(fallback)


def result_row(point: Point, out: dict, wall_s: float, scheme: str) -> dict:
  from model import summary
  c = point.config
  counts = summary.param_counts(c.model)
  tokens = int(c.train.steps) * int(c.train.batch_size) * int(c.data.seq_len)
  fpt = flops_per_token(c)
  return dict(name=point.name, size=point.size, scheme=scheme, params_total=counts["total"],
              params_non_embedding=counts["non_embedding"], d_model=c.model.d_model,
              num_layers=c.model.num_layers, steps=int(c.train.steps),
              batch_size=int(c.train.batch_size), seq_len=int(c.data.seq_len), tokens=tokens,
              flops_per_token=fpt, flops=fpt * tokens,
              budget="" if math.isnan(point.budget) else point.budget,
              train_loss=_last_train_loss(out.get("metrics_jsonl", ""), out.get("train_loss", float("nan"))),
              val_loss=out.get("val_loss", float("nan")), val_bpb=out.get("val_bpb", float("nan")),
              wall_s=round(wall_s, 2))


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
  from train import checkpoint as ckpt_lib
  step_dir = src / "checkpoints" / str(point.branch_step)
  if not step_dir.is_dir():
    raise FileNotFoundError(f"{step_dir} missing: the constant run {point.branch_from} did not "
                            "keep its checkpoint at the branch step; delete its workdir and rerun")
  target = dst / "checkpoints" / str(point.branch_step)
  tmp = target.with_name(target.name + ".branching")
  if tmp.exists():
    shutil.rmtree(tmp)
  shutil.copytree(step_dir, tmp)
  (tmp / "config" / "metadata").write_text(json.dumps(ckpt_lib.config_to_json(point.config)))
  os.replace(tmp, target)


def run_point(point: Point, workdir: pathlib.Path, scheme: str, log=print) -> dict | None:
  """Train (or resume) one point; returns its results row (None for constant runs)."""
  from train import trainer
  pdir = workdir / "points" / point.name
  if point.kind == "constant":
    have = _checkpoint_steps(pdir)
    if all(s in have for s in point.needs_steps):
      return None
  if point.kind == "cooldown" and not _checkpoint_steps(pdir):
    _branch(point, workdir / "points" / point.branch_from, pdir)
  t0 = time.time()
  log(f"[ladder] {point.name}: {point.kind}, {int(point.config.train.steps)} steps")
  out = trainer.train_and_evaluate(point.config, os.fspath(pdir))
  wall = time.time() - t0
  if out.get("preempted"):
    raise KeyboardInterrupt(f"{point.name} was stopped at step {out['step']}; rerun to resume")
  return result_row(point, out, wall, scheme) if point.record else None


def prepare_data(config, workdir: pathlib.Path) -> str:
  """One prepared copy of the corpus for every point (DIR/data/prepared-*)."""
  from train.data import pipeline
  if config.data.prepared_dir:
    return config.data.prepared_dir
  return os.fspath(pipeline.default_prepared_dir(config.data, workdir / "data"))


def run_ladder(config, workdir, *, worker: tuple[int, int] = (0, 1), log=print) -> list[dict]:
  """Run every unfinished point (those of this worker's sizes); returns the new rows."""
  workdir = pathlib.Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  with config.unlocked():
    config.data.prepared_dir = prepare_data(config, workdir)
  points = expand(config)
  sizes = [s[0] for s in config.ladder.sizes]
  mine = {s for i, s in enumerate(sizes) if i % worker[1] == worker[0]}
  done = finished_names(workdir)
  rows = []
  for p in points:
    if p.size not in mine:
      continue
    if p.record and p.name in done:
      continue
    if p.kind == "constant" and all(q.name in done for q in points if q.branch_from == p.name):
      continue
    row = run_point(p, workdir, config.ladder.scheme, log)
    if row is not None:
      append_row(workdir, row)
      rows.append(row)
  return rows


def _spawn_workers(argv: list[str], n: int) -> int:
  """Run n copies of this command, each on the sizes i, i+n, ... ; returns the worst exit code."""
  procs = [subprocess.Popen([sys.executable, "-m", "eval.ladder", *argv, f"--worker={i}/{n}"])
           for i in range(n)]
  return max(p.wait() for p in procs)


def _quiet_and_cached() -> None:
  """As `python -m train` does: Orbax INFO logs off, persistent XLA compilation cache on (the
  points of one size share shapes, so later points skip most compilation)."""
  from absl import flags
  from absl import logging
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  import jax
  path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "unleash", "jax")
  jax.config.update("jax_compilation_cache_dir", path)


def main(argv) -> None:
  from absl import flags
  del argv
  _quiet_and_cached()
  config = flags.FLAGS["config"].value
  workdir = pathlib.Path(flags.FLAGS["workdir"].value)
  worker = flags.FLAGS["worker"].value
  if worker:
    i, n = (int(x) for x in worker.split("/"))
    run_ladder(config, workdir, worker=(i, n))
    return
  n = int(config.ladder.parallel)
  if n > 1:
    # Prepare the data once before the workers race to do it.
    from train import trainer
    with config.unlocked():
      config.data.prepared_dir = prepare_data(config, workdir.resolve())
    trainer.load_data(config, os.fspath(workdir))
    code = _spawn_workers(sys.argv[1:], n)
    if code:
      sys.exit(code)
  else:
    run_ladder(config, workdir)
  print(f"[ladder] results: {workdir / 'results.csv'} ({len(finished_names(workdir))} rows); "
        f"report: python -m eval.report --workdir {workdir}")


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "configs/ladder.py:<name>", lock_config=False)
  flags.DEFINE_string("workdir", None, "ladder directory (results.csv, points/)")
  flags.DEFINE_string("worker", "", "internal: i/n runs the sizes i, i+n, ... only")
  flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
