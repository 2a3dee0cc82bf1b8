"""Runs a tests/workers/ program on N fake CPU devices and returns what it printed.

A pytest process has one CPU device and its backend already started, so multi-device tests
run a worker in a subprocess with XLA_FLAGS (the device count) set before it imports jax. A
worker prints one line `RESULT {json}`; this returns the dict.
"""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKERS = REPO / "tests" / "workers"


def run_worker(name: str, devices: int = 8, timeout: int = 900) -> dict:
  """The RESULT of `python tests/workers/<name>` on `devices` CPU devices (the test fails with
  the worker's output if it exits non-zero)."""
  env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      PYTHONPATH=str(REPO),
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
  )
  p = subprocess.run(
      [sys.executable, str(WORKERS / name)],
      env=env,
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=timeout,
  )
  assert p.returncode == 0, p.stdout + p.stderr[-3000:]
  line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT ") :])
