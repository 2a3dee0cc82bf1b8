"""The training loop: `train_and_evaluate(config, workdir)`, and `load_run(workdir)` for eval/.

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

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from train import build as build_lib
from train import checkpoint as ckpt_lib
from train import distributed
from train import evaluate as eval_lib
from train import inputs as inputs_lib
from train import mesh as mesh_lib
from train import metrics as metrics_lib
from train import plot as plot_lib
from train import preemption
from train import state as state_lib


class NonFiniteError(RuntimeError):
  """Raised after `train.max_nonfinite_steps` consecutive skipped (non-finite) updates."""


@dataclasses.dataclass
class Hooks:
  """Test seams (fault injection); production runs leave them None."""
  batch: Callable[[int, dict], dict] | None = None   # (step, local numpy batch) -> batch
  after_save: Callable[[int], None] | None = None    # called right after a save is started


# ------------------------------------------------------------------ setup helpers


def _printer(process_index: int) -> Callable[[str], None]:
  def log(msg: str) -> None:
    if process_index == 0:
      from tqdm import tqdm
      tqdm.write(msg)
  return log


def prepared_dir(config, workdir: str) -> str:
  """Where the data is prepared: config.data.prepared_dir, or a cache under the workdir."""
  if config.data.prepared_dir:
    return os.fspath(config.data.prepared_dir)
  from train.data import pipeline
  return os.fspath(pipeline.default_prepared_dir(config.data, os.path.join(workdir, "data")))


def load_data(config, workdir: str, *, progress: bool = True):
  """Prepares (once; process 0 first) and opens the data: train iterator, eval source."""
  from train.data import pipeline
  directory = prepared_dir(config, workdir)
  kwargs = dict(global_batch_size=int(config.train.batch_size), seed=int(config.seed),
                process_index=jax.process_index(), process_count=jax.process_count(),
                model_vocab_size=int(config.model.vocab_size))
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      pipeline.load_for_training(config.data, directory, progress=progress, **kwargs)
    ckpt_lib._sync("unleash_data_prepared")  # pylint: disable=protected-access
  return pipeline.load_for_training(config.data, directory,
                                    progress=progress and jax.process_index() == 0, **kwargs)


def _flops_per_token(config) -> float:
  try:
    from model import summary
    return float(summary.flops_per_token_train(config.model, int(config.data.seq_len)))
  except Exception:  # pylint: disable=broad-except
    return float("nan")


def _restore_or_init(config, built: build_lib.Built, ckpt: ckpt_lib.Checkpointer, train_iter,
                     log) -> tuple[state_lib.TrainState, int, bool]:
  """(state, start step, resumed?) from this workdir's checkpoints, init_from, or fresh."""
  restored = ckpt.restore_latest(built.sharded_abstract_state(), config=config)
  if restored is not None:
    train_iter.set_state(restored.data_state)
    log(f"resumed from {ckpt.directory}/{restored.step} (step {restored.step})")
    return restored.state, restored.step, True
  if config.init_from:
    params, src_step = ckpt_lib.restore_params(config.init_from,
                                               built.sharded_abstract_state().params)
    log(f"initialised parameters from {config.init_from} (its step {src_step}); "
        "fresh optimizer state")
    return state_lib.state_from_params(params, config, built.tx, built.state_shardings), 0, False
  return built.init_state(), 0, False


# ------------------------------------------------------------------ the loop


