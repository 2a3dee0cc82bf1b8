"""Plan a run for a TPU slice from any machine: compile the real step, read its memory.

    python -m train.plan --config configs/gpt3.py:size=1.3B --topology v5e:4x4
    python -m train.plan --config configs/gpt3.py:size=175B --topology v5p:8x8x8 \\
        --config.mesh.shape='(1,-1,8)' --search --json plan.json

libtpu (`pip install -e ".[tpu]"`) describes TPU topologies without the chips
(`jax.experimental.topologies.get_topology_desc`), and XLA compiles for those compile-only
devices. So the step `python -m train` would run (train/step.build_train_step, same mesh,
same shardings, same donated state) is lowered and compiled for the topology here, and XLA's
own buffer assignment says how many bytes each chip needs: the honest answer to "does it
fit", including the temporaries no formula predicts well.

Where that is impossible (libtpu missing, or a GPU target, whose ahead-of-time compilation
needs the devices attached), the plan falls back to model.summary's analytic estimate and
says so in its output.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from train.hardware import CHIPS, GPU_MEM_FRACTION_ENV, Chip, GiB, usable_bytes  # noqa: F401

REMAT_ORDER = ("none", "dots_saveable", "dots_with_no_batch_dims_saveable", "full")


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
        "attached, so this plan uses model.summary's analytic estimate"
    )
  try:
    import libtpu  # noqa: F401  (only to say clearly when it is missing)
  except ImportError:
    raise NoCompiler(
        'libtpu is not installed (pip install -e ".[tpu]" installs the one jax '
        "pins), so this plan uses model.summary's analytic estimate"
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


# --------------------------------------------------------------------------- the step


def build_step(config, mesh):
  """The trainer's step for `config` on `mesh`: train.build.build, exactly what
  `python -m train` compiles (same model, optimizer, shardings, donated state)."""
  from train import build
  from train import spec

  # MLM's mask id comes from the tokenizer; any in-vocab id compiles to the same program.
  mask_id = int(config.model.vocab_size) - 1
  return build.build(spec.resolve(config), mesh, mask_id=mask_id).train_step


def _with_batch(config, global_batch: int | None = None, remat: str | None = None):
  config = config.copy_and_resolve_references()
  if global_batch is not None:
    config.train.batch_size = int(global_batch)
  if remat is not None:
    config.model.remat = remat
  return config


def _for_topology(config, topo: Topology):
  """A copy of the config; with several slices and no DCN layout given, data parallelism
  across the slices (the usual choice: only gradients cross the DCN)."""
  config = _with_batch(config)
  if topo.num_slices > 1 and math.prod(tuple(config.mesh.dcn_shape)) == 1:
    config.mesh.dcn_shape = (-1, 1, 1)
  return config


def _mesh_for(config, topo: Topology, devices: Sequence[Any]):
  from train import mesh as mesh_lib

  from train import spec

  mesh = mesh_lib.make_mesh(config, devices)
  rules = spec.axis_rules(config.mesh.axis_rules)
  mesh_lib.check_model_on_mesh(config.model, mesh, rules, batch_size=int(config.train.batch_size))
  return mesh, rules


def compile_step(config, topo: Topology, devices: Sequence[Any]) -> dict[str, Any]:
  """Compiles the step for the topology; returns XLA's per-device bytes and FLOPs."""
  t0 = time.time()
  mesh, _ = _mesh_for(config, topo, devices)
  step = build_step(config, mesh)
  try:
    compiled = step.lower().compile()
  except Exception as e:  # XLA's own verdict on a program larger than the chip's HBM.
    if not _is_oom(e):
      raise
    temp = _oom_bytes(e)
    arg = _argument_bytes(step, config)
    return {
        "method": "xla",
        "mesh": dict(mesh.shape),
        "error": _first_line(e),
        "argument_bytes": arg,
        "temp_bytes": temp,
        "total_bytes": None if temp is None else arg + temp,
        "compile_seconds": round(time.time() - t0, 2),
    }
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
  total = max(peak, arg + out - alias + temp) + code
  return {
      "method": "xla",
      "mesh": dict(mesh.shape),
      "compile_seconds": round(seconds, 2),
      "argument_bytes": arg,
      "output_bytes": out,
      "alias_bytes": alias,
      "temp_bytes": temp,
      "code_bytes": code,
      "peak_bytes": peak,
      "total_bytes": total,
  }


