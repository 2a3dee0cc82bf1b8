"""Matplotlib figures for scaling studies. Plotting only: every fit arrives already made
(eval.fit / eval.saturation), so a figure never changes a number.

Each function returns a Figure; `save` writes it as PNG and SVG.
"""

from __future__ import annotations

import io
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from eval import fit as fitlib  # noqa: E402
from train import paths  # noqa: E402


def save(fig, path_stem) -> list[pathlib.Path]:
  """Write fig to <stem>.png and <stem>.svg (local or object storage, train/paths.py);
  returns both paths."""
  stem = paths.path(path_stem)
  stem.parent.mkdir(parents=True, exist_ok=True)
  out = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
  for p in out:
    image = io.BytesIO()
    fig.savefig(image, format=p.suffix[1:], dpi=130, bbox_inches="tight")
    p.write_bytes(image.getvalue())
  plt.close(fig)
  return out


def _colors(values):
  uniq = np.unique(values)
  cmap = plt.get_cmap("viridis")
  return {v: cmap(i / max(len(uniq) - 1, 1)) for i, v in enumerate(uniq)}


def loss_vs_compute(
    C,
    L,
    N,
    frontier: fitlib.PowerLawFit | None = None,
    floor: float | None = None,
    predictions: list[dict] | None = None,
    ylabel="validation loss",
):
  """Every run as a point coloured by size; the Pareto frontier and its fitted power law."""
  C, L, N = (np.asarray(v, float) for v in (C, L, N))
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  col = _colors(N)
  for n in np.unique(N):
    m = N == n
    o = np.argsort(C[m])
    ax.plot(C[m][o], L[m][o], "o-", color=col[n], ms=4, lw=1, alpha=0.8, label=f"N={n:.3g}")
  idx = fitlib.pareto_frontier(C, L)
  ax.plot(C[idx], L[idx], "k*", ms=9, label="frontier runs")
  if frontier is not None:
    cmax = max(C.max(), max((p["budget"] for p in predictions or []), default=0))
    cs = np.geomspace(C.min(), cmax, 200)
    ax.plot(
        cs,
        frontier.loss(cs),
        "k--",
        lw=1.2,
        label=f"L*(C) = {frontier.E:.3f} + {frontier.A:.3g} C^-{frontier.alpha:.3f}",
    )
  for p in predictions or []:
    ax.plot([p["budget"]], [p["loss"]], "rs", ms=6)
    if "loss_interval" in p:
      lo, hi = p["loss_interval"]
      ax.errorbar(
          [p["budget"]],
          [p["loss"]],
          yerr=[[p["loss"] - lo], [hi - p["loss"]]],
          color="r",
          capsize=3,
      )
  if floor is not None:
    ax.axhline(floor, color="gray", ls=":", label=f"true floor {floor:.3f}")
  ax.set(xscale="log", xlabel="training FLOPs C", ylabel=ylabel, title="Loss vs compute")
  ax.legend(fontsize=7, ncol=2)
  ax.grid(alpha=0.3, which="both")
  return fig


def isoflop_curves(N, L, budgets, iso: fitlib.IsoFlopFit):
  """Loss vs N per FLOP budget with the fitted parabolas and their minima; inset-free, with a
  second panel for N*(C) and its power law."""
  N, L, budgets = (np.asarray(v, float) for v in (N, L, budgets))
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
  col = _colors(budgets)
  windows = iso.windows if iso.windows is not None else [None] * len(iso.budgets)
  fitted = {float(c): (p, w) for c, p, w in zip(iso.budgets, iso.parabolas, windows)}
  for c in np.unique(budgets):
    m = budgets == c
    ax.plot(N[m], L[m], "o", color=col[c], ms=4, label=f"C={c:.2g}")
    if float(c) in fitted:  # each parabola over the window it was fitted on
      p, w = fitted[float(c)]
      lo, hi = (N[m].min(), N[m].max()) if w is None else w
      xs = np.linspace(np.log(lo), np.log(hi), 100)
      ax.plot(np.exp(xs), np.polyval(p, xs), "-", color=col[c], lw=1)
  ax.plot(iso.n_opt, iso.loss_opt, "kx", ms=8, mew=2, label="minima")
  ax.set(xscale="log", xlabel="parameters N", ylabel="loss", title="IsoFLOP curves")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3, which="both")
  cs = np.geomspace(iso.budgets.min(), iso.budgets.max(), 50)
  n_fit, d_fit = iso.optimal(cs)
  ax2.loglog(iso.budgets, iso.n_opt, "o", color="C0", label=f"N*  ~ C^{iso.a:.3f}")
  ax2.loglog(cs, n_fit, "-", color="C0")
  ax2.loglog(iso.budgets, iso.d_opt, "s", color="C1", label=f"D*  ~ C^{iso.b:.3f}")
  ax2.loglog(cs, d_fit, "-", color="C1")
  ax2.set(xlabel="FLOP budget C", title="Compute-optimal allocation")
  ax2.legend(fontsize=8)
  ax2.grid(alpha=0.3, which="both")
  return fig


