"""A params-only checkpoint (for parameters from elsewhere, e.g. Hugging Face) loads like a run."""

import logging

import jax
import numpy as np
import pytest

from configs import default
from train import checkpoint
from train import mesh as mesh_lib
from train import state as state_lib
from train import run as run_lib
from train import spec


def test_save_params_then_load_run(tmp_path, monkeypatch):
  config = default.get_config("size=tiny")
  mesh = mesh_lib.make_mesh(config, devices=jax.devices()[:1])
  boxed = state_lib.abstract_variables(
      spec.resolve(config), state_lib.make_model(spec.resolve(config).model), mesh
  )
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda a: rng.normal(size=a.shape).astype(a.dtype), state_lib.nn.unbox(boxed["params"])
  )
  # Relative workdirs, as users type them (`--workdir runs/x`), work for saving and loading.
  monkeypatch.chdir(tmp_path)
  checkpoint.save_params("run", params, config, step=7)
  run = run_lib.load_run("run")
  assert run.step == 7 and run.config.model.d_model == 32
  for a, b in zip(jax.tree_util.tree_leaves(run.params), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_load_run_of_a_missing_run_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a trained run|no finished checkpoint"):
    run_lib.load_run(str(tmp_path / "nothing"))


def test_loading_a_run_logs_no_orbax_warnings(tmp_path, caplog):
  """eval.report loads every ladder point: Orbax's read-only-manager warnings (two per load)
  told the user nothing and filled the report's output."""
  config = default.get_config("size=tiny")
  mesh = mesh_lib.make_mesh(config, devices=jax.devices()[:1])
  boxed = state_lib.abstract_variables(
      spec.resolve(config), state_lib.make_model(spec.resolve(config).model), mesh
  )
  params = jax.tree_util.tree_map(
      lambda a: np.zeros(a.shape, a.dtype), state_lib.nn.unbox(boxed["params"])
  )
  checkpoint.save_params(str(tmp_path / "run"), params, config, step=1)
  with caplog.at_level(logging.INFO):
    run_lib.load_run(str(tmp_path / "run"))
  warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
  assert not warnings, [r.getMessage() for r in warnings]


def _random_params(config, seed):
  mesh = mesh_lib.make_mesh(config, devices=jax.devices()[:1])
  boxed = state_lib.abstract_variables(
      spec.resolve(config), state_lib.make_model(spec.resolve(config).model), mesh
  )
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda a: rng.normal(size=a.shape).astype(a.dtype), state_lib.nn.unbox(boxed["params"])
  )


def test_average_last_is_the_elementwise_mean_of_the_last_checkpoints(tmp_path):
  config = default.get_config("size=tiny")
  workdir = str(tmp_path / "run")
  saved = {step: _random_params(config, step) for step in (3, 5, 9)}
  for step, params in saved.items():
    checkpoint.save_params(workdir, params, config, step=step)
  run = run_lib.load_run(workdir, average_last=2)
  assert run.step == 9 and run.averaged_steps == (5, 9)
  assert "steps 5, 9" in run.describe_checkpoint()
  leaves = zip(*(jax.tree_util.tree_leaves(t) for t in (run.params, saved[5], saved[9])))
  for got, a, b in leaves:
    assert got.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(got), (a + b) / np.float32(2))
  one = run_lib.load_run(workdir, average_last=1)
  plain = run_lib.load_run(workdir)
  for a, b in zip(jax.tree_util.tree_leaves(one.params), jax.tree_util.tree_leaves(plain.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  upto = run_lib.load_run(workdir, average_last=2, step=5)
  assert upto.averaged_steps == (3, 5)
  with pytest.raises(ValueError, match=r"holds 3 \(steps \[3, 5, 9\]\).*checkpoint.keep >= 4"):
    run_lib.load_run(workdir, average_last=4)