def analytic_step(config, topo: Topology, reason: str) -> dict[str, Any]:
  """model.summary's estimate, for when nothing can be compiled (see `reason`)."""
  from train import mesh as mesh_lib

  ici, dcn = mesh_lib.resolve_shapes(config, topo.num_devices, topo.num_slices)
  mesh_shape = {a: i * d for a, i, d in zip(mesh_lib.AXES, ici, dcn)}
  from train import spec

  rules = spec.axis_rules(config.mesh.axis_rules)
  mesh_lib.check_model_on_mesh(
      config.model, mesh_shape, rules, batch_size=int(config.train.batch_size)
  )
  from model import summary

  est = summary.memory_per_device(
      config.model,
      batch_size=int(config.train.batch_size),
      seq_len=int(config.data.seq_len),
      mesh_shape=tuple(mesh_shape[a] for a in mesh_lib.AXES),
      remat=config.model.remat,
      optimizer=config.train.optimizer,
  )
  return {
      "method": "analytic",
      "reason": reason,
      "mesh": mesh_shape,
      "total_bytes": int(est["total_bytes"]),
      "analytic": {k: int(v) for k, v in est.items()},
  }


def xla_flops_per_step(config, topo: Topology, devices: Sequence[Any]) -> float:
  """XLA's FLOP count for the whole step, all devices.

  XLA's cost analysis counts a while loop's body once, and the step has two loops (the
  scanned layers, the microbatches). So two unrolled variants are compiled with one and two
  layers, one microbatch and one sequence per data shard (small, so they fit and compile
  fast): flops(L) = f1 + (L - 1) * (f2 - f1), scaled by the batch. Everything but the
  optimizer update is linear in the batch; the update is ~10 FLOPs per parameter, noise next
  to 6 per parameter per token.
  """
  from train import mesh as mesh_lib

  layers = int(config.model.num_layers)
  counts = []
  for n in (1, 2):
    cfg = _with_batch(config)
    cfg.train.microbatches = 1
    cfg.model.num_layers = n
    cfg.model.scan_layers = False
    mesh, rules = _mesh_for(cfg, topo, devices)
    shards = mesh_lib.data_parallel_size(mesh, rules)
    cfg.train.batch_size = shards
    compiled = build_step(cfg, mesh).lower().compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    counts.append(float(cost.get("flops", 0.0)))
  f1, f2 = counts
  scale = int(config.train.batch_size) / shards
  return (f1 + (layers - 1) * (f2 - f1)) * scale * topo.num_devices


# --------------------------------------------------------------------------- the plan


def _analytic_total(config, mesh_shape: dict[str, int]) -> int | None:
  """model.summary's estimate for the same mesh, to print next to XLA's number."""
  from train import mesh as mesh_lib

  try:
    from model import summary
  except ImportError:
    return None
  est = summary.memory_per_device(
      config.model,
      batch_size=int(config.train.batch_size),
      seq_len=int(config.data.seq_len),
      mesh_shape=tuple(mesh_shape[a] for a in mesh_lib.AXES),
      remat=config.model.remat,
      optimizer=config.train.optimizer,
  )
  return int(est["total_bytes"])


def _model_flops_per_step(config) -> float | None:
  try:
    from model import summary
  except ImportError:
    return None
  seq = int(config.data.seq_len)
  return (
      float(summary.flops_per_token_train(config.model, seq)) * seq * int(config.train.batch_size)
  )


def plan(
    config,
    topo: Topology,
    *,
    mfu: float = 0.5,
    devices: Sequence[Any] | None = None,
    force_analytic: bool = False,
    count_flops: bool = False,
) -> dict[str, Any]:
  """One plan: memory per device against the chip's HBM, FLOPs, step time at `mfu`."""
  config = _for_topology(config, topo)
  result: dict[str, Any] = {
      "config": config.get("name", ""),
      "topology": str(topo),
      "chip": topo.chip.name,
      "num_devices": topo.num_devices,
      "hbm_bytes": usable_bytes(topo.chip),
      "global_batch": int(config.train.batch_size),
      "seq_len": int(config.data.seq_len),
      "remat": config.model.remat,
      "mfu": mfu,
  }
  try:
    if force_analytic:
      raise NoCompiler("--analytic was given")
    devices = devices if devices is not None else topology_devices(topo)
    result.update(compile_step(config, topo, devices))
    if count_flops and not result.get("error"):
      result["xla_flops_per_step"] = xla_flops_per_step(config, topo, devices)
  except NoCompiler as e:
    result.update(analytic_step(config, topo, str(e)))
  if result["method"] == "xla":
    result["analytic_total_bytes"] = _analytic_total(config, result["mesh"])
  total = result["total_bytes"]
  result["fits"] = (
      not result.get("error") and total is not None and (total <= usable_bytes(topo.chip))
  )
  model_flops = _model_flops_per_step(config)
  result["model_flops_per_step"] = model_flops
  if model_flops:
    peak = topo.chip.peak_bf16_flops * topo.num_devices
    result["step_seconds_at_mfu"] = model_flops / (peak * mfu)
    result["tokens_per_second_at_mfu"] = (
        result["global_batch"] * result["seq_len"] / result["step_seconds_at_mfu"]
    )
  return result


