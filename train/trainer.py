"""The training loop: `train_and_evaluate(config, workdir)` (train/run.py loads runs for eval/).

A run is "a config + a workdir". Rerunning the same pair resumes from the newest good
checkpoint (exactly: params, optimizer, step, RNG and the data iterator's position).
The loop dispatches step t+1 before fetching step t's metrics, so the host never waits on
the step it just launched; checkpoint saves are asynchronous.
"""

import dataclasses
import math
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from train.data import parallel
from tqdm import tqdm

from model import summary
from train import build as build_lib
from train import checkpoint as ckpt_lib
from train import cli
from train import cost as cost_lib
from train import distributed
from train import evaluate as eval_lib
from train import inputs as inputs_lib
from train import mesh as mesh_lib
from train import metrics as metrics_lib
from train import optim
from train import paths
from train import plot as plot_lib
from train import preemption
from train import spec as spec_lib
from train import state as state_lib
from train.data import pipeline
from train.data import tokenizer as tok_lib


class NonFiniteError(cli.Error):
  """Raised after `train.max_nonfinite_steps` consecutive skipped (non-finite) updates."""


@dataclasses.dataclass
class Hooks:
  """Test seams (fault injection); production runs leave them None."""

  batch: Callable[[int, dict], dict] | None = None  # (step, local numpy batch) -> batch
  after_save: Callable[[int], None] | None = None  # called right after a save is started


# ------------------------------------------------------------------ setup helpers


def _printer(process_index: int) -> Callable[[str], None]:
  def log(msg: str) -> None:
    if process_index == 0:
      tqdm.write(msg)

  return log


def prepared_dir(spec: spec_lib.RunSpec, workdir: str, tok: tok_lib.Tokenizer) -> str:
  """Where the data is prepared: data.prepared_dir, or a cache under the workdir."""
  if spec.data.prepared_dir:
    return os.fspath(spec.data.prepared_dir)
  return os.fspath(pipeline.default_prepared_dir(spec.data, paths.path(workdir) / "data", tok))


def load_data(spec: spec_lib.RunSpec, workdir: str, tok: tok_lib.Tokenizer, *, progress=True):
  """Prepares (once; process 0 first) and opens the data: train iterator, eval source.
  `tok`: the run's tokenizer, loaded once by the caller."""
  directory = prepared_dir(spec, workdir, tok)
  kwargs = dict(
      tokenizer=tok,
      global_batch_size=spec.train.batch_size,
      seed=spec.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      model_vocab_size=spec.model.vocab_size,
  )
  load = pipeline.load_for_training
  decoder_on_pairs = spec.model.arch == "decoder" and parallel.is_parallel(spec.data.source)
  if spec.model.arch == "encoder_decoder" or decoder_on_pairs:
    kwargs["decoder_only"] = decoder_on_pairs
    learned = spec.model.pos_encoding == "learned"
    kwargs["position_table"] = spec.model.max_seq_len if learned else None
    load = parallel.load_for_training
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      load(spec.data, directory, progress=progress, **kwargs)
    ckpt_lib._sync("unleash_data_prepared")  # pylint: disable=protected-access
  return load(spec.data, directory, progress=progress and jax.process_index() == 0, **kwargs)


def schedule_change(saved_cfg: dict, spec: spec_lib.RunSpec, step: int) -> dict | None:
  """How the learning-rate schedule changes when a run is resumed with another train.steps
  (extended or shortened): the rate at the resume step under both, or None if unchanged."""
  before, after = int(saved_cfg["train"]["steps"]), spec.train.steps
  if before == after:
    return None
  old = spec_lib.resolve(saved_cfg).train
  return dict(
      steps_before=before,
      steps_after=after,
      schedule=spec.train.schedule,
      lr_before=float(optim.make_schedule(old)(step)),
      lr_after=float(optim.make_schedule(spec.train)(step)),
  )