class _Loop:
  """The per-run mutable bits of the loop, so that each piece stays a short method."""

  def __init__(self, config, workdir, built, data, ckpt, writer, log, hooks, start):
    self.config, self.workdir, self.built, self.data = config, workdir, built, data
    self.ckpt, self.writer, self.log, self.hooks = ckpt, writer, log, hooks or Hooks()
    self.total = int(config.train.steps)
    self.batch_size = int(config.train.batch_size)
    self.tokens_per_step = self.batch_size * int(config.data.seq_len)
    self.log_every = max(int(config.train.log_every), 1)
    self.max_nonfinite = int(config.train.max_nonfinite_steps)
    self.flops_per_token = _flops_per_token(config)
    self.peak, self.peak_source = metrics_lib.peak_flops_per_device()
    # CPU "devices" (train/cpu_devices.py) share the cores the matmul peak was measured on.
    cpu = built.mesh.devices.flat[0].platform == "cpu"
    self.num_devices = 1 if cpu else built.mesh.devices.size
    self.pending = None
    self.start_time = time.perf_counter()
    self.window_time = self.window_step = None
    self.window_losses = []
    self.last_train = {}
    self.last_eval = {}
    self.last_saved = start
    self.last_eval_step = None
    self.bar = None
    if jax.process_index() == 0:
      from tqdm import tqdm
      self.bar = tqdm(total=self.total, initial=start, unit="step", dynamic_ncols=True,
                      desc=config.name)

  # -- metrics ---------------------------------------------------------------------

  def consume(self) -> None:
    """Fetches the pending step's metrics (one step late), logs them, checks finiteness."""
    if self.pending is None:
      return
    step, m = self.pending
    self.pending = None
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    now = time.perf_counter()
    if self.window_time is None:
      # First step after start or an eval: its time includes compilation, so the timing
      # window starts after it.
      if self.start_time is not None:
        self.writer.event(step, "first_step", seconds=now - self.start_time)
        self.start_time = None
      self.window_time, self.window_step = now, step
    if m["skipped"]:
      self.writer.event(step, "nonfinite_update_skipped", loss=m["loss"],
                        grad_norm=m["grad_norm"], streak=m["nonfinite_streak"])
      self.log(f"step {step}: non-finite loss/gradient; update skipped "
               f"({int(m['nonfinite_streak'])} in a row, {int(m['skipped_total'])} in total)")
    else:
      self.window_losses.append(m["loss"])
    if self.bar is not None:
      self.bar.update(1)
      self.bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)
    if step % self.log_every == 0 or step == self.total:
      self._log_train(step, m, now)
    if self.max_nonfinite > 0 and m["nonfinite_streak"] >= self.max_nonfinite:
      self.ckpt.wait()
      good = self.ckpt.latest_step()
      raise NonFiniteError(
          f"{int(m['nonfinite_streak'])} consecutive steps (up to step {step}) had a non-finite "
          f"loss or gradient; stopping (train.max_nonfinite_steps={self.max_nonfinite}). "
          f"The last good checkpoint is {self.ckpt.directory}/{good}; lower the learning rate, "
          "check the data, or enable z_loss before resuming.")

  def _log_train(self, step, m, now) -> None:
    n = step - self.window_step
    step_time = (now - self.window_time) / n if n > 0 else float("nan")
    self.window_time, self.window_step = now, step
    tps = self.tokens_per_step / step_time if step_time > 0 else float("nan")
    mfu = self.flops_per_token * tps / (self.peak * self.num_devices)
    row = dict(m, loss_mean=float(np.mean(self.window_losses)) if self.window_losses
               else float("nan"), step_time_s=step_time, tokens_per_s=tps, mfu=mfu,
               tokens_seen=step * self.tokens_per_step)
    self.window_losses = []
    self.last_train = row
    self.writer.write(step, row, "train")

  # -- evaluation and checkpoints ----------------------------------------------------

  def evaluate(self, step: int, state) -> dict:
    self.last_eval_step = step
    if int(self.config.eval.batches) == 0:   # 0: evaluation off (benchmarks, tests)
      return {}
    results = eval_lib.evaluate(
        self.built.eval_step, state.params, self.data.eval_source,
        global_batch_size=self.batch_size,
        max_batches=None if int(self.config.eval.batches) < 0 else int(self.config.eval.batches),
        process_index=jax.process_index(), process_count=jax.process_count())
    self.writer.write(step, eval_lib.flat_metrics(results), "eval")
    self.last_eval, self.last_eval_step = results, step
    a = results.get("all", {})
    per = ", ".join(f"{d} {r['bpb']:.3f}±{r['bpb_se']:.3f}" for d, r in results.items()
                    if d != "all" and "bpb" in r)
    self.log(f"step {step}: val loss {a.get('loss', float('nan')):.4f}, "
             f"bpb {a.get('bpb', float('nan')):.4f} ({per})")
    # The eval's own time must not count as the next steps' time.
    self.window_time = None
    return results

  def save(self, step: int, state) -> None:
    if step == self.last_saved and step in self.ckpt.all_steps():
      return
    self.ckpt.save(step, state, config=self.config, data_state=self.data.train_iter.get_state(),
                   meta={"tokens_seen": step * self.tokens_per_step})
    self.last_saved = step
    if self.hooks.after_save is not None:
      self.hooks.after_save(step)

  # -- the loop ----------------------------------------------------------------------

  def run(self, state, start: int, guard: preemption.PreemptionGuard):
    """Runs steps start..total-1; returns (state, step reached, preempted?)."""
    built, every_eval = self.built, int(self.config.eval.every)
    sharding = built.train_step.batch_sharding
    transfer_guard = self.config.train.transfer_guard
    step = start
    while step < self.total:
      local = next(self.data.train_iter)
      if self.hooks.batch is not None:
        local = self.hooks.batch(step, local)
      batch = inputs_lib.to_global(local, sharding, self.batch_size)
      with jax.transfer_guard(transfer_guard):
        state, metrics = built.train_step(state, batch)
      self.consume()
      step += 1
      self.pending = (step, metrics)
      stop = guard.requested()
      if self.ckpt.should_save(step) or step == self.total or stop:
        self.consume()
        self.save(step, state)
      if every_eval > 0 and step % every_eval == 0 and step != self.total:
        self.consume()
        self.evaluate(step, state)
      if stop:
        self.consume()
        self.log(f"{guard.signal_name or 'stop'} received: saved step {step}; exiting cleanly.")
        return state, step, True
    self.consume()
    return state, step, False

  def close(self):
    if self.bar is not None:
      self.bar.close()


