"""Where the fp32 train step's time goes, ours against the PyTorch peer, by part of the model.

    .venv/bin/python scripts/profile_step.py --config S [--steps 3] [--json OUT]
    .venv/bin/python scripts/profile_step.py --config S --parts

Step profile: each side runs in its own process, one after the other (never both at once).
Ours: the real step (`train.bench.StepTimer`, the same device split as `python -m train`)
under `jax.profiler`; every XLA:CPU op event is mapped to its HLO instruction, whose metadata
(the Flax module path and the source file) names the part of the model it computes. The
peer: `torch.profiler`'s self time per aten op. Both tables give each part's share of the
profiled time and that share of the unprofiled median step (the profiler itself slows XLA's
many small ops by up to ~1.5x, so the shares, not the profiled milliseconds, are the result).
With 2 XLA devices each device runs on its own core; ours is summed over both and halved.

`--parts` times the pieces on their own instead, alternating ours and the peer's, on the
config's per-step shapes: causal attention forward+backward for one layer (ours: the
"blocked" CPU path with packed-segment ids, as the step runs it; the peer: SDPA), the
batched QK^T product and the softmax inside it. Numbers only; nothing is asserted.
"""

import argparse
import collections
import glob
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run by path: import this checkout's packages

import bench_vs_torch  # noqa: E402  (scripts/: the side-by-side's peer step)
from configs import bench as bench_cfg  # noqa: E402
from train import bench  # noqa: E402
from train import cli  # noqa: E402
from train import cpu_devices  # noqa: E402

PARTS = (
    "matmuls: QKV/out projections, MLP, LM head",
    "attention core: QK^T, mask, softmax, PV",
    "GELU and bias adds",
    "layer norm",
    "loss: log-softmax, NLL",
    "embedding lookup/scatter",
    "residual adds, copies, slices",
    "AdamW update + grad-norm clipping",
    "grad all-reduce between devices",
    "other",
)


# ---- ours: XLA:CPU events -> HLO instruction -> part ----


