"""Scaling ladders: train a grid of sizes x token budgets (or IsoFLOP grids) and tabulate them.

    python -m eval.ladder --config configs/ladder.py:cpu --workdir DIR [--config.ladder.parallel=2]
    python -m eval.ladder --config ... --workdir SHARED_DIR --executor ray [--ray-address ADDR]

A point is "a config + a workdir" (DIR/points/<name>), trained by the same
`train.trainer.train_and_evaluate` the CLI uses, so each point resumes from its own
checkpoints when killed. When a point finishes, one row is appended to DIR/results.csv
(columns `RESULT_COLUMNS`); points whose name is already there are skipped, so rerunning the
command after a kill resumes the whole ladder. FLOPs come from `model.summary`.

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
  epochs   data-constrained: every size x every repetition count e (config.ladder.epochs) of
           a fixed subset of ladder.unique_tokens tokens (data.max_unique_tokens), as
           independent runs of e * unique_tokens tokens (Muennighoff et al. 2023); for each
           e > 1 also a `_fresh` twin of as many tokens on the whole split, so the
           single-epoch rows that fit the Chinchilla part of `eval.fit constrained` span the
           same token range as the repeated ones (else R_D* absorbs the extrapolation error).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import fcntl
import io
import json
import math
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import uuid
from typing import Callable

import ml_collections

from train import cli

# New columns go at the end: older results.csv files keep their header when appended to.
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
    raise ValueError(
        f"ladder size {size_name}: d_model={d_model} is not divisible by " f"num_heads={num_heads}"
    )
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
      name = f"{size[0]}_e{float(e):g}" + ("_fresh" if fresh else "")
      c = _train_config(config, size, lad.mlp_ratio, name)
      c.train.steps = steps
      c.data.max_unique_tokens = 0 if fresh else unique
      points.append(Point(c.name, size[0], c))
  return points


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
        raise ValueError(
            f"ladder.steps={tuple(lad.steps)}: the smallest cooldown starts at step "
            f"{starts[0]}, inside the {config.train.warmup_steps}-step warmup; use "
            "larger budgets or a shorter train.warmup_steps"
        )
      const = _train_config(config, size, lad.mlp_ratio, f"{size_name}_constant")
      const.train.schedule = "constant"
      const.train.steps = starts[-1]
      every = math.gcd(*starts)
      const.checkpoint.every = every
      const.checkpoint.keep_every = every  # keep every branch point
      const.checkpoint.keep = 2
      const.eval.batches = 0  # its rows come from the cooldowns
      points.append(Point(const.name, size_name, const, kind="constant", needs_steps=tuple(starts)))
      for steps in lad.steps:
        c = _train_config(config, size, lad.mlp_ratio, f"{size_name}_s{steps}")
        c.train.schedule = "wsd"
        c.train.steps = int(steps)
        c.train.decay_fraction = float(lad.decay_fraction)
        c.train.cooldown = lad.cooldown
        points.append(
            Point(
                c.name,
                size_name,
                c,
                kind="cooldown",
                branch_from=const.name,
                branch_step=branch_step(int(steps), lad.decay_fraction),
            )
        )
    elif scheme == "epochs":
      points.extend(epoch_points(config, size))
    else:
      raise ValueError(f"ladder.scheme={scheme!r}: use grid, isoflop, wsd or epochs")
  if not any(p.record for p in points):
    raise ValueError(
        "the ladder has no points: check ladder.steps / ladder.flop_budgets and "
        "ladder.min_steps / max_steps"
    )
  return points


# ----------------------------------------------------------------------------- results


def finished_names(workdir: pathlib.Path) -> set[str]:
  """Names in DIR/results.csv (any header that has a `name` column, old or new)."""
  path = pathlib.Path(workdir) / "results.csv"
  if not path.exists():
    return set()
  with open(path, newline="") as f:
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
  executor's parallel workers. An existing file keeps its header: columns it lacks are
  left out of the row rather than shifting the older rows."""
  workdir = pathlib.Path(workdir)
  path = workdir / "results.csv"
  with open(workdir / ".results.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    text = path.read_text() if path.exists() else ""
    header = next(csv.reader(io.StringIO(text)), None) if text.strip() else None
    if text and not text.endswith("\n"):
      text += "\n"
    out = io.StringIO()
    w = csv.DictWriter(
        out, fieldnames=header or RESULT_COLUMNS, extrasaction="ignore", lineterminator="\n"
    )
    if header is None:
      text = ""
      w.writeheader()
    w.writerow(row)
    tmp = path.with_name(f".results.csv.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
      f.write(text + out.getvalue())
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    fcntl.flock(lock, fcntl.LOCK_UN)


def _json_lines(path: str):
  """The records of a JSON-lines file, skipping a line cut short (a worker killed while
  writing it: the resumed run appends after it)."""
  with open(path) as f:
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
  from train.data import prepare as prepare_lib

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
  `flops_6nd` = 6 * N * D with N = params_total (embeddings included) and D = tokens, the
  convention of the Chinchilla-style allocation formulas, so fits can use either.
  """
  from model import summary

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
      flops_6nd=6.0 * counts["total"] * tokens,
      epochs=tokens / unique if unique else "",
  )


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
    raise FileNotFoundError(
        f"{step_dir} missing: the constant run {point.branch_from} did not "
        "keep its checkpoint at the branch step; delete its workdir and rerun"
    )
  target = dst / "checkpoints" / str(point.branch_step)
  tmp = target.with_name(target.name + ".branching")
  if tmp.exists():
    shutil.rmtree(tmp)
  shutil.copytree(step_dir, tmp)
  (tmp / "config" / "metadata").write_text(json.dumps(ckpt_lib.config_to_json(point.config)))
  os.replace(tmp, target)


def _constant_complete(point: Point, workdir: pathlib.Path) -> bool:
  """A constant run that already kept every checkpoint its cooldowns branch from."""
  have = _checkpoint_steps(workdir / "points" / point.name)
  return point.kind == "constant" and all(s in have for s in point.needs_steps)


def _record_attempt(pdir: pathlib.Path, event: str, **fields) -> None:
  """One line per start/end of a point in DIR/points/<name>/attempts.jsonl: which process
  on which host trained it, how many times it was started, on how many devices."""
  pdir.mkdir(parents=True, exist_ok=True)
  rec = dict(event=event, pid=os.getpid(), host=socket.gethostname(), time=time.time(), **fields)
  with open(pdir / "attempts.jsonl", "a") as f:
    f.write(json.dumps(rec) + "\n")


def run_point(
    point: Point, workdir: pathlib.Path, scheme: str, log=print, hooks: Callable | None = None
) -> dict | None:
  """Train (or resume) one point; returns its results row (None for constant runs).
  `hooks(point)` may return trainer.Hooks for this point (fault-injection tests)."""
  from train import trainer

  pdir = workdir / "points" / point.name
  if _constant_complete(point, workdir):
    return None
  if point.kind == "cooldown" and not _checkpoint_steps(pdir):
    _branch(point, workdir / "points" / point.branch_from, pdir)
  t0 = time.time()
  log(f"[ladder] {point.name}: {point.kind}, {int(point.config.train.steps)} steps")
  _record_attempt(pdir, "start")
  kwargs = {"hooks": hooks(point)} if hooks else {}
  out = trainer.train_and_evaluate(point.config, os.fspath(pdir), **kwargs)
  wall = time.time() - t0
  if out.get("preempted"):
    raise KeyboardInterrupt(f"{point.name} was stopped at step {out['step']}; rerun to resume")
  import jax

  _record_attempt(
      pdir,
      "end",
      step=int(out["step"]),
      devices=jax.device_count(),
      platform=jax.devices()[0].platform,
  )
  return result_row(point, out, wall, scheme) if point.record else None


def prepare_data(config, workdir: pathlib.Path) -> str:
  """One prepared copy of the corpus for every point (DIR/data/prepared-*)."""
  from train.data import pipeline

  if config.data.prepared_dir:
    return config.data.prepared_dir
  return os.fspath(pipeline.default_prepared_dir(config.data, workdir / "data"))


def prepare_corpus(config) -> dict:
  """Prepare config.data into config.data.prepared_dir once, before points run concurrently
  (the same call the trainer makes; a no-op when the manifest is already there)."""
  from train.data import prepare as prepare_lib

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
  workdir = pathlib.Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  with config.unlocked():
    config.data.prepared_dir = prepare_data(config, workdir)
  sizes = [s[0] for s in config.ladder.sizes]
  mine = {s for i, s in enumerate(sizes) if i % worker[1] == worker[0]}
  todo = [p for p in unfinished(expand(config), workdir) if p.size in mine]
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
    import ray
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
    seen = pathlib.Path(marker).read_text() == token
  except OSError:
    seen = False
  return socket.gethostname(), seen


def probe_workdir(
    ray, workdir: pathlib.Path, nodes: list[dict], token: str, timeout_s: float
) -> None:
  """Raises unless every node in `nodes` reads `token` in workdir/.ladder-probe."""
  from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

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
  from train import cpu_devices

  cpu_devices.configure(point.config)  # before jax is imported in this fresh process
  _quiet_and_cached()
  return run_point(point, pathlib.Path(workdir), scheme, hooks=hooks)


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
  workdir = pathlib.Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  with config.unlocked():
    config.data.prepared_dir = prepare_data(config, workdir)
  todo = unfinished(expand(config), workdir)
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
  from absl import flags
  from absl import logging

  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  import jax

  path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "unleash", "jax"
  )
  jax.config.update("jax_compilation_cache_dir", path)


def _run_local(config, workdir: pathlib.Path, worker: str) -> None:
  """Points in this process, or in ladder.parallel worker processes split by size; each
  process splits a CPU host into the devices `python -m train` would use."""
  from train import cpu_devices

  cpu_devices.configure(config)  # the fields it reads are the same for every point
  _quiet_and_cached()
  if worker:
    i, n = (int(x) for x in worker.split("/"))
    run_ladder(config, workdir, worker=(i, n))
    return
  n = int(config.ladder.parallel)
  if n > 1:
    with config.unlocked():  # prepare the data once before the workers race to do it
      config.data.prepared_dir = prepare_data(config, workdir.resolve())
    prepare_corpus(config)
    code = _spawn_workers(sys.argv[1:], n)
    if code:
      sys.exit(code)
  else:
    run_ladder(config, workdir)


def main(argv) -> None:
  from absl import flags

  del argv
  config = flags.FLAGS["config"].value
  workdir = pathlib.Path(flags.FLAGS["workdir"].value)
  executor = flags.FLAGS["executor"].value
  if executor == "ray":
    _quiet_and_cached()
    import jax

    jax.config.update("jax_platforms", "cpu")  # the driver only counts FLOPs; workers train
    # Through the module, not __main__, so Ray pickles its functions by reference.
    from eval import ladder

    try:
      ladder.run_ladder_ray(config, workdir, address=flags.FLAGS["ray-address"].value)
    except ladder.PointsFailed as e:
      raise SystemExit(f"error: {e}") from None
  else:
    if flags.FLAGS["ray-address"].value:
      raise ValueError("--ray-address needs --executor ray")
    _run_local(config, workdir, flags.FLAGS["worker"].value)
  print(
      f"[ladder] results: {workdir / 'results.csv'} ({len(finished_names(workdir))} rows); "
      f"report: python -m eval.report --workdir {workdir}"
  )


def _define_flags():
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "configs/ladder.py:<name>", lock_config=False)
  flags.DEFINE_string(
      "workdir",
      None,
      "ladder directory (results.csv, points/); with "
      "--executor ray a path every node of the cluster sees",
  )
  flags.DEFINE_enum(
      "executor",
      "local",
      ["local", "ray"],
      "local: this machine (ladder.parallel processes); ray: one Ray task per point",
  )
  flags.DEFINE_string(
      "ray-address",
      "",
      "Ray cluster to join (HOST:PORT, ray://HOST:PORT or " "auto); empty starts a one-machine Ray",
  )
  flags.DEFINE_alias("ray_address", "ray-address")
  flags.DEFINE_string("worker", "", "internal: i/n runs the sizes i, i+n, ... only")
  flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(cli.guarded(main), flags_parser=cli.parse_absl_flags)
