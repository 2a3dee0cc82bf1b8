"""How many XLA devices a CPU host is split into; decided before jax is imported.

One XLA:CPU device keeps the cores only partly busy during a training step (many small ops,
each parallelised on its own). Splitting the host into 2 devices and running the step data
parallel over them (the default mesh puts the batch on the `data` axis) keeps both cores
busier: on a 2-core host the S bench step takes 706 ms on 2 devices against 922 on one, M 5938
against 6512 (docs/performance.md; compare with UNLEASH_CPU_DEVICES=1 and `python -m train.bench`).
`--xla_force_host_platform_device_count` only shapes the CPU platform, so it is harmless on
GPU/TPU hosts, where the accelerator stays the default backend.

Use: `configure(config)` in an entry point before anything imports jax
(`python -m train`, `python -m train.bench`). Opt out with UNLEASH_CPU_DEVICES=1, or set
XLA_FLAGS yourself (an explicit device count is never overridden).
"""

import math
import os
import sys

ENV = "UNLEASH_CPU_DEVICES"
FLAG = "--xla_force_host_platform_device_count"
DEFAULT_DEVICES = 2
# XLA:CPU's concurrency-optimized scheduler orders the step's many small ops for more cores
# than a 2-core host has, so it is turned off (CPU-only flag; turned on, the S bench step was
# 1-2% slower: docs/performance.md).
CPU_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def choose(config, cpu_count: int | None = None) -> int:
  """Devices to split the CPU into for `config` (1 = leave XLA's default alone).

  More than one only where the default data-parallel mesh can use them: mesh.shape is
  (-1, 1, 1), the global batch (and each microbatch) splits evenly, and
  the run is single-process (multi-process CPU runs already place one device per process).
  """
  if ENV in os.environ:
    return max(1, int(os.environ[ENV]))
  cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
  n = min(DEFAULT_DEVICES, cpus)
  if n <= 1 or _multiprocess(config):
    return 1
  if tuple(int(v) for v in config.mesh.shape) != (-1, 1, 1):
    return 1
  if math.prod(int(v) for v in config.mesh.dcn_shape) != 1:
    return 1
  batch, micro = int(config.train.batch_size), int(config.train.microbatches)
  if batch % micro or (batch // micro) % n:
    return 1
  return n


def _multiprocess(config) -> bool:
  """Mirrors train/distributed.py's test (which imports jax, so it cannot be used here)."""
  d = config.distributed
  if bool(d.enabled) or bool(d.coordinator_address) or int(d.num_processes) > 1:
    return True
  if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
    return True
  return bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def configure(config) -> int:
  """Sets XLA_FLAGS for `choose(config)` CPU devices (and CPU_SCHEDULER_FLAG unless given);
  returns the count in effect (0 when it could not act: jax already imported or a device
  count already set by the caller)."""
  flags = os.environ.get("XLA_FLAGS", "")
  if FLAG in flags or "jax" in sys.modules:
    return 0
  n = choose(config)
  if n > 1:
    flags = f"{flags} {FLAG}={n}"
  if CPU_SCHEDULER_FLAG not in flags:
    flags = f"{flags} {CPU_SCHEDULER_FLAG}=false"
  os.environ["XLA_FLAGS"] = flags.strip()
  return n
