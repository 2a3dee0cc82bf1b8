"""One training step's memory and FLOPs on a topology: compiled by XLA, or estimated.

The step `python -m train` would run (train/build.build: same model, mesh, shardings and
donated state) is lowered and compiled for the topology's compile-only devices, and XLA's own
buffer assignment says how many bytes each chip needs: the honest answer to "does it fit",
including the temporaries no formula predicts well. Where nothing can be compiled
(topology.NoCompiler) train/accounting.py's analytic estimate stands in, and says so.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Sequence
from typing import Any

from model import summary
from train import accounting
import jax

from train import build
from train import mesh as mesh_lib
from train import spec as spec_lib
from train.topology import Topology


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """Bytes per device of one step. method 'xla': XLA's buffer assignment (error: XLA's
  out-of-memory message when it refused); 'analytic': accounting.memory_per_device's parts."""

  method: str  # xla | analytic
  mesh: dict[str, int]
  total_bytes: int | None  # None: XLA refused without saying how much it needed
  compile_seconds: float | None = None
  argument_bytes: int | None = None
  output_bytes: int | None = None
  alias_bytes: int | None = None
  temp_bytes: int | None = None
  code_bytes: int | None = None
  peak_bytes: int | None = None
  error: str | None = None
  reason: str | None = None  # analytic: why nothing was compiled
  analytic: dict[str, int] | None = None  # analytic: the estimate's parts


def build_step(config, mesh):
  """The trainer's step for `config` on `mesh`: train.build.build, exactly what
  `python -m train` compiles (same model, optimizer, shardings, donated state)."""
  # MLM's mask id comes from the tokenizer; any in-vocab id compiles to the same program.
  mask_id = int(config.model.vocab_size) - 1
  return build.build(spec_lib.resolve(config), mesh, mask_id=mask_id).train_step


def with_batch(config, global_batch: int | None = None, remat: str | None = None):
  """A resolved copy of the config, with another global batch and/or remat policy."""
  config = config.copy_and_resolve_references()
  if global_batch is not None:
    config.train.batch_size = int(global_batch)
  if remat is not None:
    config.model.remat = remat
  return config


def for_topology(config, topo: Topology):
  """A copy of the config; with several slices and no DCN layout given, data parallelism
  across the slices (the usual choice: only gradients cross the DCN)."""
  config = with_batch(config)
  if topo.num_slices > 1 and math.prod(tuple(config.mesh.dcn_shape)) == 1:
    config.mesh.dcn_shape = (-1, 1, 1)
  return config


def mesh_sizes(config, topo: Topology) -> dict[str, int]:
  """{'data': ..., 'fsdp': ..., 'tensor': ...[, 'expert': ...]} for the topology's devices,
  without them."""
  ici, dcn = mesh_lib.resolve_shapes(config, topo.num_devices, topo.num_slices)
  names = mesh_lib.AXES + (mesh_lib.EXPERT,)
  return {a: i * d for a, i, d in zip(names, ici, dcn)}


def mesh_for(config, topo: Topology, devices: Sequence[Any]):
  mesh = mesh_lib.make_mesh(config, devices)
  rules = spec_lib.axis_rules(config.mesh.axis_rules)
  mesh_lib.check_model_on_mesh(config.model, mesh, rules, batch_size=int(config.train.batch_size))
  return mesh, rules


def compile_step(config, topo: Topology, devices: Sequence[Any]) -> StepMemory:
  """Compiles the step for the topology; XLA's per-device bytes (or its refusal)."""
  t0 = time.time()
  mesh, _ = mesh_for(config, topo, devices)
  step = build_step(config, mesh)
  try:
    compiled = step.lower().compile()
  except Exception as e:  # XLA's own verdict on a program larger than the chip's HBM.
    if not _is_oom(e):
      raise
    temp, arg = _oom_bytes(e), _argument_bytes(step, config)
    return StepMemory(
        method="xla",
        mesh=dict(mesh.shape),
        error=_first_line(e),
        argument_bytes=arg,
        temp_bytes=temp,
        total_bytes=None if temp is None else arg + temp,
        compile_seconds=round(time.time() - t0, 2),
    )
  seconds = time.time() - t0
  mem = compiled.memory_analysis()
  arg, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
  temp, alias = int(mem.temp_size_in_bytes), int(mem.alias_size_in_bytes)
  code = int(mem.generated_code_size_in_bytes)
  peak = int(getattr(mem, "peak_memory_in_bytes", 0) or 0)
  # Two views of the same buffers: XLA's peak (most bytes live at once, arguments and
  # outputs included, donation counted once) and arguments + outputs - donated +
  # temporaries. On TPU either can be the larger: temp_size reads 0 for buffers the peak
  # counts (toy programs), and exceeds the peak on big ones (GPT-3 1.3B on v5p). The
  # larger is taken, plus the program's code, which lives in HBM too.
  return StepMemory(
      method="xla",
      mesh=dict(mesh.shape),
      compile_seconds=round(seconds, 2),
      argument_bytes=arg,
      output_bytes=out,
      alias_bytes=alias,
      temp_bytes=temp,
      code_bytes=code,
      peak_bytes=peak,
      total_bytes=max(peak, arg + out - alias + temp) + code,
  )


