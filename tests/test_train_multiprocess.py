"""Multi-process training on the CPU (gloo collectives), with the real CLI.

Two processes x 4 CPU devices train like one process x 8 devices: the input pipeline gives
each process its rows of every global batch, so the step sees the same global batch and the
logged losses and the validation loss agree to fp32 rounding (cross-process reductions may add
in a different order). A run saved by 2 processes resumes on 1 process with another device
count, and that run resumes on 2 processes again, each time at the step it stopped and with the
data stream continuing where it stopped: the losses stay those of the uninterrupted run.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from train import metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 6
ARGS = [
    "--config",
    "configs/default.py:size=tiny",
    "--config.train.batch_size=16",
    "--config.train.log_every=1",
    "--config.eval.batches=1",
    "--config.checkpoint.every=2",
    "--config.train.schedule=constant",
    "--config.train.warmup_steps=1",
]


def _env(tmp, devices):
  return dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      PYTHONPATH=str(REPO),
      JAX_COMPILATION_CACHE_DIR=str(tmp / "xla"),
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
  )


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train(tmp, workdir, *, steps, processes, devices):
  """Runs `python -m train` with `processes` processes of `devices` CPU devices each;
  returns process 0's output."""
  args = [
      sys.executable,
      "-m",
      "train",
      *ARGS,
      f"--config.train.steps={steps}",
      f"--config.data.prepared_dir={tmp / 'prepared'}",
      "--workdir",
      str(workdir),
  ]
  if processes == 1:
    p = subprocess.run(
        args, env=_env(tmp, devices), cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout + p.stderr
  port = _free_port()
  procs = [
      subprocess.Popen(
          [
              *args,
              f"--coordinator_address=127.0.0.1:{port}",
              f"--num_processes={processes}",
              f"--process_id={i}",
          ],
          env=_env(tmp, devices),
          cwd=REPO,
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
      )
      for i in range(processes)
  ]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=600)[0])
    finally:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out
  return outs[0]


def _losses(workdir):
  rows = metrics.read_jsonl(str(workdir / "metrics.jsonl"))
  val = metrics.read_jsonl(str(workdir / "metrics.jsonl"), "eval")[-1]
  return [r["step"] for r in rows], [r["loss"] for r in rows], val["all/loss"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("mp")
  out = _train(tmp, tmp / "one", steps=STEPS, processes=1, devices=8)
  assert "8 cpu device(s), 1 process(es)" in out, out
  return tmp, _losses(tmp / "one")


def test_two_processes_match_one_process(uninterrupted):
  tmp, (steps1, loss1, val1) = uninterrupted
  out = _train(tmp, tmp / "two", steps=STEPS, processes=2, devices=4)
  assert "8 cpu device(s), 2 process(es)" in out, out
  steps2, loss2, val2 = _losses(tmp / "two")
  assert steps1 == steps2 == list(range(1, STEPS + 1))
  np.testing.assert_allclose(loss2 + [val2], loss1 + [val1], rtol=1e-5)
  meta = json.loads((tmp / "two" / "checkpoints" / str(STEPS) / "meta" / "metadata").read_text())
  assert meta["process_count"] == 2 and meta["data_state"] == {"next_index": STEPS}


def test_resume_across_process_and_device_counts(uninterrupted):
  """2 processes x 4 devices -> 1 process x 4 devices -> 2 processes x 4 devices."""
  tmp, (steps1, loss1, _) = uninterrupted
  wd = tmp / "mixed"
  _train(tmp, wd, steps=2, processes=2, devices=4)
  out = _train(tmp, wd, steps=4, processes=1, devices=4)
  assert "(step 2, saved by 2 process(es))" in out, out
  assert "4 cpu device(s), 1 process(es), steps 2->4" in out, out
  out = _train(tmp, wd, steps=STEPS, processes=2, devices=4)
  assert "(step 4, saved by 1 process(es))" in out, out
  steps, losses, _ = _losses(wd)
  assert steps == steps1
  np.testing.assert_allclose(losses, loss1, rtol=1e-5)
  assert not (wd / "checkpoints_corrupt").exists()
