"""train.plan judges memory against what a JAX program may use on the chip."""

import pytest

from train import hardware, planner, topology


def test_tpu_hbm_is_what_xla_allows():
  assert hardware.usable_bytes(hardware.CHIPS["v5e"]) == 15.75 * hardware.GiB
  assert hardware.usable_bytes(hardware.CHIPS["v6e"]) == 31.25 * hardware.GiB


def test_gpu_plans_fit_in_the_preallocated_fraction(monkeypatch):
  from configs import default

  monkeypatch.delenv(hardware.GPU_MEM_FRACTION_ENV, raising=False)
  h100 = hardware.CHIPS["h100"]
  assert hardware.usable_bytes(h100) == 0.75 * 80 * hardware.GiB
  p = planner.plan(default.get_config("size=tiny"), topology.parse_topology("h100:8"))
  assert p.method == "analytic" and p.hbm_bytes == 60 * hardware.GiB
  assert "usable (XLA_PYTHON_CLIENT_MEM_FRACTION" in planner.format_plan(p)
  monkeypatch.setenv(hardware.GPU_MEM_FRACTION_ENV, "0.9")
  assert hardware.usable_bytes(h100) == pytest.approx(0.9 * 80 * hardware.GiB, abs=1)
