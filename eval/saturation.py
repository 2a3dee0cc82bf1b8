"""Saturation diagnostics: is a model family still buying loss with parameters and tokens?

All functions take plain arrays (or a fitted law from eval.fit) and return dicts of numbers
plus a one-line `verdict` where a judgement is made, so that reports and notebooks can print
them. Nothing here reads files or plots.

* marginal returns: loss bought by doubling N (or D), from a fitted law with bootstrap
  intervals (`doubling_returns`) or straight from consecutive rungs (`rung_returns`);
* local exponents: -d log(L - E) / d log x between consecutive rungs (`local_exponents`);
  a law with a constant exponent gives a flat sequence, saturation makes it fall;
* headroom (L - E) / L: the share of the loss that scale could still remove;
* leave-one-rung-out extrapolation error and a trend-break test (fit the large rungs,
  floor included, and test whether the small ones sit on the same law, with noise clustered
  by size);
* plateau detection on a training curve (slope of loss vs log tokens over the last 20% of
  the stable phase, the cooldown of a WSD schedule left out, against its own noise; late
  loss rise);
* LM-head spectrum (stable rank, singular-value entropy): a low-rank head is the softmax
  bottleneck that makes small models saturate (Godey et al. 2024).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import numpy as np
import scipy.stats

from eval import fit as fitlib
from train import run as run_lib

# ----------------------------------------------------------------------------- returns


def doubling_returns(
    law: fitlib.ChinchillaFit,
    N: float,
    D: float,
    samples_Bx5: np.ndarray | None = None,
    level=fitlib.INTERVAL_LEVEL,
) -> dict:
  """Loss removed by doubling N (at fixed D) and by doubling D (at fixed N), at (N, D).

  From L = E + A N^-alpha + B D^-beta: dN = A N^-alpha (1 - 2^-alpha), likewise dD.
  Percentile intervals come from bootstrap parameter samples (E, A, B, alpha, beta rows).
  """

  def returns(E, A, B, alpha, beta):
    dn = A * N**-alpha * (1 - 2.0**-alpha)
    dd = B * D**-beta * (1 - 2.0**-beta)
    return dn, dd

  dn, dd = returns(law.E, law.A, law.B, law.alpha, law.beta)
  loss = float(law.loss(N, D))
  out = dict(
      N=float(N),
      D=float(D),
      loss=loss,
      per_doubling_N=float(dn),
      per_doubling_D=float(dd),
      rel_per_doubling_N=float(dn / loss),
      rel_per_doubling_D=float(dd / loss),
  )
  if samples_Bx5 is not None and len(samples_Bx5):
    s = np.asarray(samples_Bx5, float)
    dns, dds = returns(*(s[:, j] for j in range(5)))
    out["per_doubling_N_interval"] = fitlib.percentile_interval(dns, level)
    out["per_doubling_D_interval"] = fitlib.percentile_interval(dds, level)
  return out


def _sorted_by(x, *arrays):
  """x (as floats) ascending, and each of `arrays` in the same order."""
  x = np.asarray(x, float)
  order = np.argsort(x)
  return (x[order],) + tuple(np.asarray(a, float)[order] for a in arrays)


def rung_returns(x, L) -> dict:
  """Empirical loss drop per doubling of x between consecutive rungs (x sorted ascending)."""
  x, L = _sorted_by(x, L)
  doublings = np.log2(x[1:] / x[:-1])
  return dict(x_lo=x[:-1], x_hi=x[1:], per_doubling=(L[:-1] - L[1:]) / doublings)


def local_exponents(x, L, E=0.0) -> dict:
  """-d log(L - E) / d log x between consecutive rungs (sorted by x).

  With E = 0 this is the slope of the raw loss. With the fitted floor it estimates alpha
  locally; E may be per rung (e.g. E + B/D^beta for each rung's D, so that a finite token
  budget is not mistaken for saturation in N). Rungs at or below E give NaN.
  """
  x, L = np.asarray(x, float), np.asarray(L, float)
  x, L, E = _sorted_by(x, L, np.broadcast_to(np.asarray(E, float), x.shape))
  with np.errstate(divide="ignore", invalid="ignore"):
    y = np.log(np.where(L > E, L - E, np.nan))
    k = -(y[1:] - y[:-1]) / np.log(x[1:] / x[:-1])
  return dict(x_lo=x[:-1], x_hi=x[1:], exponent=k)


def headroom(L, E: float):
  """(L - E) / L: fraction of the loss still reducible by scale (0 means at the floor)."""
  L = np.asarray(L, float)
  return (L - E) / L


def exponent_trend(exponents) -> dict:
  """Is the local exponent falling as we go up the ladder? Slope of exponent vs rung index."""
  k = np.asarray(exponents, float)
  k = k[np.isfinite(k)]
  if len(k) < 3:
    return dict(
        slope=float("nan"),
        p_value=float("nan"),
        falling=False,
        verdict="too few rungs to judge the exponent's trend",
    )
  r = scipy.stats.linregress(np.arange(len(k)), k)
  falling = bool(r.slope < 0 and r.pvalue < 0.05)
  verdict = (
      "the local exponent falls up the ladder (returns diminish faster than one power "
      f"law predicts; p = {r.pvalue:.3f})"
      if falling
      else f"no significant trend in the local exponent (p = {r.pvalue:.2f}): no evidence "
      "against a single power law"
  )
  return dict(slope=float(r.slope), p_value=float(r.pvalue), falling=falling, verdict=verdict)


# ----------------------------------------------------------------------------- extrapolation

Fitter = Callable[
    [np.ndarray, np.ndarray, np.ndarray], Callable[[np.ndarray, np.ndarray], np.ndarray]
]


def chinchilla_fitter(grid="quick", starts=None) -> Fitter:
  """fit_chinchilla as a Fitter; `starts` (e.g. a pooled fit's best end points) replaces the
  grid for cheap refits such as leave-one-rung-out."""

  def fitter(N, D, L):
    return fitlib.fit_chinchilla(N, D, L, grid=grid, starts=starts).loss

  return fitter


def power_law_fitter(N, D, L):
  """L(N) only (ignores D): for ladders with one token budget per size."""
  del D
  law = fitlib.fit_power_law(N, L)
  return lambda n, d: law.loss(n)


def auto_fitter(N, D) -> Fitter:
  """Chinchilla when D varies independently of N, else L(N)."""
  N, D = np.asarray(N, float), np.asarray(D, float)
  varies = any(len(np.unique(D[N == n])) > 1 for n in np.unique(N))
  return chinchilla_fitter() if varies and len(N) >= 8 else power_law_fitter


def leave_one_rung_out(N, D, L, fitter: Fitter | None = None) -> list[dict]:
  """For each size (rung), fit on the other rungs and predict it. Holding out the largest rung
  is the honest test of extrapolation; interior rungs test interpolation."""
  N, D, L = (np.asarray(v, float) for v in (N, D, L))
  fitter = fitter or auto_fitter(N, D)
  rungs = np.unique(N)
  out = []
  for r in rungs:
    held = N == r
    try:
      pred = fitter(N[~held], D[~held], L[~held])(N[held], D[held])
    except (ValueError, RuntimeError) as e:
      out.append(dict(rung=float(r), error=str(e)))
      continue
    rel = (pred - L[held]) / L[held]
    out.append(
        dict(
            rung=float(r),
            n_points=int(held.sum()),
            mean_rel_error=float(np.mean(rel)),
            max_abs_rel_error=float(np.max(np.abs(rel))),
            kind="extrapolation" if r in (rungs[0], rungs[-1]) else "interpolation",
        )
    )
  return out


def _cluster_means(x, y, clusters):
  """Mean x and y per cluster (sorted by x): the units of a test when rows of one cluster
  share their noise."""
  _, inv = np.unique(np.asarray(clusters), return_inverse=True)
  count = np.bincount(inv)
  xm, ym = np.bincount(inv, x) / count, np.bincount(inv, y) / count
  order = np.argsort(xm)
  return xm[order], ym[order], count[order]


def trend_break(
    N,
    L,
    floor=0.0,
    n_large: int | None = None,
    level: float = 0.99,
    min_rel: float = 0.005,
    clusters=None,
) -> dict:
  """Do the small sizes follow the law of the large ones?

  The reducible loss L - F (F: the floor, E or per row E + B/D^beta, ideally from a fit that
  did not see the small sizes: `trend_break_test` does that) is a straight line in log-log
  space under a power law. Rows of one size share noise (one run, WSD branches of it, one
  data order), so the unit of the test is a cluster (default: a size): log(L - F) is averaged
  per cluster, the line is fitted on the n_large largest sizes' means, and the small sizes'
  mean residual is t-tested against the line's prediction standard error with the
  between-cluster scatter and its degrees of freedom. A break also needs a practical effect:
  the small sizes' mean loss deviates from the prediction by more than min_rel. A break means
  the small models follow a different law (e.g. early saturation from a softmax bottleneck):
  pooling them into a fit or extrapolating through them is unsafe.
  """
  N, L = np.asarray(N, float), np.asarray(L, float)
  F = np.broadcast_to(np.asarray(floor, float), N.shape)
  clusters = N if clusters is None else np.asarray(clusters)
  ok = L > F
  N, L, F, clusters = N[ok], L[ok], F[ok], clusters[ok]
  rungs = np.unique(N)
  if len(rungs) < 4:
    return dict(
        verdict=f"need >= 4 sizes above the floor for a trend-break test, have {len(rungs)}",
        break_detected=False,
    )
  n_large = max(min(n_large or len(rungs) - 2, len(rungs) - 1), 3)
  large = N >= rungs[-n_large]
  xl, yl, _ = _cluster_means(np.log(N[large]), np.log(L[large] - F[large]), clusters[large])
  xs, ys, _ = _cluster_means(np.log(N[~large]), np.log(L[~large] - F[~large]), clusters[~large])
  if len(xl) < 3 or len(xs) < 1:
    return dict(
        verdict="too few clusters on each side for a trend-break test", break_detected=False
    )
  slope, icpt = np.polyfit(xl, yl, 1)
  dof = len(xl) - 2
  s = max(float(np.sqrt(np.sum((yl - icpt - slope * xl) ** 2) / dof)), 1e-4)
  sxx = float(np.sum((xl - xl.mean()) ** 2))
  pred_small = icpt + slope * xs
  mean_res = float(np.mean(ys - pred_small))
  se = s * math.sqrt(1.0 / len(xs) + 1.0 / len(xl) + (xs.mean() - xl.mean()) ** 2 / sxx)
  t = mean_res / se
  t_crit = float(scipy.stats.t.ppf(0.5 + level / 2, dof))
  F_small = F[~large]
  L_pred = F_small + np.exp(icpt + slope * np.log(N[~large]))
  rel = float(np.mean((L[~large] - L_pred) / L_pred))
  brk = abs(t) > t_crit and abs(rel) > min_rel
  direction = "above (worse than)" if rel > 0 else "below (better than)"
  verdict = (
      f"trend break: the {len(rungs) - n_large} smallest sizes sit {direction} the law of "
      f"the {n_large} largest by {abs(rel) * 100:.1f}% (t = {t:.1f}, {dof} dof, noise "
      "clustered by size); do not pool them into the fit"
      if brk
      else f"no trend break: the small sizes lie on the law of the {n_large} largest "
      f"(mean deviation {rel * 100:+.2f}%, t = {t:.1f}, {dof} dof, noise clustered by size)"
  )
  return dict(
      n_large=n_large,
      local_alpha_large=float(-slope),
      mean_log_residual_small=mean_res,
      mean_rel_deviation_small=rel,
      t=float(t),
      t_critical=t_crit,
      dof=dof,
      n_clusters=len(xl) + len(xs),
      break_detected=bool(brk),
      verdict=verdict,
  )


def trend_break_test(
    N,
    D,
    L,
    n_large: int | None = None,
    level: float = 0.99,
    clusters=None,
    fitter: Callable | None = None,
) -> dict:
  """trend_break with the floor E + B/D^beta fitted on the large sizes only: a floor fitted
  on all rows has already bent towards the small ones and hides the break it is to test.
  fitter(N, D, L) -> ChinchillaFit (default: fit_chinchilla on the coarse grid); when the
  large sizes cannot support a fit, the floor is 0 (stated in the verdict)."""
  N, D, L = (np.asarray(v, float) for v in (N, D, L))
  rungs = np.unique(N)
  if len(rungs) < 4:
    return trend_break(N, L, 0.0, n_large, level, clusters=clusters)
  n_large = max(min(n_large or len(rungs) - 2, len(rungs) - 1), 3)
  large = N >= rungs[-n_large]
  fitter = fitter or (lambda n, d, l: fitlib.fit_chinchilla(n, d, l, grid="quick"))
  try:
    law = fitter(N[large], D[large], L[large])
    floor, note = law.E + law.B * D**-law.beta, "floor E + B/D^beta fitted on the large sizes"
  except (ValueError, RuntimeError) as e:
    floor, note = 0.0, f"floor 0 (the large sizes do not support a fit: {e})"
  out = trend_break(N, L, floor, n_large, level, clusters=clusters)
  out["floor"] = note
  out["verdict"] += f"; {note}"
  return out


# ----------------------------------------------------------------------------- curves


def stable_phase_end(lr, rel_drop: float = 0.01, min_stable: float = 0.25) -> int | None:
  """Index where a schedule's cooldown starts: the first logged point after the learning rate
  reached its peak where it is more than rel_drop below the peak. None when the schedule has
  no stable phase (within rel_drop of the peak for under min_stable of the points: cosine
  leaves its peak at once) or never decays."""
  lr = np.asarray(lr, float)
  if len(lr) < 3 or not np.all(np.isfinite(lr)) or lr.max() <= 0:
    return None
  peak = lr.max()
  i_peak = int(np.argmax(lr >= peak * (1 - 1e-6)))
  below = np.flatnonzero(lr[i_peak:] < peak * (1 - rel_drop))
  if len(below) == 0:
    return None
  end = i_peak + int(below[0])
  return end if end - i_peak >= max(2, min_stable * len(lr)) else None


def plateau(
    tokens, loss, tail: float = 0.2, z_threshold: float = 2.0, min_rel_gain: float = 0.005, lr=None
) -> dict:
  """Is a training curve still improving?

  Judged on the stable phase: with `lr` (the schedule per logged point) a WSD curve's
  cooldown is cut off first, because a cooldown always lowers the loss and says nothing
  about whether more tokens at that LR would. Over the last `tail` fraction of the judged
  points, regress loss on log2(tokens): the slope is the loss change per doubling of tokens,
  its standard error comes from the residual noise. improving: the gain per doubling exceeds
  z*se and min_rel_gain of the loss. plateau: not improving AND even the optimistic gain
  (gain + z*se) is below min_rel_gain of the loss. Otherwise inconclusive. late_rise: the
  slope is significantly positive, or the tail sits clearly (3 noise units) above the best
  loss seen earlier.
  """
  t, l = np.asarray(tokens, float), np.asarray(loss, float)
  ok = np.isfinite(t) & np.isfinite(l) & (t > 0)
  lr = None if lr is None else np.asarray(lr, float)[ok]
  t, l = t[ok], l[ok]
  phase = "the whole curve"
  end = stable_phase_end(lr) if lr is not None and len(lr) == len(t) else None
  if end is not None and end >= 10:
    phase = f"the stable phase (cooldown from {t[end]:.3g} tokens left out)"
    t, l = t[:end], l[:end]
  if len(t) < 10:
    return dict(
        verdict=f"too few points ({len(t)}) to judge the curve",
        plateau=False,
        late_rise=False,
        improving=False,
        phase=phase,
    )
  start = int(len(t) * (1 - tail))
  x, y = np.log2(t[start:]), l[start:]
  r = scipy.stats.linregress(x, y)
  se = float(r.stderr) if np.isfinite(r.stderr) else 0.0  # an exactly straight tail: no noise
  noise = float(np.std(y - (r.intercept + r.slope * x), ddof=2))
  gain = -r.slope
  useful = min_rel_gain * float(np.mean(y))
  improving = gain > z_threshold * se and gain > useful
  flat = not improving and gain + z_threshold * se < useful
  prior_best = float("inf")  # the best 5-point running mean before the tail
  if start >= 5:
    prior_best = float(np.convolve(l[:start], np.ones(5) / 5, mode="valid").min())
  tail_level = float(np.mean(y[-max(3, len(y) // 4) :]))
  late_rise = bool(r.slope > z_threshold * se or tail_level > prior_best + 3 * noise + 1e-12)
  where = f"over the last {int(tail * 100)}% of {phase}"
  if late_rise:
    verdict = "loss rises late in training (instability or over-training): inspect LR/data"
  elif improving:
    verdict = (
        f"still improving: {gain:.4f} loss per doubling of tokens (+-{se:.4f}) "
        f"{where}; more tokens would help"
    )
  elif flat:
    verdict = (
        f"plateau: {gain:+.4f} (+-{se:.4f}) loss per doubling of tokens {where}, "
        f"below {useful:.4f} even at the upper bound"
    )
  else:
    verdict = (
        f"inconclusive: {gain:+.4f} +- {se:.4f} per doubling {where} (too few or "
        "too noisy points; log more often)"
    )
  return dict(
      slope_per_doubling=float(r.slope),
      slope_se=se,
      noise=noise,
      improving=bool(improving),
      plateau=bool(flat),
      late_rise=late_rise,
      phase=phase,
      verdict=verdict,
  )


# ----------------------------------------------------------------------------- LM head


def _spectrum(W: np.ndarray) -> dict:
  s = np.linalg.svd(W, compute_uv=False)
  s = s[s > s[0] * 1e-12] if s[0] > 0 else s
  p = s / s.sum()
  ent = float(-(p * np.log(p)).sum())
  full = min(W.shape)
  eff = math.exp(ent)
  return dict(
      stable_rank=float((s**2).sum() / s[0] ** 2),
      sv_entropy=ent / math.log(full) if full > 1 else 0.0,
      effective_rank=eff,
      effective_rank_fraction=eff / full,
      top_singular_share=float(s[0] ** 2 / (s**2).sum()),
  )


def head_spectrum(W) -> dict:
  """Spectrum of an LM-head (or tied embedding) matrix W [vocab, d] or [d, vocab].

  stable_rank = ||W||_F^2 / ||W||_2^2; sv_entropy = Shannon entropy of s_i / sum s (nats),
  normalised by log(min dim) to [0, 1]; effective_rank = exp(entropy) (Roy & Vetterli 2007).
  The same numbers for the matrix with its mean token vector removed (`centered_*`): a
  shared direction (token frequency) dominates raw embeddings and says little about how many
  directions the head can use to separate tokens. A head whose centred effective rank is a
  small fraction of min(vocab, d) can express few distinct next-token distributions: the
  softmax-bottleneck signature of saturating small models (Godey et al. 2024).
  """
  W = np.asarray(W, dtype=np.float64)
  if W.ndim != 2:
    raise ValueError(f"head_spectrum wants a 2-D matrix, got shape {W.shape}")
  Wv = W if W.shape[0] >= W.shape[1] else W.T  # rows = vocabulary
  out = dict(shape=list(W.shape), **_spectrum(Wv))
  out.update({f"centered_{k}": v for k, v in _spectrum(Wv - Wv.mean(axis=0)).items()})
  return out


def head_verdict(spec: dict, low_fraction: float = 0.5) -> str:
  """Plain words for head_spectrum: low if the centred effective rank uses under
  `low_fraction` of the available dimensions (a rule of thumb, stated in the text)."""
  frac = spec.get("centered_effective_rank_fraction", spec["effective_rank_fraction"])
  full = min(spec["shape"])
  text = (
      f"LM head: centred effective rank {frac * full:.0f} of {full} "
      f"(stable rank {spec.get('centered_stable_rank', spec['stable_rank']):.1f})"
  )
  if frac < low_fraction:
    return text + (
        f" -- under {low_fraction:.0%} of the width is used: a low-rank head "
        "(softmax-bottleneck signature) may limit this size"
    )
  return text + " -- the spectrum is spread out (no sign of a softmax bottleneck)"


def lm_head_matrix(params, tie_embeddings: bool) -> np.ndarray:
  """The output projection [vocab, d] (or [d, vocab]) of a param tree from the trainer."""
  if tie_embeddings or "unembed" not in params:
    return np.asarray(params["embed"]["embedding"])
  return np.asarray(params["unembed"]["kernel"])


def head_spectrum_of_run(workdir: str, step: int | None = None) -> dict:
  """head_spectrum of a trained run's LM head at `step` (default: latest checkpoint), loaded
  with the trainer's `load_run`. Imports JAX; the rest of this module does not."""
  run = run_lib.load_run(workdir, step=step)
  params = jax.device_get(run.params)
  spec = head_spectrum(lm_head_matrix(params, run.spec.model.tie_embeddings))
  spec.update(
      step=int(run.step),
      d_model=run.spec.model.d_model,
      vocab_size=run.spec.model.vocab_size,
  )
  return spec
