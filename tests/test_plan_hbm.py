"""train.plan judges memory against what a JAX program may use on the chip."""

import pytest

from configs import default
from train import plan as plan_lib


def test_tpu_hbm_is_what_xla_allows():
  assert plan_lib.usable_bytes(plan_lib.CHIPS["v5e"]) == 15.75 * plan_lib.GiB
  assert plan_lib.usable_bytes(plan_lib.CHIPS["v6e"]) == 31.25 * plan_lib.GiB


def test_gpu_plans_fit_in_the_preallocated_fraction(monkeypatch):
  monkeypatch.delenv(plan_lib.GPU_MEM_FRACTION_ENV, raising=False)
  h100 = plan_lib.CHIPS["h100"]
  assert plan_lib.usable_bytes(h100) == 0.75 * 80 * plan_lib.GiB
  p = plan_lib.plan(default.get_config("size=tiny"), plan_lib.parse_topology("h100:8"))
  assert p["method"] == "analytic" and p["hbm_bytes"] == 60 * plan_lib.GiB
  assert "usable (XLA_PYTHON_CLIENT_MEM_FRACTION" in plan_lib.format_plan(p)
  monkeypatch.setenv(plan_lib.GPU_MEM_FRACTION_ENV, "0.9")
  assert plan_lib.usable_bytes(h100) == pytest.approx(0.9 * 80 * plan_lib.GiB, abs=1)
