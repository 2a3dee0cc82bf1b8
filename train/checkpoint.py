"""Orbax checkpoints of a run: save policy, retention, and restoring the latest good one.

Layout under the workdir:

    checkpoints/<step>/state     TrainState (params, optimizer state, step, RNG, counters)
    checkpoints/<step>/config    the resolved config (JSON)
    checkpoints/<step>/meta      step, wall time, tokens seen, process count (JSON)
    checkpoints/<step>/data      the input iterator's state, one JSON file per process
    checkpoints_corrupt/<name>   checkpoints that failed to restore or never finished,
                                 moved aside (never deleted) and reported

Saves are asynchronous (the step loop continues while arrays are written); retention keeps
the last `keep` and every `keep_every`-th step (Orbax preservation policies). Restore walks
from the newest step down and takes the first one that restores completely.
"""

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocm
from orbax.checkpoint.path import step as step_lib

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"


def run_path(workdir: str) -> epath.Path:
  """The workdir as an absolute path (Orbax's TensorStore backend rejects relative ones, and
  users pass `--workdir runs/x`); URLs such as gs://bucket/run are kept as they are."""
  text = os.fspath(workdir)
  return epath.Path(text if "://" in text else os.path.abspath(text))

# Config fields that may change between a run and its resumption (they do not change what
# is computed): where/how often things are written, evaluation cadence, process layout.
RESUMABLE_PREFIXES = ("checkpoint.", "eval.", "distributed.", "mesh.", "data.prepared_dir",
                      "data.num_workers", "train.log_every", "train.max_nonfinite_steps",
                      "name", "init_from")


# ------------------------------------------------------------------ per-process JSON item


class ProcessJsonHandler(ocp.JsonCheckpointHandler):
  """Like Orbax's JSON handler, but every process writes its own file (input iterators
  differ per process, as in Grain's own Orbax handler)."""

  def _filename_for_process(self) -> str:
    return f"process_{jax.process_index()}-of-{jax.process_count()}.json"

  async def _save_fn(self, x, directory):
    (directory / self._filename_for_process()).write_text(json.dumps(x))

  def restore(self, directory, item=None, args=None):
    path = directory / self._filename_for_process()
    if not path.exists():
      raise FileNotFoundError(f"{path} not found (iterator state of this process).")
    return json.loads(path.read_text())


