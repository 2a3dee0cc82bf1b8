"""Sharded training on 8 fake CPU devices equals training on one device.

Runs in a subprocess so that XLA_FLAGS (8 host devices) is set before JAX starts. The same
initial state (made on 1 device, then placed with each mesh's shardings) and the same 5
batches go through the real jitted step on meshes (8,1,1), (1,8,1), (2,2,2), (1,1,8).
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

WORKER = REPO / "tests" / "workers" / "train_sharded.py"


@pytest.fixture(scope="module")
def result():
  env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      PYTHONPATH=str(REPO),
      XLA_FLAGS="--xla_force_host_platform_device_count=8",
  )
  p = subprocess.run(
      [sys.executable, str(WORKER)], env=env, cwd=REPO, capture_output=True, text=True, timeout=900
  )
  assert p.returncode == 0, p.stdout + p.stderr
  line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT ") :])


# Per-device shard shapes the default axis rules imply (embed->fsdp, vocab/heads/mlp->tensor).
# embedding (vocab=264, embed=32); wi (layers=2, embed=32, mlp=64); query (2, 32, heads=8, 4).
EXPECTED = {
    "(8, 1, 1)": {"embedding": [264, 32], "wi": [2, 32, 64], "query": [2, 32, 8, 4]},
    "(1, 8, 1)": {"embedding": [264, 4], "wi": [2, 4, 64], "query": [2, 4, 8, 4]},
    "(2, 2, 2)": {"embedding": [132, 16], "wi": [2, 16, 32], "query": [2, 16, 4, 4]},
    "(1, 1, 8)": {"embedding": [33, 32], "wi": [2, 32, 8], "query": [2, 32, 1, 4]},
}


@pytest.mark.parametrize("shape", list(EXPECTED))
def test_mesh_matches_single_device(result, shape):
  r = result[shape]
  np.testing.assert_allclose(r["losses"], result["ref_losses"], rtol=2e-5, atol=2e-6)
  assert r["param_max_diff"] < 1e-5
  for when in ("before", "after"):
    got = {k: list(v) for k, v in r[when].items()}
    assert got["embedding"] == EXPECTED[shape]["embedding"], (when, got)
    assert got["wi"] == EXPECTED[shape]["wi"], (when, got)
    assert got["query"] == EXPECTED[shape]["query"], (when, got)
    assert got["mu_wi"] == EXPECTED[shape]["wi"], (when, got)  # Adam state sharded like wi


def test_training_makes_progress(result):
  assert result["ref_losses"][-1] < result["ref_losses"][0] - 0.1


def test_sharded_init_equals_single_device_init(result):
  assert result["init_max_diff"] == 0.0


def test_bad_batch_and_mesh_give_clear_errors(result):
  assert "train.batch_size=12" in result["batch_error"]
  assert "8" in result["batch_error"]
  assert "mesh.shape=(4, 1, 1)" in result["mesh_error"] and "8" in result["mesh_error"]
