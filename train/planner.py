"""A Plan: one configuration's step on a topology, judged against the chip's memory, with its
FLOPs, step time at an assumed MFU, and the estimated cost of the whole run."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from train import cost as cost_lib
from train import spec as spec_lib
from train import plan_compile
from train.hardware import CHIPS, GPU_MEM_FRACTION_ENV, GiB, usable_bytes
from train.plan_compile import StepMemory
from train.topology import NoCompiler, Topology, topology_devices

# Keys every plan's JSON has; the rest appear only where they apply (None is left out).
_ALWAYS = ("config", "topology", "chip", "num_devices", "hbm_bytes", "global_batch", "seq_len")
_ALWAYS += ("remat", "mfu", "method", "mesh", "total_bytes", "fits", "model_flops_per_step")


@dataclasses.dataclass(frozen=True)
class BatchSearch:
  """What plan_search.search_batch tried: [{'per_device_batch', 'total_bytes', 'fits'}]."""

  tried: tuple[dict[str, Any], ...]
  data_shards: int
  microbatches: int
  max_per_device_batch: int


@dataclasses.dataclass(frozen=True)
class Plan:
  """One plan. `memory` is the step's bytes per device (XLA's or the analytic estimate);
  `cost` the estimate (train/cost.py) for `train_steps` steps at `step_seconds_at_mfu`."""

  config: str
  topology: str
  chip: str
  num_devices: int
  hbm_bytes: int  # what a program may use per chip (hardware.usable_bytes)
  global_batch: int
  seq_len: int
  remat: str
  mfu: float
  memory: StepMemory
  fits: bool
  model_flops_per_step: float
  train_steps: int
  step_seconds_at_mfu: float | None = None
  tokens_per_second_at_mfu: float | None = None
  analytic_total_bytes: int | None = None  # next to XLA's number
  xla_flops_per_step: float | None = None
  cost: dict[str, Any] | None = None  # cost.CostEstimate.to_dict() for the whole run
  per_device_batch: int | None = None  # set by the batch search
  search: BatchSearch | None = None
  remat_search: tuple[dict[str, Any], ...] | None = None

  @property
  def method(self) -> str:
    return self.memory.method

  @property
  def total_bytes(self) -> int | None:
    return self.memory.total_bytes

  def to_json(self) -> dict[str, Any]:
    """The CLI's --json: the memory's fields inline, keys that do not apply left out."""
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    fields.pop("memory")
    out = {**fields, **dataclasses.asdict(self.memory)}
    if self.search is not None:
      out["search"] = dataclasses.asdict(self.search)
    return {k: v for k, v in out.items() if v is not None or k in _ALWAYS}


def plan(
    config,
    topo: Topology,
    *,
    mfu: float = 0.5,
    devices: Sequence[Any] | None = None,
    force_analytic: bool = False,
    count_flops: bool = False,
) -> Plan:
  """One plan: memory per device against the chip's HBM, FLOPs, step time at `mfu`, cost."""
  config = plan_compile.for_topology(config, topo)
  xla_flops = None
  try:
    if force_analytic:
      raise NoCompiler("--analytic was given")
    devices = devices if devices is not None else topology_devices(topo)
    memory = plan_compile.compile_step(config, topo, devices)
    if count_flops and not memory.error:
      xla_flops = plan_compile.xla_flops_per_step(config, topo, devices)
  except NoCompiler as e:
    memory = plan_compile.analytic_step(config, topo, str(e))
  analytic_total = None
  if memory.method == "xla":
    analytic_total = plan_compile.analytic_total_bytes(config, memory.mesh)
  total = memory.total_bytes
  model_flops = plan_compile.model_flops_per_step(config)
  tokens_per_step = int(config.train.batch_size) * int(config.data.seq_len)
  step_seconds = model_flops / (topo.chip.peak_bf16_flops * topo.num_devices * mfu)
  return Plan(
      config=config.get("name", ""),
      topology=str(topo),
      chip=topo.chip.name,
      num_devices=topo.num_devices,
      hbm_bytes=usable_bytes(topo.chip),
      global_batch=int(config.train.batch_size),
      seq_len=int(config.data.seq_len),
      remat=config.model.remat,
      mfu=mfu,
      memory=memory,
      fits=not memory.error and total is not None and total <= usable_bytes(topo.chip),
      model_flops_per_step=model_flops,
      train_steps=int(config.train.steps),
      step_seconds_at_mfu=step_seconds,
      tokens_per_second_at_mfu=tokens_per_step / step_seconds,
      analytic_total_bytes=analytic_total,
      xla_flops_per_step=xla_flops,
      cost=run_cost(config, topo, step_seconds),
  )


