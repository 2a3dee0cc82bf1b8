"""train/mesh.py: shape resolution, errors that name the numbers, shardings on 8 CPU devices.

The 8-device checks run in one subprocess so XLA_FLAGS is set before jax is imported there;
the pure shape/config checks run here.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from configs.base import base_config
from train import mesh as mesh_lib
from train import spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fill_shape_fills_one_axis():
  assert mesh_lib.fill_shape((-1, 2, 1), 8) == (4, 2, 1)
  assert mesh_lib.fill_shape((2, 2, 2), 8) == (2, 2, 2)


@pytest.mark.parametrize(
    "shape, needles",
    [
        ((-1, -1, 1), ["(-1, -1, 1)", "2 entries equal to -1"]),
        ((3, 1, 1), ["uses 3 devices", "8 are available"]),
        ((-1, 3, 1), ["use 3 devices", "8 devices"]),
        ((1, 1), ["2 entries", "'data', 'fsdp', 'tensor'"]),
        ((0, -1, 1), ["must be >= 1", "got 0"]),
    ],
)
def test_bad_shapes_name_the_numbers(shape, needles):
  with pytest.raises(ValueError) as err:
    mesh_lib.fill_shape(shape, 8)
  for needle in needles:
    assert needle in str(err.value)


def test_dcn_shape_splits_devices_into_slices():
  cfg = base_config()
  cfg.mesh.shape = (1, -1, 1)
  cfg.mesh.dcn_shape = (-1, 1, 1)
  assert mesh_lib.resolve_shapes(cfg, 32, num_slices=2) == ((1, 16, 1), (2, 1, 1))
  cfg.mesh.dcn_shape = (3, 1, 1)
  with pytest.raises(ValueError, match="3 slices.*32 devices|32 devices.*3 slices"):
    mesh_lib.resolve_shapes(cfg, 32, num_slices=3)


def test_model_check_names_heads_vocab_and_batch():
  cfg = base_config()  # 4 heads, 4 kv heads, vocab 260, mlp 1024
  rules = spec.DEFAULT_AXIS_RULES
  with pytest.raises(ValueError) as err:
    mesh_lib.check_model_on_mesh(cfg.model, {"data": 1, "fsdp": 1, "tensor": 8}, rules)
  msg = str(err.value)
  assert "model.num_heads=4" in msg and "tensor=8" in msg
  assert "model.vocab_size=260" in msg
  with pytest.raises(ValueError, match=r"train.batch_size=6 .*data=4 x fsdp=1"):
    mesh_lib.check_model_on_mesh(
        cfg.model, {"data": 4, "fsdp": 1, "tensor": 2}, rules, batch_size=6
    )
  # GQA with fewer kv heads than the tensor split.
  cfg.model.num_kv_heads = 1
  with pytest.raises(ValueError, match="model.num_kv_heads=1"):
    mesh_lib.check_model_on_mesh(cfg.model, {"data": 2, "fsdp": 1, "tensor": 4}, rules)
  # A fitting mesh passes.
  cfg.model.num_kv_heads = 4
  mesh_lib.check_model_on_mesh(cfg.model, {"data": 2, "fsdp": 2, "tensor": 2}, rules, batch_size=16)


def test_axis_rules_normalise_lists_and_reject_unknown_axes():
  cfg = base_config()
  cfg.mesh.axis_rules = [["batch", ["data", "fsdp"]], ["embed", "fsdp"]]
  assert spec.resolve(cfg).mesh.axis_rules == (("batch", ("data", "fsdp")), ("embed", "fsdp"))
  cfg.mesh.axis_rules = [["embed", "model"]]
  with pytest.raises(ValueError, match="'model', which is not a mesh axis"):
    spec.resolve(cfg)


_EIGHT_DEVICE_SCRIPT = textwrap.dedent("""
    import os, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp
    import flax.linen as nn
    from jax.sharding import AxisType
    from configs.base import base_config
    from train import mesh as mesh_lib, spec

    out = {}
    cfg = base_config()
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

    # Boxed params -> NamedShardings through the rules; jit places them that way.
    rules = spec.resolve(cfg).mesh.axis_rules
    class Dense(nn.Module):
      @nn.compact
      def __call__(self, x):
        w = self.param("w", nn.with_logical_partitioning(
            nn.initializers.normal(), ("embed", "mlp")), (x.shape[-1], 16))
        y = x @ w
        return nn.with_logical_constraint(y, ("batch", "length", "mlp"))
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
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def eight_devices():
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run(
      [sys.executable, "-c", _EIGHT_DEVICE_SCRIPT],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT") :])


def test_make_mesh_on_eight_cpu_devices(eight_devices):
  r = eight_devices
  assert r["default"] == {"data": 8, "fsdp": 1, "tensor": 1}
  assert r["auto"]
  assert r["ids"] == list(range(8))
  assert r["filled"] == {"data": 2, "fsdp": 2, "tensor": 2}
  assert "needs 2 processes" in r["dcn_error"] and "from 1" in r["dcn_error"]


def test_shardings_follow_the_axis_rules(eight_devices):
  r = eight_devices
  # (embed, mlp) -> (fsdp, tensor): an (8, 16) weight is (4, 8) per device on 2x2x2.
  assert r["w_spec"] == ["fsdp", "tensor"]
  assert r["w_shard_shape"] == [4, 8]
  assert r["x_spec"] == [["data", "fsdp"], None, None]
  assert r["y_shape"] == [8, 4, 16]
  assert r["dp"] == 4
  assert "['params']['w']" in r["shard_error"] and "dimension 3" in r["shard_error"]
