"""python -m train --config configs/default.py[:arg] --workdir DIR [--config.a.b=value ...]

Trains (or resumes) the run in DIR. Multi-process: pass --coordinator_address,
--num_processes and --process_id (CPU hosts, clusters JAX cannot detect), or rely on
SLURM / Cloud TPU detection (see train/distributed.py).
"""

import argparse
import os

from absl import logging

from train import cli
from train import cpu_devices


def _parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n\n")[1])
  cli.add_config(ap, lock_config=True)
  ap.add_argument("--workdir", required=True, help="Run directory (checkpoints, metrics, plot).")
  ap.add_argument(
      *cli.flag_names("coordinator_address"), default="", help="host:port of process 0."
  )
  ap.add_argument(*cli.flag_names("num_processes"), type=int, default=0, help="Processes.")
  ap.add_argument(*cli.flag_names("process_id"), type=int, default=-1, help="This process.")
  ap.add_argument(
      "-v", "--verbosity", type=int, default=None, help="absl logging level (default: warnings)"
  )
  return ap


def _enable_compilation_cache() -> None:
  """Persistent XLA cache (JAX_COMPILATION_CACHE_DIR or ~/.cache/unleash/jax): a resumed
  or repeated run skips recompiling the step."""
  import jax  # noqa: PLC0415 (jax after XLA_FLAGS)

  path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "unleash", "jax"
  )
  jax.config.update("jax_compilation_cache_dir", path)


def main(argv=None) -> None:
  args = cli.parse_args(_parser(), argv)
  # Orbax logs every file it writes at INFO.
  logging.set_verbosity(logging.WARNING if args.verbosity is None else args.verbosity)
  config = args.config
  if args.coordinator_address or args.num_processes > 1:
    with config.unlocked():
      config.distributed.enabled = True
      config.distributed.coordinator_address = args.coordinator_address
      config.distributed.num_processes = args.num_processes
      config.distributed.process_id = args.process_id
  cpu_devices.configure(config)  # CPU hosts: 2 data-parallel devices; before jax is imported
  _enable_compilation_cache()
  from train import trainer  # noqa: PLC0415 (jax after XLA_FLAGS)

  trainer.train_and_evaluate(config, args.workdir)  # NonFiniteError is a cli.Error


if __name__ == "__main__":
  cli.run(main)
