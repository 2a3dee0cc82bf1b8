"""train/mesh.py: shape resolution, errors that name the numbers, shardings on 8 CPU devices.

The 8-device checks run in one subprocess (tests/workers/mesh_eight_devices.py) so XLA_FLAGS
is set before jax is imported there; the pure shape/config checks run here.
"""

import fake_devices
import pytest

from configs.base import base_config
from train import mesh as mesh_lib
from train import spec


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


@pytest.fixture(scope="module")
def eight_devices():
  return fake_devices.run_worker("mesh_eight_devices.py", devices=8, timeout=300)


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
