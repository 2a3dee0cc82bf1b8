"""Training metrics: where they go (JSONL, TensorBoard) and the MFU denominator.

Only process 0 writes. The loop hands over host floats; fetching them from the device one
step late (so that dispatch never waits on the step just launched) is the loop's job.
MFU = model FLOPs per token (model.summary's formula) x tokens/s / (peak FLOP/s per device x
devices). Peaks are dense bf16 numbers from vendor sheets (train/hardware.py); on CPU there is
no sheet, so a matmul is timed once at start-up and that measured rate is used (and said so).
"""

import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from train import hardware
from train import paths


def measure_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of an n x n fp32 matmul on the default device (best of `repeats`)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n**3 / best


def peak_flops_per_device(device=None) -> tuple[float, str]:
  """(peak FLOP/s of one device, where the number comes from)."""
  device = device or jax.devices()[0]
  chip = hardware.chip_for_device_kind(device.device_kind)
  peak = chip.peak_bf16_flops if chip is not None else None
  if peak is not None:
    return peak, f"{device.device_kind}: {peak / 1e12:.0f} TFLOP/s bf16 dense (data sheet)"
  if device.platform == "cpu":
    measured = measure_matmul_flops()
    return measured, (
        f"CPU: no data-sheet peak; measured fp32 matmul rate "
        f"{measured / 1e9:.1f} GFLOP/s at start-up used as the peak"
    )
  return float("nan"), f"{device.device_kind}: unknown peak (MFU not reported)"


class MetricsWriter:
  """Appends one JSON object per logged step to DIR/metrics.jsonl and mirrors scalars to
  TensorBoard event files in DIR/tensorboard. A no-op on processes other than 0. On object
  storage (train/paths.py) metrics.jsonl is rewritten at most every 10 s, and the event files
  are written to a local mirror and uploaded on close."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.jsonl_path = os.fspath(paths.path(workdir) / "metrics.jsonl")
    self.tb_dir = os.fspath(paths.path(workdir) / "tensorboard")
    self._file = None
    self._tb = None
    if self.enabled:
      paths.path(workdir).mkdir(parents=True, exist_ok=True)
      self._file = paths.AppendFile(self.jsonl_path)
      self._tb = _summary_writer_class()(os.fspath(paths.local_mirror(self.tb_dir)))

  def write(self, step: int, scalars: dict[str, Any], kind: str = "train") -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "kind": kind}
    for k, v in scalars.items():
      row[k] = _plain(v)
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    for k, v in row.items():
      if k not in ("step", "kind") and isinstance(v, (int, float)) and np.isfinite(v):
        self._tb.add_scalar(f"{kind}/{k}", v, int(step))

  def event(self, step: int, what: str, **fields) -> None:
    """A non-metric line (resume, skipped update, stop), so the JSONL tells the story."""
    self.write(step, dict(fields, event=what), kind="event")

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._tb.flush()
      self._tb.close()
      if paths.is_remote(self.tb_dir):
        paths.copy_tree(paths.local_mirror(self.tb_dir), self.tb_dir)
      self._file = self._tb = None


def _summary_writer_class():
  """tensorboardX.SummaryWriter, imported without torch: tensorboardX imports torch if it is
  installed (seconds of start-up) only to accept torch tensors, which we never pass."""
  if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError inside tensorboardX
    try:
      import tensorboardX  # noqa: PLC0415 (torch hidden, see above)
    finally:
      del sys.modules["torch"]
  import tensorboardX  # noqa: PLC0415 (torch hidden, see above)

  return tensorboardX.SummaryWriter


def _plain(v: Any) -> Any:
  if isinstance(v, (np.generic, np.ndarray, jax.Array)):
    v = np.asarray(v).item()
  if isinstance(v, float) and not np.isfinite(v):
    return str(v)  # JSON has no NaN/inf; keep them visible as strings
  return v


def read_jsonl(path: str, kind: str | None = "train") -> list[dict]:
  """Rows of a metrics.jsonl sorted by step (stable: first-seen order within a step); a
  step logged twice (a resumed run repeating steps after its last checkpoint) keeps its
  latest row at its first position. Linear in the file: one dict keyed by row identity."""
  rows: dict[tuple, dict] = {}  # insertion order = first-seen order; values = latest row
  with paths.path(path).open("r") as f:
    for line in f:
      row = json.loads(line)
      if kind is not None and row.get("kind") != kind:
        continue
      rows[(row.get("kind"), row["step"], row.get("event"))] = row
  return sorted(rows.values(), key=lambda r: r["step"])