def _restore_or_init(
    spec: spec_lib.RunSpec, built: build_lib.Built, ckpt: ckpt_lib.Checkpointer, train_iter, log
) -> tuple[state_lib.TrainState, int, dict | None]:
  """(state, start step, the restored checkpoint's meta or None) from this workdir's
  checkpoints, init_from, or fresh."""
  restored = ckpt.restore_latest(built.sharded_abstract_state(), config=spec.config)
  if restored is not None:
    train_iter.set_state(restored.data_state)
    saved_procs = restored.meta.get("process_count", jax.process_count())
    log(
        f"resumed from {ckpt.directory}/{restored.step} (step {restored.step}"
        + (f", saved by {saved_procs} process(es)" if saved_procs != jax.process_count() else "")
        + ")"
    )
    change = schedule_change(restored.config, spec, restored.step)
    if change is not None:
      shape = (
          "unchanged (constant)"
          if change["schedule"] == "constant"
          else f"re-stretched: lr at step {restored.step} was {change['lr_before']:.3g}, now "
          f"{change['lr_after']:.3g}"
      )
      log(
          f"train.steps {change['steps_before']} -> {change['steps_after']}: the run is "
          f"{'extended' if change['steps_after'] > change['steps_before'] else 'shortened'}; "
          f"the {change['schedule']} schedule is {shape}"
      )
    return restored.state, restored.step, dict(restored.meta, schedule_change=change)
  if spec.init_from:
    params, src_step = ckpt_lib.restore_params(
        spec.init_from, built.sharded_abstract_state().params
    )
    log(
        f"initialised parameters from {spec.init_from} (its step {src_step}); "
        "fresh optimizer state"
    )
    return state_lib.state_from_params(params, spec.seed, built.tx, built.state_shardings), 0, None
  return built.init_state(), 0, None


# ------------------------------------------------------------------ the loop


def itstime(step: int, every: int, total: int, *, last: bool = False) -> bool:
  """Cadence: every `every` steps (0 = never), and at the final step if `last`."""
  return (every > 0 and step % every == 0) or (last and step == total)


class Throughput:
  """The timing window behind step time, tokens/s and MFU. The first step after start (it
  compiles) and anything that is not training (evaluation) are kept out of the window."""

  def __init__(self, spec: spec_lib.RunSpec, mesh):
    self.tokens_per_step = spec.tokens_per_step
    self.flops_per_token = summary.flops_per_token_train(spec.model, spec.data.seq_len)
    self.peak, self.peak_source = metrics_lib.peak_flops_per_device()
    # CPU "devices" (train/cpu_devices.py) share the cores the matmul peak was measured on.
    self.num_devices = 1 if mesh.devices.flat[0].platform == "cpu" else mesh.devices.size
    self.start_time = time.perf_counter()
    self.window = None  # (time, step) where the current window opened

  def reset(self) -> None:
    self.window = None

  def first_step_seconds(self) -> float | None:
    """Seconds from start to the first fetched step (compilation included), once."""
    if self.start_time is None:
      return None
    seconds, self.start_time = time.perf_counter() - self.start_time, None
    return seconds

  def tick(self, step: int) -> dict | None:
    """Opens the window at the first fetched step; else closes it at `step` and returns the
    rates over it (then reopens it)."""
    now = time.perf_counter()
    if self.window is None:
      self.window = (now, step)
      return None
    (t0, s0), self.window = self.window, (now, step)
    step_time = (now - t0) / (step - s0) if step > s0 else float("nan")
    tps = self.tokens_per_step / step_time if step_time > 0 else float("nan")
    return dict(
        step_time_s=step_time,
        tokens_per_s=tps,
        mfu=self.flops_per_token * tps / (self.peak * self.num_devices),
    )


