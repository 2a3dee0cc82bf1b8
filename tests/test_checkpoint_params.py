"""A params-only checkpoint (for parameters from elsewhere, e.g. Hugging Face) loads like a run."""

import jax
import numpy as np

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
  import pytest

  with pytest.raises(FileNotFoundError, match="not a trained run|no finished checkpoint"):
    run_lib.load_run(str(tmp_path / "nothing"))


def test_loading_a_run_logs_no_orbax_warnings(tmp_path, caplog):
  """eval.report loads every ladder point: Orbax's read-only-manager warnings (two per load)
  told the user nothing and filled the report's output."""
  import logging

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
