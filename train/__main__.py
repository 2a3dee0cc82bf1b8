"""python -m train --config configs/default.py[:arg] --workdir DIR [--config.a.b=value ...]

Trains (or resumes) the run in DIR. Multi-process: pass --coordinator_address,
--num_processes and --process_id (CPU hosts, clusters JAX cannot detect), or rely on
SLURM / Cloud TPU detection (see train/distributed.py).
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from train import cli
from train import cpu_devices

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/x.py[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, plot).")
_COORD = flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-process).")
_NPROC = flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-process).")
_PID = flags.DEFINE_integer("process_id", -1, "This process's index (multi-process).")
flags.mark_flags_as_required(["config", "workdir"])


def _enable_compilation_cache() -> None:
  """Persistent XLA cache (JAX_COMPILATION_CACHE_DIR or ~/.cache/unleash/jax): a resumed
  or repeated run skips recompiling the step."""
  import jax  # noqa: PLC0415 (jax after XLA_FLAGS)

  path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "unleash", "jax"
  )
  jax.config.update("jax_compilation_cache_dir", path)


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; every option is a --flag")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
  config = _CONFIG.value
  if _COORD.value or _NPROC.value > 1:
    with config.unlocked():
      config.distributed.enabled = True
      config.distributed.coordinator_address = _COORD.value
      config.distributed.num_processes = _NPROC.value
      config.distributed.process_id = _PID.value
  cpu_devices.configure(config)  # CPU hosts: 2 data-parallel devices; before jax is imported
  _enable_compilation_cache()
  from train import trainer  # noqa: PLC0415 (jax after XLA_FLAGS)

  trainer.train_and_evaluate(config, _WORKDIR.value)  # NonFiniteError is a cli.Error


if __name__ == "__main__":
  app.run(cli.guarded(main), flags_parser=cli.parse_absl_flags)