class Monitor:
  """Receives each step's metrics one step late (so dispatch never waits on the step just
  launched): progress bar, the non-finite stop, and the logged train rows."""

  def __init__(self, spec: spec_lib.RunSpec, writer, throughput: Throughput, ckpt, log, start):
    self.writer, self.throughput, self.ckpt, self.log = writer, throughput, ckpt, log
    self.total = spec.train.steps
    self.log_every = max(spec.train.log_every, 1)
    self.max_nonfinite = spec.train.max_nonfinite_steps
    self.losses, self.last_train = [], {}
    self.bar = None
    if jax.process_index() == 0:
      self.bar = tqdm(
          total=self.total, initial=start, unit="step", dynamic_ncols=True, desc=spec.name
      )

  def record(self, step: int, device_metrics) -> None:
    # Scalars as floats; arrays (MoE per-layer expert load) as nested lists.
    m = {
        k: float(v) if np.ndim(v) == 0 else np.asarray(v).tolist()
        for k, v in jax.device_get(device_metrics).items()
    }
    first = self.throughput.first_step_seconds()
    if first is not None:
      self.writer.event(step, "first_step", seconds=first)
    rates = self.throughput.tick(step)
    if m["skipped"]:
      self.writer.event(
          step,
          "nonfinite_update_skipped",
          loss=m["loss"],
          grad_norm=m["grad_norm"],
          streak=m["nonfinite_streak"],
      )
      self.log(
          f"step {step}: non-finite loss/gradient; update skipped "
          f"({int(m['nonfinite_streak'])} in a row, {int(m['skipped_total'])} in total)"
      )
    else:
      self.losses.append(m["loss"])
    if self.bar is not None:
      self.bar.update(1)
      self.bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)
    if itstime(step, self.log_every, self.total, last=True):
      self._write(step, m, rates)
    if self.max_nonfinite > 0 and m["nonfinite_streak"] >= self.max_nonfinite:
      self.ckpt.wait()
      raise NonFiniteError(
          f"{int(m['nonfinite_streak'])} consecutive steps (up to step {step}) had a non-finite "
          f"loss or gradient; stopping (train.max_nonfinite_steps={self.max_nonfinite}). "
          f"The last good checkpoint is {self.ckpt.directory}/{self.ckpt.latest_step()}; lower "
          "the learning rate, check the data, or enable z_loss before resuming."
      )

  def _write(self, step: int, m: dict, rates: dict | None) -> None:
    nan = float("nan")
    rates = rates or dict(step_time_s=nan, tokens_per_s=nan, mfu=nan)
    row = dict(
        m,
        loss_mean=float(np.mean(self.losses)) if self.losses else nan,
        **rates,
        tokens_seen=step * self.throughput.tokens_per_step,
    )
    self.losses = []
    self.last_train = row
    self.writer.write(step, row, "train")

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


@dataclasses.dataclass
class Action:
  """Something done every `every` steps (and at the last step / on a stop when asked):
  checkpoint saves and evaluations are actions; tests add their own."""

  name: str
  every: int
  fn: Callable[[int, Any], None]  # (step, state)
  at_last: bool = True
  on_stop: bool = False

  def due(self, step: int, total: int, stop: bool) -> bool:
    return itstime(step, self.every, total, last=self.at_last) or (stop and self.on_stop)


def train_loop(
    built: build_lib.Built,
    state,
    batches,
    start: int,
    total: int,
    monitor: Monitor,
    actions: list[Action],
    guard: preemption.PreemptionGuard,
    transfer_guard: str = "disallow",
):
  """Steps start+1..total; returns (state, step reached, stopped by a signal?).

  `batches(step)` gives the global batch for the update that makes `step`. A step's metrics
  are recorded after the next step is dispatched, and before any action runs. The step
  itself runs under `jax.transfer_guard(transfer_guard)`: an implicit host transfer inside
  the hot loop is an error (config.train.transfer_guard) rather than a silent slowdown.
  """
  pending = None
  for step in range(start + 1, total + 1):
    batch = batches(step)
    with jax.transfer_guard(transfer_guard):
      state, metrics = built.train_step(state, batch)
    if pending is not None:
      monitor.record(*pending)
    pending = (step, metrics)
    stop = guard.requested(step)
    due = [a for a in actions if a.due(step, total, stop)]
    if due:
      monitor.record(*pending)
      pending = None
      for action in due:
        action.fn(step, state)
    if stop:
      return state, step, True
  if pending is not None:
    monitor.record(*pending)
  return state, max(start, total), False