def _summary(workdir, ckpt, writer, plot_path, loop: _Loop, step, preempted, wall) -> dict:
  a = loop.last_eval.get("all", {})
  out = {
      "workdir": os.fspath(workdir), "step": step, "preempted": preempted,
      "train_loss": loop.last_train.get("loss", float("nan")),
      "val_loss": a.get("loss", float("nan")), "val_bpb": a.get("bpb", float("nan")),
      "val": loop.last_eval, "tokens_seen": step * loop.tokens_per_step, "wall_s": wall,
      "checkpoints": os.fspath(ckpt.directory), "metrics_jsonl": writer.jsonl_path,
      "tensorboard": writer.tb_dir, "loss_plot": plot_path, "peak_flops_source": loop.peak_source,
      "mfu": loop.last_train.get("mfu", float("nan")),
      "tokens_per_s": loop.last_train.get("tokens_per_s", float("nan")),
  }
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       hooks: Hooks | None = None) -> dict:
  """Trains `config` in `workdir` (resuming if it holds checkpoints), evaluates, and returns
  the final metrics: step, train_loss, val_loss, val_bpb, val (per domain, with SEs),
  tokens_seen, wall_s, and where checkpoints/metrics/plot are. Raises NonFiniteError after
  too many non-finite steps and ckpt_lib.ConfigMismatchError for an incompatible workdir."""
  t0 = time.time()
  distributed.maybe_initialize(config.distributed)
  log = _printer(jax.process_index())
  workdir = os.path.abspath(os.fspath(workdir))
  os.makedirs(workdir, exist_ok=True)
  from train.data import tokenizer as tok_lib
  tok = tok_lib.load(config.data.tokenizer)
  built = build_lib.build(config, mask_id=tok.mask_id)   # validates config vs mesh first
  data = load_data(config, workdir)
  ckpt = ckpt_lib.Checkpointer(workdir, config.checkpoint, log=log)
  writer = metrics_lib.MetricsWriter(workdir)
  try:
    state, start, resumed = _restore_or_init(config, built, ckpt, data.train_iter, log)
    loop = _Loop(config, workdir, built, data, ckpt, writer, log, hooks, start)
    n_params = state_lib.count_params(built.abstract_state.params)
    if resumed:
      writer.event(start, "resume")
    log(f"{config.name}: {n_params / 1e6:.2f}M params, mesh {dict(built.mesh.shape)}, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{jax.process_count()} process(es), steps {start}->{loop.total}; "
        f"MFU peak: {loop.peak_source}")
    with preemption.PreemptionGuard() as guard:
      try:
        state, step, preempted = loop.run(state, start, guard)
      finally:
        loop.close()
    if not preempted and loop.last_eval_step != step:
      loop.evaluate(step, state)
    ckpt.wait()
  finally:
    writer.close()
    ckpt.close()
  plot_path = plot_lib.loss_plot(workdir) if jax.process_index() == 0 else None
  out = _summary(workdir, ckpt, writer, plot_path, loop, step, preempted, time.time() - t0)
  _print_summary(out, log)
  return out


