"""Side-by-side: our real train step (train.bench) vs the PyTorch peer, alternating.

    .venv/bin/python scripts/bench_vs_torch.py --config S \
        --torch_python .venv/bin/python [--bf16] [--rounds 8] [--k 2] [--json OUT]

Two persistent worker processes (ours: `train.bench.StepTimer` on configs/bench.py:<config>;
the peer: the model, optimizer and step of ../shared/bench/torch_gpt.py) compile/warm up
once, then take turns running k steps each (A B B A A B ...), so machine-load drift hits
both alike. Only one worker runs at a time. Prints per-side step-time medians (wall and
process CPU) and the tokens/s ratio ours / torch. It never asserts anything.

A ratio is only worth printing on a quiet machine: the 1-minute load average is read before
the workers start (it must be at most --max-load, default 1.0) and after the last round (at
most --max-load plus the two workers'); otherwise the script prints the reason and exits 3
without a ratio, unless --allow-noisy (then the result carries `"noisy": true`). The result
records the CPU model, the cores this process may use and every thread setting both sides ran
with. `--bf16`: ours runs `model.dtype=bfloat16` (fp32 master weights); the peer runs its
forward under `torch.autocast("cpu", dtype=torch.bfloat16)`.

`--matmul` times one matrix product instead of a step: the config's MLP up-projection
[batch*seq, d_model] x [d_model, 4*d_model] (jitted `jnp.dot` on one XLA device vs
`torch.matmul`), in fp32 or, with --bf16, in bf16 on both sides, and adds GFLOP/s. It says
whether a gap in the step is already a gap in the GEMM library.
"""

import argparse
import json
import os
import pathlib
import platform
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
THREAD_VARS = ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTEROP_THREADS")
EXIT_NOISY = 3


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


def matmul_shape(size: str) -> tuple[int, int, int]:
  """(M, K, N) of the config's MLP up-projection: tokens x d_model times d_model x 4 d_model."""
  vocab, d, layers, heads, seq, batch = bench_cfg.SIZES[size]
  return batch * seq, d, 4 * d


def matmul_jax(size: str, bf16: bool):
  import jax  # noqa: PLC0415 (worker process; XLA_FLAGS as the caller set them)
  import jax.numpy as jnp  # noqa: PLC0415

  m, k, n = matmul_shape(size)
  dtype = jnp.bfloat16 if bf16 else jnp.float32
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(m, k)), dtype)
  b = jnp.asarray(rng.normal(size=(k, n)), dtype)
  dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=dtype))
  for _ in range(3):
    dot(a, b).block_until_ready()
  print(f"READY ours matmul {m}x{k}x{n} dtype={dtype.__name__}", flush=True)
  _serve(lambda: dot(a, b).block_until_ready())


def matmul_torch(size: str, bf16: bool):
  import torch  # noqa: PLC0415 (`hf` extra)

  m, k, n = matmul_shape(size)
  dtype = torch.bfloat16 if bf16 else torch.float32
  a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
  for _ in range(3):
    torch.matmul(a, b)
  print(
      f"READY torch matmul {m}x{k}x{n} threads={torch.get_num_threads()} dtype={dtype}", flush=True
  )
  _serve(lambda: torch.matmul(a, b))


def worker_jax(size: str, bf16: bool):
  config = bench_cfg.get_config(size)
  if bf16:
    config.model.dtype = "bfloat16"
  n = cpu_devices.configure(config)  # the same device split as python -m train
  timer = bench.StepTimer(config)
  timer.run(2)
  print(
      f"READY ours devices={n or 'preset'} attention={config.model.attention_impl} "
      f"dtype={config.model.dtype} compile_s={timer.compile_s:.1f}",
      flush=True,
  )
  _serve(lambda: timer.run(1))


def _peer_shape(size: str) -> dict:
  """The peer's config dict for a size it does not define (e.g. tiny), from configs/bench.py."""
  keys = ("vocab", "d_model", "n_layer", "n_head", "seq", "batch")
  return dict(zip(keys, bench_cfg.SIZES[size]))


def torch_step(size: str, peer: str, bf16: bool):
  """The peer's train step as a closure over its model, optimizer and 4 random batches."""
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
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
      loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)

  return step


