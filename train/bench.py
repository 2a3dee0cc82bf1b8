"""Throughput benchmark of the real training step.

    python -m train.bench --config configs/bench.py:S [--steps 10] [--warmup 2] [--json OUT]
        [--compile_depth_check] [--config.a.b=v ...]

Builds the step with `train.build.build` (the function `python -m train` uses: same model,
optimizer, shardings, donation), feeds it random-token batches made in this process, and
prints one JSON object: step time (median, spread) after warm-up, tokens/s, model GFLOP/s
from `model.summary`'s FLOP formula, MFU against the device peak (on CPU: against an fp32
matmul ceiling measured in this process, all cores), compile time and peak memory.
`--compile_depth_check` also compiles the same width at 12 and 48 layers (scanned layers
keep compile time flat in depth). It prints numbers and never asserts a speed.

On a CPU host it splits the cores into devices exactly as `python -m train` does
(`train.cpu_devices`, decided from the config before jax is imported). Where the CPU step's
time goes, part by part against the PyTorch peer: `scripts/profile_step.py` and
docs/performance.md.

"""

import argparse
import json
import resource
import statistics
import time

import numpy as np

from train import cli
from train import cpu_devices
from train import spec


def _parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="python -m train.bench", description=__doc__.split("\n\n")[0])
  cli.add_config(ap, lock_config=False)
  ap.add_argument("--steps", type=int, default=10, help="Timed steps (after warm-up).")
  ap.add_argument("--warmup", type=int, default=2, help="Untimed steps after the first step.")
  ap.add_argument("--json", default="", help="Also write the result JSON to this path.")
  cli.add_bool(
      ap, "compile_depth_check", False, "Also time compiling the step at 12 and 48 layers."
  )
  return ap


def make_batches(config, built, n: int = 4, seed: int = 0) -> list:
  """n global batches of random tokens: one full-length document per row (segment 1)."""
  from train import inputs  # noqa: PLC0415 (jax after XLA_FLAGS)

  b, l = int(config.train.batch_size), int(config.data.seq_len)
  v = int(config.model.vocab_size)
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    toks = rng.integers(0, v, (b, l + 1), dtype=np.int32)
    local = {
        "inputs": toks[:, :-1],
        "targets": toks[:, 1:],
        "segment_ids": np.ones((b, l), np.int32),
        "positions": np.broadcast_to(np.arange(l, dtype=np.int32), (b, l)).copy(),
        "weights": np.ones((b, l), np.float32),
    }
    out.append(inputs.to_global(local, built.train_step.batch_sharding, b))
  return out


class StepTimer:
  """Holds a built step, its state and batches; `run(k)` times k more steps (seconds each).

  Split out so that an A/B driver can alternate short bursts of this step with a peer's.
  """

  def __init__(self, config):
    import jax  # noqa: PLC0415 (jax after XLA_FLAGS)
    from train import build  # noqa: PLC0415 (jax after XLA_FLAGS)

    self.config = config
    self.built = build.build(spec.resolve(config))
    self.state = self.built.init_state()
    self.batches = make_batches(config, self.built)
    self.i = 0
    t0 = time.perf_counter()
    # The executable is called directly: going through the jit cache would compile again.
    self._fn = self.built.train_step.lower().compile()
    self.compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    self._step()
    jax.block_until_ready(self.state)
    self.first_step_s = time.perf_counter() - t0

  def _step(self):
    self.state, self.metrics = self._fn(self.state, self.batches[self.i % len(self.batches)])
    self.i += 1

  def run(self, k: int) -> list[float]:
    import jax  # noqa: PLC0415 (jax after XLA_FLAGS)

    times = []
    for _ in range(k):
      t0 = time.perf_counter()
      self._step()
      jax.block_until_ready(self.metrics["loss"])
      times.append(time.perf_counter() - t0)
    return times


def compile_seconds(config, num_layers: int) -> float:
  """Seconds to lower + compile the real step with `num_layers` (nothing runs)."""
  from train import build  # noqa: PLC0415 (jax after XLA_FLAGS)

  c = config.copy_and_resolve_references()
  c.model.num_layers = num_layers
  built = build.build(spec.resolve(c))
  t0 = time.perf_counter()
  built.train_step.lower().compile()
  return time.perf_counter() - t0


def peak_memory() -> dict:
  """Host peak RSS, and device peak bytes where the backend reports them."""
  import jax  # noqa: PLC0415 (jax after XLA_FLAGS)

  out = {"host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  return out


def peak_flops() -> tuple[float, str]:
  """Peak FLOP/s of all local devices together: data sheet x devices, or on CPU one matmul
  ceiling measured here (the CPU's devices share the same cores)."""
  import jax  # noqa: PLC0415 (jax after XLA_FLAGS)
  from train import metrics  # noqa: PLC0415 (jax after XLA_FLAGS)

  dev = jax.local_devices()
  if dev[0].platform == "cpu":
    m = metrics.measure_matmul_flops(n=1024, repeats=20)  # best of 20: load only lowers it
    return m, f"CPU fp32 1024^3 matmul measured in-process: {m / 1e9:.1f} GFLOP/s"
  peak, source = metrics.peak_flops_per_device(dev[0])
  return peak * len(dev), f"{source} x {len(dev)} devices"


def run(config, steps: int = 10, warmup: int = 2, depth_check: bool = False) -> dict:
  import jax  # noqa: PLC0415 (jax after XLA_FLAGS)
  from model import summary  # noqa: PLC0415 (jax after XLA_FLAGS)

  timer = StepTimer(config)
  timer.run(warmup)
  times = timer.run(steps)
  med = statistics.median(times)
  tokens = int(config.train.batch_size) * int(config.data.seq_len)
  flops_per_token = summary.flops_per_token_train(config.model, int(config.data.seq_len))
  peak, peak_source = peak_flops()
  achieved = flops_per_token * tokens / med
  q = sorted(times)
  out = {
      "config": config.name,
      "backend": jax.default_backend(),
      "devices": len(jax.devices()),
      "mesh": dict(timer.built.mesh.shape),
      "attention_impl": config.model.attention_impl,
      "batch_size": int(config.train.batch_size),
      "seq_len": int(config.data.seq_len),
      "steps": steps,
      "step_ms_median": round(med * 1e3, 2),
      "step_ms_min": round(q[0] * 1e3, 2),
      "step_ms_max": round(q[-1] * 1e3, 2),
      "step_ms_iqr": round((q[(3 * len(q)) // 4] - q[len(q) // 4]) * 1e3, 2),
      "tokens_per_s": round(tokens / med, 1),
      "model_flops_per_token": flops_per_token,
      "model_gflops_per_s": round(achieved / 1e9, 2),
      "peak_gflops_per_s": round(peak / 1e9, 2),
      "peak_source": peak_source,
      "mfu": round(achieved / peak, 4),
      "compile_s": round(timer.compile_s, 2),
      "first_step_s": round(timer.first_step_s, 2),
      "final_loss": float(timer.metrics["loss"]),
      **peak_memory(),
  }
  if depth_check:
    c12, c48 = compile_seconds(config, 12), compile_seconds(config, 48)
    out["compile_s_12_layers"] = round(c12, 2)
    out["compile_s_48_layers"] = round(c48, 2)
    out["compile_ratio_48_vs_12"] = round(c48 / c12, 2)
  return out


def main(argv=None) -> None:
  args = cli.parse_args(_parser(), argv)
  cpu_devices.configure(args.config)  # before jax is imported, like `python -m train`
  out = run(args.config, args.steps, args.warmup, args.compile_depth_check)
  text = json.dumps(out)
  print(text)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  cli.run(main)
