"""Mesh construction and logical-axis sharding on 8 CPU devices, for tests/test_mesh.py.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/workers/mesh_eight_devices.py

Prints `RESULT {...}` with the meshes, specs and errors the test checks.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import AxisType

from configs.base import base_config
from train import mesh as mesh_lib
from train import spec


class Dense(nn.Module):
  """One boxed kernel (embed, mlp) and a logical constraint on the output."""

  @nn.compact
  def __call__(self, x):
    w = self.param(
        "w",
        nn.with_logical_partitioning(nn.initializers.normal(), ("embed", "mlp")),
        (x.shape[-1], 16),
    )
    y = x @ w
    return nn.with_logical_constraint(y, ("batch", "length", "mlp"))


def check_meshes(cfg, out: dict) -> None:
  mesh = mesh_lib.make_mesh(cfg)
  out["default"] = dict(mesh.shape)
  out["auto"] = all(t == AxisType.Auto for t in mesh.axis_types)
  out["ids"] = sorted(d.id for d in mesh.devices.ravel())
  cfg.mesh.shape = (2, -1, 2)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  out["filled"] = dict(mesh.shape)
  try:
    cfg.mesh.dcn_shape = (2, 1, 1)
    mesh_lib.make_mesh(cfg)
  except ValueError as e:
    out["dcn_error"] = str(e)
  cfg.mesh.dcn_shape = (1, 1, 1)


def check_shardings(cfg, out: dict) -> None:
  """Boxed params -> NamedShardings through the rules; jit places them that way."""
  mesh = mesh_lib.make_mesh(cfg.mesh)
  rules = spec.resolve(cfg).mesh.axis_rules
  model = Dense()
  x = jnp.ones((8, 4, 8))
  abstract = jax.eval_shape(model.init, jax.random.key(0), x)
  shardings = mesh_lib.param_shardings(abstract, mesh, rules)
  out["w_spec"] = list(shardings["params"]["w"].spec)
  with mesh_lib.mesh_context(mesh, rules):
    params = jax.jit(model.init, out_shardings=shardings)(jax.random.key(0), x)
    xb = jax.device_put(x, mesh_lib.batch_sharding(mesh, rules, ndim=3))
    y = jax.jit(model.apply)(params, xb)
  out["w_shard_shape"] = list(nn.unbox(params)["params"]["w"].addressable_shards[0].data.shape)
  out["x_spec"] = [list(a) if isinstance(a, tuple) else a for a in xb.sharding.spec]
  out["y_shape"] = list(y.shape)
  out["dp"] = mesh_lib.data_parallel_size(mesh, rules)

  # A sharding that does not divide a parameter names its path.
  abstract_bad = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((8, 4, 3)))
  try:
    mesh_lib.param_shardings(abstract_bad, mesh, rules)
  except ValueError as e:
    out["shard_error"] = str(e)


def main() -> None:
  out = {}
  cfg = base_config()
  check_meshes(cfg, out)
  check_shardings(cfg, out)
  print("RESULT " + json.dumps(out))


if __name__ == "__main__":
  main()
