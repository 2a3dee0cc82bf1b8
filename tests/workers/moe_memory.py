"""The compiled MoE train step's memory on 8 CPU devices under two expert meshes, for
tests/test_moe_memory.py.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/workers/moe_memory.py

Prints `RESULT {...}`: plan_compile's memory (as a dict) per mesh shape, for the test to hold
against accounting's estimate.
"""

import json
import pathlib
import sys

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/: the config

from configs import base  # noqa: E402
from test_moe_memory import compiled_config  # noqa: E402
from train import plan_compile  # noqa: E402


def main() -> None:
  assert jax.device_count() == 8, jax.devices()
  out = {}
  for shape in [(2, 1, 1, 4), (1, 2, 1, 4)]:
    c = compiled_config()
    c.mesh.axis_rules = base.EXPERT_PARALLEL_AXIS_RULES
    c.mesh.shape = shape
    out[str(shape)] = plan_compile.compile_step(c, None, jax.devices()).__dict__
  print("RESULT " + json.dumps(out))


if __name__ == "__main__":
  main()
