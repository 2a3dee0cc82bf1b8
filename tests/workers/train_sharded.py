"""The real jitted train step on 8 CPU devices under several meshes, for
tests/test_train_sharded.py.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/workers/train_sharded.py

The same initial state (made on 1 device, then placed with each mesh's shardings) and the same
5 batches go through meshes (8,1,1), (1,8,1), (2,2,2), (1,1,8). Prints `RESULT {...}`: losses,
largest parameter difference from the 1-device run, per-device shard shapes, and the errors
for a batch or mesh that does not fit the devices.
"""

import json

import jax
import numpy as np

from configs import default
from train import build
from train import inputs
from train import mesh as mesh_lib
from train import spec

B, V = 16, 260


def make_config():
  cfg = default.get_config("size=tiny")
  cfg.model.update(num_heads=8, num_kv_heads=8, head_dim=4, vocab_size=264)
  cfg.train.update(batch_size=16, steps=5, warmup_steps=1)
  return cfg


def make_batches(seq_len: int) -> list[dict]:
  """A learnable rule (next token = token + 1 mod 50), two documents per row."""
  L = seq_len
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(5):
    start = rng.integers(0, V, (B, 1))
    x = ((start + np.arange(L + 1)[None]) % 50).astype(np.int32)
    seg = np.ones((B, L), np.int32)
    seg[:, L // 2 :] = 2
    pos = np.concatenate([np.arange(L // 2), np.arange(L - L // 2)])[None].repeat(B, 0)
    batches.append(
        {
            "inputs": x[:, :-1],
            "targets": x[:, 1:],
            "segment_ids": seg,
            "positions": pos.astype(np.int32),
            "weights": np.ones((B, L), np.float32),
        }
    )
  return batches


def train(b, state, batches):
  losses = []
  with mesh_lib.mesh_context(b.mesh, b.train_step.rules):  # as train_and_evaluate does
    for local in batches:
      state, m = b.train_step(state, inputs.to_global(local, b.train_step.batch_sharding, B))
      losses.append(float(m["loss"]))
  return state, losses


def shard_shapes(state):
  p = state.params
  shard = lambda a: a.addressable_shards[0].data.shape
  return {
      "embedding": shard(p["embed"]["embedding"]),
      "wi": shard(p["layers"]["block"]["mlp"]["wi"]["kernel"]),
      "query": shard(p["layers"]["block"]["attn"]["query"]["kernel"]),
      "mu_wi": shard(state.opt_state[1][0].mu["layers"]["block"]["mlp"]["wi"]["kernel"]),
  }


def max_diff(a_tree, b_tree) -> float:
  return max(
      float(np.max(np.abs(np.asarray(a) - np.asarray(c))))
      for a, c in zip(jax.tree_util.tree_leaves(a_tree), jax.tree_util.tree_leaves(b_tree))
  )


def main() -> None:
  assert jax.device_count() == 8, jax.devices()
  cfg = make_config()
  batches = make_batches(cfg.data.seq_len)
  out = {}
  cfg.mesh.shape = (1, 1, 1)
  ref = build.build(spec.resolve(cfg), mesh=mesh_lib.make_mesh(cfg, devices=jax.devices()[:1]))
  init_host = jax.device_get(ref.init_state())
  state, out["ref_losses"] = train(ref, jax.device_put(init_host, ref.state_shardings), batches)
  ref_params = jax.device_get(state.params)
  for shape in [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 1, 8)]:
    cfg.mesh.shape = shape
    b = build.build(spec.resolve(cfg))
    state = jax.device_put(init_host, b.state_shardings)
    before = shard_shapes(state)
    if shape == (2, 2, 2):  # the sharded init itself gives the same numbers
      out["init_max_diff"] = max_diff(jax.device_get(b.init_state()).params, init_host.params)
    state, losses = train(b, state, batches)
    out[str(shape)] = {
        "losses": losses,
        "param_max_diff": max_diff(jax.device_get(state.params), ref_params),
        "before": before,
        "after": shard_shapes(state),
    }

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


if __name__ == "__main__":
  main()