def _print_summary(out: dict, log) -> None:
  log(f"done: step {out['step']}{' (preempted)' if out['preempted'] else ''} in "
      f"{out['wall_s']:.0f}s")
  log(f"  checkpoints  {out['checkpoints']}")
  log(f"  metrics      {out['metrics_jsonl']}")
  log(f"  tensorboard  {out['tensorboard']}   (tensorboard --logdir {out['tensorboard']})")
  if out["loss_plot"]:
    log(f"  loss plot    {out['loss_plot']}")
  if not math.isnan(out["val_loss"]):
    log(f"  final validation loss {out['val_loss']:.4f} nats/token, "
        f"bits-per-byte {out['val_bpb']:.4f}")


# ------------------------------------------------------------------ loading for eval/


@dataclasses.dataclass
class Run:
  """A trained run, ready for evaluation: see eval/perplexity, generate, zeroshot, hf."""
  config: ml_collections.ConfigDict
  params: Any            # fp32, sharded on `mesh`
  tokenizer: Any
  mesh: jax.sharding.Mesh
  model: Any             # Transformer(decode=False)
  step: int
  workdir: str


def config_from_workdir(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config stored with the run's latest checkpoint."""
  return ml_collections.ConfigDict(ckpt_lib.read_config(workdir))


def load_run(workdir: str, *, step: int | None = None, mesh: jax.sharding.Mesh | None = None
             ) -> Run:
  """Config + params + tokenizer + mesh of a run (params only; no optimizer state).

  The mesh defaults to the run's own `config.mesh`, or pure data parallel over the devices
  present if that layout does not fit them.
  """
  config = config_from_workdir(workdir)
  if mesh is None:
    try:
      mesh = mesh_lib.make_mesh(config)
    except ValueError:
      config.mesh.shape = (-1, 1, 1)
      config.mesh.dcn_shape = (1, 1, 1)
      mesh = mesh_lib.make_mesh(config)
  model = state_lib.make_model(config)
  boxed = state_lib.abstract_variables(config, model, mesh)
  shardings = mesh_lib.param_shardings(boxed["params"], mesh, mesh_lib.axis_rules(config))
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nn.unbox(boxed["params"]), shardings)
  params, got = ckpt_lib.restore_params(workdir, abstract, step)
  from train.data import tokenizer as tok_lib
  return Run(config, params, tok_lib.load(config.data.tokenizer), mesh, model, got,
             os.fspath(workdir))