def residuals(N, D, L, law):
  """Log residuals of a fitted law vs N and vs D: structure here means the law is wrong."""
  N, D, L = (np.asarray(v, float) for v in (N, D, L))
  r = np.log(L) - np.log(law.loss(N, D) if isinstance(law, fitlib.ChinchillaFit) else law.loss(N))
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
  for ax, x, name in ((axes[0], N, "parameters N"), (axes[1], D, "tokens D")):
    sc = ax.scatter(x, r * 100, c=np.log10(D if x is N else N), s=18, cmap="viridis")
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xscale="log", xlabel=name)
    ax.grid(alpha=0.3)
    fig.colorbar(sc, ax=ax, label="log10 " + ("D" if x is N else "N"))
  axes[0].set_ylabel("log residual (%)")
  fig.suptitle(f"Fit residuals (rms {np.sqrt(np.mean(r ** 2)) * 100:.2f}%)")
  return fig


def saturation_panel(
    rungs: dict,
    exps: dict,
    head: np.ndarray | None,
    x_head,
    backtest: list[dict],
    head_note: str | None = None,
):
  """Four panels: loss drop per doubling between rungs, local exponents, headroom (or why it
  is withheld), and the backtest's errors on the held-out runs with prediction intervals."""
  fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
  ax = axes[0]
  mid = np.sqrt(rungs["x_lo"] * rungs["x_hi"])
  ax.semilogx(mid, rungs["per_doubling"], "o-")
  ax.axhline(0, color="k", lw=0.8)
  ax.set(title="loss drop per doubling of N", xlabel="N (between rungs)")
  ax = axes[1]
  ax.semilogx(np.sqrt(exps["x_lo"] * exps["x_hi"]), exps["exponent"], "o-")
  ax.set(title="local exponent -dlog(L-floor)/dlog N", xlabel="N (between rungs)")
  ax = axes[2]
  if head is not None:
    ax.semilogx(x_head, np.asarray(head) * 100, "o-")
    ax.set_title("headroom (L-E)/L (%)")
  else:
    ax.set(xscale="log", title="headroom: withheld")
    ax.text(
        0.5,
        0.5,
        head_note or "E not fitted",
        ha="center",
        va="center",
        wrap=True,
        fontsize=7,
        transform=ax.transAxes,
    )
  ax.set(ylim=(0, None), xlabel="N")
  _backtest_axis(axes[3], backtest)
  for a in axes:
    a.grid(alpha=0.3, which="both")
    a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  fig.tight_layout()
  return fig


def _backtest_axis(ax, rows):
  if rows:
    n = np.array([r["N"] for r in rows])
    err = np.array([r["rel_error"] for r in rows]) * 100
    lo = np.array([(r["predicted"] - r["interval"][1]) / r["loss"] for r in rows]) * 100
    hi = np.array([(r["predicted"] - r["interval"][0]) / r["loss"] for r in rows]) * 100
    ax.errorbar(n, err, yerr=[np.maximum(err - lo, 0), np.maximum(hi - err, 0)], fmt="o", capsize=3)
  ax.set(xscale="log", title="backtest: error on held-out runs (%)", xlabel="N of the held-out run")
  ax.axhline(0, color="k", lw=0.8)


def training_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], ylabel="train loss"):
  """Loss vs tokens (log x) per run; curves maps a run name to (tokens, loss[, lr])."""
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for i, (name, (t, l, *_)) in enumerate(sorted(curves.items())):
    ax.plot(t, l, lw=1, label=name, color=plt.get_cmap("tab20")(i % 20))
  ax.set(xscale="log", xlabel="tokens", ylabel=ylabel, title="Training curves")
  if len(curves) <= 20:
    ax.legend(fontsize=6, ncol=2)
  ax.grid(alpha=0.3, which="both")
  return fig
