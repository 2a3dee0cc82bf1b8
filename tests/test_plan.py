"""train.plan: compile the real step for a TPU topology on this CPU machine.

The compile tests need libtpu (`pip install -e ".[tpu]"`, which scripts/test.sh installs);
without it they skip and say so. Topology parsing and the analytic fallback need nothing.
"""

import importlib.util

import pytest

from configs.base import base_config
from train import plan_compile, plan_search, planner, topology
from train.hardware import CHIPS

HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAVE_LIBTPU,
    reason='libtpu is not installed (pip install -e ".[tpu]"); TPU '
    "topologies cannot be compiled for without it",
)

# XLA's per-device total (max(peak, args + outputs - donated + temps) + code) against
# model.summary's estimate: between 0.4x and 2.5x. The estimate leaves out XLA's
# own buffers (FSDP-gathered weights, the optimizer update's new copies) and XLA fuses away
# some activations it counts. Measured XLA/estimate: 1.98 for the config below (v5e:2x2,
# FSDP 4), 1.57 for it data-parallel, 0.83 for GPT-3 1.3B on v5e:4x4 (FSDP 16, 16 x 2048
# tokens, remat full), 0.58 for 1.3B on v5p:4x4x4 (FSDP 64, 512 x 2048). The state (params
# + optimizer) is exact: 2%.
RATIO_RANGE = (0.4, 2.5)
STATE_TOLERANCE = 0.02


def small_config():
  """~6.6M parameters: big enough that weights and optimizer state dominate XLA's fixed
  overheads (code, semaphores), small enough to compile in seconds."""
  c = base_config()
  c.model.update(
      vocab_size=512,
      d_model=512,
      num_layers=2,
      num_heads=8,
      num_kv_heads=8,
      head_dim=64,
      mlp_dim=2048,
      max_seq_len=128,
  )
  c.data.seq_len = 128
  c.train.batch_size = 8
  c.mesh.shape = (1, -1, 1)  # FSDP over the 4 chips: state sharded 4 ways
  return c


@pytest.mark.parametrize(
    "text, needle",
    [
        ("v5e", "is not a topology"),
        ("tpu:2x2", "unknown chip 'tpu'"),
        ("v5e:2x2x2", "v5e topologies have 2 dimension(s), got 3"),
        ("v5p:4x4", "v5p topologies have 3 dimension(s), got 2"),
        ("v4:2xtwo", "is not sizes joined by 'x'"),
        ("v5e:0x2", "every size must be >= 1"),
        ("v5e:3x3", "both sizes must be even"),
    ],
)
def test_bad_topology_strings_are_clear_errors(text, needle):
  with pytest.raises(ValueError) as err:
    topology.parse_topology(text)
  assert needle in str(err.value)
  assert "e.g." in str(err.value) or "must" in str(err.value)


def test_parse_topology_counts_devices():
  topo = topology.parse_topology("v5p:4x4x4", num_slices=2)
  assert topo.num_devices == 128 and topo.chip.hbm_bytes == 95 * 2**30
  assert topology.parse_topology("V5E:4x4").chips_per_slice == 16


def test_gpu_target_falls_back_to_the_analytic_estimate_and_says_so():
  from train import accounting

  c = small_config()
  p = planner.plan(c, topology.parse_topology("h100:8"))
  assert p.method == "analytic"
  assert "analytic estimate" in p.memory.reason and "GPU" in p.memory.reason
  assert p.memory.mesh == {"data": 1, "fsdp": 8, "tensor": 1}
  expected = accounting.memory_per_device(
      c.model, batch_size=8, seq_len=128, mesh_shape=(1, 8, 1), optimizer="adamw"
  )
  assert p.total_bytes == int(expected["total_bytes"])
  assert p.fits and "ANALYTIC ESTIMATE" in planner.format_plan(p)


@pytest.mark.slow
@needs_libtpu
def test_small_config_on_v5e_2x2_matches_the_analytic_estimate():
  from train import accounting

  c = small_config()
  p = planner.plan(c, topology.parse_topology("v5e:2x2"))
  assert p.method == "xla" and p.memory.mesh == {"data": 1, "fsdp": 4, "tensor": 1}
  est = accounting.memory_per_device(
      c.model, batch_size=8, seq_len=128, mesh_shape=(1, 4, 1), optimizer="adamw"
  )
  # The state (params + Adam's two moments, fp32, sharded 4 ways) is exact arithmetic.
  state = est["params_bytes"] + est["optimizer_bytes"]
  assert abs(p.memory.argument_bytes - state) / state < STATE_TOLERANCE, (
      p.memory.argument_bytes,
      state,
  )
  # The total, with XLA's temporaries, within the stated range of the estimate.
  ratio = p.total_bytes / est["total_bytes"]
  assert RATIO_RANGE[0] < ratio < RATIO_RANGE[1], (p.total_bytes, est["total_bytes"])
  assert p.analytic_total_bytes == int(est["total_bytes"])
  assert p.memory.peak_bytes >= p.memory.argument_bytes
  assert p.fits and "-> fits" in planner.format_plan(p)


