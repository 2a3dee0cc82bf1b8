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

SCRIPT = r"""
import json
import jax, numpy as np
from configs import default
from train import build, inputs, mesh as mesh_lib, spec

assert jax.device_count() == 8, jax.devices()
cfg = default.get_config("size=tiny")
cfg.model.update(num_heads=8, num_kv_heads=8, head_dim=4, vocab_size=264)
cfg.train.update(batch_size=16, steps=5, warmup_steps=1)
B, L, V = 16, cfg.data.seq_len, 260
rng = np.random.default_rng(0)
batches = []
for _ in range(5):
  start = rng.integers(0, V, (B, 1))   # a learnable rule: next token = token + 1 (mod 50)
  x = ((start + np.arange(L + 1)[None]) % 50).astype(np.int32)
  seg = np.ones((B, L), np.int32); seg[:, L // 2:] = 2      # two documents per row
  pos = np.concatenate([np.arange(L // 2), np.arange(L - L // 2)])[None].repeat(B, 0)
  batches.append({"inputs": x[:, :-1], "targets": x[:, 1:], "segment_ids": seg,
                  "positions": pos.astype(np.int32), "weights": np.ones((B, L), np.float32)})

def train(b, state):
  losses = []
  for local in batches:
    state, m = b.train_step(state, inputs.to_global(local, b.train_step.batch_sharding, B))
    losses.append(float(m["loss"]))
  return state, losses

def shard_shapes(state):
  p = state.params
  return {"embedding": p["embed"]["embedding"].addressable_shards[0].data.shape,
          "wi": p["layers"]["block"]["mlp"]["wi"]["kernel"].addressable_shards[0].data.shape,
          "query": p["layers"]["block"]["attn"]["query"]["kernel"].addressable_shards[0].data.shape,
          "mu_wi": state.opt_state[1][0].mu["layers"]["block"]["mlp"]["wi"]["kernel"]
                   .addressable_shards[0].data.shape}

out = {}
cfg.mesh.shape = (1, 1, 1)
ref = build.build(spec.resolve(cfg), mesh=mesh_lib.make_mesh(cfg, devices=jax.devices()[:1]))
init_host = jax.device_get(ref.init_state())
state, out["ref_losses"] = train(ref, jax.device_put(init_host, ref.state_shardings))
ref_params = jax.device_get(state.params)
for shape in [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 1, 8)]:
  cfg.mesh.shape = shape
  b = build.build(spec.resolve(cfg))
  state = jax.device_put(init_host, b.state_shardings)
  before = shard_shapes(state)
  if shape == (2, 2, 2):   # the sharded init itself gives the same numbers
    fresh = jax.device_get(b.init_state())
    out["init_max_diff"] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(c))))
                               for a, c in zip(jax.tree_util.tree_leaves(fresh.params),
                                               jax.tree_util.tree_leaves(init_host.params)))
  state, losses = train(b, state)
  diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(c))))
             for a, c in zip(jax.tree_util.tree_leaves(jax.device_get(state.params)),
                             jax.tree_util.tree_leaves(ref_params)))
  out[str(shape)] = {"losses": losses, "param_max_diff": diff, "before": before,
                     "after": shard_shapes(state)}

cfg.mesh.shape = (8, 1, 1)
cfg.train.batch_size = 12
try:
  build.build(spec.resolve(cfg))
except ValueError as e:
  out["batch_error"] = str(e)
cfg.train.batch_size = 16
cfg.mesh.shape = (4, 1, 1)
try:
  build.build(spec.resolve(cfg))
except ValueError as e:
  out["mesh_error"] = str(e)
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