class _Run:
  """What the actions share: the last evaluation and save, for the summary."""

  def __init__(self, spec, built, data, ckpt, writer, log, hooks, throughput, start):
    self.spec, self.built, self.data, self.ckpt = spec, built, data, ckpt
    self.writer, self.log, self.hooks, self.throughput = writer, log, hooks, throughput
    self.tokens_per_step = throughput.tokens_per_step
    self.last_eval, self.last_eval_step, self.last_saved = {}, None, start

  def evaluate(self, step: int, state) -> None:
    self.last_eval_step = step
    batches = self.spec.eval.batches
    if batches == 0:  # 0: evaluation off (benchmarks, tests)
      return
    results = eval_lib.evaluate(
        self.built.eval_step,
        state.params,
        self.data.eval_source,
        global_batch_size=self.spec.train.batch_size,
        max_batches=None if batches < 0 else batches,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    self.writer.write(step, eval_lib.flat_metrics(results), "eval")
    self.last_eval = results
    self.log(f"step {step}: " + eval_lib.summary_line(results))
    self.throughput.reset()  # the evaluation's time is not training time

  def save(self, step: int, state) -> None:
    if step == self.last_saved and step in self.ckpt.all_steps():
      return
    self.ckpt.save(
        step,
        state,
        config=self.spec.config,
        data_state=self.data.train_iter.get_state(),
        meta={"tokens_seen": step * self.tokens_per_step},
    )
    self.last_saved = step
    if self.hooks.after_save is not None:
      self.hooks.after_save(step)

  def actions(self) -> list[Action]:
    return [
        Action("save", self.ckpt.every, self.save, on_stop=True),
        Action("eval", self.spec.eval.every, self.evaluate),
    ]

  def batches(self, step: int):
    local = next(self.data.train_iter)
    if self.hooks.batch is not None:
      local = self.hooks.batch(step - 1, local)
    return inputs_lib.to_global(
        local, self.built.train_step.batch_sharding, self.spec.train.batch_size
    )


def _summary(
    workdir, ckpt, writer, plot_path, run: _Run, monitor: Monitor, step, preempted, wall
) -> dict:
  a = run.last_eval.get("all", {})
  train = monitor.last_train
  return {
      "workdir": os.fspath(workdir),
      "step": step,
      "preempted": preempted,
      "train_loss": train.get("loss", float("nan")),
      "val_loss": a.get("loss", float("nan")),
      "val_bpb": a.get("bpb", float("nan")),
      "val": run.last_eval,
      "tokens_seen": step * run.tokens_per_step,
      "wall_s": wall,
      "checkpoints": os.fspath(ckpt.directory),
      "metrics_jsonl": writer.jsonl_path,
      "tensorboard": writer.tb_dir,
      "loss_plot": plot_path,
      "peak_flops_source": run.throughput.peak_source,
      "mfu": train.get("mfu", float("nan")),
      "tokens_per_s": train.get("tokens_per_s", float("nan")),
  }


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, hooks: Hooks | None = None
) -> dict:
  """Trains `config` in `workdir` (resuming if it holds checkpoints), evaluates, and returns
  the final metrics: step, train_loss, val_loss, val_bpb, val (per domain, with SEs),
  tokens_seen, wall_s, and where checkpoints/metrics/plot are. Raises NonFiniteError after
  too many non-finite steps and ckpt_lib.ConfigMismatchError for an incompatible workdir."""
  t0 = time.time()
  spec = spec_lib.resolve(config)  # the only place the ConfigDict is read
  distributed.maybe_initialize(spec.distributed)
  log = _printer(jax.process_index())
  cost_inputs = cost_lib.inputs_for_devices(spec.cost, jax.devices())
  workdir = os.fspath(paths.path(workdir))  # absolute, or a URL such as gs://bucket/run
  paths.path(workdir).mkdir(parents=True, exist_ok=True)
  tok = tok_lib.load(spec.data.tokenizer)
  built = build_lib.build(spec, mask_id=tok.mask_id, token_vocab_size=tok.vocab_size)
  data = load_data(spec, workdir, tok)
  ckpt = ckpt_lib.Checkpointer(workdir, spec.checkpoint, log=log)
  writer = metrics_lib.MetricsWriter(workdir)
  try:
    with mesh_lib.mesh_context(built.mesh, spec.mesh.axis_rules):
      state, step, preempted, run, monitor = _train(spec, built, data, ckpt, writer, log, hooks)
    ckpt.wait()
    cost = cost_lib.estimate(cost_inputs, time.time() - t0).to_dict()
    writer.event(step, "cost", **cost)
  finally:
    writer.close()
    ckpt.close()
  plot_path = plot_lib.loss_plot(workdir) if jax.process_index() == 0 else None
  out = _summary(workdir, ckpt, writer, plot_path, run, monitor, step, preempted, time.time() - t0)
  out["cost"] = cost
  _print_summary(out, log)
  return out


