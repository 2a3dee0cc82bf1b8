"""Runs train_and_evaluate in a fresh process for tests/test_checkpoint.py.

    python tests/workers/checkpoint_run.py WORKDIR OVERRIDES_JSON FAULTS_JSON

OVERRIDES_JSON maps dotted config keys to values (applied to configs/default.py:size=tiny);
FAULTS_JSON injects failures: sigterm_at, nan_steps, nan_from, sigkill_after_save,
restore_io_error, dump_inputs_to (a directory: each step's input tokens as STEP.npy). Prints `RESULT {...}` (step, preempted, val_loss), or `ERROR ...` and exits 3.
"""

import json
import os
import signal
import sys

import numpy as np
import orbax.checkpoint as ocp

from configs import default
from train import trainer


def make_config(overrides: dict):
  config = default.get_config("size=tiny")
  for key, value in overrides.items():
    section, _, field = key.rpartition(".")
    node = config
    for part in filter(None, section.split(".")):
      node = node[part]
    node[field] = value
  return config


def fail_state_restores() -> None:
  """Every restore of the train state raises an I/O error (the params-only restore works)."""
  real_restore = ocp.CheckpointManager.restore

  def flaky_restore(self, step, *a, **kw):
    if "state" in str(kw.get("args")):
      raise OSError("[Errno 5] Input/output error (simulated)")
    return real_restore(self, step, *a, **kw)

  ocp.CheckpointManager.restore = flaky_restore


def make_hooks(faults: dict) -> trainer.Hooks:
  def batch_hook(step, batch):
    if faults.get("dump_inputs_to"):
      np.save(os.path.join(faults["dump_inputs_to"], f"{step}.npy"), batch["inputs"])
    if step == faults.get("sigterm_at"):
      os.kill(os.getpid(), signal.SIGTERM)
    if step in faults.get("nan_steps", []) or step >= faults.get("nan_from", 10**9):
      batch = dict(batch, weights=np.full_like(batch["weights"], np.nan))
    return batch

  def after_save(step):
    if step == faults.get("sigkill_after_save"):
      os.kill(os.getpid(), signal.SIGKILL)

  return trainer.Hooks(batch=batch_hook, after_save=after_save)


def main() -> None:
  workdir, overrides, faults = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
  config = make_config(overrides)
  if faults.get("restore_io_error"):
    fail_state_restores()
  try:
    out = trainer.train_and_evaluate(config, workdir, hooks=make_hooks(faults))
  except Exception as e:
    print("ERROR", type(e).__name__, e, flush=True)
    sys.exit(3)
  print("RESULT " + json.dumps({k: out[k] for k in ("step", "preempted", "val_loss")}), flush=True)


if __name__ == "__main__":
  main()