def worker_torch(size: str, peer: str, bf16: bool):
  import torch  # noqa: PLC0415 (`hf` extra)

  step = torch_step(size, peer, bf16)
  for _ in range(3):
    step()
  print(
      f"READY torch threads={torch.get_num_threads()} "
      f"interop_threads={torch.get_num_interop_threads()} autocast_bf16={bf16}",
      flush=True,
  )
  _serve(step)


def cpu_facts() -> dict:
  """The CPU model, the cores this process may use and the thread settings in the environment."""
  model = platform.processor() or platform.machine()
  cpuinfo = pathlib.Path("/proc/cpuinfo")
  if cpuinfo.is_file():
    for line in cpuinfo.read_text().splitlines():
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  env = {k: os.environ[k] for k in THREAD_VARS if k in os.environ}
  return {"cpu_model": model, "cpu_count": os.cpu_count(), "usable_cores": usable, "env": env}


def noisy_reason(load_before: float, load_after: float, max_load: float) -> str:
  """Why a ratio taken at these 1-minute loads is not a result; "" when the machine was quiet.

  Before the workers start the load must be at most `max_load`; after the last round, at most
  `max_load` plus the benchmark's own two workers.
  """
  reasons = []
  if load_before > max_load:
    reasons.append(f"load {load_before:.2f} before start > {max_load:.2f}")
  if load_after > max_load + 2:
    reasons.append(f"load {load_after:.2f} after the rounds > {max_load + 2:.2f} (2 workers)")
  return "; ".join(reasons)


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
  ap.add_argument("--rounds", type=int, default=8)
  ap.add_argument("--k", type=int, default=2, help="steps per turn")
  ap.add_argument("--json", default="")
  ap.add_argument("--bf16", action="store_true", help="bf16 compute vs the peer under autocast")
  ap.add_argument("--matmul", action="store_true", help="time the MLP matmul, not the step")
  ap.add_argument("--max-load", type=float, default=1.0, help="quiet-machine 1-min load limit")
  ap.add_argument("--allow-noisy", action="store_true", help="print a ratio on a loaded machine")
  ap.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.worker == "jax":
    return (matmul_jax if a.matmul else worker_jax)(a.config, a.bf16)
  if a.worker == "torch":
    if a.matmul:
      return matmul_torch(a.config, a.bf16)
    return worker_torch(a.config, a.peer, a.bf16)

  _check_inputs(a)
  load0 = os.getloadavg()
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  me = [str(pathlib.Path(__file__).resolve()), "--config", a.config, "--peer", a.peer]
  me += (["--bf16"] if a.bf16 else []) + (["--matmul"] if a.matmul else [])
  if a.matmul:
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=1"
  procs = {
      "torch": _start([a.torch_python] + me + ["--worker", "torch"], env),
      "ours": _start([sys.executable] + me + ["--worker", "jax"], env),
  }
  times = {n: [] for n in procs}
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
  load1 = os.getloadavg()
  res = {
      "config": a.config,
      "dtype": ("bfloat16" + ("" if a.matmul else " (torch: autocast)")) if a.bf16 else "float32",
      "measures": "matmul %dx%dx%d" % matmul_shape(a.config) if a.matmul else "train step",
      "rounds": a.rounds,
      "k": a.k,
      "load_before": [round(x, 2) for x in load0],
      "load_after": [round(x, 2) for x in load1],
      "date": time.strftime("%Y-%m-%d %H:%M %Z"),
      **cpu_facts(),
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
    if a.matmul:
      m, k, n = matmul_shape(a.config)
      res[name]["gflops_per_s"] = round(2 * m * k * n / statistics.median(walls) / 1e9, 1)
  reason = noisy_reason(load0[0], load1[0], a.max_load)
  if reason and not a.allow_noisy:
    print(json.dumps(res))
    print(
        f"bench_vs_torch: no ratio: the machine is not quiet ({reason}); rerun with nothing "
        "else running, or pass --allow-noisy to print one anyway",
        file=sys.stderr,
    )
    return EXIT_NOISY
  res["noisy"] = bool(reason)
  res["speedup_ours_vs_torch"] = round(
      res["torch"]["step_ms_median"] / res["ours"]["step_ms_median"], 3
  )
  print(json.dumps(res))
  if a.json:
    pathlib.Path(a.json).write_text(json.dumps(res) + "\n")


if __name__ == "__main__":
  cli.run(main)