def run_cost(config, topo: Topology, step_seconds: float) -> dict[str, Any]:
  """The estimated cost of config.train.steps steps of `step_seconds` on the topology."""
  inputs = cost_lib.resolve_inputs(spec_lib.resolve(config).cost, topo.chip, topo.num_devices)
  return cost_lib.estimate(inputs, int(config.train.steps) * step_seconds).to_dict()


def _gib(n: float | None) -> str:
  return "n/a" if n is None else f"{n / GiB:8.2f} GiB"


def _memory_lines(m: StepMemory, chip: str) -> list[str]:
  if m.method == "analytic":
    lines = [f"  ANALYTIC ESTIMATE (nothing compiled): {m.reason}"]
    return lines + [f"  {k:<22}{_gib(v)}" for k, v in m.analytic.items()]
  if m.error:
    return [
        f"  XLA refused to compile: {m.error}",
        f"  {'arguments':<22}{_gib(m.argument_bytes)}",
        f"  {'temporaries':<22}{_gib(m.temp_bytes)}",
    ]
  lines = [f"  compiled for {chip} by XLA in {m.compile_seconds} s; per device:"]
  for label, value in (
      ("arguments", m.argument_bytes),
      ("outputs", m.output_bytes),
      ("aliased (donated)", m.alias_bytes),
      ("temporaries", m.temp_bytes),
      ("peak live (XLA)", m.peak_bytes),
      ("code", m.code_bytes),
  ):
    lines.append(f"  {label:<22}{_gib(value)}")
  return lines


def _flops_lines(p: Plan) -> list[str]:
  lines = [f"  model FLOPs/step (model.summary formula)   {p.model_flops_per_step:.4g}"]
  if p.xla_flops_per_step:
    ratio = p.xla_flops_per_step / p.model_flops_per_step
    lines.append(
        f"  XLA FLOPs/step (cost_analysis, all devices) {p.xla_flops_per_step:.4g}"
        f"  (x{ratio:.2f} the formula; XLA also counts remat recompute, softmax, "
        "norms, the optimizer)"
    )
  lines.append(
      f"  step time at {p.mfu:.0%} MFU: {p.step_seconds_at_mfu:.4g} s "
      f"({p.tokens_per_second_at_mfu:.4g} tokens/s)"
  )
  return lines


def format_plan(p: Plan) -> str:
  lines = [
      f"plan: {p.config} on {p.topology} ({p.num_devices} devices), mesh "
      f"{p.memory.mesh}, global batch {p.global_batch} x {p.seq_len} tokens, "
      f"remat={p.remat}"
  ]
  lines += _memory_lines(p.memory, p.chip)
  verdict = "fits" if p.fits else "DOES NOT FIT"
  usable = (
      f"usable ({GPU_MEM_FRACTION_ENV} of the HBM JAX preallocates)"
      if CHIPS[p.chip].is_gpu
      else "HBM"
  )
  lines.append(
      f"  {'total':<22}{_gib(p.total_bytes)} of {_gib(p.hbm_bytes).strip()} "
      f"{usable} per {p.chip} chip -> {verdict}"
  )
  if p.analytic_total_bytes:
    ratio = (p.total_bytes or 0) / p.analytic_total_bytes
    lines.append(
        f"  {'analytic estimate':<22}{_gib(p.analytic_total_bytes)}"
        f"  (XLA / estimate = {ratio:.2f})"
    )
  lines += _flops_lines(p)
  if p.cost:
    lines.append(f"  whole run: {p.train_steps} steps at {p.mfu:.0%} MFU")
    lines += [f"  {line}" for line in cost_lib.describe(p.cost)]
  if p.search:
    s = p.search
    lines.append(
        f"  search: largest per-device batch that fits = {s.max_per_device_batch} "
        f"(data shards {s.data_shards}, microbatches {s.microbatches}); tried "
        + ", ".join(f"{t['per_device_batch']}:{'fits' if t['fits'] else 'no'}" for t in s.tried)
    )
  for r in p.remat_search or ():
    lines.append(f"  remat={r['remat']:<34} max per-device batch {r['max_per_device_batch']}")
  return "\n".join(lines)