def _train(spec: spec_lib.RunSpec, built, data, ckpt, writer, log, hooks):
  """Restore or init, then the loop, inside the mesh context entered once by the caller."""
  total = spec.train.steps
  state, start, resumed = _restore_or_init(spec, built, ckpt, data.train_iter, log)
  throughput = Throughput(spec, built.mesh)
  run = _Run(spec, built, data, ckpt, writer, log, hooks or Hooks(), throughput, start)
  if resumed is not None:
    writer.event(
        start,
        "resume",
        saved_process_count=resumed.get("process_count"),
        process_count=jax.process_count(),
    )
    if resumed["schedule_change"] is not None:
      writer.event(start, "schedule_changed", **resumed["schedule_change"])
  n_params = state_lib.count_params(built.abstract_state.params)
  log(
      f"{spec.name}: {n_params / 1e6:.2f}M params, mesh {dict(built.mesh.shape)}, "
      f"{jax.device_count()} {jax.devices()[0].platform} device(s), "
      f"{jax.process_count()} process(es), steps {start}->{total}; "
      f"MFU peak: {throughput.peak_source}"
  )
  if spec.train.optimizer == "muon" or spec.model.parametrization != "sp":
    table = optim.param_table(spec.train, built.abstract_state.params, spec.model)
    log(optim.format_param_table(table))
  monitor = Monitor(spec, writer, throughput, ckpt, log, start)
  with preemption.PreemptionGuard(spec.checkpoint.preemption_poll_every) as guard:
    try:
      state, step, preempted = train_loop(
          built,
          state,
          run.batches,
          start,
          total,
          monitor,
          run.actions(),
          guard,
          spec.train.transfer_guard,
      )
    finally:
      monitor.close()
  if preempted:
    log(f"{guard.signal_name or 'stop'} received: saved step {step}; exiting cleanly.")
  elif run.last_eval_step != step:
    run.evaluate(step, state)
  return state, step, preempted, run, monitor


def _print_summary(out: dict, log) -> None:
  log(
      f"done: step {out['step']}{' (preempted)' if out['preempted'] else ''} in "
      f"{out['wall_s']:.0f}s"
  )
  log(f"  checkpoints  {out['checkpoints']}")
  log(f"  metrics      {out['metrics_jsonl']}")
  log(f"  tensorboard  {out['tensorboard']}   (tensorboard --logdir {out['tensorboard']})")
  if out["loss_plot"]:
    log(f"  loss plot    {out['loss_plot']}")
  if not math.isnan(out["val_loss"]):
    log(
        f"  final validation loss {out['val_loss']:.4f} nats/token, "
        f"bits-per-byte {out['val_bpb']:.4f}"
    )
  for line in cost_lib.describe(out["cost"]):
    log(f"  {line}")
