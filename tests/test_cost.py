"""Cost and energy estimates (train/cost.py): the arithmetic against hand-computed values,
the inputs' provenance, bad values, and the `cost` event and summary lines of a tiny run."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from configs.base import base_config
from train import cost, hardware, spec

REPO = pathlib.Path(__file__).resolve().parents[1]


def cost_cfg(**overrides):
  c = base_config()
  c.cost.update(overrides)
  return spec.resolve(c).cost


def test_h100_estimate_matches_a_hand_computation():
  # 8 H100 for 30 minutes, table values: 700 W, 98.32 / 8 = 12.29 USD/chip-hour; PUE 1.1,
  # grid 0.48 kg/kWh (the config's defaults).
  inputs = cost.resolve_inputs(cost_cfg(), hardware.CHIPS["h100"], 8)
  e = cost.estimate(inputs, 1800.0)
  assert e.chip_hours == 4.0  # 8 chips x 0.5 h
  assert e.kwh == pytest.approx(3.08)  # 4 chip-hours x 0.7 kW x 1.1
  assert e.usd == pytest.approx(49.16)  # 4 x 12.29
  assert e.kgco2e == pytest.approx(1.4784)  # 3.08 x 0.48
  assert "typical board power of h100" in inputs.watts_source
  assert hardware.PRICES_DATE in inputs.price_source


def test_config_values_override_the_table():
  c = cost_cfg(usd_per_chip_hour=2.0, watts_per_chip=250.0, pue=1.5, grid_kgco2_per_kwh=0.1)
  e = cost.estimate(cost.resolve_inputs(c, hardware.CHIPS["v5e"], 16), 900.0)
  assert e.chip_hours == 4.0  # 16 x 0.25 h
  assert e.usd == 8.0
  assert e.kwh == pytest.approx(1.5)  # 4 x 0.25 kW x 1.5
  assert e.kgco2e == pytest.approx(0.15)
  assert e.inputs.price_source == "cost.usd_per_chip_hour"
  assert e.inputs.watts_source == "cost.watts_per_chip"


def test_unpublished_power_and_the_cpu_are_unknown_not_invented():
  v5e = cost.estimate(cost.resolve_inputs(cost_cfg(), hardware.CHIPS["v5e"], 4), 3600.0)
  assert v5e.kwh is None and v5e.kgco2e is None and v5e.usd == pytest.approx(4 * 1.20)
  cpu = cost.estimate(cost.resolve_inputs(cost_cfg(), None, 1, platform="cpu"), 7200.0)
  assert cpu.chip_hours == 2.0 and cpu.kwh is None and cpu.usd is None
  text = "\n".join(cost.describe(cpu.to_dict()))
  assert "(est.)" in text
  assert "no published board power for cpu; set --config.cost.watts_per_chip" in text
  assert "no list price for cpu; set --config.cost.usd_per_chip_hour" in text
  # With the CPU's share of its TDP configured: 2 host-hours x 65 W x PUE 1.1.
  tdp = cost.resolve_inputs(cost_cfg(watts_per_chip=65.0), None, 1, platform="cpu")
  assert cost.estimate(tdp, 7200.0).kwh == pytest.approx(0.143)


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("usd_per_chip_hour", -1.0, "cost.usd_per_chip_hour: -1.0 must be a finite number >= 0"),
        ("watts_per_chip", -5.0, "cost.watts_per_chip: -5.0 must be"),
        ("pue", 0.9, "cost.pue: 0.9 is below 1"),
        ("grid_kgco2_per_kwh", float("nan"), "cost.grid_kgco2_per_kwh: nan must be"),
    ],
)
def test_bad_values_name_the_field(field, value, needle):
  with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(".", r"\.")):
    cost_cfg(**{field: value})


def test_cli_rejects_a_bad_pue_in_one_line(tmp_path):
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "train",
          "--config",
          "configs/default.py:size=tiny",
          "--workdir",
          str(tmp_path / "run"),
          "--config.cost.pue=0.5",
      ],
      cwd=REPO,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith("error: cost.pue: 0.5 is below 1")
  assert "Traceback" not in proc.stderr


def test_tiny_run_records_and_prints_its_cost(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "train",
          "--config",
          "configs/default.py:size=tiny",
          "--workdir",
          str(workdir),
          "--config.train.steps=2",
          "--config.train.warmup_steps=1",
          "--config.train.batch_size=4",
          "--config.eval.batches=1",
          "--config.checkpoint.every=2",
          "--config.cost.usd_per_chip_hour=3.6",
      ],
      cwd=REPO,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  events = [r for r in rows if r.get("event") == "cost"]
  assert len(events) == 1
  e = events[0]
  assert e["estimate"] is True and e["chip"] == "cpu" and e["num_chips"] == 1
  assert e["seconds"] > 0 and e["chip_hours"] == pytest.approx(e["seconds"] / 3600)
  assert e["usd"] == pytest.approx(e["chip_hours"] * 3.6)  # 1 USD per 1000 s
  assert e["kwh"] is None and e["kgco2e"] is None  # no CPU power configured
  out = proc.stdout + proc.stderr
  assert "cost (est.):" in out and "no published board power for cpu" in out
