"""Scaling-law fits on plain tables (any CSV, not only ours).

Three estimators, all robust (Huber on log residuals) and all usable from a notebook:

* Chinchilla approach 3, `fit_chinchilla`: L(N, D) = E + A/N^alpha + B/D^beta, fitted as
  log L = LSE(a - alpha log N, b - beta log D, e) with the Huber loss (delta 1e-3) on the log
  residuals SUMMED over points, L-BFGS-B (scipy) from every point of a grid, best converged fit
  kept. The sum matters: averaging divides the gradient by n and L-BFGS-B's default tolerances
  then stop it early (Besiroglu et al. 2024); `reduction="mean"` exists to show that.
* Power laws with an offset, `fit_power_law`: L(x) = E + A x^-alpha, used for L(N) and for the
  compute frontier L*(C) = E + A C^-gamma (`fit_frontier`).
* Chinchilla approach 2, `fit_isoflop`: a parabola in log N per FLOP budget, then
  N*(C) = k_N C^a and D*(C) = k_D C^b by least squares in log-log space.

Intervals come from bootstrapping runs (rows). CLI:

    python -m eval.fit chinchilla --csv FILE --n-col N (--d-col D | --c-col C) --loss-col L \
        [--drop-top-loss K] [--bootstrap B] [--budget C ...] --json OUT
    python -m eval.fit isoflop --csv FILE --n-col N --c-col C --loss-col L [--budget-col B] ...
    python -m eval.fit powerlaw --csv FILE --x-col N --loss-col L --json OUT
    python -m eval.fit frontier --csv FILE --c-col C --loss-col L --json OUT
    python -m eval.fit predict --fit FIT.json --budget 1e21 [--budget ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.optimize
import scipy.stats
import threadpoolctl

HUBER_DELTA = 1e-3
# The grid of Hoffmann et al. / Besiroglu et al.: 6 * 6 * 5 * 5 * 5 = 4500 starts.
FULL_GRID = dict(
    a=np.arange(0.0, 25.1, 5.0), b=np.arange(0.0, 25.1, 5.0), e=np.arange(-1.0, 1.01, 0.5),
    alpha=np.arange(0.0, 2.01, 0.5), beta=np.arange(0.0, 2.01, 0.5))
# A coarse grid (3^5 = 243 starts) for tests, bootstraps and quick looks.
COARSE_GRID = dict(
    a=np.array([0.0, 10.0, 20.0]), b=np.array([0.0, 10.0, 20.0]), e=np.array([-1.0, 0.0, 1.0]),
    alpha=np.array([0.0, 0.5, 1.0]), beta=np.array([0.0, 0.5, 1.0]))
INTERVAL_LEVEL = 0.95


# ----------------------------------------------------------------------------- objective


def lse_huber_objective(theta, logx_KxN, logl_N, delta=HUBER_DELTA, reduction="sum"):
  """Huber loss of log L - LSE(a_k - alpha_k log x_k, e) and its analytic gradient.

  theta = [a_1..a_K, e, alpha_1..alpha_K]; for Chinchilla K=2 and theta = (a, b, e, alpha,
  beta). The log-sum-exp is computed stably and its gradient is the softmax weights.
  """
  k = logx_KxN.shape[0]
  u_MxN = np.empty((k + 1, logx_KxN.shape[1]))
  np.multiply(theta[k + 1:, None], logx_KxN, out=u_MxN[:k])
  np.subtract(theta[:k, None], u_MxN[:k], out=u_MxN[:k])
  u_MxN[k] = theta[k]
  m_N = u_MxN.max(axis=0)
  w_MxN = np.exp(u_MxN - m_N)
  s_N = w_MxN.sum(axis=0)
  r_N = m_N + np.log(s_N) - logl_N
  # Huber via the clipped residual g: g (r - g/2) is r^2/2 inside delta, delta |r| - delta^2/2
  # outside, and g is the derivative.
  g_N = np.clip(r_N, -delta, delta)
  f = float(np.dot(g_N, r_N - 0.5 * g_N))
  gw_MxN = w_MxN * (g_N / s_N)
  grad = np.empty_like(theta)
  grad[:k + 1] = gw_MxN.sum(axis=1)
  grad[k + 1:] = -np.einsum("kn,kn->k", gw_MxN[:k], logx_KxN)
  if reduction == "mean":
    n = logl_N.shape[0]
    return f / n, grad / n
  if reduction != "sum":
    raise ValueError(f"reduction={reduction!r}: use 'sum' or 'mean'")
  return f, grad


def grid_starts(grid: dict, k: int) -> np.ndarray:
  """Start points [S, 2k+1] in theta order from a dict of per-parameter value lists."""
  if k == 2:
    names = ["a", "b", "e", "alpha", "beta"]
  else:
    names = ["a", "e", "alpha"]
  cols = [np.asarray(grid[n], dtype=float) for n in names]
  return np.array(list(itertools.product(*cols)), dtype=float)


@dataclasses.dataclass
class _Best:
  theta: np.ndarray
  objective: float
  converged: bool
  nit: int
  n_starts: int
  n_converged: int
  endpoints: np.ndarray  # converged end points, sorted by objective (for bootstrap starts)


def _multistart_lbfgs(logx_KxN, logl_N, starts_SxP, delta, reduction) -> _Best:
  """L-BFGS-B from every start; keep the best converged fit (best overall if none did)."""
  results = []
  # scipy's bundled OpenBLAS spins up threads for the tiny L-BFGS-B matrices: ~10x slower.
  with threadpoolctl.threadpool_limits(1), np.errstate(over="ignore", invalid="ignore"):
    for x0 in starts_SxP:
      r = scipy.optimize.minimize(
          lse_huber_objective, x0, args=(logx_KxN, logl_N, delta, reduction), jac=True,
          method="L-BFGS-B")
      if np.isfinite(r.fun) and np.all(np.isfinite(r.x)):
        results.append(r)
  if not results:
    raise RuntimeError("every L-BFGS-B start diverged; check the table for zeros or NaNs")
  conv = sorted([r for r in results if r.success], key=lambda r: r.fun)
  pool = conv if conv else sorted(results, key=lambda r: r.fun)
  if not conv:
    warnings.warn("no L-BFGS-B start converged; reporting the best unconverged fit")
  best = pool[0]
  ends = np.array([r.x for r in pool[:64]])
  return _Best(best.x.copy(), float(best.fun), bool(best.success), int(best.nit),
               len(starts_SxP), len(conv), ends)


# ----------------------------------------------------------------------------- Chinchilla


@dataclasses.dataclass
class ChinchillaFit:
  """L(N, D) = E + A/N^alpha + B/D^beta."""
  E: float
  A: float
  B: float
  alpha: float
  beta: float
  objective: float
  n_points: int
  converged: bool = True
  n_starts: int = 0
  n_converged: int = 0
  reduction: str = "sum"
  endpoints: np.ndarray | None = dataclasses.field(default=None, repr=False)

  @property
  def a(self) -> float:
    """N_opt ~ C^a."""
    return self.beta / (self.alpha + self.beta)

  @property
  def b(self) -> float:
    """D_opt ~ C^b."""
    return self.alpha / (self.alpha + self.beta)

  def loss(self, N, D):
    N, D = np.asarray(N, float), np.asarray(D, float)
    return self.E + self.A * N ** -self.alpha + self.B * D ** -self.beta

  def optimal(self, C, flops_per_param_token: float = 6.0):
    """Compute-optimal (N, D, loss) under C = k N D (Hoffmann et al. eq. 4)."""
    C = np.asarray(C, float)
    G = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
    n = G * (C / flops_per_param_token) ** self.a
    d = (C / flops_per_param_token) / n
    return n, d, self.loss(n, d)

  def to_dict(self) -> dict:
    return dict(E=self.E, A=self.A, B=self.B, alpha=self.alpha, beta=self.beta,
                objective=self.objective, n_points=self.n_points, a=self.a, b=self.b,
                converged=self.converged, n_starts=self.n_starts, n_converged=self.n_converged,
                reduction=self.reduction)

  @classmethod
  def from_theta(cls, theta, **kw):
    a, b, e, alpha, beta = (float(t) for t in theta)
    return cls(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta, **kw)

  @property
  def theta(self) -> np.ndarray:
    return np.array([math.log(self.A), math.log(self.B), math.log(self.E), self.alpha, self.beta])


def _check_positive(name, x):
  x = np.asarray(x, dtype=float)
  if x.ndim != 1:
    raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
  bad = ~np.isfinite(x) | (x <= 0)
  if bad.any():
    raise ValueError(f"{name} has {int(bad.sum())} non-positive or non-finite values (first at "
                     f"row {int(np.argmax(bad))}); drop those rows before fitting")
  return x


def fit_chinchilla(N, D, L, *, grid: dict | str = "full", starts=None, delta: float = HUBER_DELTA,
                   reduction: str = "sum") -> ChinchillaFit:
  """Hoffmann et al. approach 3 with the Besiroglu et al. (2024) corrections.

  Args:
    N, D, L: parameters, tokens and loss per run.
    grid: "full" (4500 starts, the published grid), "coarse" (243) or a dict of value lists
      for a, b, e, alpha, beta.
    starts: explicit [S, 5] start points (a, b, e, alpha, beta); overrides grid.
    reduction: "sum" (correct) or "mean" (the original bug: L-BFGS-B stops early).
  """
  N, D, L = (_check_positive(n, x) for n, x in (("N", N), ("D", D), ("loss", L)))
  if not len(N) == len(D) == len(L):
    raise ValueError(f"N, D, loss lengths differ: {len(N)}, {len(D)}, {len(L)}")
  if len(L) < 5:
    raise ValueError(f"Chinchilla fit has 5 parameters and needs >= 5 runs, got {len(L)}")
  if starts is None:
    g = {"full": FULL_GRID, "coarse": COARSE_GRID}.get(grid, grid) if isinstance(grid, str) else grid
    if isinstance(g, str):
      raise ValueError(f"grid={grid!r}: use 'full', 'coarse' or a dict of value lists")
    starts = grid_starts(g, 2)
  logx = np.stack([np.log(N), np.log(D)])
  best = _multistart_lbfgs(logx, np.log(L), np.atleast_2d(starts), delta, reduction)
  if reduction == "mean":  # report the summed objective so fits are comparable
    objective = float(lse_huber_objective(best.theta, logx, np.log(L), delta, "sum")[0])
  else:
    objective = best.objective
  return ChinchillaFit.from_theta(
      best.theta, objective=objective, n_points=len(L), converged=best.converged,
      n_starts=best.n_starts, n_converged=best.n_converged, reduction=reduction,
      endpoints=best.endpoints)


def distinct_endpoints(endpoints: np.ndarray, k: int, tol: float = 1e-3) -> np.ndarray:
  out = []
  for x in endpoints:
    if all(np.max(np.abs(x - y)) > tol for y in out):
      out.append(x)
    if len(out) == k:
      break
  return np.array(out)


def _resample_index(n: int, rng, groups=None) -> np.ndarray:
  """Bootstrap row indices; with groups, resample within each group (stratified)."""
  if groups is None:
    return rng.integers(0, n, n)
  groups = np.asarray(groups)
  idx = []
  for g in pd.unique(groups):
    members = np.flatnonzero(groups == g)
    idx.append(rng.choice(members, size=len(members), replace=True))
  return np.concatenate(idx)


def bootstrap_chinchilla(N, D, L, fit: ChinchillaFit, n_boot: int, *, seed: int = 0,
                         starts: str = "best", delta: float = HUBER_DELTA) -> np.ndarray:
  """Refit on runs resampled with replacement; returns [n_boot, 5] rows (E, A, B, alpha, beta).

  starts="best" restarts each resample from the 8 best distinct converged end points of the
  full-data fit (the resampled problem's minima sit near them); "coarse"/"full" use a grid.
  """
  N, D, L = (np.asarray(x, float) for x in (N, D, L))
  rng = np.random.default_rng(seed)
  if starts == "best":
    x0 = distinct_endpoints(fit.endpoints if fit.endpoints is not None else fit.theta[None], 8)
    kw = dict(starts=x0)
  else:
    kw = dict(grid=starts)
  rows = []
  for _ in range(n_boot):
    i = _resample_index(len(L), rng)
    if len(np.unique(N[i])) < 2 or len(np.unique(D[i])) < 2:
      continue
    f = fit_chinchilla(N[i], D[i], L[i], delta=delta, **kw)
    rows.append([f.E, f.A, f.B, f.alpha, f.beta])
  return np.array(rows).reshape(-1, 5)


def percentile_interval(samples, level: float = INTERVAL_LEVEL, axis: int = 0):
  lo = (1 - level) / 2 * 100
  return np.percentile(samples, [lo, 100 - lo], axis=axis)


def chinchilla_intervals(samples_Bx5, level=INTERVAL_LEVEL) -> dict:
  fits = [ChinchillaFit(*row, objective=np.nan, n_points=0) for row in samples_Bx5]
  cols = dict(E=samples_Bx5[:, 0], A=samples_Bx5[:, 1], B=samples_Bx5[:, 2],
              alpha=samples_Bx5[:, 3], beta=samples_Bx5[:, 4],
              a=np.array([f.a for f in fits]), b=np.array([f.b for f in fits]))
  return {k: [float(x) for x in percentile_interval(v, level)] for k, v in cols.items()}


def chinchilla_optimal_with_intervals(fit: ChinchillaFit, C, samples_Bx5=None,
                                      flops_per_param_token=6.0, level=INTERVAL_LEVEL) -> dict:
  """Compute-optimal N, D and loss at budget C, with bootstrap percentile intervals."""
  n, d, l = fit.optimal(C, flops_per_param_token)
  out = dict(budget=float(C), N=float(n), D=float(d), loss=float(l),
             tokens_per_param=float(d / n))
  if samples_Bx5 is not None and len(samples_Bx5):
    opt = np.array([ChinchillaFit(*r, objective=np.nan, n_points=0).optimal(
        C, flops_per_param_token) for r in samples_Bx5])
    for j, k in enumerate(["N", "D", "loss"]):
      out[k + "_interval"] = [float(x) for x in percentile_interval(opt[:, j], level)]
  return out


# ----------------------------------------------------------------------------- power laws


@dataclasses.dataclass
class PowerLawFit:
  """L(x) = E + A x^-alpha (x is N for L(N), C for the frontier, where alpha is gamma)."""
  E: float
  A: float
  alpha: float
  objective: float
  n_points: int
  converged: bool = True
  endpoints: np.ndarray | None = dataclasses.field(default=None, repr=False)  # scaled theta

  def loss(self, x):
    return self.E + self.A * np.asarray(x, float) ** -self.alpha

  def to_dict(self):
    return dict(E=self.E, A=self.A, alpha=self.alpha, objective=self.objective,
                n_points=self.n_points, converged=self.converged)


# Starts for the scaled problem (x / geometric mean): a = log A', e = log E, alpha.
POWER_GRID = dict(a=np.array([-2.5, 0.0, 2.5]), e=np.array([-1.0, 0.0, 0.5, 1.0]),
                  alpha=np.array([0.1, 0.5, 1.5]))


def fit_power_law(x, L, *, fix_E: float | None = None, delta: float = HUBER_DELTA,
                  grid: dict | None = None, starts=None) -> PowerLawFit:
  """Fit L = E + A x^-alpha (Huber on log residuals, summed; L-BFGS-B multi-start).

  x is rescaled by its geometric mean inside the fit so that one start grid serves N ~ 1e6
  and C ~ 1e21 alike; A is reported for the unscaled x. fix_E pins the floor (e.g. a known
  entropy) and fits only A, alpha.
  """
  x, L = _check_positive("x", x), _check_positive("loss", L)
  if len(x) < 3:
    raise ValueError(f"power-law fit needs >= 3 points, got {len(x)}")
  x_ref = float(np.exp(np.mean(np.log(x))))
  logx = np.log(x / x_ref)[None]
  logl = np.log(L)
  if fix_E is None:
    if starts is None:
      starts = grid_starts(grid or POWER_GRID, 1)
    best = _multistart_lbfgs(logx, logl, np.atleast_2d(starts), delta, "sum")
    a, e, alpha = best.theta
  else:
    if not 0 <= fix_E < L.min():
      raise ValueError(f"fix_E={fix_E} must be in [0, min loss={L.min():.4g})")
    y = np.log(L - fix_E)
    # Linear in log space once E is known; Huber refinement is unnecessary for the tests' use.
    alpha_neg, a = np.polyfit(logx[0], y, 1)
    alpha, e = -alpha_neg, math.log(fix_E) if fix_E > 0 else -np.inf
    resid = np.log(fix_E + np.exp(a - alpha * logx[0])) - logl
    best = _Best(np.array([a, e, alpha]), float(0.5 * np.sum(resid ** 2)), True, 0, 1, 1,
                 np.zeros((0, 3)))
  A = math.exp(a) * x_ref ** alpha
  return PowerLawFit(E=float(math.exp(e)) if np.isfinite(e) else 0.0, A=float(A),
                     alpha=float(alpha), objective=best.objective, n_points=len(L),
                     converged=best.converged, endpoints=best.endpoints)


def pareto_frontier(C, L) -> np.ndarray:
  """Indices of runs no cheaper run beats: the lower envelope of loss vs compute."""
  C, L = np.asarray(C, float), np.asarray(L, float)
  order = np.lexsort((L, C))
  keep, best = [], np.inf
  for i in order:
    if L[i] < best:
      keep.append(i)
      best = L[i]
  return np.array(keep, dtype=int)


def fit_frontier(C, L, **kw) -> PowerLawFit:
  """L*(C) = E + A C^-gamma on the compute-efficient frontier (gamma is `.alpha`)."""
  idx = pareto_frontier(C, L)
  return fit_power_law(np.asarray(C, float)[idx], np.asarray(L, float)[idx], **kw)


def bootstrap_power_law(x, L, n_boot, *, seed=0, frontier=False, **kw) -> np.ndarray:
  """[n_boot, 3] rows (E, A, alpha) from fits on resampled rows."""
  x, L = np.asarray(x, float), np.asarray(L, float)
  rng = np.random.default_rng(seed)
  rows = []
  fn = fit_frontier if frontier else fit_power_law
  if "starts" not in kw and "fix_E" not in kw:
    # Restart each resample from the full fit's distinct minima plus a thin grid. The x
    # scaling moves with the resample, so these are starting hints, not exact minima.
    full = fn(x, L, **kw)
    kw = dict(kw, starts=np.r_[distinct_endpoints(full.endpoints, 4), grid_starts(POWER_GRID, 1)[::6]])
  for _ in range(n_boot):
    i = rng.integers(0, len(L), len(L))
    try:
      f = fn(x[i], L[i], **kw)
    except (ValueError, RuntimeError):
      continue
    rows.append([f.E, f.A, f.alpha])
  return np.array(rows).reshape(-1, 3)


# ----------------------------------------------------------------------------- IsoFLOP


def snap_budgets(C, tol_dex: float = 0.05) -> np.ndarray:
  """Group FLOP counts into budgets: sorted values closer than tol_dex (log10) share a budget,
  labelled by the group's median. Real ladders hit a budget only approximately."""
  C = _check_positive("C", C)
  lc = np.log10(C)
  order = np.argsort(lc)
  labels = np.empty(len(C))
  start = 0
  for j in range(1, len(C) + 1):
    if j == len(C) or lc[order[j]] - lc[order[j - 1]] > tol_dex:
      members = order[start:j]
      labels[members] = np.median(C[members])
      start = j
  return labels


@dataclasses.dataclass
class IsoFlopFit:
  """Approach 2: per-budget minima and the power laws N* = k_N C^a, D* = k_D C^b."""
  budgets: np.ndarray
  n_opt: np.ndarray
  d_opt: np.ndarray
  loss_opt: np.ndarray
  parabolas: np.ndarray      # [n_budgets, 3] polyfit coefficients of L vs ln N (x^2, x, 1)
  in_range: np.ndarray       # minimum inside the sampled N range
  a: float
  k_n: float
  b: float
  k_d: float
  a_interval: list | None = None
  b_interval: list | None = None
  dropped: list = dataclasses.field(default_factory=list)

  def optimal(self, C):
    C = np.asarray(C, float)
    return self.k_n * C ** self.a, self.k_d * C ** self.b

  def to_dict(self):
    return dict(
        a=self.a, b=self.b, k_n=self.k_n, k_d=self.k_d, a_interval=self.a_interval,
        b_interval=self.b_interval, n_budgets=len(self.budgets), dropped=self.dropped,
        budgets=[dict(budget=float(c), N=float(n), D=float(d), loss=float(l), in_range=bool(r))
                 for c, n, d, l, r in zip(self.budgets, self.n_opt, self.d_opt, self.loss_opt,
                                          self.in_range)])


def _loglog_fit(C, y, level=INTERVAL_LEVEL):
  """OLS log y = log k + p log C; returns p, k and a t-interval on p (None if < 3 points)."""
  X, Y = np.log(C), np.log(y)
  p, logk = np.polyfit(X, Y, 1)
  interval = None
  if len(C) >= 3:
    resid = Y - (logk + p * X)
    s2 = np.sum(resid ** 2) / (len(C) - 2)
    se = math.sqrt(s2 / np.sum((X - X.mean()) ** 2))
    t = scipy.stats.t.ppf(0.5 + level / 2, len(C) - 2)
    interval = [float(p - t * se), float(p + t * se)]
  return float(p), float(math.exp(logk)), interval


def _isoflop_minima(N, C, L, budgets, D, flops_per_param_token):
  rows, dropped = [], []
  for c in np.unique(budgets):
    m = budgets == c
    x = np.log(N[m])
    if len(np.unique(x)) < 3:
      dropped.append(dict(budget=float(c), reason=f"{len(np.unique(x))} distinct sizes (< 3)"))
      continue
    p = np.polyfit(x, L[m], 2)
    if p[0] <= 0:
      dropped.append(dict(budget=float(c), reason="loss vs log N is not convex"))
      continue
    x_opt = -p[1] / (2 * p[0])
    n_opt = math.exp(x_opt)
    k = np.median(C[m] / (N[m] * D[m])) if D is not None else flops_per_param_token
    rows.append((c, n_opt, c / (k * n_opt), np.polyval(p, x_opt), p,
                 x.min() <= x_opt <= x.max()))
  return rows, dropped


def fit_isoflop(N, C, L, *, budgets=None, D=None, flops_per_param_token: float = 6.0,
                snap_tol_dex: float = 0.05, n_boot: int = 0, seed: int = 0,
                level: float = INTERVAL_LEVEL) -> IsoFlopFit:
  """Approach 2. budgets: per-run budget labels (else snapped from C). D (optional) gives each
  budget's FLOPs per (param*token) so that D* = C / (k N*); without it k = 6.
  Intervals on a and b: OLS t-intervals, or bootstrap percentiles when n_boot > 0 (runs are
  resampled within each budget)."""
  N, C, L = (_check_positive(n, x) for n, x in (("N", N), ("C", C), ("loss", L)))
  D = None if D is None else _check_positive("D", D)
  budgets = snap_budgets(C, snap_tol_dex) if budgets is None else _check_positive("budget", budgets)
  rows, dropped = _isoflop_minima(N, C, L, budgets, D, flops_per_param_token)
  if len(rows) < 2:
    raise ValueError(f"IsoFLOP fit needs >= 2 budgets with >= 3 sizes and a convex minimum; "
                     f"usable: {len(rows)}, dropped: {dropped}")
  cs, ns, ds, ls, ps, inr = (np.array(v) for v in zip(*rows))
  for c, ok in zip(cs, inr):
    if not ok:
      warnings.warn(f"budget {c:.3g}: the parabola's minimum lies outside the sampled sizes")
  a, k_n, a_int = _loglog_fit(cs, ns, level)
  b, k_d, b_int = _loglog_fit(cs, ds, level)
  if n_boot > 0:
    rng = np.random.default_rng(seed)
    ab = []
    for _ in range(n_boot):
      i = _resample_index(len(L), rng, budgets)
      r, _ = _isoflop_minima(N[i], C[i], L[i], budgets[i], None if D is None else D[i],
                             flops_per_param_token)
      if len(r) >= 2:
        c_, n_, d_ = (np.array(v) for v in list(zip(*r))[:3])
        ab.append([_loglog_fit(c_, n_)[0], _loglog_fit(c_, d_)[0]])
    ab = np.array(ab)
    if len(ab):
      a_int = [float(x) for x in percentile_interval(ab[:, 0], level)]
      b_int = [float(x) for x in percentile_interval(ab[:, 1], level)]
  return IsoFlopFit(cs, ns, ds, ls, ps, inr, a, k_n, b, k_d, a_int, b_int, dropped)


# ----------------------------------------------------------------------------- tables + CLI


def load_table(csv: str, cols: Sequence[str], drop_top_loss: int = 0, loss_col: str | None = None):
  """Read a CSV, check columns exist, drop rows with missing/non-positive values, optionally
  drop the K highest-loss rows (outliers from unstable small runs)."""
  df = pd.read_csv(csv)
  missing = [c for c in cols if c not in df.columns]
  if missing:
    raise SystemExit(f"{csv}: no column(s) {missing}; columns are {list(df.columns)}")
  sub = df[list(cols)].apply(pd.to_numeric, errors="coerce")
  ok = np.isfinite(sub).all(axis=1) & (sub > 0).all(axis=1)
  if (~ok).any():
    print(f"note: dropping {int((~ok).sum())} row(s) with missing or non-positive values",
          file=sys.stderr)
  df = df[ok].reset_index(drop=True)
  if drop_top_loss:
    if drop_top_loss >= len(df):
      raise SystemExit(f"--drop-top-loss {drop_top_loss} would drop all {len(df)} rows")
    df = df.sort_values(loss_col).iloc[:-drop_top_loss].reset_index(drop=True)
  return df


def _chinchilla_cli(args) -> dict:
  if (args.d_col is None) == (args.c_col is None):
    raise SystemExit("chinchilla: give exactly one of --d-col or --c-col")
  cols = [args.n_col, args.d_col or args.c_col, args.loss_col]
  df = load_table(args.csv, cols, args.drop_top_loss, args.loss_col)
  N = df[args.n_col].to_numpy(float)
  D = (df[args.d_col].to_numpy(float) if args.d_col
       else df[args.c_col].to_numpy(float) / (args.flops_per_param_token * N))
  L = df[args.loss_col].to_numpy(float)
  fit = fit_chinchilla(N, D, L, grid=args.grid)
  out = fit.to_dict()
  samples = None
  if args.bootstrap:
    samples = bootstrap_chinchilla(N, D, L, fit, args.bootstrap, seed=args.seed,
                                   starts=args.bootstrap_starts)
    out["intervals"] = chinchilla_intervals(samples)
    out["bootstrap"] = dict(n=len(samples), level=INTERVAL_LEVEL, starts=args.bootstrap_starts,
                            samples=samples.tolist(), columns=["E", "A", "B", "alpha", "beta"])
  out["flops_per_param_token"] = args.flops_per_param_token
  if args.budget:
    out["predictions"] = [chinchilla_optimal_with_intervals(
        fit, c, samples, args.flops_per_param_token) for c in args.budget]
  return out


def _isoflop_cli(args) -> dict:
  cols = [args.n_col, args.c_col, args.loss_col] + [c for c in (args.budget_col, args.d_col) if c]
  df = load_table(args.csv, cols, args.drop_top_loss, args.loss_col)
  fit = fit_isoflop(
      df[args.n_col].to_numpy(float), df[args.c_col].to_numpy(float),
      df[args.loss_col].to_numpy(float),
      budgets=df[args.budget_col].to_numpy(float) if args.budget_col else None,
      D=df[args.d_col].to_numpy(float) if args.d_col else None,
      flops_per_param_token=args.flops_per_param_token, n_boot=args.bootstrap, seed=args.seed)
  out = fit.to_dict()
  out["n_points"] = len(df)
  if args.budget:
    out["predictions"] = []
    for c in args.budget:
      n, d = fit.optimal(c)
      out["predictions"].append(dict(budget=c, N=float(n), D=float(d)))
  return out


def _powerlaw_cli(args, frontier: bool) -> dict:
  xcol = args.c_col if frontier else args.x_col
  df = load_table(args.csv, [xcol, args.loss_col], args.drop_top_loss, args.loss_col)
  x, L = df[xcol].to_numpy(float), df[args.loss_col].to_numpy(float)
  fn = fit_frontier if frontier else fit_power_law
  fit = fn(x, L)
  out = fit.to_dict()
  if frontier:
    out["gamma"] = out["alpha"]
  samples = None
  if args.bootstrap:
    samples = bootstrap_power_law(x, L, args.bootstrap, seed=args.seed, frontier=frontier)
    out["intervals"] = {k: [float(v) for v in percentile_interval(samples[:, j])]
                        for j, k in enumerate(["E", "A", "alpha"])}
    out["bootstrap"] = dict(n=len(samples), samples=samples.tolist(), columns=["E", "A", "alpha"])
  if args.budget:
    out["predictions"] = [power_prediction(fit, c, samples) for c in args.budget]
  return out


def power_prediction(fit: PowerLawFit, x, samples=None) -> dict:
  out = dict(x=float(x), loss=float(fit.loss(x)))
  if samples is not None and len(samples):
    vals = samples[:, 0] + samples[:, 1] * float(x) ** -samples[:, 2]
    out["loss_interval"] = [float(v) for v in percentile_interval(vals)]
  return out


def predict_from_json(fit_json: dict, budgets: Sequence[float]) -> list[dict]:
  """Compute-optimal N, D, loss (chinchilla JSON) or frontier loss (power-law JSON) per budget,
  with intervals when the JSON holds bootstrap samples."""
  samples = None
  if "bootstrap" in fit_json:
    samples = np.asarray(fit_json["bootstrap"]["samples"], float)
  if "beta" in fit_json:
    fit = ChinchillaFit(*(fit_json[k] for k in ("E", "A", "B", "alpha", "beta")),
                        objective=fit_json.get("objective", np.nan),
                        n_points=fit_json.get("n_points", 0))
    k = fit_json.get("flops_per_param_token", 6.0)
    return [chinchilla_optimal_with_intervals(fit, c, samples, k) for c in budgets]
  if "k_n" in fit_json:
    return [dict(budget=c, N=fit_json["k_n"] * c ** fit_json["a"],
                 D=fit_json["k_d"] * c ** fit_json["b"]) for c in budgets]
  if "alpha" in fit_json:
    fit = PowerLawFit(fit_json["E"], fit_json["A"], fit_json["alpha"], np.nan, 0)
    return [power_prediction(fit, c, samples) for c in budgets]
  raise SystemExit("predict: the JSON is not a chinchilla, isoflop or power-law fit")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m eval.fit", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="cmd", required=True)

  def common(q, loss=True):
    q.add_argument("--csv", required=True)
    if loss:
      q.add_argument("--loss-col", required=True)
    q.add_argument("--drop-top-loss", type=int, default=0, metavar="K",
                   help="drop the K highest-loss rows before fitting")
    q.add_argument("--bootstrap", type=int, default=0, metavar="B",
                   help="bootstrap resamples of runs for percentile intervals")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--budget", type=float, action="append", default=[],
                   help="FLOP budget to predict the compute-optimal point for (repeatable)")
    q.add_argument("--json", help="write the fit here (default: stdout)")

  q = sub.add_parser("chinchilla", help="approach 3: L(N,D) = E + A/N^alpha + B/D^beta")
  common(q)
  q.add_argument("--n-col", required=True)
  q.add_argument("--d-col")
  q.add_argument("--c-col", help="FLOPs column; D = C / (6 N)")
  q.add_argument("--flops-per-param-token", type=float, default=6.0)
  q.add_argument("--grid", default="full", choices=["full", "coarse"],
                 help="start grid: full = 4500 starts (default), coarse = 243")
  q.add_argument("--bootstrap-starts", default="best", choices=["best", "coarse", "full"],
                 help="starts for each resample: the full fit's best distinct end points "
                      "(default), or a grid")

  q = sub.add_parser("isoflop", help="approach 2: parabolas in log N per FLOP budget")
  common(q)
  q.add_argument("--n-col", required=True)
  q.add_argument("--c-col", required=True)
  q.add_argument("--budget-col", help="budget label per run (default: snapped from C)")
  q.add_argument("--d-col", help="tokens column, to derive FLOPs per param-token per budget")
  q.add_argument("--flops-per-param-token", type=float, default=6.0)

  q = sub.add_parser("powerlaw", help="L(x) = E + A x^-alpha (e.g. x = N)")
  common(q)
  q.add_argument("--x-col", required=True)

  q = sub.add_parser("frontier", help="L*(C) = E + A C^-gamma on the Pareto frontier")
  common(q)
  q.add_argument("--c-col", required=True)

  q = sub.add_parser("predict", help="compute-optimal point(s) from a saved fit JSON")
  q.add_argument("--fit", required=True, help="JSON written by another subcommand")
  q.add_argument("--budget", type=float, action="append", required=True)
  q.add_argument("--json")
  return p


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.cmd == "chinchilla":
    out = _chinchilla_cli(args)
  elif args.cmd == "isoflop":
    out = _isoflop_cli(args)
  elif args.cmd in ("powerlaw", "frontier"):
    out = _powerlaw_cli(args, frontier=args.cmd == "frontier")
  else:
    with open(args.fit) as f:
      out = dict(predictions=predict_from_json(json.load(f), args.budget))
  text = json.dumps(out, indent=2)
  if args.json:
    with open(args.json, "w") as f:
      f.write(text + "\n")
    brief = {k: v for k, v in out.items() if k not in ("bootstrap", "budgets")}
    print(json.dumps(brief, indent=2))
  else:
    print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