def _is_oom(e: Exception) -> bool:
  text = str(e)
  return (
      "RESOURCE_EXHAUSTED" in text
      or "out of memory" in text.lower()
      or ("Ran out of memory" in text)
  )


def _oom_bytes(e: Exception) -> int | None:
  """The temporaries' size in XLA's out-of-memory message, e.g. '... (60.35G) exceeds ...'."""
  import re

  m = re.search(r"\(([0-9.]+)([KMGT])\) exceeds available", str(e))
  if not m:
    return None
  return int(float(m.group(1)) * {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2)])


def _argument_bytes(step, config) -> int:
  """Per-device bytes of the step's inputs (state + batch), from their shardings."""
  import jax

  leaves = jax.tree_util.tree_leaves(step.abstract_state)
  shards = jax.tree_util.tree_leaves(step.state_shardings)
  total = sum(math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize for a, s in zip(leaves, shards))
  for b in step.abstract_batch().values():
    total += math.prod(b.sharding.shard_shape(b.shape)) * b.dtype.itemsize
  return int(total)


def _first_line(e: Exception) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def search_batch(
    config,
    topo: Topology,
    *,
    mfu: float = 0.5,
    devices: Sequence[Any] | None = None,
    max_per_device: int = 4096,
    force_analytic: bool = False,
) -> dict[str, Any]:
  """Largest per-device batch (global = per-device x data shards) whose step fits.

  Memory grows about linearly with the batch, so the search starts at model.summary's
  guess and then interpolates between the two nearest compiled sizes (each compile, even a
  refused one, reports bytes), bisecting when the line points outside the bracket: usually
  3-5 compilations. Returns the largest fitting plan (or the plan for one sequence per
  device when even that does not fit) with the candidates tried.
  """
  from train import mesh as mesh_lib
  from train import spec

  config = _for_topology(config, topo)
  if devices is None and not force_analytic:
    try:
      devices = topology_devices(topo)
    except NoCompiler:
      force_analytic = True
  ici, dcn = mesh_lib.resolve_shapes(config, topo.num_devices, topo.num_slices)
  sizes = {a: i * d for a, i, d in zip(mesh_lib.AXES, ici, dcn)}
  rules = dict(spec.axis_rules(config.mesh.axis_rules))
  batch_axes = rules.get("batch") or ()
  batch_axes = batch_axes if isinstance(batch_axes, tuple) else (batch_axes,)
  shards = math.prod(sizes[a] for a in batch_axes)
  micro = int(config.train.microbatches)
  hbm = usable_bytes(topo.chip)
  tried: list[dict[str, Any]] = []
  plans: dict[int, dict[str, Any]] = {}

  def attempt(n: int) -> dict[str, Any]:
    """n = sequences per device per microbatch."""
    if n not in plans:
      cfg = _with_batch(config, n * shards * micro)
      p = plan(cfg, topo, mfu=mfu, devices=devices, force_analytic=force_analytic)
      p["per_device_batch"] = n * micro
      tried.append(
          {"per_device_batch": n * micro, "total_bytes": p["total_bytes"], "fits": p["fits"]}
      )
      print(
          f"search: remat={p['remat']} per-device batch {n * micro}: "
          f"{_gib(p['total_bytes']).strip()} -> {'fits' if p['fits'] else 'does not fit'}",
          file=sys.stderr,
          flush=True,
      )
      plans[n] = p
    return plans[n]

  def guess() -> int:
    """model.summary's per-device batch for the HBM (memory linear in the batch)."""
    try:
      one = _analytic_total(_with_batch(config, shards * micro), sizes)
      two = _analytic_total(_with_batch(config, 2 * shards * micro), sizes)
    except Exception:  # no summary, or it rejects the config: start small.
      return 1
    if not one or not two or two <= one:
      return 1
    return max(1, min(max_per_device, int(1 + (hbm - one) / (two - one))))

  lo, hi = 0, max_per_device + 1  # lo fits (0: none yet), hi does not
  n = guess()
  for _ in range(12):
    p = attempt(n)
    if p["fits"]:
      lo = n
    else:
      hi = n
    if hi - lo <= 1:
      break
    n = _next_candidate(lo, hi, plans, hbm, max_per_device)
  result = plans[lo] if lo else attempt(1)
  result = dict(result)
  result["search"] = {
      "tried": tried,
      "data_shards": shards,
      "microbatches": micro,
      "max_per_device_batch": lo * micro,
  }
  return result


