"""Expert parallelism: the real jitted MoE step on 8 CPU devices under expert meshes, for
tests/test_moe_sharded.py.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/workers/moe_sharded.py

The same initial state (made on 1 device, then placed with each mesh's shardings) and the same
3 batches go through meshes (2,1,1,4), (1,2,2,2), (1,1,1,8) with an `expert` axis. Prints
`RESULT {...}`: losses and load-balance losses, largest parameter difference from the 1-device
run, dropped tokens, the expert weights' shard shape, the all-to-alls in the step's HLO, and
the error for experts that do not divide the expert axis.
"""

import json

import jax
import numpy as np

from configs import base, mixtral
from train import build, inputs
from train import mesh as mesh_lib
from train import spec
from train_sharded import max_diff  # tests/workers/, this script's directory

B, L = 16, 16


def make_config():
  cfg = mixtral.get_config("size=tiny")
  cfg.model.update(
      d_model=32,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=8,
      mlp_dim=64,
      num_experts=8,
      experts_per_token=2,
      expert_mlp_dim=16,
      num_shared_experts=1,
      max_seq_len=16,
  )
  cfg.data.seq_len = 16
  cfg.train.update(batch_size=16, steps=3, warmup_steps=1, learning_rate=3e-3)
  return cfg


def make_batches() -> list[dict]:
  """A learnable rule (next token = token + 1 mod 50), one document per row."""
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(3):
    start = rng.integers(0, 250, (B, 1))
    x = ((start + np.arange(L + 1)[None]) % 50).astype(np.int32)
    batches.append(
        {
            "inputs": x[:, :-1],
            "targets": x[:, 1:],
            "segment_ids": np.ones((B, L), np.int32),
            "positions": np.arange(L)[None].repeat(B, 0).astype(np.int32),
            "weights": np.ones((B, L), np.float32),
        }
    )
  return batches


def train(b, state, batches):
  losses, lb = [], []
  with mesh_lib.mesh_context(b.mesh, b.train_step.rules):  # as train_and_evaluate does
    for local in batches:
      state, m = b.train_step(state, inputs.to_global(local, b.train_step.batch_sharding, B))
      losses.append(float(m["loss"]))
      lb.append(float(m["moe_load_balance_loss"]))
  return state, losses, lb, float(m["moe_dropped_tokens"])


def main() -> None:
  assert jax.device_count() == 8, jax.devices()
  cfg = make_config()
  batches = make_batches()
  out = {}
  cfg.mesh.shape = (1, 1, 1)
  ref = build.build(spec.resolve(cfg), mesh=mesh_lib.make_mesh(cfg, devices=jax.devices()[:1]))
  init_host = jax.device_get(ref.init_state())
  state, out["ref_losses"], out["ref_lb"], _ = train(
      ref, jax.device_put(init_host, ref.state_shardings), batches
  )
  ref_params = jax.device_get(state.params)
  cfg.mesh.axis_rules = base.EXPERT_PARALLEL_AXIS_RULES
  for shape in [(2, 1, 1, 4), (1, 2, 2, 2), (1, 1, 1, 8)]:
    cfg.mesh.shape = shape
    b = build.build(spec.resolve(cfg))
    state = jax.device_put(init_host, b.state_shardings)
    wi = state.params["layers"]["block"]["mlp"]["wi_0"]
    wi_shard = list(wi.addressable_shards[0].data.shape)
    state, losses, lb, dropped = train(b, state, batches)
    hlo = b.train_step.lower().as_text()
    out[str(shape)] = {
        "losses": losses,
        "lb": lb,
        "param_max_diff": max_diff(jax.device_get(state.params), ref_params),
        "dropped": dropped,
        "wi_shard": wi_shard,
        "all_to_all": hlo.count("all_to_all"),
    }
  cfg.model.num_experts = 6
  cfg.mesh.shape = (2, 1, 1, 4)
  try:
    build.build(spec.resolve(cfg))
  except ValueError as e:
    out["expert_error"] = str(e)
  print("RESULT " + json.dumps(out))


if __name__ == "__main__":
  main()
