"""Multi-process start-up: `jax.distributed.initialize` when the config or environment asks.

Must run before anything touches a JAX backend. Sources, in order:
  - explicit config.distributed (coordinator_address / num_processes / process_id), e.g. for
    CPU hosts or GPU clusters without a scheduler JAX knows;
  - a scheduler JAX detects by itself (SLURM with several tasks, Open MPI, Kubernetes
    indexed jobs, Cloud TPU with several workers); then initialize() takes no arguments.

What jax 0.10.2 does with the environment (jax/_src/distributed.py, jax/_src/clusters/):
  - JAX_COORDINATOR_ADDRESS only supplies the coordinator's host:port. There is no
    environment variable for the process count or index: without a detected scheduler (or
    explicit num_processes / process_id) initialize() fails with "Number of processes must
    be defined". So JAX_COORDINATOR_ADDRESS alone does not make a multi-process run.
  - Detection runs whenever any of address, count, index or local device ids is unset, so
    explicit flags do NOT switch it off: under SLURM on GPUs it still sets
    local_device_ids = [SLURM_LOCALID], i.e. a one-task-per-node job sees only GPU 0 of each
    node. Run one task per GPU (all GPUs visible to every task) or set
    JAX_LOCAL_DEVICE_IDS=0,1,...,7 (docs/launch.md, "SLURM GPU cluster").
On CPU the cross-process collectives use gloo.
"""

import os

import jax
from absl import logging


def _env_says_multiprocess() -> bool:
  if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if "," in hosts and "WARNING" not in hosts:
    return True
  return bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def maybe_initialize(dist_cfg) -> bool:
  """Initialises jax.distributed once if asked; returns True if this is a multi-process run."""
  explicit = bool(dist_cfg.coordinator_address) or int(dist_cfg.num_processes) > 1
  if not (dist_cfg.enabled or explicit or _env_says_multiprocess()):
    return False
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  # Cross-process collectives between CPU devices need gloo (no effect on GPU/TPU).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if dist_cfg.coordinator_address:
    if int(dist_cfg.num_processes) < 1 or int(dist_cfg.process_id) < 0:
      raise ValueError(
          "config.distributed.coordinator_address is set, so num_processes (>= 1) and "
          f"process_id (>= 0) must be too; got num_processes={dist_cfg.num_processes}, "
          f"process_id={dist_cfg.process_id}."
      )
    jax.distributed.initialize(
        dist_cfg.coordinator_address,
        num_processes=int(dist_cfg.num_processes),
        process_id=int(dist_cfg.process_id),
    )
  else:
    jax.distributed.initialize()
  logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
  return jax.process_count() > 1
