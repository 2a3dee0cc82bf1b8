"""The accelerators this project knows: one table for the planner's memory and the trainer's MFU.

Per chip (one JAX device per chip): the memory a program may use and the dense bf16 peak, with
the names JAX reports as `device.device_kind`. Peaks are vendor data-sheet numbers (dense, no
sparsity): TPU v4 275, v5e 197, v5p 459, v6e (Trillium) 918 TFLOP/s (Cloud TPU system
architecture pages); A100 SXM 312, H100 SXM 989, H200 SXM 989 TFLOP/s (NVIDIA data sheets).
TPU memory is what XLA lets a program use (15.75 of v5e's 16 GiB, 31.25 of v6e's 32 GiB), not
the data-sheet size; GPU memory is the physical size (see `usable_bytes`).

Board power (W per chip, what the cost estimates in train/cost.py multiply by time) is a
published number or None where the vendor publishes none; an estimate is never filled in for
a missing one (configure `cost.watts_per_chip` instead). Prices are in `PRICES`, dated.
"""

from __future__ import annotations

import dataclasses
import os

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip as the planner and the MFU see it."""

  name: str
  hbm_bytes: int
  peak_bf16_flops: float  # dense bf16 FLOP/s per chip
  ndims: int  # topology dimensions: 2 (v5e, v6e), 3 (v4, v5p), 1 (GPUs)
  libtpu_name: str = ""  # prefix libtpu expects in "name:AxB"; "" = no AOT compile
  chip_config: str = "default"
  device_kinds: tuple[str, ...] = ()  # lower-case substrings of jax's device_kind
  board_watts: float | None = None  # typical power per chip (source in CHIPS); None: unpublished

  @property
  def is_gpu(self) -> bool:
    return self.ndims == 1


# Board power sources: v4: mean 170 W per chip measured on production workloads (max 192 W),
# Jouppi et al., "TPU v4", ISCA 2023, Table 4. v5e, v5p, v6e: Google publishes no per-chip
# power, so None. A100 SXM4 80GB: 400 W TDP (NVIDIA A100 data sheet). H100 SXM5: up to 700 W
# (NVIDIA H100 data sheet). H200 SXM: up to 700 W (NVIDIA H200 data sheet).
CHIPS = {
    "v4": Chip("v4", 32 * GiB, 275e12, 3, "v4", "megacore", ("tpu v4",), board_watts=170.0),
    "v5e": Chip("v5e", int(15.75 * GiB), 197e12, 2, "v5e", device_kinds=("tpu v5 lite", "tpu v5e")),
    "v5p": Chip("v5p", 95 * GiB, 459e12, 3, "v5p", "megacore", ("tpu v5p", "tpu v5")),
    "v6e": Chip("v6e", int(31.25 * GiB), 918e12, 2, "v6e", device_kinds=("tpu v6 lite", "tpu v6e")),
    # GPUs: analytic plans only (AOT compilation for GPUs needs the devices).
    "a100": Chip("a100", 80 * GiB, 312e12, 1, device_kinds=("a100",), board_watts=400.0),
    "h100": Chip("h100", 80 * GiB, 989e12, 1, device_kinds=("h100",), board_watts=700.0),
    "h200": Chip("h200", 141 * GiB, 989e12, 1, device_kinds=("h200",), board_watts=700.0),
}

# On-demand list prices, USD per chip-hour, as of PRICES_DATE; prices change, so a run's
# `cost.usd_per_chip_hour` overrides them. TPUs: cloud.google.com/tpu/pricing, us-central
# regions (v4 $3.22, v5e $1.20, v5p $4.20, v6e $2.70 per chip-hour). GPUs: AWS EC2 on-demand
# (aws.amazon.com/ec2/pricing/on-demand, us-east-1), the 8-GPU instance's hourly price / 8:
# p4de.24xlarge (8 x A100 80GB) $40.97/h, p5.48xlarge (8 x H100) $98.32/h. H200: None (offered
# then through reserved capacity blocks, with no on-demand list price).
PRICES_DATE = "2024-06"
PRICES = {
    "v4": 3.22,
    "v5e": 1.20,
    "v5p": 4.20,
    "v6e": 2.70,
    "a100": 40.97 / 8,
    "h100": 98.32 / 8,
    "h200": None,
}

GPU_MEM_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"
GPU_DEFAULT_MEM_FRACTION = 0.75


def usable_bytes(chip: Chip) -> int:
  """Memory a JAX program can use on one chip, what plans are judged against. On GPUs JAX
  preallocates XLA_PYTHON_CLIENT_MEM_FRACTION (0.75 unless set) of the memory as the pool
  every array lives in, so a run needs to fit in that fraction, not in the whole HBM."""
  if not chip.is_gpu:
    return chip.hbm_bytes
  fraction = float(os.environ.get(GPU_MEM_FRACTION_ENV) or GPU_DEFAULT_MEM_FRACTION)
  return int(chip.hbm_bytes * fraction)


def chip_for_device_kind(device_kind: str) -> Chip | None:
  """The chip whose name JAX reports as `device_kind` ("TPU v5 lite", "NVIDIA H100 80GB HBM3"),
  longest match first so "tpu v5 lite" wins over "tpu v5"; None for CPUs and unknown chips."""
  kind = device_kind.lower()
  matches = [(len(k), c) for c in CHIPS.values() for k in c.device_kinds if k in kind]
  return max(matches, key=lambda m: m[0])[1] if matches else None
