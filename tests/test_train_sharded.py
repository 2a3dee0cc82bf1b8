"""Sharded training on 8 fake CPU devices equals training on one device.

Runs tests/workers/train_sharded.py in a subprocess so that XLA_FLAGS (8 host devices) is set
before JAX starts. The same initial state (made on 1 device, then placed with each mesh's
shardings) and the same 5 batches go through the real jitted step on meshes (8,1,1), (1,8,1),
(2,2,2), (1,1,8).
"""

import fake_devices
import numpy as np
import pytest


@pytest.fixture(scope="module")
def result():
  return fake_devices.run_worker("train_sharded.py", devices=8)


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
