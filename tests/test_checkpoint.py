"""Checkpoint behaviour of the real trainer (tiny model, embedded corpus, CPU).

Each run is a subprocess (signals, SIGKILL, clean JAX state) sharing a persistent XLA cache
and one prepared-data directory, so only the first run pays for compilation.
Straight run: 8 steps, checkpoints every 2. Everything else is compared with it bitwise.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import default
from train import checkpoint as ckpt_lib
from train import metrics
from train import run as run_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 8

# Runs train_and_evaluate in a fresh process; argv: workdir, overrides JSON, faults JSON.
RUNNER = REPO / "tests" / "workers" / "checkpoint_run.py"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("ckpt")
  e = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      JAX_COMPILATION_CACHE_DIR=str(root / "xla"),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
      PYTHONPATH=str(REPO),
  )
  e.pop("XLA_FLAGS", None)
  return {"env": e, "root": root, "prepared": str(root / "prepared")}


def run(env, workdir, faults=None, **overrides):
  base = {
      "train.steps": STEPS,
      "train.log_every": 1,
      "checkpoint.every": 2,
      "checkpoint.keep": 10,
      "eval.every": 0,
      "eval.batches": 1,
      "data.prepared_dir": env["prepared"],
  }
  base.update(overrides)
  p = subprocess.run(
      [sys.executable, str(RUNNER), str(workdir), json.dumps(base), json.dumps(faults or {})],
      env=env["env"],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
  )
  return p.returncode, p.stdout + p.stderr


def train_rows(workdir):
  return {r["step"]: r for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))}


def final_params(workdir):
  run_ = run_lib.load_run(str(workdir))
  return run_.step, jax.tree_util.tree_map(np.asarray, run_.params)


def assert_same_params(a, b):
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


def assert_same_losses(a, b):
  assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
  for s in a:
    assert a[s]["loss"] == b[s]["loss"], s  # bitwise (JSON floats round-trip)
    assert a[s]["grad_norm"] == b[s]["grad_norm"], s


@pytest.fixture(scope="module")
def straight(env):
  wd = env["root"] / "straight"
  rc, out = run(env, wd)
  assert rc == 0, out
  step, params = final_params(wd)
  assert step == STEPS
  return {"workdir": wd, "params": params, "rows": train_rows(wd)}


def test_sigterm_then_resume_is_bitwise_identical(env, straight):
  wd = env["root"] / "sigterm"
  rc, out = run(env, wd, faults={"sigterm_at": 3})  # signal during step 4's input
  assert rc == 0, out
  assert '"preempted": true' in out and "SIGTERM received: saved step 4" in out, out
  rc, out = run(env, wd)
  assert rc == 0, out
  assert "resumed from" in out and "(step 4)" in out, out
  assert_same_params(final_params(wd)[1], straight["params"])
  assert_same_losses(train_rows(wd), straight["rows"])


def test_sigkill_during_async_save_resumes_from_last_complete(env, straight):
  wd = env["root"] / "sigkill"
  rc, out = run(env, wd, faults={"sigkill_after_save": 6})
  assert rc == -9, out
  assert (wd / "checkpoints" / "4").is_dir()
  assert not (wd / "checkpoints" / "6").is_dir(), "save of step 6 finished before the kill"
  rc, out = run(env, wd)
  assert rc == 0, out
  assert "unfinished save" in out and "(step 4)" in out, out
  assert any(
      p.name.startswith("6.orbax-checkpoint-tmp") for p in (wd / "checkpoints_corrupt").iterdir()
  )
  assert_same_params(final_params(wd)[1], straight["params"])
  assert_same_losses(train_rows(wd), straight["rows"])


def test_corrupt_newest_checkpoint_falls_back_to_previous(env, straight):
  wd = env["root"] / "corrupt"
  shutil.copytree(straight["workdir"], wd)
  for f in (wd / "checkpoints" / str(STEPS) / "state").rglob("*"):
    if f.is_file() and ("manifest" in f.name or "ocdbt" in str(f.parent)):
      f.write_bytes(b"not a checkpoint")
  rc, out = run(env, wd)
  assert rc == 0, out
  assert f"checkpoints/{STEPS}" in out and "fails its integrity record" in out, out
  assert f"(step {STEPS - 2})" in out, out
  assert any(p.name.startswith(f"{STEPS}.") for p in (wd / "checkpoints_corrupt").iterdir())
  assert_same_params(final_params(wd)[1], straight["params"])
  assert_same_losses(train_rows(wd), straight["rows"])


def test_restore_error_that_is_not_corruption_stops_and_moves_nothing(env, straight):
  """A transient I/O error (or memory, or a bug) on a checkpoint that passes its integrity
  record must not set it aside: the run stops with one message and the next run resumes."""
  wd = env["root"] / "io_error"
  shutil.copytree(straight["workdir"], wd)
  rc, out = run(env, wd, faults={"restore_io_error": True})
  assert rc == 3, out
  assert "RestoreError" in out and "passed its integrity check" in out, out
  assert "nothing was moved" in out and "Input/output error" in out, out
  assert not (wd / "checkpoints_corrupt").exists()
  assert (wd / "checkpoints" / str(STEPS) / "integrity.json").is_file()
  rc, out = run(env, wd)
  assert rc == 0 and f"(step {STEPS})" in out, out


def test_extending_a_finished_run_resumes_and_says_how_the_schedule_changes(env, straight):
  wd = env["root"] / "extend"
  shutil.copytree(straight["workdir"], wd)
  rc, out = run(env, wd, **{"train.steps": STEPS + 2})
  assert rc == 0, out
  assert f"(step {STEPS})" in out, out
  assert f"train.steps {STEPS} -> {STEPS + 2}: the run is extended" in out, out
  assert "cosine schedule is re-stretched" in out, out
  rows = train_rows(wd)
  assert sorted(rows)[-2:] == [STEPS + 1, STEPS + 2]
  events = metrics.read_jsonl(os.path.join(wd, "metrics.jsonl"), kind="event")
  change = [e for e in events if e.get("event") == "schedule_changed"]
  assert change and change[-1]["steps_before"] == STEPS and change[-1]["steps_after"] == STEPS + 2


def test_resume_with_other_config_lists_differences(env, straight):
  wd = env["root"] / "mismatch"
  shutil.copytree(straight["workdir"], wd)
  rc, out = run(env, wd, **{"model.mlp_dim": 128, "train.learning_rate": 1e-3})
  assert rc == 3, out
  assert "ConfigMismatchError" in out and "model.mlp_dim: 64 (checkpoint) -> 128 (now)" in out
  assert "train.learning_rate" in out


def test_nan_batch_is_skipped_and_training_continues(env):
  wd = env["root"] / "nan_once"
  rc, out = run(env, wd, faults={"nan_steps": [3]})
  assert rc == 0, out
  rows = train_rows(wd)
  assert rows[4]["skipped"] == 1 and rows[4]["skipped_total"] == 1  # step 3 -> logged as 4
  assert rows[STEPS]["skipped_total"] == 1 and np.isfinite(rows[STEPS]["loss"])
  assert rows[5]["nonfinite_streak"] == 0


def test_consecutive_nonfinite_steps_stop_with_good_checkpoint(env):
  wd = env["root"] / "nan_many"
  rc, out = run(env, wd, faults={"nan_from": 2}, **{"train.max_nonfinite_steps": 2})
  assert rc == 3, out
  assert "NonFiniteError" in out and "consecutive" in out and "checkpoints/2" in out, out
  step, params = final_params(wd)
  assert step == 2
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))


def test_init_from_loads_parameters_with_fresh_optimizer(env, straight):
  wd = env["root"] / "finetune"
  rc, out = run(
      env, wd, **{"init_from": str(straight["workdir"]), "train.steps": 2, "checkpoint.every": 0}
  )
  assert rc == 0, out
  assert "initialised parameters from" in out, out
  rows = train_rows(wd)
  fresh_first = straight["rows"][1]["loss"]
  assert rows[1]["loss"] < fresh_first - 0.3, (rows[1]["loss"], fresh_first)
  assert rows[1]["lr"] == 0.0  # warmup restarts: a fresh optimizer and schedule


def test_data_constrained_resume_mid_second_epoch_is_bitwise_identical(env):
  """640 unique tokens = 2.5 batches of 8 x 32: 8 steps are 3.2 epochs, the SIGTERM saves
  step 4 (half-way through the second epoch) and batches straddle epoch boundaries."""
  capped = {"data.max_unique_tokens": 640}
  straight, wd = env["root"] / "capped_straight", env["root"] / "capped_sigterm"
  dumps = {k: env["root"] / f"capped_inputs_{k}" for k in ("straight", "resumed")}
  for d in dumps.values():
    d.mkdir()
  rc, out = run(env, straight, faults={"dump_inputs_to": str(dumps["straight"])}, **capped)
  assert rc == 0, out
  rc, out = run(env, wd, faults={"sigterm_at": 3}, **capped)
  assert rc == 0 and "SIGTERM received: saved step 4" in out, out
  rc, out = run(env, wd, faults={"dump_inputs_to": str(dumps["resumed"])}, **capped)
  assert rc == 0 and "(step 4)" in out, out
  batches = {k: {int(p.stem): np.load(p) for p in d.glob("*.npy")} for k, d in dumps.items()}
  assert sorted(batches["straight"]) == list(range(STEPS))
  assert sorted(batches["resumed"]) == list(range(4, STEPS))
  for step, inputs in batches["resumed"].items():
    np.testing.assert_array_equal(inputs, batches["straight"][step])
  windows = {bytes(r) for b in batches["straight"].values() for r in b.astype(np.int32)}
  assert len(windows) * 32 == 640  # the run saw exactly the 640-token subset, 3.2 times
  assert_same_params(final_params(wd)[1], final_params(straight)[1])
  assert_same_losses(train_rows(wd), train_rows(straight))


def test_a_field_newer_than_the_checkpoint_counts_as_its_default():
  """A checkpoint written before a schema field existed resumes while that field keeps its
  default; set to anything else, the field is a difference that stops the resume."""
  current = ckpt_lib.config_to_json(default.get_config("size=tiny"))
  saved = json.loads(json.dumps(current))
  del saved["data"]["max_unique_tokens"], saved["model"]["num_experts"]
  assert ckpt_lib.config_differences(saved, current) == []
  current["data"]["max_unique_tokens"] = 4096
  assert ckpt_lib.config_differences(saved, current) == [
      "data.max_unique_tokens: 0 (checkpoint) -> 4096 (now)"
  ]
