"""Orbax checkpoints of a run: save policy, retention, and restoring the latest good one.

Layout under the workdir:

    checkpoints/<step>/state     TrainState (params, optimizer state, step, RNG, counters)
    checkpoints/<step>/config    the resolved config (JSON)
    checkpoints/<step>/meta      step, wall time, tokens seen, process count and the input
                                 iterator's GLOBAL position (JSON)
    checkpoints/<step>/integrity.json
                                 every file of `state` with its size, written once the save
                                 has finished: the checkpoint's own integrity record
    checkpoints_corrupt/<name>   checkpoints that never finished or fail their integrity
                                 record, moved aside (never deleted) and reported

Saves are asynchronous (the step loop continues while arrays are written); retention keeps
the last `keep` and every `keep_every`-th step (Orbax preservation policies).

Restoring is independent of the process count and the mesh: arrays are read straight into
the shardings of the run that restores them, and the data position is global (the loader
gives global batch g the same windows whatever the process count, see train/data/pipeline),
so a run saved by N processes resumes on M. Restore walks from the newest step down. Only a
checkpoint that never finished or fails its own integrity record is set aside (and the
previous one tried); any other failure (I/O, memory, a bug) stops with one message and moves
nothing, so a good checkpoint is never set aside by mistake.
"""

import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterator

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocm
from orbax.checkpoint.path import step as step_lib

from train import cli
from train import paths
from train import spec as spec_lib

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"


# Config fields that may change between a run and its resumption (they do not change what
# is computed): where/how often things are written, evaluation cadence, process layout.
# `train.steps` may grow or shrink: the run is extended (or stopped earlier); the trainer logs
# how the schedule's shape changes with it.
RESUMABLE_PREFIXES = (
    "checkpoint.",
    "eval.",
    "distributed.",
    "cost.",
    "mesh.",
    "data.prepared_dir",
    "data.num_workers",
    "train.log_every",
    "train.max_nonfinite_steps",
    "train.transfer_guard",
    "train.steps",
    "name",
    "init_from",
)
INTEGRITY_FILE = "integrity.json"


# ------------------------------------------------------------------ config comparison


def config_to_json(config) -> dict:
  """The config as plain JSON types (tuples become lists), as stored in checkpoints."""
  return (
      json.loads(config.to_json()) if hasattr(config, "to_json") else json.loads(json.dumps(config))
  )


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(d, dict):
    out = {}
    for k, v in d.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: d}


def _schema_defaults() -> dict[str, Any]:
  """Every schema field's default, flattened (`model.num_layers`: 4, ...)."""
  sections = {name: spec_lib.defaults(cls) for name, cls in spec_lib.SECTIONS.items()}
  return _flatten(config_to_json(sections))


def config_differences(saved: dict, current: dict, ignore=RESUMABLE_PREFIXES) -> list[str]:
  """Lines 'field: saved -> current' for fields that differ and matter for resuming. A field
  the checkpoint's config lacks (it was written before the field existed) counts as its
  default, so a run saved by an older version resumes while the field keeps that default."""
  a, b = _flatten(saved), _flatten(current)
  defaults = _schema_defaults()
  a.update({k: v for k, v in defaults.items() if k not in a and k in b})
  lines = []
  for key in sorted(set(a) | set(b)):
    if any(key == p or key.startswith(p) for p in ignore):
      continue
    if a.get(key, "<absent>") != b.get(key, "<absent>"):
      lines.append(
          f"{key}: {a.get(key, '<absent>')!r} (checkpoint) -> " f"{b.get(key, '<absent>')!r} (now)"
      )
  return lines


class ConfigMismatchError(ValueError):
  pass


class RestoreError(cli.Error):
  """A checkpoint that passed its integrity check could not be restored (I/O, memory, ...).
  Nothing was moved: fix the cause and rerun."""


# ------------------------------------------------------------------ the manager


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  data_state: dict  # the input iterator's state: global, valid for any process count
  meta: dict
  config: dict


