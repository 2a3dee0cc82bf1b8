"""TPU and GPU topologies a plan targets: parsing "v5e:4x4" and the compile-only devices.

libtpu (`pip install -e ".[tpu]"`) describes TPU topologies without the chips
(`jax.experimental.topologies.get_topology_desc`), so XLA can compile for them from any
machine. GPUs cannot be compiled for ahead of time without the devices attached: for them
`topology_devices` raises NoCompiler and plans fall back to the analytic estimate.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from train.hardware import CHIPS, Chip


class NoCompiler(RuntimeError):
  """Ahead-of-time compilation is unavailable; the reason says why and what to install."""


@dataclasses.dataclass(frozen=True)
class Topology:
  chip: Chip
  dims: tuple[int, ...]
  num_slices: int = 1

  @property
  def chips_per_slice(self) -> int:
    return math.prod(self.dims)

  @property
  def num_devices(self) -> int:
    return self.chips_per_slice * self.num_slices

  def __str__(self) -> str:
    s = f"{self.chip.name}:{'x'.join(map(str, self.dims))}"
    return s + (f" x {self.num_slices} slices" if self.num_slices > 1 else "")


def parse_topology(text: str, num_slices: int = 1) -> Topology:
  """'v5e:4x4', 'v5p:4x4x4', 'v4:2x2x2', 'v6e:8x8', 'h100:8' -> Topology; ValueError if bad."""
  usage = (
      "write CHIP:AxB for v5e/v6e, CHIP:AxBxC for v4/v5p, or GPU:N for "
      f"a100/h100/h200 (known chips: {', '.join(CHIPS)}), e.g. v5e:4x4"
  )
  if not isinstance(text, str) or ":" not in text:
    raise ValueError(f"--topology={text!r} is not a topology; {usage}.")
  name, _, shape = text.strip().lower().partition(":")
  chip = CHIPS.get(name)
  if chip is None:
    raise ValueError(f"--topology={text!r}: unknown chip {name!r}; {usage}.")
  try:
    dims = tuple(int(p) for p in shape.split("x"))
  except ValueError:
    raise ValueError(
        f"--topology={text!r}: {shape!r} is not sizes joined by 'x'; " f"{usage}."
    ) from None
  if len(dims) != chip.ndims:
    raise ValueError(
        f"--topology={text!r}: {chip.name} topologies have {chip.ndims} "
        f"dimension(s), got {len(dims)} ({shape!r}); {usage}."
    )
  if any(d < 1 for d in dims):
    raise ValueError(f"--topology={text!r}: every size must be >= 1.")
  if chip.libtpu_name and len(dims) == 2 and math.prod(dims) > 4 and any(d % 2 for d in dims):
    raise ValueError(
        f"--topology={text!r}: multi-host {chip.name} slices are built from 2x2 "
        "hosts, so both sizes must be even (e.g. 2x4, 4x4, 8x16)."
    )
  if chip.libtpu_name and len(dims) == 3 and math.prod(dims) > 4 and (dims[0] % 2 or dims[1] % 2):
    raise ValueError(
        f"--topology={text!r}: {chip.name} hosts hold 2x2x1 chips, so the first "
        "two sizes must be even (e.g. 2x2x1, 2x2x2, 4x4x4)."
    )
  if num_slices < 1:
    raise ValueError(f"--num_slices={num_slices} must be >= 1.")
  return Topology(chip, dims, int(num_slices))


def _quiet_libtpu_env() -> None:
  """libtpu looks for a TPU VM's metadata on init and prints pages of warnings when there
  is none; planning needs no TPU VM, so tell it so (only where nothing is set already).
  Must run before libtpu is first loaded in this process."""
  if os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0"):
    return  # a real TPU VM: leave its environment alone.
  # libtpu takes a machine-wide lock file unless told otherwise; compiling needs no chip,
  # so several planners (pytest -n 2) may load it at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v4-8")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


def topology_devices(topo: Topology) -> list[Any]:
  """Compile-only devices for the topology (needs libtpu); NoCompiler says why not."""
  if not topo.chip.libtpu_name:
    raise NoCompiler(
        f"{topo.chip.name} is a GPU: XLA compiles for GPUs only with the devices "
        "attached, so this plan uses the analytic estimate (train/accounting.py)"
    )
  try:
    import libtpu  # noqa: F401  (only to say clearly when it is missing)
  except ImportError:
    raise NoCompiler(
        'libtpu is not installed (pip install -e ".[tpu]" installs the one jax '
        "pins), so this plan uses the analytic estimate (train/accounting.py)"
    ) from None
  _quiet_libtpu_env()
  from jax.experimental import topologies

  dims3 = tuple(topo.dims) + (1,) * (3 - len(topo.dims))
  host = (min(2, dims3[0]), min(2, dims3[1]), 1)
  if len(topo.dims) == 3:
    wrap = (all(d >= 4 for d in dims3),) * 3
  else:
    wrap = (dims3[0] >= 16, dims3[1] >= 16, False)
  name = f"{topo.chip.libtpu_name}:{'x'.join(map(str, topo.dims))}"
  try:
    desc = topologies.get_topology_desc(
        platform="tpu",
        topology_name=name,
        chip_config_name=topo.chip.chip_config,
        chips_per_host_bounds=host,
        num_slices=topo.num_slices,
        wrap=wrap,
    )
  except Exception as e:  # libtpu raises JaxRuntimeError with its own wording.
    raise ValueError(
        f"libtpu rejected topology {name!r} ({topo.num_slices} slice(s)): " f"{e}"
    ) from None
  return list(desc.devices)
