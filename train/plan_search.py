"""Searches over plans: the largest per-device batch that fits, and the best remat policy."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from typing import Any

from train import spec as spec_lib
from train import plan_compile
from train.hardware import GiB, usable_bytes
from train.planner import BatchSearch, Plan, plan
from train.topology import NoCompiler, Topology, topology_devices

REMAT_ORDER = ("none", "dots_saveable", "dots_with_no_batch_dims_saveable", "full")


def search_batch(
    config,
    topo: Topology,
    *,
    mfu: float = 0.5,
    devices: Sequence[Any] | None = None,
    max_per_device: int = 4096,
    force_analytic: bool = False,
) -> Plan:
  """Largest per-device batch (global = per-device x data shards) whose step fits.

  Memory grows about linearly with the batch, so the search starts at the analytic
  estimate's guess and then interpolates between the two nearest compiled sizes (each
  compile, even a refused one, reports bytes), bisecting when the line points outside the
  bracket: usually 3-5 compilations. Returns the largest fitting plan (or the plan for one
  sequence per device when even that does not fit) with the candidates tried.
  """
  config = plan_compile.for_topology(config, topo)
  if devices is None and not force_analytic:
    try:
      devices = topology_devices(topo)
    except NoCompiler:
      pass  # each plan falls back to the estimate and says why
  sizes = plan_compile.mesh_sizes(config, topo)
  shards = _batch_shards(config, sizes)
  micro = int(config.train.microbatches)
  hbm = usable_bytes(topo.chip)
  tried: list[dict[str, Any]] = []
  plans: dict[int, Plan] = {}

  def attempt(n: int) -> Plan:
    """n = sequences per device per microbatch."""
    if n not in plans:
      cfg = plan_compile.with_batch(config, n * shards * micro)
      p = plan(cfg, topo, mfu=mfu, devices=devices, force_analytic=force_analytic)
      p = dataclasses.replace(p, per_device_batch=n * micro)
      tried.append({"per_device_batch": n * micro, "total_bytes": p.total_bytes, "fits": p.fits})
      print(
          f"search: remat={p.remat} per-device batch {n * micro}: "
          f"{_gib(p.total_bytes)} -> {'fits' if p.fits else 'does not fit'}",
          file=sys.stderr,
          flush=True,
      )
      plans[n] = p
    return plans[n]

  lo, hi = 0, max_per_device + 1  # lo fits (0: none yet), hi does not
  n = _first_guess(config, sizes, shards * micro, hbm, max_per_device)
  for _ in range(12):
    if attempt(n).fits:
      lo = n
    else:
      hi = n
    if hi - lo <= 1:
      break
    n = _next_candidate(lo, hi, {k: p.total_bytes for k, p in plans.items()}, hbm, max_per_device)
  result = plans[lo] if lo else attempt(1)
  search = BatchSearch(tuple(tried), shards, micro, lo * micro)
  return dataclasses.replace(result, search=search)


def _batch_shards(config, sizes: dict[str, int]) -> int:
  """How many ways the batch is split: the product of the mesh axes the `batch` rule names."""
  rules = dict(spec_lib.axis_rules(config.mesh.axis_rules))
  batch_axes = rules.get("batch") or ()
  batch_axes = batch_axes if isinstance(batch_axes, tuple) else (batch_axes,)
  return math.prod(sizes[a] for a in batch_axes)


def _first_guess(config, sizes: dict[str, int], step: int, hbm: int, cap: int) -> int:
  """The analytic estimate's per-device batch for the HBM (memory linear in the batch);
  `step` = global sequences per unit of per-device batch."""
  try:
    one = plan_compile.analytic_total_bytes(plan_compile.with_batch(config, step), sizes)
    two = plan_compile.analytic_total_bytes(plan_compile.with_batch(config, 2 * step), sizes)
  except (ValueError, KeyError):  # the estimate rejects the config: start small.
    return 1
  if two <= one:
    return 1
  return max(1, min(cap, int(1 + (hbm - one) / (two - one))))


def _next_candidate(lo: int, hi: int, totals: dict[int, int | None], hbm: int, cap: int) -> int:
  """Between lo (fits; 0 = none yet) and hi (does not; cap + 1 = none yet): where the line
  through the measured points crosses the HBM, kept strictly inside the bracket, so a line
  that is right closes the bracket with one more compile. `totals`: bytes per candidate."""
  if hi > cap:  # nothing has failed yet: scale up, at most doubling
    t = totals.get(lo)
    n = int(lo * hbm / t) if t else 2 * lo
    return min(cap, max(lo + 1, min(2 * lo, n)))
  if lo == 0:  # nothing fits yet: scale down
    t = totals.get(hi)
    n = int(hi * hbm / t) if t else hi // 2
    return max(1, min(hi - 1, n))
  t_lo, t_hi = totals.get(lo), totals.get(hi)
  if t_lo and t_hi and t_hi > t_lo:
    n = lo + int((hbm - t_lo) * (hi - lo) / (t_hi - t_lo))
    return max(lo + 1, min(hi - 1, n))
  return (lo + hi) // 2


def search_remat(config, topo: Topology, **kw) -> Plan:
  """For each remat policy (least recompute first), the largest batch that fits."""
  rows = [
      search_batch(plan_compile.with_batch(config, remat=policy), topo, **kw)
      for policy in REMAT_ORDER
  ]
  best = max(rows, key=lambda p: (p.search.max_per_device_batch, -REMAT_ORDER.index(p.remat)))
  table = tuple(
      {
          "remat": p.remat,
          "max_per_device_batch": p.search.max_per_device_batch,
          "total_bytes": p.total_bytes,
      }
      for p in rows
  )
  return dataclasses.replace(best, remat_search=table)


def _gib(n: float | None) -> str:
  return "n/a" if n is None else f"{n / GiB:.2f} GiB"
