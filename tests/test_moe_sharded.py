"""Expert parallelism on 8 fake CPU devices equals the single-device MoE run.

Runs tests/workers/moe_sharded.py in a subprocess so that XLA_FLAGS (8 host devices) is set
before JAX starts. The same initial state and batches go through the real jitted step on one
device and on meshes with an `expert` axis (tokens exchanged by all-to-all inside shard_map),
with FSDP and tensor axes too.
"""

import fake_devices
import numpy as np
import pytest


@pytest.fixture(scope="module")
def result():
  return fake_devices.run_worker("moe_sharded.py", devices=8)


# wi_0 [layers=2, experts=8, embed=32, mlp=16]: experts over `expert`, embed over fsdp, mlp
# over tensor.
EXPECTED_WI_SHARD = {
    "(2, 1, 1, 4)": [2, 2, 32, 16],
    "(1, 2, 2, 2)": [2, 4, 16, 8],
    "(1, 1, 1, 8)": [2, 1, 32, 16],
}


@pytest.mark.parametrize("shape", list(EXPECTED_WI_SHARD))
def test_expert_parallel_matches_single_device(result, shape):
  r = result[shape]
  np.testing.assert_allclose(r["losses"], result["ref_losses"], rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(r["lb"], result["ref_lb"], rtol=2e-5)
  assert r["param_max_diff"] < 1e-5
  assert r["dropped"] == 0
  assert r["wi_shard"] == EXPECTED_WI_SHARD[shape]
  # tokens out and back, forward and backward, in both MoE layers (scanned: one body)
  assert r["all_to_all"] >= 4


def test_training_makes_progress(result):
  assert result["ref_losses"][-1] < result["ref_losses"][0]


def test_experts_not_divisible_by_the_expert_axis_is_a_clear_error(result):
  assert "model.num_experts=6" in result["expert_error"]
  assert "expert=4" in result["expert_error"]