class Checkpointer:
  """One run's checkpoints. Every process calls every method (Orbax coordinates them)."""

  def __init__(self, workdir: str, ckpt_cfg, *, log: Callable[[str], None] = print):
    self.workdir = paths.path(workdir)  # absolute: TensorStore rejects relative paths
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
        create=True,
    )
    self.manager = _writing_manager(self.directory, options)

  # -- housekeeping ------------------------------------------------------------------

  def _move_aside(self, path: epath.Path, why: str) -> None:
    """Moves a bad step directory to checkpoints_corrupt/ (process 0), then syncs."""
    if jax.process_index() == 0 and path.exists():
      dest_root = self.workdir / CORRUPT_DIR
      dest_root.mkdir(parents=True, exist_ok=True)
      dest = dest_root / f"{path.name}.{int(time.time())}"
      path.rename(dest)
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

  def save(self, step: int, state: Any, *, config, data_state: dict, meta: dict) -> bool:
    """Starts an (async) save of everything needed to resume exactly at `step`.

    `data_state` is the input iterator's state; the loader makes it the same on every
    process (the global batch index), so it is stored once, in `meta`.
    """
    if step in self.manager.all_steps():
      return False
    meta = dict(
        meta,
        step=int(step),
        time=time.time(),
        process_count=jax.process_count(),
        data_state=dict(data_state),
    )
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(config_to_json(config)),
        meta=ocp.args.JsonSave(meta),
    )
    started = self.manager.save(int(step), args=args, force=True)
    self._seal_finished(below=int(step))  # Orbax finished the previous save before this one
    return started

  def wait(self) -> None:
    self.manager.wait_until_finished()
    self._seal_finished()

  def close(self) -> None:
    self.wait()
    self.manager.close()

  # -- integrity -----------------------------------------------------------------------

  def _seal_finished(self, below: int | None = None) -> None:
    """Writes the integrity record of every finished step that lacks one (process 0)."""
    if jax.process_index() != 0:
      return
    for step in self.manager.all_steps():
      if below is not None and step >= below:
        continue
      record = self._step_dir(step) / INTEGRITY_FILE
      if record.exists():
        continue
      try:
        files = paths.files(self._step_dir(step) / "state")
      except FileNotFoundError:  # deleted by retention meanwhile
        continue
      paths.write_text_atomic(record, json.dumps({"step": int(step), "state_files": files}))

  def integrity_problem(self, step: int) -> str | None:
    """Why `step` fails its own integrity record (a file missing or of another size), or
    None when it passes or has no record (an older checkpoint: then it is not judged)."""
    record = self._step_dir(step) / INTEGRITY_FILE
    if not record.exists():
      return None
    try:
      want = json.loads(record.read_text())["state_files"]
    except (ValueError, KeyError) as e:
      return f"has an unreadable integrity record ({e})"
    have = paths.files(self._step_dir(step) / "state")
    for name, size in want.items():
      if name not in have:
        return f"fails its integrity record: state/{name} is missing"
      if have[name] != size:
        return (
            f"fails its integrity record: state/{name} has {have[name]} bytes, "
            f"{size} were written"
        )
    return None

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  # -- restore -------------------------------------------------------------------------

  def restore_latest(self, abstract_state: Any, *, config=None) -> Restored | None:
    """Restores the newest good checkpoint, or None if there is none.

    `abstract_state`: ShapeDtypeStructs with `.sharding` (restored straight into shards,
    whatever mesh or process count saved them). A checkpoint that fails its integrity record
    (or whose config JSON is unreadable) is reported, moved aside and the previous one
    tried. A config that differs in fields that matter raises ConfigMismatchError listing
    them (checked before any array is read). Any other failure raises RestoreError and
    moves nothing.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      problem = self.integrity_problem(step)
      saved_cfg = None
      if problem is None:
        try:
          saved_cfg = self.manager.restore(
              step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
          )["config"]
        except (ValueError, FileNotFoundError) as e:  # JSON missing or not JSON
          problem = f"has an unreadable config ({type(e).__name__}: {str(e)[:200]})"
      if problem is not None:
        self._move_aside(self._step_dir(step), problem)
        self.manager.reload()
        continue
      if config is not None:
        _check_config(saved_cfg, config, self.directory, self.workdir)
      try:
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        jax.block_until_ready(out["state"])  # a corrupt file fails here, not mid-training
      except Exception as e:  # pylint: disable=broad-except
        raise RestoreError(
            f"{self._step_dir(step)} passed its integrity check but could not be restored "
            f"({type(e).__name__}: {_one_line(e)}); nothing was moved. Fix the cause (disk, "
            "memory, a changed model) and rerun to resume from it."
        ) from e
      meta = dict(out["meta"])
      return Restored(
          step=step,
          state=out["state"],
          data_state=self._data_state(step, meta),
          meta=meta,
          config=saved_cfg,
      )
    return None

  def _data_state(self, step: int, meta: dict) -> dict:
    """The iterator state: from meta, or (checkpoints written before it moved there) from
    any process's file in the old per-process `data` item (they all hold the same state)."""
    if "data_state" in meta:
      return dict(meta["data_state"])
    for path in sorted((self._step_dir(step) / "data").glob("process_*-of-*.json")):
      return json.loads(path.read_text())
    raise RestoreError(
        f"{self._step_dir(step)} holds no input-iterator position; resume it "
        "with the code that wrote it, or start a new run with init_from."
    )

  def _step_dir(self, step: int) -> epath.Path:
    return self.directory / str(step)


