"""Estimated compute cost of a run: chip-hours, energy, USD and CO2e, always with their inputs.

    chip-hours = chips x seconds / 3600
    kWh        = chip-hours x board W per chip / 1000 x PUE
    USD        = chip-hours x USD per chip-hour
    kg CO2e    = kWh x grid kg CO2e per kWh

Board power and prices come from train/hardware.py (typical board power, dated list prices)
unless the config's `cost` section sets them; PUE and grid intensity come from the config
(defaults and their sources in train/spec.py CostSpec). Every number is an estimate: the board power
is a typical figure, not a measurement, and the price is a list price. Where an input is
unknown (a CPU, whose power is not in any table; a chip without a published figure) the
quantity that needs it is None and the text says which setting supplies it: a figure is never
invented.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from train import hardware
from train.spec import CostSpec


@dataclasses.dataclass(frozen=True)
class CostInputs:
  """What an estimate multiplies, and where each number comes from."""

  chip: str  # a hardware.CHIPS name, or the platform ("cpu") when the table lacks it
  num_chips: int  # accelerators; on a CPU, hosts (one per process)
  watts_per_chip: float | None
  usd_per_chip_hour: float | None
  pue: float
  grid_kgco2_per_kwh: float
  watts_source: str
  price_source: str


@dataclasses.dataclass(frozen=True)
class CostEstimate:
  """One estimate; None where an input is unknown."""

  seconds: float
  chip_hours: float
  kwh: float | None
  usd: float | None
  kgco2e: float | None
  inputs: CostInputs

  def to_dict(self) -> dict[str, Any]:
    """Flat JSON-able dict: the quantities, then their inputs (metrics.jsonl, plan JSON)."""
    out = {k: v for k, v in dataclasses.asdict(self).items() if k != "inputs"}
    out.update(dataclasses.asdict(self.inputs))
    out["estimate"] = True
    return out


def resolve_inputs(
    cost: CostSpec, chip: hardware.Chip | None, num_chips: int, platform: str = "cpu"
) -> CostInputs:
  """CostInputs for `num_chips` of `chip` (None: not in the table, e.g. a CPU), the config's
  `cost` values (validated by train/spec.py) taking precedence over the table's."""
  name = chip.name if chip is not None else platform
  watts, watts_source = cost.watts_per_chip, "cost.watts_per_chip"
  if watts is None:
    watts = chip.board_watts if chip is not None else None
    watts_source = (
        f"typical board power of {name} (train/hardware.py)"
        if watts is not None
        else f"unknown: no published board power for {name}; set --config.cost.watts_per_chip"
    )
  price, price_source = cost.usd_per_chip_hour, "cost.usd_per_chip_hour"
  if price is None:
    price = hardware.PRICES.get(name)
    price_source = (
        f"on-demand list price of {name}, {hardware.PRICES_DATE} (train/hardware.py)"
        if price is not None
        else f"unknown: no list price for {name}; set --config.cost.usd_per_chip_hour"
    )
  return CostInputs(
      chip=name,
      num_chips=int(num_chips),
      watts_per_chip=watts,
      usd_per_chip_hour=price,
      pue=cost.pue,
      grid_kgco2_per_kwh=cost.grid_kgco2_per_kwh,
      watts_source=watts_source,
      price_source=price_source,
  )


def inputs_for_devices(cost: CostSpec, devices) -> CostInputs:
  """CostInputs for the devices a run uses. On a CPU the unit is the host (one per process),
  since JAX's CPU devices are slices of one processor."""
  first = devices[0]
  chip = hardware.chip_for_device_kind(first.device_kind)
  if chip is None and first.platform == "cpu":
    count = len({d.process_index for d in devices})
  else:
    count = len(devices)
  return resolve_inputs(cost, chip, count, platform=first.platform)


def estimate(inputs: CostInputs, seconds: float) -> CostEstimate:
  """The formulas in the module docstring, for `seconds` of the inputs' chips."""
  chip_hours = inputs.num_chips * float(seconds) / 3600.0
  kwh = None
  if inputs.watts_per_chip is not None:
    kwh = chip_hours * inputs.watts_per_chip / 1000.0 * inputs.pue
  usd = None if inputs.usd_per_chip_hour is None else chip_hours * inputs.usd_per_chip_hour
  kgco2e = None if kwh is None else kwh * inputs.grid_kgco2_per_kwh
  return CostEstimate(float(seconds), chip_hours, kwh, usd, kgco2e, inputs)


def format_usd(usd: float | None) -> str:
  return "USD unknown" if usd is None else f"${usd:,.2f}" if usd >= 1 else f"${usd:.3g}"


def describe(d: dict[str, Any]) -> list[str]:
  """Lines for an estimate's dict (CostEstimate.to_dict), labelled as estimates with inputs."""
  unit = "host(s)" if d["chip"] == "cpu" else "chip(s)"
  lines = [
      f"cost (est.): {d['chip_hours']:.4g} chip-hours ({d['num_chips']} {d['chip']} {unit} x "
      f"{d['seconds']:.4g} s)"
  ]
  if d["kwh"] is None:
    lines.append(f"  energy: {d['watts_source']}")
  else:
    lines.append(
        f"  energy {d['kwh']:.4g} kWh ({d['watts_per_chip']:g} W per chip x PUE {d['pue']:g}; "
        f"{d['watts_source']}), {d['kgco2e']:.4g} kg CO2e at {d['grid_kgco2_per_kwh']:g} kg/kWh"
    )
  if d["usd"] is None:
    lines.append(f"  price: {d['price_source']}")
  else:
    lines.append(
        f"  {format_usd(d['usd'])} at {d['usd_per_chip_hour']:.4g} USD/chip-hour "
        f"({d['price_source']})"
    )
  return lines