def hlo_index(hlo: str) -> tuple[dict, dict]:
  """{instruction: (op_name, innermost source file)}, {instruction: opcode} of a module's text."""
  files = dict(re.findall(r'^(\d+) "([^"]+)"$', hlo.split("FunctionNames", 1)[0], re.M))
  locs = {
      i: files.get(f, "")
      for i, f in re.findall(r"^(\d+) \{file_name_id=(\d+) ", hlo.split("StackFrames", 1)[0], re.M)
  }
  frames = dict(re.findall(r"^(\d+) \{file_location_id=(\d+) ", hlo, re.M))
  meta, opcode = {}, {}
  for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\((.*)$", hlo, re.M):
    name, rest = m.group(1), m.group(3)
    opcode[name] = m.group(2)
    op = re.search(r'op_name="([^"]*)"', rest)
    frame = re.search(r"stack_frame_id=(\d+)", rest)
    src = locs.get(frames.get(frame.group(1), ""), "") if frame else ""
    meta[name] = (op.group(1) if op else "", src)
  return meta, opcode


def part_of_ours(event: str, meta: dict, opcode: dict) -> str:
  """The PARTS entry an XLA:CPU op event (named after its HLO instruction) belongs to."""
  if event == "Rendezvous" or event.startswith(("all-reduce", "InvokeRendezvous")):
    return PARTS[8]
  op, src = meta.get(event, ("", ""))
  is_dot = event.startswith("ynn_fusion") or opcode.get(event) in ("dot", "convolution")
  if "/attn/" in op and not re.search(r"/attn/(query|key|value|out)/", op):
    return PARTS[1]
  if "optax" in src:
    return PARTS[7]
  if "losses.py" in src or "take_along_axis" in op:
    return PARTS[4]
  if "embed" in op and not is_dot:
    return PARTS[5]
  if is_dot and ("/attn/" in op or "/mlp/" in op or "logits" in op or "embed" in op):
    return PARTS[0]
  if "/mlp/" in op or "/attn/" in op:  # the bias adds and GELU fused around the matmuls
    return PARTS[2]
  if "norm" in op or "norms.py" in src:
    return PARTS[3]
  if "Transformer" in op:
    return PARTS[6]
  return PARTS[9]


def profile_ours(size: str, steps: int, peer: str = "") -> dict:
  del peer  # the peer's side only
  config = bench_cfg.get_config(size)
  devices = cpu_devices.configure(config) or 1
  import jax  # noqa: PLC0415 (after XLA_FLAGS)

  timer = bench.StepTimer(config)
  meta, opcode = hlo_index(timer._fn.as_text())
  timer.run(2)
  plain = statistics.median(timer.run(5))
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      profiled = timer.run(steps)
    xspace = sorted(glob.glob(f"{d}/**/*.xplane.pb", recursive=True))[-1]
    data = jax.profiler.ProfileData.from_file(xspace)
  ns = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLAEigen"):  # XLA:CPU's compute threads
        continue
      for ev in line.events:
        if not ev.name.startswith(("ThunkExecutor", "Wait", "ThreadpoolListener", "Slinky")):
          ns[part_of_ours(ev.name, meta, opcode)] += ev.duration_ns
  return _table("ours (XLA:CPU)", ns, plain, statistics.median(profiled), devices)


# ---- the peer: torch.profiler self time per aten op -> part ----

_TORCH_PARTS = (
    (PARTS[0], ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear")),
    (PARTS[1], ("scaled_dot_product", "flash_attention")),
    (PARTS[2], ("gelu",)),
    (PARTS[3], ("layer_norm",)),
    (PARTS[4], ("log_softmax", "nll_loss", "cross_entropy")),
    (PARTS[5], ("embedding",)),
    (PARTS[7], ("Optimizer", "_foreach", "lerp", "addcdiv", "sqrt", "vector_norm", "clamp")),
)


def part_of_torch(op: str) -> str:
  """The PARTS entry of an aten op; the peer's remaining ops (copies, adds, views, sums,
  autograd's bookkeeping) all count as PARTS[6]."""
  for part, keys in _TORCH_PARTS:
    if any(k in op for k in keys):
      return part
  return PARTS[6]


def profile_torch(size: str, steps: int, peer: str) -> dict:
  import torch  # noqa: PLC0415 (`hf` extra)
  from torch import profiler  # noqa: PLC0415

  step = bench_vs_torch.torch_step(size, peer, False)
  for _ in range(3):
    step()
  plain = statistics.median(_times(step, 5))
  with profiler.profile(activities=[profiler.ProfilerActivity.CPU]) as prof:
    profiled = _times(step, steps)
  ns = collections.Counter()
  for e in prof.key_averages():
    ns[part_of_torch(e.key)] += e.self_cpu_time_total * 1e3  # us -> ns
  name = f"torch eager ({torch.get_num_threads()} threads)"
  return _table(name, ns, plain, statistics.median(profiled), 1)


def _times(fn, n: int) -> list[float]:
  out = []
  for _ in range(n):
    t0 = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t0)
  return out


def _table(side: str, ns: collections.Counter, plain_s: float, profiled_s: float, devices: int):
  total = sum(ns.values()) or 1
  return {
      "side": side,
      "devices": devices,
      "step_ms": round(plain_s * 1e3, 1),
      "profiled_step_ms": round(profiled_s * 1e3, 1),
      "parts": {
          p: {"share": round(ns[p] / total, 4), "ms": round(ns[p] / total * plain_s * 1e3, 1)}
          for p in PARTS
      },
  }


def print_tables(rows: list[dict]) -> None:
  head = " | ".join(f"{r['side']}: ms (share)" for r in rows)
  print(f"| part | {head} |")
  print("|---" * (len(rows) + 1) + "|")
  for p in PARTS:
    cells = " | ".join(
        f"{r['parts'][p]['ms']:.0f} ({100 * r['parts'][p]['share']:.0f}%)" for r in rows
    )
    print(f"| {p} | {cells} |")
  steps = " | ".join(f"**{r['step_ms']:.0f}** (profiled {r['profiled_step_ms']:.0f})" for r in rows)
  print(f"| step (unprofiled median) | {steps} |")


# ---- --parts: the pieces on their own, alternating ----


def parts_candidates(size: str) -> dict:
  """{name: zero-arg callable} for one layer's attention pieces at the config's shapes."""
  import jax  # noqa: PLC0415 (after XLA_FLAGS)
  import jax.numpy as jnp  # noqa: PLC0415
  import torch  # noqa: PLC0415
  import torch.nn.functional as F  # noqa: PLC0415

  from model import attention_ops  # noqa: PLC0415 (jax after XLA_FLAGS)

  _, d, _, n, t, b = bench_cfg.SIZES[size]
  h = d // n
  rng = np.random.default_rng(0)
  q, k, v, g = (rng.normal(size=(b, t, n, h)).astype(np.float32) for _ in range(4))
  seg = jnp.ones((b, t), jnp.int32)

  def loss(q, k, v):
    o = attention_ops.dot_product_attention(
        q, k, v, causal=True, impl="auto", q_segment_ids_BxT=seg, kv_segment_ids_BxS=seg
    )
    return jnp.sum(o * g)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  jq, jk, jv = (jnp.asarray(x) for x in (q, k, v))
  tq, tk, tv, tg = (torch.from_numpy(x).transpose(1, 2).contiguous() for x in (q, k, v, g))
  for x in (tq, tk, tv):
    x.requires_grad_(True)

  def torch_attention():
    (F.scaled_dot_product_attention(tq, tk, tv, is_causal=True) * tg).sum().backward()
    tq.grad = tk.grad = tv.grad = None

  qh, kh = q.transpose(0, 2, 1, 3).reshape(b * n, t, h), k.transpose(0, 2, 1, 3).reshape(
      b * n, t, h
  )
  bmm = jax.jit(lambda x, y: jnp.einsum("bch,bph->bcp", x, y))
  jqh, jkh, tqh, tkh = jnp.asarray(qh), jnp.asarray(kh), torch.from_numpy(qh), torch.from_numpy(kh)
  scores = rng.normal(size=(b * n, t, t)).astype(np.float32)
  softmax = jax.jit(lambda x: jax.nn.softmax(x, axis=-1))
  js, ts = jnp.asarray(scores), torch.from_numpy(scores)
  return {
      f"attention fwd+bwd, 1 layer [{b},{t},{n},{h}]": (
          lambda: jax.block_until_ready(grad(jq, jk, jv)),
          torch_attention,
      ),
      f"batched QK^T [{b * n}x{t}x{h}] x [{b * n}x{t}x{h}]^T": (
          lambda: jax.block_until_ready(bmm(jqh, jkh)),
          lambda: torch.bmm(tqh, tkh.transpose(1, 2)),
      ),
      f"softmax over [{b * n},{t},{t}]": (
          lambda: jax.block_until_ready(softmax(js)),
          lambda: torch.softmax(ts, -1),
      ),
  }


def time_parts(size: str, rounds: int = 7, inner: int = 3) -> dict:
  out = {}
  for name, pair in parts_candidates(size).items():
    times = ([], [])
    for fn in pair:
      fn()
      fn()
    for r in range(rounds):
      for i in (0, 1) if r % 2 == 0 else (1, 0):
        t0 = time.perf_counter()
        for _ in range(inner):
          pair[i]()
        times[i].append((time.perf_counter() - t0) / inner)
    ours, peer = (statistics.median(t) * 1e3 for t in times)
    out[name] = {"ours_ms": round(ours, 2), "torch_ms": round(peer, 2)}
    print(f"| {name} | {ours:.2f} | {peer:.2f} | {peer / ours:.2f}x |", flush=True)
  return out


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--config", default="S", choices=["S", "M", "tiny"])
  ap.add_argument("--steps", type=int, default=3, help="profiled steps per side")
  ap.add_argument("--parts", action="store_true", help="time the attention pieces alone")
  ap.add_argument("--peer", default=str(bench_vs_torch.PEER), help="the peer's torch_gpt.py")
  ap.add_argument("--json", default="")
  ap.add_argument("--side", choices=["ours", "torch"], help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.side:  # a worker: one side's profile as one JSON line
    fn = profile_ours if a.side == "ours" else profile_torch
    print(json.dumps(fn(a.config, a.steps, a.peer)))
    return 0
  if not pathlib.Path(a.peer).is_file():
    raise FileNotFoundError(f"--peer {a.peer}: no such file; pass the path of torch_gpt.py")
  facts = {"load_before": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M %Z")}
  if a.parts:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"  # all cores, one device
    print("| piece | ours ms | torch ms | ours speed vs torch |\n|---|---|---|---|")
    res = {"parts": time_parts(a.config)}
  else:
    rows = []
    for side in ("ours", "torch"):
      cmd = [sys.executable, __file__, "--config", a.config, "--steps", str(a.steps)]
      cmd += ["--peer", a.peer]
      out = subprocess.run(cmd + ["--side", side], capture_output=True, text=True, cwd=REPO)
      if out.returncode:
        raise ChildProcessError(f"profile of {side} failed:\n{out.stderr[-2000:]}")
      rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print_tables(rows)
    res = {"sides": rows}
  res.update(facts, config=a.config, load_after=os.getloadavg()[0], **bench_vs_torch.cpu_facts())
  print(f"# {a.config}: load {facts['load_before']:.2f} before, {res['load_after']:.2f} after")
  if a.json:
    pathlib.Path(a.json).write_text(json.dumps(res) + "\n")
  return 0


if __name__ == "__main__":
  cli.run(main)
