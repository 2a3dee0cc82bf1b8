"""Expert parallelism on 8 fake CPU devices equals the single-device MoE run.

Runs in a subprocess so that XLA_FLAGS (8 host devices) is set before JAX starts. The same
initial state and batches go through the real jitted step on one device and on meshes with an
`expert` axis (tokens exchanged by all-to-all inside shard_map), with FSDP and tensor axes too.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json
import jax, numpy as np
from configs import base, mixtral
from train import build, inputs, mesh as mesh_lib, spec

assert jax.device_count() == 8, jax.devices()
cfg = mixtral.get_config("size=tiny")
cfg.model.update(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                 mlp_dim=64, num_experts=8, experts_per_token=2, expert_mlp_dim=16,
                 num_shared_experts=1, max_seq_len=16)
cfg.data.seq_len = 16
cfg.train.update(batch_size=16, steps=3, warmup_steps=1, learning_rate=3e-3)
B, L = 16, 16
rng = np.random.default_rng(0)
batches = []
for _ in range(3):
  start = rng.integers(0, 250, (B, 1))
  x = ((start + np.arange(L + 1)[None]) % 50).astype(np.int32)
  batches.append({"inputs": x[:, :-1], "targets": x[:, 1:],
                  "segment_ids": np.ones((B, L), np.int32),
                  "positions": np.arange(L)[None].repeat(B, 0).astype(np.int32),
                  "weights": np.ones((B, L), np.float32)})

def train(b, state):
  losses, lb = [], []
  with mesh_lib.mesh_context(b.mesh, b.train_step.rules):  # as train_and_evaluate does
    for local in batches:
      state, m = b.train_step(state, inputs.to_global(local, b.train_step.batch_sharding, B))
      losses.append(float(m["loss"])); lb.append(float(m["moe_load_balance_loss"]))
  return state, losses, lb, float(m["moe_dropped_tokens"])

out = {}
cfg.mesh.shape = (1, 1, 1)
ref = build.build(spec.resolve(cfg), mesh=mesh_lib.make_mesh(cfg, devices=jax.devices()[:1]))
init_host = jax.device_get(ref.init_state())
state, out["ref_losses"], out["ref_lb"], _ = train(ref, jax.device_put(init_host, ref.state_shardings))
ref_params = jax.device_get(state.params)
cfg.mesh.axis_rules = base.EXPERT_PARALLEL_AXIS_RULES
for shape in [(2, 1, 1, 4), (1, 2, 2, 2), (1, 1, 1, 8)]:
  cfg.mesh.shape = shape
  b = build.build(spec.resolve(cfg))
  state = jax.device_put(init_host, b.state_shardings)
  wi_shard = list(state.params["layers"]["block"]["mlp"]["wi_0"].addressable_shards[0].data.shape)
  state, losses, lb, dropped = train(b, state)
  hlo = b.train_step.lower().as_text()
  diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(c))))
             for a, c in zip(jax.tree_util.tree_leaves(jax.device_get(state.params)),
                             jax.tree_util.tree_leaves(ref_params)))
  out[str(shape)] = {"losses": losses, "lb": lb, "param_max_diff": diff, "dropped": dropped,
                     "wi_shard": wi_shard, "all_to_all": hlo.count("all_to_all")}
cfg.model.num_experts = 6
cfg.mesh.shape = (2, 1, 1, 4)
try:
  build.build(spec.resolve(cfg))
except ValueError as e:
  out["expert_error"] = str(e)
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def result():
  env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      PYTHONPATH=str(REPO),
      XLA_FLAGS="--xla_force_host_platform_device_count=8",
  )
  p = subprocess.run(
      [sys.executable, "-c", SCRIPT], env=env, cwd=REPO, capture_output=True, text=True, timeout=900
  )
  assert p.returncode == 0, p.stdout + p.stderr
  line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT ") :])


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
