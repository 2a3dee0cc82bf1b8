"""Plan a run for a TPU slice from any machine: compile the real step, read its memory.

    python -m train.plan --config configs/gpt3.py:size=1.3B --topology v5e:4x4
    python -m train.plan --config configs/gpt3.py:size=175B --topology v5p:8x8x8 \\
        --config.mesh.shape='(1,-1,8)' --search --json plan.json

The command line over the planner's parts, one job each:
  train/topology.py      parse "v5e:4x4", compile-only TPU devices (libtpu)
  train/plan_compile.py  the step's memory (XLA's compile, or the analytic estimate) and FLOPs
  train/planner.py       the Plan: fits or not, step time at --mfu, the whole run's cost
  train/plan_search.py   the largest per-device batch that fits, per remat policy
Where nothing can be compiled (libtpu missing, or a GPU target, whose ahead-of-time
compilation needs the devices attached), the plan falls back to train/accounting.py's
analytic estimate and says so in its output.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence

from train import plan_compile, plan_search
from train.planner import format_plan, plan
from train.topology import parse_topology, topology_devices


def main(argv: Sequence[str]) -> None:
  from absl import flags

  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  import jax

  # Planning needs no local accelerator; keep a TPU/GPU runtime from initialising here.
  jax.config.update("jax_platforms", "cpu")
  _run(flags.FLAGS)


def _run(f) -> None:
  topo = parse_topology(f.topology, f.num_slices)
  config = f.config
  kw = dict(mfu=f.mfu, force_analytic=f.analytic)
  if f.search:
    search = plan_search.search_remat if f.search_remat else plan_search.search_batch
    p = search(config, topo, **kw)
    if f.count_flops and p.method == "xla" and p.fits:
      best = plan_compile.with_batch(config, p.global_batch, p.remat)
      flops = plan_compile.xla_flops_per_step(best, topo, topology_devices(topo))
      p = dataclasses.replace(p, xla_flops_per_step=flops)
  else:
    p = plan(config, topo, count_flops=f.count_flops, **kw)
  print(format_plan(p))
  if f.json:
    with open(f.json, "w") as fh:
      json.dump(p.to_json(), fh, indent=2, default=str)


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
  flags.DEFINE_bool("analytic", False, "Skip compiling; use the analytic estimate.")
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