def analytic_step(config, topo: Topology, reason: str) -> StepMemory:
  """train/accounting.py's estimate, for when nothing can be compiled (see `reason`)."""
  sizes = mesh_sizes(config, topo)
  rules = spec_lib.axis_rules(config.mesh.axis_rules)
  mesh_lib.check_model_on_mesh(config.model, sizes, rules, batch_size=int(config.train.batch_size))
  est = _memory_estimate(config, sizes)
  return StepMemory(
      method="analytic",
      reason=reason,
      mesh=sizes,
      total_bytes=int(est["total_bytes"]),
      analytic={k: int(v) for k, v in est.items()},
  )


def _memory_estimate(config, sizes: dict[str, int]) -> dict[str, float]:
  return accounting.memory_per_device(
      config.model,
      batch_size=int(config.train.batch_size),
      seq_len=int(config.data.seq_len),
      mesh_shape=tuple(sizes.get(a, 1) for a in mesh_lib.AXES + (mesh_lib.EXPERT,)),
      remat=config.model.remat,
      optimizer=config.train.optimizer,
  )


def analytic_total_bytes(config, sizes: dict[str, int]) -> int:
  """train/accounting.py's per-device total for the mesh, to print next to XLA's number."""
  return int(_memory_estimate(config, sizes)["total_bytes"])


def model_flops_per_step(config) -> float:
  """model/summary.py's training FLOPs for one step of the global batch."""
  seq = int(config.data.seq_len)
  return (
      float(summary.flops_per_token_train(config.model, seq)) * seq * int(config.train.batch_size)
  )


def xla_flops_per_step(config, topo: Topology, devices: Sequence[Any]) -> float:
  """XLA's FLOP count for the whole step, all devices.

  XLA's cost analysis counts a while loop's body once, and the step has two loops (the
  scanned layers, the microbatches). So two unrolled variants are compiled with one and two
  layers, one microbatch and one sequence per data shard (small, so they fit and compile
  fast): flops(L) = f1 + (L - 1) * (f2 - f1), scaled by the batch. Everything but the
  optimizer update is linear in the batch; the update is ~10 FLOPs per parameter, noise next
  to 6 per parameter per token.
  """
  layers = int(config.model.num_layers)
  counts = []
  for n in (1, 2):
    cfg = with_batch(config)
    cfg.train.microbatches = 1
    cfg.model.num_layers = n
    cfg.model.scan_layers = False
    mesh, rules = mesh_for(cfg, topo, devices)
    shards = mesh_lib.data_parallel_size(mesh, rules)
    cfg.train.batch_size = shards
    compiled = build_step(cfg, mesh).lower().compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    counts.append(float(cost.get("flops", 0.0)))
  f1, f2 = counts
  scale = int(config.train.batch_size) / shards
  return (f1 + (layers - 1) * (f2 - f1)) * scale * topo.num_devices


def _is_oom(e: Exception) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _oom_bytes(e: Exception) -> int | None:
  """The temporaries' size in XLA's out-of-memory message, e.g. '... (60.35G) exceeds ...'."""
  m = re.search(r"\(([0-9.]+)([KMGT])\) exceeds available", str(e))
  if not m:
    return None
  return int(float(m.group(1)) * {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2)])


def _argument_bytes(step, config) -> int:
  """Per-device bytes of the step's inputs (state + batch), from their shardings."""
  leaves = jax.tree_util.tree_leaves(step.abstract_state)
  shards = jax.tree_util.tree_leaves(step.state_shardings)
  total = sum(math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize for a, s in zip(leaves, shards))
  for b in step.abstract_batch().values():
    total += math.prod(b.sharding.shard_shape(b.shape)) * b.dtype.itemsize
  return int(total)


def _first_line(e: Exception) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
