"""The loss plot written at the end of a run (matplotlib's Agg canvas: no display needed, and
the global pyplot backend is left alone, e.g. inline plots in a notebook)."""

import io
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from train import metrics as metrics_lib
from train import paths


def loss_plot(workdir: str, out: str | None = None) -> str | None:
  """Train loss (and validation loss where evaluated) against step -> DIR/loss.png."""
  path = os.fspath(paths.path(workdir) / "metrics.jsonl")
  if not paths.path(path).exists():
    return None
  train = metrics_lib.read_jsonl(path, "train")
  val = metrics_lib.read_jsonl(path, "eval")
  fig = Figure(figsize=(7, 4))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  # loss_mean: the mean over the steps since the previous log line (smoother than one step).
  key = "loss_mean" if any(isinstance(r.get("loss_mean"), float) for r in train) else "loss"
  pts = [(r["step"], r[key]) for r in train if isinstance(r.get(key), float)]
  if pts:
    ax.plot(*zip(*pts), label="train loss", lw=1)
  vpts = [(r["step"], r["all/loss"]) for r in val if isinstance(r.get("all/loss"), float)]
  if vpts:
    ax.plot(*zip(*vpts), "o-", label="val loss")
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats/token)")
  ax.grid(alpha=0.3)
  if pts or vpts:
    ax.legend()
  else:  # e.g. a run stopped before its first log line
    ax.text(0.5, 0.5, "no loss logged yet", ha="center", va="center", transform=ax.transAxes)
  out = out or os.fspath(paths.path(workdir) / "loss.png")
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format=os.path.splitext(out)[1][1:] or "png", dpi=110)
  paths.path(out).write_bytes(png.getvalue())
  return out