def _next_candidate(lo: int, hi: int, plans: dict[int, dict[str, Any]], hbm: int, cap: int) -> int:
  """Between lo (fits; 0 = none yet) and hi (does not; cap + 1 = none yet): where the line
  through the measured points crosses the HBM, kept strictly inside the bracket, so a line
  that is right closes the bracket with one more compile."""

  def total(n):
    return plans[n].get("total_bytes") if n in plans else None

  if hi > cap:  # nothing has failed yet: scale up, at most doubling
    t = total(lo)
    n = int(lo * hbm / t) if t else 2 * lo
    return min(cap, max(lo + 1, min(2 * lo, n)))
  if lo == 0:  # nothing fits yet: scale down
    t = total(hi)
    n = int(hi * hbm / t) if t else hi // 2
    return max(1, min(hi - 1, n))
  t_lo, t_hi = total(lo), total(hi)
  if t_lo and t_hi and t_hi > t_lo:
    n = lo + int((hbm - t_lo) * (hi - lo) / (t_hi - t_lo))
    return max(lo + 1, min(hi - 1, n))
  return (lo + hi) // 2


def search_remat(config, topo: Topology, **kw) -> dict[str, Any]:
  """For each remat policy (least recompute first), the largest batch that fits."""
  rows = []
  for policy in REMAT_ORDER:
    p = search_batch(_with_batch(config, remat=policy), topo, **kw)
    rows.append(p)
  best = max(
      rows, key=lambda p: (p["search"]["max_per_device_batch"], -REMAT_ORDER.index(p["remat"]))
  )
  best = dict(best)
  best["remat_search"] = [
      {
          "remat": p["remat"],
          "max_per_device_batch": p["search"]["max_per_device_batch"],
          "total_bytes": p["total_bytes"],
      }
      for p in rows
  ]
  return best


# --------------------------------------------------------------------------- output


def _gib(n: float | None) -> str:
  return "n/a" if n is None else f"{n / GiB:8.2f} GiB"


