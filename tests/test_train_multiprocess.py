"""Two processes x 4 CPU devices (gloo) train exactly like one process x 8 devices.

Both runs use the real CLI (`python -m train ... --coordinator_address/--num_processes/
--process_id`), the embedded corpus and a data-parallel mesh over all 8 devices: the input
pipeline gives each process its rows of every global batch, the step sees the same global
batch, so the logged losses and the validation loss (each process evaluates its rows) agree to fp32
rounding (cross-process reductions may add in a different order). Each process also writes
its own iterator state into the checkpoint.
"""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--config", "configs/default.py:size=tiny", "--config.train.batch_size=16",
        "--config.train.steps=4", "--config.train.log_every=1", "--config.eval.batches=1",
        "--config.checkpoint.every=2"]


def _env(tmp, devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             JAX_COMPILATION_CACHE_DIR=str(tmp / "xla"),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(workdir):
  from train import metrics
  rows = metrics.read_jsonl(str(workdir / "metrics.jsonl"))
  val = metrics.read_jsonl(str(workdir / "metrics.jsonl"), "eval")[-1]
  return [r["step"] for r in rows], [r["loss"] for r in rows] + [val["all/loss"]]


def test_two_processes_match_one_process(tmp_path):
  prepared = f"--config.data.prepared_dir={tmp_path / 'prepared'}"
  one = subprocess.run([sys.executable, "-m", "train", *ARGS, prepared,
                        "--workdir", str(tmp_path / "one")],
                       env=_env(tmp_path, 8), cwd=REPO, capture_output=True, text=True,
                       timeout=600)
  assert one.returncode == 0, one.stdout + one.stderr
  assert "8 cpu device(s), 1 process(es)" in one.stdout, one.stdout

  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "train", *ARGS, prepared, "--workdir", str(tmp_path / "two"),
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      env=_env(tmp_path, 4), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=600)[0])
    finally:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out
  assert "8 cpu device(s), 2 process(es)" in outs[0], outs[0]

  steps1, loss1 = _losses(tmp_path / "one")
  steps2, loss2 = _losses(tmp_path / "two")
  assert steps1 == steps2 == [1, 2, 3, 4]
  np.testing.assert_allclose(loss2, loss1, rtol=1e-5)   # train losses and the final val loss
  data_dir = tmp_path / "two" / "checkpoints" / "4" / "data"
  assert sorted(p.name for p in data_dir.glob("*.json")) == ["process_0-of-2.json",
                                                              "process_1-of-2.json"]