@pytest.mark.slow
@needs_libtpu
def test_config_that_cannot_fit_reports_does_not_fit():
  c = base_config()
  # ~3.2B parameters replicated on 4 v5e chips (16 GiB each): cannot fit.
  c.model.update(d_model=8192, mlp_dim=32768, num_heads=64, num_kv_heads=64, head_dim=128)
  p = planner.plan(c, topology.parse_topology("v5e:2x2"))
  assert p.fits is False
  assert p.total_bytes > 16 * 2**30
  assert "DOES NOT FIT" in planner.format_plan(p)


@needs_libtpu
def test_multi_slice_mesh_puts_data_across_slices():
  c = small_config()
  topo = topology.parse_topology("v5e:2x2", num_slices=2)
  devices = topology.topology_devices(topo)
  mesh, _ = plan_compile.mesh_for(plan_compile.for_topology(c, topo), topo, devices)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  slices = [[d.slice_index for d in row.ravel()] for row in mesh.devices]
  assert slices == [[0] * 4, [1] * 4]
  # An explicit DCN layout that does not match the slices is an error naming both.
  c.mesh.dcn_shape = (4, 1, 1)
  with pytest.raises(
      ValueError, match=r"dcn_shape=\(4, 1, 1\) needs 4 TPU slices but the devices come from 2"
  ):
    plan_compile.mesh_for(plan_compile.for_topology(c, topo), topo, devices)
  # Slices with no DCN layout at all, through make_mesh directly.
  from train import mesh as mesh_lib

  c.mesh.dcn_shape = (1, 1, 1)
  with pytest.raises(ValueError, match=r"come from 2 TPU slices.*dcn_shape=\(2, 1, 1\)"):
    mesh_lib.make_mesh(c, devices)


def test_bad_libtpu_topology_is_a_clear_error():
  if not HAVE_LIBTPU:
    pytest.skip("libtpu is not installed")
  topo = topology.Topology(CHIPS["v5e"], (3, 3))  # bypasses parse_topology
  with pytest.raises(ValueError, match="libtpu rejected topology 'v5e:3x3'"):
    topology.topology_devices(topo)


def test_cli_reports_a_bad_topology_without_a_traceback():
  import os
  import subprocess
  import sys

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "train.plan",
          "--config",
          "configs/default.py",
          "--topology",
          "v5e:4x4x4",
      ],
      cwd=repo,
      capture_output=True,
      text=True,
      timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert proc.returncode == 1
  assert "error: --topology='v5e:4x4x4': v5e topologies have 2 dimension(s)" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_batch_search_finds_the_largest_fitting_batch_analytically():
  from train import accounting

  c = small_config()
  topo = topology.parse_topology("v5e:2x2")
  p = plan_search.search_batch(c, topo, force_analytic=True)
  n = p.search.max_per_device_batch
  assert n > 1 and p.fits and p.global_batch == 4 * n
  mem = lambda b: accounting.memory_per_device(
      c.model, batch_size=4 * b, seq_len=128, mesh_shape=(1, 4, 1)
  )["total_bytes"]
  assert mem(n) <= topo.chip.hbm_bytes < mem(n + 1)
  assert len(p.search.tried) <= 6  # the linear guess lands close


def test_plan_json_keeps_its_keys_and_adds_the_run_cost(tmp_path):
  """`--json` of an analytic plan: the keys it always had, and the whole run's cost."""
  import json
  import os
  import subprocess
  import sys

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / "plan.json"
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "train.plan",
          "--config",
          "configs/default.py:size=tiny",
          "--topology",
          "h100:8",
          "--config.train.steps=3600",
          "--json",
          str(out),
      ],
      cwd=repo,
      capture_output=True,
      text=True,
      timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert proc.returncode == 0, proc.stderr
  p = json.loads(out.read_text())
  for key in (
      "config topology chip num_devices hbm_bytes global_batch seq_len remat mfu method "
      "reason mesh total_bytes analytic fits model_flops_per_step step_seconds_at_mfu "
      "tokens_per_second_at_mfu"
  ).split():
    assert key in p, key
  # 3600 steps of step_seconds_at_mfu on 8 H100: chip-hours = 8 x step seconds.
  c = p["cost"]
  assert c["estimate"] is True and c["num_chips"] == 8 and c["chip"] == "h100"
  assert c["seconds"] == pytest.approx(3600 * p["step_seconds_at_mfu"])
  assert c["chip_hours"] == pytest.approx(8 * p["step_seconds_at_mfu"])
  assert c["usd"] == pytest.approx(c["chip_hours"] * 98.32 / 8)
  assert c["kwh"] == pytest.approx(c["chip_hours"] * 0.7 * 1.1)
  assert "cost (est.):" in proc.stdout and "whole run: 3600 steps at 50% MFU" in proc.stdout


def test_plan_cost_on_a_chip_without_published_power_leaves_energy_unknown():
  c = small_config()
  c.train.steps = 1000
  c.cost.pue = 1.2
  p = planner.plan(c, topology.parse_topology("v5e:2x2"), force_analytic=True)
  assert p.cost["kwh"] is None and p.cost["kgco2e"] is None
  assert p.cost["chip_hours"] == pytest.approx(4 * 1000 * p.step_seconds_at_mfu / 3600)
  assert p.cost["usd"] == pytest.approx(p.cost["chip_hours"] * 1.20)
  assert "no published board power for v5e" in planner.format_plan(p)
