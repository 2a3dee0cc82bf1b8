"""metrics.read_jsonl: latest row per step, step order, linear time."""

import json
import time

from train import metrics


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_resumed_steps_keep_latest_row_in_step_order(tmp_path):
  p = tmp_path / "m.jsonl"
  _write(
      p,
      [
          {"step": 1, "kind": "train", "loss": 3.0},
          {"step": 2, "kind": "train", "loss": 2.0},
          {"step": 2, "kind": "event", "event": "resume"},
          {"step": 2, "kind": "train", "loss": 2.5},
          {"step": 3, "kind": "train", "loss": 1.0},
          {"step": 2, "kind": "eval", "loss": 9.0},
      ],
  )
  rows = metrics.read_jsonl(str(p))
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 3.0), (2, 2.5), (3, 1.0)]
  every = metrics.read_jsonl(str(p), None)
  assert [(r["step"], r["kind"]) for r in every] == [
      (1, "train"),
      (2, "train"),
      (2, "event"),
      (2, "eval"),
      (3, "train"),
  ]


def test_30k_rows_read_in_linear_time(tmp_path):
  p = tmp_path / "m.jsonl"
  n = 30_000
  # A resumed run: steps 0..n-1, then the last 1000 steps logged again.
  rows = [{"step": i, "kind": "train", "loss": float(i)} for i in range(n)]
  rows += [{"step": i, "kind": "train", "loss": -float(i)} for i in range(n - 1000, n)]
  _write(p, rows)
  t0 = time.perf_counter()
  out = metrics.read_jsonl(str(p))
  elapsed = time.perf_counter() - t0
  assert [r["step"] for r in out] == list(range(n))
  assert out[n - 1]["loss"] == -float(n - 1) and out[0]["loss"] == 0.0
  assert elapsed < 5.0, f"read_jsonl took {elapsed:.1f}s for {n} rows (quadratic?)"