@ocp.args.register_with_handler(ProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class ProcessJsonSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(ProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class ProcessJsonRestore(ocp.args.CheckpointArgs):
  item: Any = None


# ------------------------------------------------------------------ config comparison


def config_to_json(config) -> dict:
  """The config as plain JSON types (tuples become lists), as stored in checkpoints."""
  return json.loads(config.to_json()) if hasattr(config, "to_json") else json.loads(
      json.dumps(config))


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(d, dict):
    out = {}
    for k, v in d.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: d}


def config_differences(saved: dict, current: dict, ignore=RESUMABLE_PREFIXES) -> list[str]:
  """Lines 'field: saved -> current' for fields that differ and matter for resuming."""
  a, b = _flatten(saved), _flatten(current)
  lines = []
  for key in sorted(set(a) | set(b)):
    if any(key == p or key.startswith(p) for p in ignore):
      continue
    if a.get(key, "<absent>") != b.get(key, "<absent>"):
      lines.append(f"{key}: {a.get(key, '<absent>')!r} (checkpoint) -> "
                   f"{b.get(key, '<absent>')!r} (now)")
  return lines


class ConfigMismatchError(ValueError):
  pass


# ------------------------------------------------------------------ the manager


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  data_state: Any
  meta: dict
  config: dict


class Checkpointer:
  """One run's checkpoints. Every process calls every method (Orbax coordinates them)."""

  def __init__(self, workdir: str, ckpt_cfg, *, log: Callable[[str], None] = print):
    self.workdir = run_path(workdir)
    self.directory = self.workdir / CHECKPOINT_DIR
    self.every = int(ckpt_cfg.every)
    self._log = log
    policies = [ocm.LatestN(n=max(int(ckpt_cfg.keep), 1))]
    if int(ckpt_cfg.keep_every) > 0:
      policies.append(ocm.EveryNSteps(interval_steps=int(ckpt_cfg.keep_every)))
    self._move_aside_unfinished()
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocm.AnyPreservationPolicy(policies),
        enable_async_checkpointing=bool(ckpt_cfg.async_save),
        cleanup_tmp_directories=False,
        create=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_names=("state", "config", "meta", "data"),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler(),
                       "data": ProcessJsonHandler()})

  # -- housekeeping ------------------------------------------------------------------

  def _move_aside(self, path: epath.Path, why: str) -> None:
    """Moves a bad step directory to checkpoints_corrupt/ (process 0), then syncs."""
    if jax.process_index() == 0 and path.exists():
      dest_root = self.workdir / CORRUPT_DIR
      dest_root.mkdir(parents=True, exist_ok=True)
      dest = dest_root / f"{path.name}.{int(time.time())}"
      shutil.move(os.fspath(path), os.fspath(dest))
      self._log(f"checkpoint {path} {why}; moved aside to {dest} (not deleted).")
    _sync(f"unleash_move_aside_{path.name}")

  def _move_aside_unfinished(self) -> None:
    """Temporary directories of saves that never finished (e.g. the process was killed)."""
    if not self.directory.exists():
      return
    for tmp in sorted(self.directory.iterdir()):
      if step_lib.is_path_temporary(tmp):
        self._move_aside(tmp, "is an unfinished save (process stopped while writing)")

  # -- save ----------------------------------------------------------------------------

  def should_save(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state: Any, *, config, data_state: Any, meta: dict) -> bool:
    """Starts an (async) save of everything needed to resume exactly at `step`."""
    if step in self.manager.all_steps():
      return False
    meta = dict(meta, step=int(step), time=time.time(), process_count=jax.process_count())
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(config_to_json(config)),
        meta=ocp.args.JsonSave(meta),
        data=ProcessJsonSave(data_state))
    return self.manager.save(int(step), args=args, force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  # -- restore -------------------------------------------------------------------------

  def restore_latest(self, abstract_state: Any, *, config=None,
                     with_data: bool = True) -> Restored | None:
    """Restores the newest checkpoint that restores completely, or None if there is none.

    `abstract_state`: ShapeDtypeStructs with `.sharding` (restored straight into shards).
    A checkpoint that fails (missing or corrupt files) is reported, moved aside and the
    previous one tried. A config that differs in fields that matter raises
    ConfigMismatchError listing them (checked before any array is read).
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        saved_cfg = self.manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
      except Exception as e:  # pylint: disable=broad-except
        self._move_aside(self._step_dir(step), f"cannot be read ({type(e).__name__}: {e})")
        self.manager.reload()
        continue
      if config is not None:
        diff = config_differences(saved_cfg, config_to_json(config))
        if diff:
          raise ConfigMismatchError(
              f"{self.directory} holds a run with a different config; cannot resume it with "
              f"this one. Differences:\n  " + "\n  ".join(diff) +
              "\nUse the original config, or a fresh --workdir (or init_from=" +
              f"{os.fspath(self.workdir)!r} to start a new run from its parameters).")
      try:
        items = dict(state=ocp.args.StandardRestore(abstract_state),
                     meta=ocp.args.JsonRestore())
        if with_data:
          items["data"] = ProcessJsonRestore()
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        restored = Restored(step=step, state=out["state"],
                            data_state=out["data"] if with_data else None,
                            meta=dict(out["meta"]), config=saved_cfg)
        _check_restored(restored.state)
        return restored
      except Exception as e:  # pylint: disable=broad-except
        self._move_aside(self._step_dir(step),
                         f"failed to restore ({type(e).__name__}: {str(e)[:300]})")
        self.manager.reload()
    return None

  def _step_dir(self, step: int) -> epath.Path:
    return self.directory / str(step)


def _check_restored(state: Any) -> None:
  """Forces the arrays to be read now, so a corrupt file fails here and not mid-training."""
  jax.block_until_ready(state)


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def restore_params(workdir: str, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
  """Params only (no optimizer state) from another run's latest (or given) checkpoint,
  restored into the shardings of `abstract_params`; used by init_from and evaluation."""
  directory = run_path(workdir) / CHECKPOINT_DIR
  if not directory.exists():
    raise FileNotFoundError(f"{directory} does not exist: {workdir!r} is not a trained run.")
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
      item_names=("state",), item_handlers={"state": ocp.PyTreeCheckpointHandler()})
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{directory} holds no finished checkpoint.")
    target = {"params": abstract_params}
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=target, restore_args=_restore_args(target),
                                     partial_restore=True)))
    return out["state"]["params"], step
  finally:
    manager.close()


def _restore_args(target: Any) -> Any:
  def one(x):
    if isinstance(x, jax.ShapeDtypeStruct) and getattr(x, "sharding", None) is not None:
      return ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype)
    return ocp.RestoreArgs()
  return jax.tree_util.tree_map(one, target)


def save_params(workdir: str, params: Any, config, *, step: int = 0) -> str:
  """Writes a params-only checkpoint (state={"params": ...} + config) into WORKDIR/checkpoints,
  so that `init_from=WORKDIR` and `trainer.load_run(WORKDIR)` accept parameters that did not
  come from our trainer (e.g. imported from Hugging Face by eval/hf.py). Returns the step dir."""
  directory = run_path(workdir) / CHECKPOINT_DIR
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=True,
                                                      enable_async_checkpointing=False),
      item_names=("state", "config", "meta"),
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "config": ocp.JsonCheckpointHandler(),
                     "meta": ocp.JsonCheckpointHandler()})
  try:
    manager.save(int(step), force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"params": params}),
        config=ocp.args.JsonSave(config_to_json(config)),
        meta=ocp.args.JsonSave({"step": int(step), "params_only": True, "time": time.time()})))
    manager.wait_until_finished()
  finally:
    manager.close()
  return os.fspath(directory / str(int(step)))


def read_config(workdir: str) -> dict:
  """The config stored with a run's latest checkpoint (JSON dict)."""
  directory = run_path(workdir) / CHECKPOINT_DIR
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
      item_names=("config",), item_handlers={"config": ocp.JsonCheckpointHandler()})
  try:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"{directory} holds no finished checkpoint.")
    return dict(manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))["config"])
  finally:
    manager.close()
