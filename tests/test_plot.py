"""The end-of-run loss plot: written from metrics.jsonl, also for a run with nothing logged."""

import json
import warnings

import matplotlib.image

from train import plot


def _write(tmp_path, rows):
  with open(tmp_path / "metrics.jsonl", "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


def test_loss_plot_of_a_logged_run(tmp_path):
  rows = [{"kind": "train", "step": s, "loss": 5.0 - s / 10} for s in range(1, 6)]
  _write(tmp_path, rows + [{"kind": "eval", "step": 5, "all/loss": 4.7}])
  out = plot.loss_plot(str(tmp_path))
  assert out == str(tmp_path / "loss.png")
  assert matplotlib.image.imread(out).shape[2] in (3, 4)


def test_loss_plot_of_a_run_stopped_before_its_first_log_line_warns_nothing(tmp_path):
  _write(tmp_path, [{"kind": "run", "step": 0, "event": "start"}])
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # matplotlib's "No artists with labels" legend warning
    out = plot.loss_plot(str(tmp_path))
  assert matplotlib.image.imread(out).size > 0


def test_loss_plot_without_metrics_is_none(tmp_path):
  assert plot.loss_plot(str(tmp_path)) is None