def _check_config(saved: dict, config, directory, workdir) -> None:
  diff = config_differences(saved, config_to_json(config))
  if diff:
    raise ConfigMismatchError(
        f"{directory} holds a run with a different config; cannot resume it with this one. "
        "Differences: " + "; ".join(diff) + ". Use the original config, or a fresh --workdir "
        f"(or init_from={os.fspath(workdir)!r} to start a new run from its parameters)."
    )


def _one_line(e: BaseException, limit: int = 300) -> str:
  return " ".join(str(e).split())[:limit]


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def restore_params(workdir: str, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
  """Params only (no optimizer state) from another run's latest (or given) checkpoint,
  restored into the shardings of `abstract_params`; used by init_from and evaluation."""
  with _reader(workdir, "state", ocp.PyTreeCheckpointHandler()) as manager:
    step = _latest(manager) if step is None else step
    target = {"params": abstract_params}
    out = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=target, restore_args=_restore_args(target), partial_restore=True
            )
        ),
    )
    return out["state"]["params"], step


def saved_steps(workdir: str) -> list[int]:
  """The steps of a run's finished checkpoints, oldest first."""
  with _reader(workdir, "state", ocp.PyTreeCheckpointHandler()) as manager:
    return sorted(int(s) for s in manager.all_steps())


def read_config(workdir: str) -> dict:
  """The config stored with a run's latest checkpoint (JSON dict)."""
  with _reader(workdir, "config", ocp.JsonCheckpointHandler()) as manager:
    args = ocp.args.Composite(config=ocp.args.JsonRestore())
    return dict(manager.restore(_latest(manager), args=args)["config"])


def _latest(manager: ocp.CheckpointManager) -> int:
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"{manager.directory} holds no finished checkpoint.")
  return step


@contextlib.contextmanager
def _reader(workdir: str, item: str, handler) -> Iterator[ocp.CheckpointManager]:
  """A manager that only reads one item of a run's checkpoints, closed on exit. Orbax logs two
  warnings for every read-only manager (the option adjustments and "directory is read
  only"), which say nothing to a user evaluating runs (eval.report opens one per ladder
  point): they are silenced here."""
  directory = paths.path(workdir) / CHECKPOINT_DIR
  if not directory.exists():
    raise FileNotFoundError(f"{directory} does not exist: {workdir!r} is not a trained run.")
  previous = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_names=(item,),
        item_handlers={item: handler},
    )
  finally:
    absl_logging.set_verbosity(previous)
  try:
    yield manager
  finally:
    manager.close()


def _restore_args(target: Any) -> Any:
  def one(x):
    if isinstance(x, jax.ShapeDtypeStruct) and getattr(x, "sharding", None) is not None:
      return ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype)
    return ocp.RestoreArgs()

  return jax.tree_util.tree_map(one, target)


def _writing_manager(directory, options) -> ocp.CheckpointManager:
  """A manager of a run's three items: the train state, its config and the checkpoint's meta."""
  return ocp.CheckpointManager(
      directory,
      options=options,
      item_names=("state", "config", "meta"),
      item_handlers={
          "state": ocp.StandardCheckpointHandler(),
          "config": ocp.JsonCheckpointHandler(),
          "meta": ocp.JsonCheckpointHandler(),
      },
  )


def save_params(workdir: str, params: Any, config, *, step: int = 0) -> str:
  """Writes a params-only checkpoint (state={"params": ...} + config) into WORKDIR/checkpoints,
  so that `init_from=WORKDIR` and `run_lib.load_run(WORKDIR)` accept parameters that did not
  come from our trainer (e.g. imported from Hugging Face by eval/hf.py). Returns the step dir."""
  directory = paths.path(workdir) / CHECKPOINT_DIR
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
  manager = _writing_manager(directory, options)
  try:
    manager.save(
        int(step),
        force=True,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave({"params": params}),
            config=ocp.args.JsonSave(config_to_json(config)),
            meta=ocp.args.JsonSave({"step": int(step), "params_only": True, "time": time.time()}),
        ),
    )
    manager.wait_until_finished()
  finally:
    manager.close()
  return os.fspath(directory / str(int(step)))