def format_plan(p: dict[str, Any]) -> str:
  lines = [
      f"plan: {p['config']} on {p['topology']} ({p['num_devices']} devices), mesh "
      f"{p['mesh']}, global batch {p['global_batch']} x {p['seq_len']} tokens, "
      f"remat={p['remat']}"
  ]
  if p["method"] == "analytic":
    lines.append(f"  ANALYTIC ESTIMATE (nothing compiled): {p['reason']}")
    for k, v in p["analytic"].items():
      lines.append(f"  {k:<22}{_gib(v)}")
  elif p.get("error"):
    lines.append(f"  XLA refused to compile: {p['error']}")
    lines.append(f"  {'arguments':<22}{_gib(p['argument_bytes'])}")
    lines.append(f"  {'temporaries':<22}{_gib(p['temp_bytes'])}")
  else:
    lines.append(f"  compiled for {p['chip']} by XLA in {p['compile_seconds']} s; per device:")
    for label, key in (
        ("arguments", "argument_bytes"),
        ("outputs", "output_bytes"),
        ("aliased (donated)", "alias_bytes"),
        ("temporaries", "temp_bytes"),
        ("peak live (XLA)", "peak_bytes"),
        ("code", "code_bytes"),
    ):
      lines.append(f"  {label:<22}{_gib(p[key])}")
  verdict = "fits" if p["fits"] else "DOES NOT FIT"
  usable = (
      f"usable ({GPU_MEM_FRACTION_ENV} of the HBM JAX preallocates)"
      if CHIPS[p["chip"]].is_gpu
      else "HBM"
  )
  lines.append(
      f"  {'total':<22}{_gib(p['total_bytes'])} of {_gib(p['hbm_bytes']).strip()} "
      f"{usable} per {p['chip']} chip -> {verdict}"
  )
  if p.get("analytic_total_bytes"):
    ratio = (p["total_bytes"] or 0) / p["analytic_total_bytes"]
    lines.append(
        f"  {'model.summary estimate':<22}{_gib(p['analytic_total_bytes'])}"
        f"  (XLA / estimate = {ratio:.2f})"
    )
  if p.get("model_flops_per_step"):
    lines.append(f"  model FLOPs/step (model.summary formula)   {p['model_flops_per_step']:.4g}")
  if p.get("xla_flops_per_step"):
    ratio = (
        p["xla_flops_per_step"] / p["model_flops_per_step"]
        if p.get("model_flops_per_step")
        else float("nan")
    )
    lines.append(
        f"  XLA FLOPs/step (cost_analysis, all devices) {p['xla_flops_per_step']:.4g}"
        f"  (x{ratio:.2f} the formula; XLA also counts remat recompute, softmax, "
        "norms, the optimizer)"
    )
  if p.get("step_seconds_at_mfu"):
    lines.append(
        f"  step time at {p['mfu']:.0%} MFU: {p['step_seconds_at_mfu']:.4g} s "
        f"({p['tokens_per_second_at_mfu']:.4g} tokens/s)"
    )
  if p.get("search"):
    s = p["search"]
    lines.append(
        f"  search: largest per-device batch that fits = {s['max_per_device_batch']} "
        f"(data shards {s['data_shards']}, microbatches {s['microbatches']}); tried "
        + ", ".join(f"{t['per_device_batch']}:{'fits' if t['fits'] else 'no'}" for t in s["tried"])
    )
  for r in p.get("remat_search", []):
    lines.append(f"  remat={r['remat']:<34} max per-device batch {r['max_per_device_batch']}")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  from absl import flags

  f = flags.FLAGS
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  import jax
  # Planning needs no local accelerator; keep a TPU/GPU runtime from initialising here.
  jax.config.update("jax_platforms", "cpu")
  _run(f)


def _run(f) -> None:
  topo = parse_topology(f.topology, f.num_slices)
  config = f.config
  kw = dict(mfu=f.mfu, force_analytic=f.analytic)
  if f.search:
    p = (search_remat if f.search_remat else search_batch)(config, topo, **kw)
    if f.count_flops and p["method"] == "xla" and p["fits"]:
      best = _with_batch(config, p["global_batch"], p["remat"])
      p["xla_flops_per_step"] = xla_flops_per_step(best, topo, topology_devices(topo))
  else:
    p = plan(config, topo, count_flops=f.count_flops, **kw)
  print(format_plan(p))
  if f.json:
    with open(f.json, "w") as fh:
      json.dump(p, fh, indent=2, default=str)


def _define_flags() -> None:
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).", lock_config=True)
  flags.DEFINE_string("topology", None, "v5e:4x4 | v5p:4x4x4 | v4:2x2x2 | v6e:8x8 | h100:8")
  flags.DEFINE_integer("num_slices", 1, "Slices joined by DCN (multi-slice).")
  flags.DEFINE_string("json", None, "Write the plan as JSON here.")
  flags.DEFINE_bool("search", False, "Find the largest per-device batch that fits.")
  flags.DEFINE_bool("search_remat", False, "With --search: also try each remat policy.")
  flags.DEFINE_float("mfu", 0.5, "Model FLOPs utilisation assumed for the step time.")
  flags.DEFINE_bool(
      "count_flops",
      True,
      "Also compile 1- and 2-layer unrolled variants so "
      "XLA's FLOP count covers every layer (loop bodies count once otherwise).",
  )
  flags.DEFINE_bool("analytic", False, "Skip compiling; use model.summary's estimate.")
  flags.mark_flags_as_required(["config", "topology"])


def _normalise_argv(argv: list[str]) -> list[str]:
  """Accept --num-slices as well as --num_slices (config overrides are left alone)."""
  out = []
  for a in argv:
    if a.startswith("--") and not a.startswith("--config"):
      name, eq, value = a[2:].partition("=")
      a = "--" + name.replace("-", "_") + eq + value
    out.append(a)
  return out


if __name__ == "__main__":
  from absl import app
  from train import cli

  _define_flags()
  app.run(cli.guarded(main), argv=_normalise_argv(sys.argv), flags_parser=cli.parse_absl_flags)
