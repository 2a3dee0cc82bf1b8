"""Side-by-side: our real train step (train.bench) vs the PyTorch peer, alternating.

    .venv/bin/python scripts/bench_vs_torch.py --config S \
        --torch_python ../venv-torch/bin/python [--rounds 6] [--k 2] [--json OUT]

Two persistent worker processes (ours: `train.bench.StepTimer` on configs/bench.py:<config>;
the peer: the model, optimizer and step of ../shared/bench/torch_gpt.py) compile/warm up
once, then take turns running k steps each (A B B A A B ...), so machine-load drift hits
both alike. Only one worker runs at a time. Prints per-side step-time medians (wall and
process CPU) and the tokens/s ratio ours / torch. It never asserts anything.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run by path: import this checkout's packages

from configs import bench as bench_cfg  # noqa: E402
from train import bench  # noqa: E402
from train import cli  # noqa: E402
from train import cpu_devices  # noqa: E402

PEER = REPO.parent / "shared" / "bench" / "torch_gpt.py"


def _serve(step, k_default=1):
  """Worker loop: 'run K' -> JSON list of [wall_s, cpu_s] per step; 'quit' ends."""
  for line in sys.stdin:
    if line.startswith("quit"):
      return
    k = int(line.split()[1]) if len(line.split()) > 1 else k_default
    out = []
    for _ in range(k):
      c0, t0 = time.process_time(), time.perf_counter()
      step()
      out.append([time.perf_counter() - t0, time.process_time() - c0])
    print(json.dumps(out), flush=True)


def worker_jax(size: str):
  config = bench_cfg.get_config(size)
  n = cpu_devices.configure(config)  # the same device split as python -m train
  timer = bench.StepTimer(config)
  timer.run(2)
  print(
      f"READY ours devices={n or 'preset'} attention={config.model.attention_impl} "
      f"compile_s={timer.compile_s:.1f}",
      flush=True,
  )
  _serve(lambda: timer.run(1))


def _peer_shape(size: str) -> dict:
  """The peer's config dict for a size it does not define (e.g. tiny), from configs/bench.py."""
  keys = ("vocab", "d_model", "n_layer", "n_head", "seq", "batch")
  return dict(zip(keys, bench_cfg.SIZES[size]))


def worker_torch(size: str, peer: str):
  import torch  # noqa: PLC0415 (`hf` extra)

  sys.path.insert(0, str(pathlib.Path(peer).parent))
  import torch_gpt as tg  # noqa: PLC0415 (needs torch)

  c = tg.CONFIGS.get(size) or _peer_shape(size)
  torch.manual_seed(0)
  model = tg.GPT(c)
  decay = [p for p in model.parameters() if p.dim() >= 2]
  other = [p for p in model.parameters() if p.dim() < 2]
  opt = torch.optim.AdamW(
      [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
      lr=3e-4,
      betas=(0.9, 0.95),
      eps=1e-8,
  )
  rng = np.random.default_rng(0)
  data = [
      torch.from_numpy(rng.integers(0, c["vocab"], (c["batch"], c["seq"] + 1))) for _ in range(4)
  ]
  data = [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in data]
  i = [0]

  def step():  # exactly torch_gpt.main's step
    x, y = data[i[0] % 4]
    i[0] += 1
    loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)

  for _ in range(3):
    step()
  print(f"READY torch threads={torch.get_num_threads()}", flush=True)
  _serve(step)


def _start(cmd, env):
  p = subprocess.Popen(
      cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env, cwd=REPO
  )
  while True:
    line = p.stdout.readline()
    if not line:
      raise ChildProcessError(f"worker {cmd[-1]} exited before READY (its error is above)")
    if line.startswith("READY"):
      print("#", line.strip(), flush=True)
      return p


def _check_inputs(a):
  """The peer's interpreter and model file must exist before two workers are started."""
  if not pathlib.Path(a.torch_python).is_file():
    raise FileNotFoundError(
        f"--torch_python {a.torch_python}: no such interpreter; pass a Python "
        "with torch installed (e.g. --torch_python .venv/bin/python)"
    )
  if not pathlib.Path(a.peer).is_file():
    raise FileNotFoundError(f"--peer {a.peer}: no such file; pass the path of torch_gpt.py")


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="S", choices=["S", "M", "tiny"])
  ap.add_argument("--torch_python", default=str(REPO.parent / "venv-torch" / "bin" / "python"))
  ap.add_argument("--peer", default=str(PEER))
  ap.add_argument("--rounds", type=int, default=6)
  ap.add_argument("--k", type=int, default=2, help="steps per turn")
  ap.add_argument("--json", default="")
  ap.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.worker == "jax":
    return worker_jax(a.config)
  if a.worker == "torch":
    return worker_torch(a.config, a.peer)

  _check_inputs(a)
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  me = [str(pathlib.Path(__file__).resolve()), "--config", a.config, "--peer", a.peer]
  procs = {
      "torch": _start([a.torch_python] + me + ["--worker", "torch"], env),
      "ours": _start([sys.executable] + me + ["--worker", "jax"], env),
  }
  times = {n: [] for n in procs}
  load0 = os.getloadavg()
  order = ["torch", "ours"]
  for r in range(a.rounds):
    for name in (order if r % 2 == 0 else order[::-1]):
      procs[name].stdin.write(f"run {a.k}\n")
      procs[name].stdin.flush()
      times[name] += json.loads(procs[name].stdout.readline())
  for p in procs.values():
    p.stdin.write("quit\n")
    p.stdin.flush()
    p.wait()
  res = {
      "config": a.config,
      "rounds": a.rounds,
      "k": a.k,
      "load_before": [round(x, 2) for x in load0],
      "load_after": [round(x, 2) for x in os.getloadavg()],
  }
  for name, ts in times.items():
    walls = sorted(t[0] for t in ts)
    res[name] = {
        "step_ms_median": round(statistics.median(walls) * 1e3, 1),
        "step_ms_min": round(walls[0] * 1e3, 1),
        "step_ms_max": round(walls[-1] * 1e3, 1),
        "cpu_ms_median": round(statistics.median(t[1] for t in ts) * 1e3, 1),
        "steps": len(ts),
    }
  res["speedup_ours_vs_torch"] = round(
      res["torch"]["step_ms_median"] / res["ours"]["step_ms_median"], 3
  )
  print(json.dumps(res))
  if a.json:
    pathlib.Path(a.json).write_text(json.dumps(res) + "\n")


if __name__ == "__main__":
  cli.run(main)
