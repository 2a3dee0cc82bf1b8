"""Scaling-law fits on plain tables (any CSV, not only ours).

Estimators, all usable from a notebook (they raise ValueError on bad input, never exit):

* Chinchilla approach 3, `fit_chinchilla`: L(N, D) = E + A/N^alpha + B/D^beta, fitted as
  log L = LSE(a - alpha log N, b - beta log D, e) with the Huber loss (delta 1e-3) on the log
  residuals summed over points, L-BFGS-B (scipy) from every point of a grid. The objective is
  rescaled by 1/(n delta^2) so that it is O(1) and L-BFGS-B's tolerances mean what they say; at
  its raw size (~1e-4) scipy's default stopping test is an absolute decrease of ~2e-9 and fits
  stop almost where they start (`tolerances="scipy"` keeps that behaviour to show it). A fit is
  confirmed by its gradient norm and by how many starts reach the same optimum
  (`n_at_optimum`: objective within OPTIMUM_RTOL of the best).
* Uncertainty for approach 3: bootstrap refits, each from the pooled optimum, its distinct end
  points and a coarse grid, resampling points or clusters (rows sharing a size or a run)
  (`bootstrap_chinchilla`); or a Gaussian likelihood on log residuals with profile-likelihood
  intervals (`profile_chinchilla`). `selftest` measures the coverage of both on simulations.
* VPNLS, `fit_vpnls`: the same law by variable projection (linear in E, A, B given alpha, beta;
  non-negative least squares inside, a 2-D search outside): a cross-check with no start grid.
* Power laws with an offset, `fit_power_law`: L(x) = E + A x^-alpha, used for L(N) and for the
  compute frontier L*(C) = E + A C^-gamma (`fit_frontier`).
* Chinchilla approach 2, `fit_isoflop`: per budget, a parabola in log N fitted in a window
  around the minimum (a parabola over a wide grid biases the exponent), minima weighted by
  their own standard errors in N*(C) = k_N C^a and D*(C) = k_D C^b. Budgets whose smallest
  or largest size is the best one do not bracket a minimum and are left out, and listed.
* Data-constrained scaling (Muennighoff et al. 2023), `fit_data_constrained`: the Chinchilla
  law at effective data D' = U_D + U_D R_D* (1 - exp(-R_D/R_D*)) (R_D = epochs - 1) and
  effective parameters N' likewise (U_N: the compute-optimal size for U_D), R_D* and R_N*
  fitted with the Chinchilla part (fitted on single-epoch rows) fixed; bootstrap intervals
  refit both stages (`bootstrap_data_constrained`).

CLI (errors are one line on stderr, exit code 1):

    python -m eval.fit chinchilla --csv FILE --n-col N (--d-col D | --c-col C) --loss-col L \
        [--bootstrap B] [--bootstrap-by point|size|run] [--uncertainty bootstrap|profile] \
        [--huber-delta 1e-3] [--min-n X] [--max-n X] [--min-c X] [--max-c X] [--budget C ...]
    python -m eval.fit isoflop --csv FILE --n-col N --c-col C --loss-col L [--budget-col B] \
        [--method parabola|vpnls] [--window-dex 0.5 | --window-k K] ...
    python -m eval.fit powerlaw --csv FILE --x-col N --loss-col L --json OUT
    python -m eval.fit frontier --csv FILE --c-col C --loss-col L --json OUT
    python -m eval.fit constrained --csv FILE --n-col N --d-col D --u-col U --loss-col L \
        [--bootstrap B] [--bootstrap-by cell|point|size|run] [--epochs 2 4 8 16]
    python -m eval.fit predict --fit FIT.json --budget 1e21 [--budget ...]
    python -m eval.fit selftest [--sims 200] [--json OUT]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import itertools
import json
import math
import os
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.optimize
import scipy.stats
import threadpoolctl

from train import cli

HUBER_DELTA = 1e-3
# The grid of Hoffmann et al. / Besiroglu et al.: 6 * 6 * 5 * 5 * 5 = 4500 starts.
FULL_GRID = dict(
    a=np.arange(0.0, 25.1, 5.0),
    b=np.arange(0.0, 25.1, 5.0),
    e=np.arange(-1.0, 1.01, 0.5),
    alpha=np.arange(0.0, 2.01, 0.5),
    beta=np.arange(0.0, 2.01, 0.5),
)
# A coarse grid (3^5 = 243 starts) for tests, bootstraps and quick looks.
COARSE_GRID = dict(
    a=np.array([0.0, 10.0, 20.0]),
    b=np.array([0.0, 10.0, 20.0]),
    e=np.array([-1.0, 0.0, 1.0]),
    alpha=np.array([0.0, 0.5, 1.0]),
    beta=np.array([0.0, 0.5, 1.0]),
)
INTERVAL_LEVEL = 0.95
# A start "reached the optimum" when its objective is within this relative distance of the best.
OPTIMUM_RTOL = 1e-6
# Stationarity check at the best fit: max |gradient| of the rescaled (O(1)) objective.
GRAD_TOL = 1e-3
# L-BFGS-B settings on the rescaled objective ("scaled") or scipy's defaults on the raw one.
TOLERANCES = dict(scaled=dict(ftol=1e-10, gtol=1e-6, maxiter=3000), scipy={})
PARAMS = ("E", "A", "B", "alpha", "beta")
# Quantities with intervals: the five parameters, the allocation exponents and the loss at the
# compute-optimal point of a budget.
QUANTITIES = ("E", "A", "B", "alpha", "beta", "a", "b", "loss_opt")
# The leading keys of ChinchillaFit.to_dict, each an attribute as it stands.
_CHINCHILLA_KEYS = PARAMS + tuple(
    "objective n_points a b converged n_starts n_converged n_at_optimum n_final".split()
)


# ----------------------------------------------------------------------------- objective


def lse_huber_objective(theta, logx_KxN, logl_N, delta=HUBER_DELTA, reduction="sum"):
  """Huber loss of log L - LSE(a_k - alpha_k log x_k, e) and its analytic gradient.

  theta = [a_1..a_K, e, alpha_1..alpha_K]; for Chinchilla K=2 and theta = (a, b, e, alpha,
  beta). The log-sum-exp is computed stably and its gradient is the softmax weights.
  delta=inf gives half the sum of squared log residuals (the Gaussian likelihood's core).
  """
  k = logx_KxN.shape[0]
  u_MxN = np.empty((k + 1, logx_KxN.shape[1]))
  np.multiply(theta[k + 1 :, None], logx_KxN, out=u_MxN[:k])
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
  grad[: k + 1] = gw_MxN.sum(axis=1)
  grad[k + 1 :] = -np.einsum("kn,kn->k", gw_MxN[:k], logx_KxN)
  if reduction == "mean":
    n = logl_N.shape[0]
    return f / n, grad / n
  if reduction != "sum":
    raise ValueError(f"reduction={reduction!r}: use 'sum' or 'mean'")
  return f, grad


def grid_starts(grid: dict, k: int) -> np.ndarray:
  """Start points [S, 2k+1] in theta order from a dict of per-parameter value lists."""
  names = ["a", "b", "e", "alpha", "beta"] if k == 2 else ["a", "e", "alpha"]
  cols = [np.asarray(grid[n], dtype=float) for n in names]
  return np.array(list(itertools.product(*cols)), dtype=float)


def objective_scale(n: int, delta: float) -> float:
  """Factor that makes the summed Huber objective O(1): 1 / (n delta^2), or 1 / (n 1e-4) for
  least squares (delta = inf; log residuals of ~1%)."""
  d2 = delta**2 if np.isfinite(delta) else 1e-4
  return 1.0 / (n * d2)


@dataclasses.dataclass
class _Best:
  theta: np.ndarray
  objective: float
  converged: bool  # the best start's optimizer flag
  n_starts: int
  n_converged: int  # optimizer flags (kept for comparison; n_at_optimum is the measure)
  endpoints: np.ndarray  # finite end points, sorted by objective (for bootstrap starts)
  n_at_optimum: int = 1  # final runs whose objective is within OPTIMUM_RTOL of the best
  grad_norm: float = 0.0  # max |gradient| of the rescaled objective at the best fit
  n_final: int = 1  # runs taken to convergence (all starts, or the polished ones)


# Box for theta = (a_1..a_K, e, alpha_1..alpha_K): E >= e^-10 (4.5e-5) and exponents in
# [0, 5]. A floor or exponent that runs into this box is not identified by the data; without
# the box L-BFGS-B would chase e -> -inf along a flat valley for thousands of iterations.
E_LOG_MIN, EXPONENT_MAX, SCALE_LOG_MAX = -10.0, 5.0, 80.0


def theta_bounds(k: int) -> list:
  return [(None, SCALE_LOG_MAX)] * k + [(E_LOG_MIN, None)] + [(0.0, EXPONENT_MAX)] * k


def _projected_grad(theta, grad, bounds):
  """The gradient with components that push against an active bound zeroed (KKT)."""
  g = np.array(grad, float)
  for j, (lo, hi) in enumerate(bounds):
    if lo is not None and theta[j] <= lo + 1e-9 and g[j] > 0:
      g[j] = 0.0
    if hi is not None and theta[j] >= hi - 1e-9 and g[j] < 0:
      g[j] = 0.0
  return g


def _lbfgs_runs(fn, starts_SxP, options, bounds=None) -> list:
  """L-BFGS-B (inside `bounds`, default theta_bounds) from each start; the finite results
  sorted by objective."""
  results = []
  bounds = bounds or theta_bounds(starts_SxP.shape[1] // 2)
  lo, hi = np.array(bounds, dtype=float).T  # None (unbounded) becomes NaN
  lo, hi = np.where(np.isnan(lo), -np.inf, lo), np.where(np.isnan(hi), np.inf, hi)
  # scipy's bundled OpenBLAS spins up threads for the tiny L-BFGS-B matrices: ~10x slower.
  with threadpoolctl.threadpool_limits(1), np.errstate(over="ignore", invalid="ignore"):
    for x0 in starts_SxP:
      x0 = np.clip(x0, lo, hi)
      r = scipy.optimize.minimize(
          fn, x0, jac=True, method="L-BFGS-B", bounds=bounds, options=options
      )
      if np.isfinite(r.fun) and np.all(np.isfinite(r.x)):
        results.append(r)
  return sorted(results, key=lambda r: r.fun)


def _optimum(runs, grad_fn, bounds) -> tuple:
  """The best of `runs` (sorted by objective), how many runs reach its objective within
  OPTIMUM_RTOL, and max |gradient| there (grad_fn, projected onto the box `bounds`)."""
  if not runs:
    raise RuntimeError("every L-BFGS-B start diverged; check the table for zeros or NaNs")
  f_all = np.array([r.fun for r in runs])
  at_opt = int(((f_all - runs[0].fun) <= OPTIMUM_RTOL * abs(runs[0].fun)).sum())
  grad = _projected_grad(runs[0].x, grad_fn(runs[0].x), bounds)
  return runs[0], at_opt, float(np.max(np.abs(grad)))


def _multistart_lbfgs(
    logx_KxN, logl_N, starts_SxP, delta, reduction, tolerances="scaled", polish: int = 32
) -> _Best:
  """L-BFGS-B from every start; keep the lowest objective.

  With tolerances="scaled" the objective is multiplied by objective_scale (O(1) at the fit)
  and the tolerances are tight. Grids larger than 2 * polish starts run first with scipy's
  defaults on the raw objective (cheap, stops early) and only the `polish` best distinct end
  points are then run to convergence; n_at_optimum counts among those. "scipy" runs scipy's
  defaults on the raw objective only (the early-stopping behaviour, kept to show it).
  """
  if tolerances not in TOLERANCES:
    raise ValueError(f"tolerances={tolerances!r}: use one of {sorted(TOLERANCES)}")
  raw = lambda th: lse_huber_objective(th, logx_KxN, logl_N, delta, reduction)
  scale = objective_scale(len(logl_N), delta) if tolerances == "scaled" else 1.0
  starts = np.atleast_2d(starts_SxP)
  n_converged = None
  if tolerances == "scaled" and len(starts) > 2 * polish:
    first = _lbfgs_runs(raw, starts, {})
    n_converged = sum(bool(r.success) for r in first)
    starts = distinct_endpoints(np.array([r.x for r in first]), polish) if first else starts[:0]

  def scaled(theta):
    f, g = raw(theta)
    return f * scale, g * scale

  results = _lbfgs_runs(scaled, starts, TOLERANCES[tolerances])
  # The gradient of the rescaled summed objective, whatever `reduction` and `tolerances` ran.
  sum_scale = objective_scale(len(logl_N), delta)
  grad_fn = lambda th: lse_huber_objective(th, logx_KxN, logl_N, delta)[1] * sum_scale
  best, at_opt, grad_norm = _optimum(results, grad_fn, theta_bounds(logx_KxN.shape[0]))
  if n_converged is None:
    n_converged = sum(bool(r.success) for r in results)
  return _Best(
      best.x.copy(),
      float(best.fun / scale),
      bool(best.success),
      len(starts_SxP),
      n_converged,
      np.array([r.x for r in results[:64]]),
      at_opt,
      grad_norm,
      len(results),
  )


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
  n_at_optimum: int = 0
  grad_norm: float = float("nan")
  huber_delta: float = HUBER_DELTA
  method: str = "lbfgs"
  n_final: int = 0  # starts run to convergence (n_at_optimum counts among these)

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
    return self.E + self.A * N**-self.alpha + self.B * D**-self.beta

  def optimal(self, C, flops_per_param_token: float = 6.0):
    """Compute-optimal (N, D, loss) under C = k N D (Hoffmann et al. eq. 4)."""
    return optimal_allocation(self.params, C, flops_per_param_token)

  @property
  def verified(self) -> bool:
    """Converged by measurement: stationary, and at least two starts agree on the optimum."""
    return bool(self.grad_norm <= GRAD_TOL and self.n_at_optimum >= 2)

  def to_dict(self) -> dict:
    finite = lambda x: x if np.isfinite(x) else None
    return dict(
        {k: getattr(self, k) for k in _CHINCHILLA_KEYS},
        optimum_rtol=OPTIMUM_RTOL,
        grad_norm=finite(self.grad_norm),
        verified=self.verified,
        reduction=self.reduction,
        huber_delta=finite(self.huber_delta),
        method=self.method,
    )

  @classmethod
  def from_theta(cls, theta, **kw):
    a, b, e, alpha, beta = (float(t) for t in theta)
    return cls(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta, **kw)

  @property
  def theta(self) -> np.ndarray:
    return np.array([math.log(self.A), math.log(self.B), math.log(self.E), self.alpha, self.beta])

  @property
  def params(self) -> np.ndarray:
    return np.array([self.E, self.A, self.B, self.alpha, self.beta])


def optimal_allocation(params_P, C, flops_per_param_token: float = 6.0):
  """Compute-optimal (N, D, loss) at budget C for parameter rows (E, A, B, alpha, beta) [..., 5].

  Works on one row or a stack of bootstrap rows. In log space, so extreme samples give inf or
  0 instead of raising OverflowError.
  """
  p = np.asarray(params_P, float)
  E, A, B, alpha, beta = (p[..., j] for j in range(5))
  C = np.asarray(C, float)
  with np.errstate(all="ignore"):
    s = alpha + beta
    log_g = (np.log(alpha * A) - np.log(beta * B)) / s
    log_c = np.log(C / flops_per_param_token)
    log_n = log_g + (beta / s) * log_c
    log_d = log_c - log_n
    n, d = np.exp(log_n), np.exp(log_d)
    loss = E + A * np.exp(-alpha * log_n) + B * np.exp(-beta * log_d)
  return n, d, loss


def _check_positive(name, x):
  x = np.asarray(x, dtype=float)
  if x.ndim != 1:
    raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
  bad = ~np.isfinite(x) | (x <= 0)
  if bad.any():
    raise ValueError(
        f"{name} has {int(bad.sum())} non-positive or non-finite values (first at "
        f"row {int(np.argmax(bad))}); drop those rows before fitting"
    )
  return x


def _checked_nd_l(N, D, L):
  N, D, L = (_check_positive(n, x) for n, x in (("N", N), ("D", D), ("loss", L)))
  if not len(N) == len(D) == len(L):
    raise ValueError(f"N, D, loss lengths differ: {len(N)}, {len(D)}, {len(L)}")
  if len(L) < 5:
    raise ValueError(f"Chinchilla fit has 5 parameters and needs >= 5 runs, got {len(L)}")
  if len(np.unique(N)) < 2 or len(np.unique(D)) < 2:
    raise ValueError(
        f"Chinchilla fit needs >= 2 distinct N and D values, got "
        f"{len(np.unique(N))} and {len(np.unique(D))}"
    )
  return N, D, L


def _grid(grid, N, D, L):
  if isinstance(grid, str) and grid == "quick":
    return quick_starts(N, D, L)
  g = {"full": FULL_GRID, "coarse": COARSE_GRID}.get(grid) if isinstance(grid, str) else grid
  if g is None:
    raise ValueError(f"grid={grid!r}: use 'full', 'coarse', 'quick' or a dict of value lists")
  return grid_starts(g, 2)


def fit_chinchilla(
    N,
    D,
    L,
    *,
    grid: dict | str = "full",
    starts=None,
    delta: float = HUBER_DELTA,
    reduction: str = "sum",
    tolerances: str = "scaled",
) -> ChinchillaFit:
  """Hoffmann et al. approach 3 with the Besiroglu et al. (2024) corrections.

  Args:
    N, D, L: parameters, tokens and loss per run.
    grid: "full" (4500 starts, the published grid), "coarse" (243), "quick" (the VPNLS
      solution and 27 coarse-grid points: for many refits) or a dict of value lists for
      a, b, e, alpha, beta.
    starts: explicit [S, 5] start points (a, b, e, alpha, beta); overrides grid.
    delta: Huber threshold on log residuals (inf: least squares).
    reduction: "sum" (correct) or "mean" (the original bug: L-BFGS-B stops early).
    tolerances: "scaled" (rescaled objective, tight tolerances) or "scipy" (scipy's defaults
      on the raw objective, which stop early when the objective is small).
  """
  N, D, L = _checked_nd_l(N, D, L)
  starts = _grid(grid, N, D, L) if starts is None else starts
  logx = np.stack([np.log(N), np.log(D)])
  best = _multistart_lbfgs(logx, np.log(L), np.atleast_2d(starts), delta, reduction, tolerances)
  if reduction == "mean":  # report the summed objective so fits are comparable
    objective = float(lse_huber_objective(best.theta, logx, np.log(L), delta, "sum")[0])
  else:
    objective = best.objective
  # The search's record (starts, end points, n_at_optimum, ...) under the same field names.
  record = {k: v for k, v in vars(best).items() if k not in ("theta", "objective")}
  return ChinchillaFit.from_theta(
      best.theta,
      objective=objective,
      n_points=len(L),
      reduction=reduction,
      huber_delta=delta,
      **record,
  )


def distinct_endpoints(endpoints: np.ndarray, k: int, tol: float = 1e-3) -> np.ndarray:
  out = []
  for x in endpoints:
    if all(np.max(np.abs(x - y)) > tol for y in out):
      out.append(x)
    if len(out) == k:
      break
  return np.array(out)


# Four coarse-grid points spread over the plausible basins (a, b, e, alpha, beta), for refits.
REFIT_GRID = np.array(
    [
        [10.0, 10.0, 0.0, 0.5, 0.5],
        [20.0, 20.0, 0.0, 1.0, 1.0],
        [10.0, 20.0, 0.0, 0.5, 1.0],
        [20.0, 10.0, 0.0, 1.0, 0.5],
    ]
)


def refit_starts(fit: ChinchillaFit) -> np.ndarray:
  """Starts for refits of perturbed data (bootstrap, held-out budgets): the pooled optimum, its
  next two distinct end points and REFIT_GRID (so a resample whose optimum moved to another
  basin can still find it)."""
  ends = fit.endpoints if fit.endpoints is not None else fit.theta[None]
  return np.r_[fit.theta[None], distinct_endpoints(ends, 3)[1:].reshape(-1, 5), REFIT_GRID]


def cluster_labels(df: pd.DataFrame, by: str, n_col: str) -> np.ndarray | None:
  """Resampling units for `--bootstrap-by`: None (point), rows sharing N (size), or rows
  sharing a run column (`run`, else `size`, else N: WSD branches of one size share a run)."""
  if by == "point":
    return None
  if by == "size":
    return df[n_col].to_numpy()
  if by == "run":
    col = next((c for c in ("run", "size") if c in df.columns), n_col)
    return df[col].astype(str).to_numpy()
  raise ValueError(f"bootstrap-by={by!r}: use point, size or run")


def _resample_index(n: int, rng, groups=None, clusters=None) -> np.ndarray:
  """Bootstrap row indices. groups: resample within each group (stratified); clusters:
  resample whole clusters with replacement (all rows of a drawn cluster come along)."""
  if clusters is not None:
    labels, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    members = [np.flatnonzero(inverse == j) for j in range(len(labels))]
    draw = rng.integers(0, len(labels), len(labels))
    return np.concatenate([members[j] for j in draw])
  if groups is None:
    return rng.integers(0, n, n)
  groups = np.asarray(groups)
  members = (np.flatnonzero(groups == g) for g in pd.unique(groups))
  return np.concatenate([rng.choice(m, size=len(m), replace=True) for m in members])


def _bootstrap(refit, n_boot: int, n: int, width: int, seed: int, **resample) -> np.ndarray:
  """[n_boot', width] rows refit(i) over n_boot resamples i of n rows (`_resample_index`,
  `resample`: its groups or clusters); resamples whose refit returns None are skipped."""
  rng = np.random.default_rng(seed)
  rows = (refit(_resample_index(n, rng, **resample)) for _ in range(n_boot))
  return np.array([r for r in rows if r is not None]).reshape(-1, width)


def bootstrap_chinchilla(
    N,
    D,
    L,
    fit: ChinchillaFit,
    n_boot: int,
    *,
    seed: int = 0,
    starts: str = "best",
    delta: float | None = None,
    clusters=None,
    tolerances: str = "scaled",
) -> np.ndarray:
  """Refit on resampled runs; returns [n_boot', 5] rows (E, A, B, alpha, beta).

  starts="best" restarts each resample from `refit_starts(fit)` (pooled optimum, its distinct
  end points, 4 grid points); "coarse"/"full" use a whole grid. clusters: one label
  per row; whole clusters are resampled (rows of one size or run share noise). Resamples with
  fewer than 2 distinct N or D are skipped.
  """
  N, D, L = (np.asarray(x, float) for x in (N, D, L))
  delta = fit.huber_delta if delta is None else delta
  kw = dict(starts=refit_starts(fit)) if starts == "best" else dict(grid=starts)

  def refit(i):
    if len(np.unique(N[i])) < 2 or len(np.unique(D[i])) < 2 or len(i) < 5:
      return None
    return fit_chinchilla(N[i], D[i], L[i], delta=delta, tolerances=tolerances, **kw).params

  return _bootstrap(refit, n_boot, len(L), 5, seed, clusters=clusters)


def percentile_interval(samples, level: float = INTERVAL_LEVEL) -> list[float]:
  """The central `level` percentile interval [lo, hi] of 1-D samples (NaNs ignored), as plain
  floats: the form every interval takes in the fits' JSON."""
  lo = (1 - level) / 2 * 100
  return [float(x) for x in np.nanpercentile(samples, [lo, 100 - lo])]


def derived_quantities(params_Bx5, budget=None, flops_per_param_token=6.0) -> dict:
  """Columns of the quantities with intervals: E, A, B, alpha, beta, a, b (and loss_opt at
  `budget`) from parameter rows."""
  p = np.atleast_2d(np.asarray(params_Bx5, float))
  with np.errstate(all="ignore"):
    cols = dict(zip(PARAMS, p.T), a=p[:, 4] / (p[:, 3] + p[:, 4]), b=p[:, 3] / (p[:, 3] + p[:, 4]))
  if budget is not None:
    cols["loss_opt"] = optimal_allocation(p, budget, flops_per_param_token)[2]
  return cols


def chinchilla_intervals(
    samples_Bx5, level=INTERVAL_LEVEL, budget=None, flops_per_param_token=6.0
) -> dict:
  """Percentile intervals of every quantity from bootstrap parameter rows."""
  cols = derived_quantities(samples_Bx5, budget, flops_per_param_token)
  return {k: percentile_interval(v, level) for k, v in cols.items()}


def chinchilla_optimal_with_intervals(
    fit: ChinchillaFit, C, samples_Bx5=None, flops_per_param_token=6.0, level=INTERVAL_LEVEL
) -> dict:
  """Compute-optimal N, D and loss at budget C, with bootstrap percentile intervals."""
  n, d, l = fit.optimal(C, flops_per_param_token)
  out = dict(
      budget=float(C),
      N=float(n),
      D=float(d),
      loss=float(l),
      tokens_per_param=float(d / n),
      flops_per_param_token=float(flops_per_param_token),
  )
  if samples_Bx5 is not None and len(samples_Bx5):
    opt = optimal_allocation(samples_Bx5, C, flops_per_param_token)
    for j, k in enumerate(["N", "D", "loss"]):
      out[k + "_interval"] = percentile_interval(opt[j], level)
  return out


# ----------------------------------------------------------------------------- profile likelihood

# Scan coordinate of each profiled quantity: log for scales, the value for exponents; and how
# far a scan goes before the interval is declared to reach a bound (not identified).
_LOG_SCAN = ("E", "A", "B", "loss_opt")
_SCAN_LIMITS = dict(
    E=math.log(1e4),
    A=math.log(1e4),
    B=math.log(1e4),
    loss_opt=math.log(1e2),
    alpha=(1e-3, 3.0),
    beta=(1e-3, 3.0),
    a=(1e-3, 1 - 1e-3),
)


# The coordinate of theta = (a, b, e, alpha, beta) that pinning each quantity takes out of the
# search: the parameter's own (its log for the scales), beta for `a`, e for `loss_opt`.
_PINNED = dict(A=0, B=1, E=2, alpha=3, beta=4, a=4, loss_opt=2)


def _constrained_theta(name, v, free, budget, k):
  """theta (a, b, e, alpha, beta) with quantity `name` pinned at scan value v and the 4 other
  coordinates `free`; returns (theta, penalty) where penalty > 0 marks an infeasible point."""
  f = list(free)
  if name in PARAMS:
    return np.insert(np.asarray(free, float), _PINNED[name], v), 0.0
  if name == "a":  # beta = a alpha / (1 - a)
    return np.array(f + [v * f[3] / (1 - v)]), 0.0
  if name == "loss_opt":  # E = loss_opt - reducible part at the optimum of `budget`
    a_, b_, alpha, beta = f
    red = optimal_allocation([0.0, math.exp(a_), math.exp(b_), alpha, beta], budget, k)[2]
    E = math.exp(v) - float(red)
    if not np.isfinite(E) or E <= 1e-12:
      penalty = 1.0 + abs(E if np.isfinite(E) else 1e6)
      return np.array([a_, b_, math.log(1e-12), alpha, beta]), penalty
    return np.array([a_, b_, math.log(E), alpha, beta]), 0.0
  raise ValueError(f"no profile for {name!r}; use one of {QUANTITIES}")


def _free_of(name, theta):
  """The 4 free coordinates matching _constrained_theta for a full theta."""
  return np.delete(np.asarray(theta, float), _PINNED[name])


def _scan_value(name, law: ChinchillaFit, budget, k) -> float:
  value = derived_quantities(law.params[None], budget, k)[name][0]
  return math.log(value) if name in _LOG_SCAN else float(value)


class _Profile:
  """RSS ratio of the least-squares fit with one quantity pinned, relative to the free fit."""

  def __init__(self, name, law, logx, logl, budget, k):
    self.name, self.logx, self.logl, self.budget, self.k = name, logx, logl, budget, k
    self.rss_hat = 2 * law.objective
    self.scale = objective_scale(len(logl), np.inf)
    self.solved = {_scan_value(name, law, budget, k): _free_of(name, law.theta)}

  def _objective(self, free, v):
    theta, penalty = _constrained_theta(self.name, v, free, self.budget, self.k)
    f = lse_huber_objective(theta, self.logx, self.logl, np.inf)[0]
    return (f + 1e3 * penalty) * self.scale

  def ratio(self, v) -> float:
    near = min(self.solved, key=lambda u: abs(u - v))
    with threadpoolctl.threadpool_limits(1), np.errstate(all="ignore"):
      r = scipy.optimize.minimize(
          self._objective,
          self.solved[near],
          args=(v,),
          method="L-BFGS-B",
          options=dict(ftol=1e-13, gtol=1e-9),
      )
    self.solved[v] = r.x
    return max(float(2 * r.fun / self.scale / self.rss_hat), 1.0)


def _profile_side(prof: _Profile, v_hat, direction, thresholds, limit) -> list:
  """Scan value where the RSS ratio crosses each threshold on one side; (limit, True) when the
  scan reaches its limit first (the data do not bound the quantity on that side)."""
  h, last = 0.02 * max(abs(v_hat), 0.1) if prof.name not in _LOG_SCAN else 0.02, 0.0
  top = max(thresholds)
  while True:
    v = v_hat + direction * h
    beyond = (v - limit) * direction >= 0
    v = limit if beyond else v
    r = prof.ratio(v)
    if r >= top or beyond:
      break
    last, h = h, h * 2
  out = []
  for thr in thresholds:
    if r < thr:
      out.append((limit, True))
      continue
    fn = lambda hh: prof.ratio(v_hat + direction * hh) - thr
    hit = (
        scipy.optimize.brentq(fn, last, abs(v - v_hat), xtol=1e-4, rtol=1e-4)
        if fn(last) < 0
        else last
    )
    out.append((v_hat + direction * hit, False))
  return out


def profile_chinchilla(
    N,
    D,
    L,
    *,
    levels=(0.8, 0.95),
    budget=None,
    flops_per_param_token=6.0,
    grid="coarse",
    quantities=None,
    fit: ChinchillaFit | None = None,
):
  """Least-squares fit of log L (Gaussian likelihood, unknown variance) and profile-likelihood
  intervals for every quantity.

  The interval at `level` holds the values v whose constrained fit has RSS(v)/RSS <= 1 +
  F_{1, n-5}(level) / (n - 5) (the likelihood-ratio test with its small-sample F calibration).
  Returns (fit, {level: {quantity: [lo, hi]}}, {quantity: reason}) where the last dict names
  the quantities whose interval reaches a scan limit (the data do not bound them).
  """
  N, D, L = _checked_nd_l(N, D, L)
  n = len(L)
  if n <= 6:
    raise ValueError(f"profile likelihood needs > 6 runs for 5 parameters, got {n}")
  law = fit or fit_chinchilla(N, D, L, grid=grid, delta=np.inf)
  logx, logl = np.stack([np.log(N), np.log(D)]), np.log(L)
  thresholds = [1 + scipy.stats.f.ppf(lv, 1, n - 5) / (n - 5) for lv in levels]
  names = list(quantities or [q for q in QUANTITIES if q != "b" and (q != "loss_opt" or budget)])
  intervals = {lv: {} for lv in levels}
  unbounded = {}
  for name in names:
    prof = _Profile(name, law, logx, logl, budget, flops_per_param_token)
    v_hat = _scan_value(name, law, budget, flops_per_param_token)
    lim = _SCAN_LIMITS[name]
    lims = (v_hat - lim, v_hat + lim) if name in _LOG_SCAN else lim
    lo = _profile_side(prof, v_hat, -1, thresholds, lims[0])
    hi = _profile_side(prof, v_hat, +1, thresholds, lims[1])
    if any(hit for _, hit in lo + hi):
      unbounded[name] = "the profile likelihood does not close within the scan limit"
    for lv, (vl, _), (vh, _) in zip(levels, lo, hi):
      ends = [math.exp(vl), math.exp(vh)] if name in _LOG_SCAN else [vl, vh]
      intervals[lv][name] = [float(x) for x in ends]
  if "a" in names:  # b = 1 - a
    for lv in levels:
      lo, hi = intervals[lv]["a"]
      intervals[lv]["b"] = [1 - hi, 1 - lo]
  return law, intervals, unbounded


# ----------------------------------------------------------------------------- VPNLS


def _vpnls_inner(exps, N, D, L):
  """For fixed (alpha, beta): E, A, B >= 0 by non-negative least squares on L, and the RSS.
  Columns are rescaled to unit norm for conditioning."""
  alpha, beta = exps
  with np.errstate(all="ignore"):
    X = np.stack([np.ones_like(N), N**-alpha, D**-beta], axis=1)
  norms = np.linalg.norm(X, axis=0)
  if not np.all(np.isfinite(norms)) or np.any(norms == 0):
    return np.full(3, np.nan), np.inf
  coef, rnorm = scipy.optimize.nnls(X / norms, L)
  return coef / norms, float(rnorm**2)


def fit_vpnls(N, D, L) -> ChinchillaFit:
  """L = E + A N^-alpha + B D^-beta by variable projection: least squares on L, linear (and
  non-negative) in E, A, B given alpha, beta, so only (alpha, beta) are searched (a 6x6 grid,
  then L-BFGS-B from the best cell). No start grid over five parameters, so it cross-checks
  approach 3's multi-start fit."""
  N, D, L = _checked_nd_l(N, D, L)
  grid = np.linspace(0.05, 1.5, 6)
  rss = lambda e: _vpnls_inner(e, N, D, L)[1]
  best = min(itertools.product(grid, grid), key=rss)
  with threadpoolctl.threadpool_limits(1):
    r = scipy.optimize.minimize(
        rss,
        np.array(best),
        method="L-BFGS-B",
        bounds=[(1e-3, 3.0), (1e-3, 3.0)],
        options=dict(ftol=1e-14),
    )
  (E, A, B), value = _vpnls_inner(r.x, N, D, L)
  if not np.isfinite(value) or min(A, B) <= 0:
    raise ValueError("VPNLS: no fit with positive A and B (the table shows no decrease in N or D)")
  return ChinchillaFit(
      E=float(max(E, 1e-12)),
      A=float(A),
      B=float(B),
      alpha=float(r.x[0]),
      beta=float(r.x[1]),
      objective=value,
      n_points=len(L),
      method="vpnls",
      n_starts=len(grid) ** 2,
      n_at_optimum=1,
      huber_delta=np.inf,
  )


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
    return {k: getattr(self, k) for k in ("E", "A", "alpha", "objective", "n_points", "converged")}


# Starts for the scaled problem (x / geometric mean): a = log A', e = log E, alpha.
POWER_GRID = dict(
    a=np.array([-2.5, 0.0, 2.5]), e=np.array([-1.0, 0.0, 0.5, 1.0]), alpha=np.array([0.1, 0.5, 1.5])
)


def fit_power_law(
    x,
    L,
    *,
    fix_E: float | None = None,
    delta: float = HUBER_DELTA,
    grid: dict | None = None,
    starts=None,
) -> PowerLawFit:
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
    best = _Best(
        np.array([a, e, alpha]), float(0.5 * np.sum(resid**2)), True, 1, 1, np.zeros((0, 3))
    )
  with np.errstate(over="ignore"):
    A = np.exp(a) * x_ref**alpha
  return PowerLawFit(
      E=float(np.exp(e)) if np.isfinite(e) else 0.0,
      A=float(A),
      alpha=float(alpha),
      objective=best.objective,
      n_points=len(L),
      converged=best.converged,
      endpoints=best.endpoints,
  )


def pareto_frontier(C, L) -> np.ndarray:
  """Indices of runs no cheaper run beats: the lower envelope of loss vs compute."""
  C, L = np.asarray(C, float), np.asarray(L, float)
  order = np.lexsort((L, C))
  best_before = np.fmin.accumulate(np.r_[np.inf, L[order]])[:-1]  # fmin: NaN losses never win
  return order[L[order] < best_before]


def fit_frontier(C, L, **kw) -> PowerLawFit:
  """L*(C) = E + A C^-gamma on the compute-efficient frontier (gamma is `.alpha`)."""
  idx = pareto_frontier(C, L)
  return fit_power_law(np.asarray(C, float)[idx], np.asarray(L, float)[idx], **kw)


def bootstrap_power_law(x, L, n_boot, *, seed=0, frontier=False, **kw) -> np.ndarray:
  """[n_boot, 3] rows (E, A, alpha) from fits on resampled rows."""
  x, L = np.asarray(x, float), np.asarray(L, float)
  fn = fit_frontier if frontier else fit_power_law
  if "starts" not in kw and "fix_E" not in kw:
    # Restart each resample from the full fit's distinct minima plus a thin grid. The x
    # scaling moves with the resample, so these are starting hints, not exact minima.
    full = fn(x, L, **kw)
    kw = dict(
        kw, starts=np.r_[distinct_endpoints(full.endpoints, 4), grid_starts(POWER_GRID, 1)[::6]]
    )

  def refit(i):
    try:
      f = fn(x[i], L[i], **kw)
    except (ValueError, RuntimeError):
      return None
    return [f.E, f.A, f.alpha]

  return _bootstrap(refit, n_boot, len(L), 3, seed)


# ----------------------------------------------------------------------------- IsoFLOP


def snap_budgets(C, tol_dex: float = 0.05) -> np.ndarray:
  """Group FLOP counts into budgets: sorted values closer than tol_dex (log10) share a budget,
  labelled by the group's median. Real ladders hit a budget only approximately."""
  C = _check_positive("C", C)
  lc = np.log10(C)
  order = np.argsort(lc)
  labels = np.empty(len(C))
  for members in np.split(order, np.flatnonzero(np.diff(lc[order]) > tol_dex) + 1):
    labels[members] = np.median(C[members])
  return labels


@dataclasses.dataclass
class IsoFlopFit:
  """Approach 2: per-budget minima and the power laws N* = k_N C^a, D* = k_D C^b."""

  budgets: np.ndarray
  n_opt: np.ndarray
  d_opt: np.ndarray
  loss_opt: np.ndarray
  parabolas: np.ndarray  # [n_budgets, 3] coefficients of L vs ln N (x^2, x, 1)
  in_range: np.ndarray  # minimum inside the window's sizes (always, for used budgets)
  a: float
  k_n: float
  b: float
  k_d: float
  a_interval: list | None = None
  b_interval: list | None = None
  dropped: list = dataclasses.field(default_factory=list)
  log_n_se: np.ndarray | None = None  # standard error of ln N* per budget
  windows: np.ndarray | None = None  # [n_budgets, 2] N range each parabola was fitted on
  method: str = "parabola"
  window: str = "0.5 dex"

  def optimal(self, C):
    C = np.asarray(C, float)
    with np.errstate(over="ignore"):
      return self.k_n * C**self.a, self.k_d * C**self.b

  def to_dict(self):
    return dict(
        a=self.a,
        b=self.b,
        k_n=self.k_n,
        k_d=self.k_d,
        a_interval=self.a_interval,
        b_interval=self.b_interval,
        intervals=dict(a=self.a_interval, b=self.b_interval),
        n_budgets=len(self.budgets),
        dropped=self.dropped,
        method=self.method,
        window=self.window,
        budgets=[
            dict(
                budget=float(c),
                N=float(n),
                D=float(d),
                loss=float(l),
                in_range=bool(r),
                log_N_se=float(s) if np.isfinite(s) else None,
            )
            for c, n, d, l, r, s in zip(
                self.budgets, self.n_opt, self.d_opt, self.loss_opt, self.in_range, self._se()
            )
        ],
    )

  def _se(self):
    return self.log_n_se if self.log_n_se is not None else np.full(len(self.budgets), np.nan)


def _window_rows(x, L, center, window_dex, window_k):
  """Rows of one budget used for its parabola: within window_dex decades of `center` (ln N),
  widened to the 3 nearest sizes when the grid is too coarse for that, or the window_k
  nearest to it."""
  dist = np.abs(x - center)
  nearest = np.argsort(dist, kind="stable")
  if window_k:
    return nearest[:window_k]
  rows = np.flatnonzero(dist <= window_dex * math.log(10) + 1e-9)
  return rows if len(np.unique(x[rows])) >= 3 else nearest[:3]


def _parabola(x, L):
  """OLS of L on (x^2, x, 1); returns coefficients, residual sum of squares and (X'X)^-1."""
  X = np.stack([x**2, x, np.ones_like(x)], axis=1)
  coef, *_ = np.linalg.lstsq(X, L, rcond=None)
  rss = float(np.sum((L - X @ coef) ** 2))
  return coef, rss, np.linalg.pinv(X.T @ X)


def _budget_minimum(x, L, window_dex, window_k) -> dict:
  """The minimum of one budget's curve from a parabola in a window around it (recentred once
  on the parabola's own minimum). Returns a dict with `reason` when there is none."""
  order = np.argsort(x)
  x, L = x[order], L[order]
  if len(np.unique(x)) < 3:
    return dict(reason=f"{len(np.unique(x))} distinct sizes (< 3)")
  i_best = int(np.argmin(L))
  if x[i_best] in (x[0], x[-1]):
    side = "smallest" if x[i_best] == x[0] else "largest"
    return dict(
        reason=f"does not bracket a minimum: its {side} size has the lowest loss", unbracketed=True
    )
  center = x[i_best]
  for _ in range(2):
    rows = _window_rows(x, L, center, window_dex, window_k)
    if len(np.unique(x[rows])) < 3:
      return dict(reason=f"{len(np.unique(x[rows]))} distinct sizes in the window (< 3)")
    coef, rss, xtx_inv = _parabola(x[rows], L[rows])
    if coef[0] <= 0:
      return dict(reason="loss vs log N is not convex in the window")
    x_opt = -coef[1] / (2 * coef[0])
    lo, hi = x[rows].min(), x[rows].max()
    if not lo <= x_opt <= hi:
      return dict(
          reason="edge minimum: the parabola's minimum lies outside its window's sizes", edge=True
      )
    center = x_opt
  return dict(
      x_opt=x_opt,
      coef=coef,
      rss=rss,
      dof=len(rows) - 3,
      xtx_inv=xtx_inv,
      window=(math.exp(lo), math.exp(hi)),
  )


def _x_opt_variance(m, sigma2) -> float:
  """Delta-method variance of x* = -c1 / (2 c0) from the parabola's coefficient covariance."""
  c0, c1, _ = m["coef"]
  grad = np.array([c1 / (2 * c0**2), -1 / (2 * c0), 0.0])
  return float(grad @ (sigma2 * m["xtx_inv"]) @ grad)


def _isoflop_minima(N, C, L, budgets, D, flops_per_param_token, window_dex=0.5, window_k=None):
  """Per budget: minimum (ln N*, its variance, loss, D*) or the reason it has none. The
  residual variance is pooled over budgets (the curves share one noise level)."""
  found, dropped = [], []
  for c in np.unique(budgets):
    m = budgets == c
    res = _budget_minimum(np.log(N[m]), L[m], window_dex, window_k)
    if "reason" in res:
      dropped.append(dict(budget=float(c), **{k: v for k, v in res.items()}))
      continue
    res["budget"] = float(c)
    res["k"] = float(np.median(C[m] / (N[m] * D[m]))) if D is not None else flops_per_param_token
    found.append(res)
  dof = sum(m["dof"] for m in found)
  sigma2 = sum(m["rss"] for m in found) / dof if dof > 0 else np.nan
  rows = []
  for m in found:
    var = _x_opt_variance(m, sigma2) if np.isfinite(sigma2) else np.nan
    n_opt = math.exp(m["x_opt"])
    d_opt = m["budget"] / (m["k"] * n_opt)
    loss = float(np.polyval(m["coef"], m["x_opt"]))
    rows.append((m["budget"], n_opt, d_opt, loss, m["coef"], var, m["window"]))
  return rows, dropped


def _weighted_loglog(C, y, var_log_y, level=INTERVAL_LEVEL):
  """Weighted least squares ln y = ln k + p ln C with weights 1/var (equal when unknown); the
  covariance is inflated by the scatter beyond those variances (chi^2/dof > 1). Returns p, k
  and a t-interval on p (None with fewer than 3 points)."""
  X, Y = np.log(C), np.log(y)
  var = np.asarray(var_log_y, float)
  w = 1.0 / var if np.all(np.isfinite(var) & (var > 0)) else np.ones_like(X)
  A = np.stack([np.ones_like(X), X], axis=1)
  cov = np.linalg.pinv(A.T @ (A * w[:, None]))
  logk, p = cov @ (A.T @ (w * Y))
  interval = None
  if len(C) >= 3:
    chi2 = float(np.sum(w * (Y - logk - p * X) ** 2)) / (len(C) - 2)
    infl = max(chi2, 1.0) if np.all(np.isfinite(var)) else chi2
    se = math.sqrt(cov[1, 1] * infl)
    t = scipy.stats.t.ppf(0.5 + level / 2, len(C) - 2)
    interval = [float(p - t * se), float(p + t * se)]
  return float(p), float(np.exp(logk)), interval


def _usable_or_raise(rows, dropped, what="IsoFLOP fit"):
  if len(rows) >= 2:
    return
  reasons = "; ".join(f"budget {d['budget']:.3g}: {d['reason']}" for d in dropped) or "none"
  raise ValueError(
      f"{what} needs >= 2 budgets with a bracketed minimum (>= 3 sizes around it), "
      f"usable: {len(rows)} ({reasons})"
  )


def fit_isoflop(
    N,
    C,
    L,
    *,
    budgets=None,
    D=None,
    flops_per_param_token: float = 6.0,
    snap_tol_dex: float = 0.05,
    n_boot: int = 0,
    seed: int = 0,
    level: float = INTERVAL_LEVEL,
    window_dex: float = 0.5,
    window_k: int | None = None,
) -> IsoFlopFit:
  """Approach 2. budgets: per-run budget labels (else snapped from C). D (optional) gives each
  budget's FLOPs per (param*token) so that D* = C / (k N*); without it k = 6.

  Each budget's parabola is fitted on the sizes within window_dex decades of its minimum (or
  its window_k nearest sizes): over a wide grid the loss is not a parabola in log N and the
  minima, hence the exponent, are biased. Minima at a window's edge and budgets whose
  smallest or largest size is best are left out and listed in `dropped`. N*(C) is a weighted
  fit (each minimum by its delta-method variance); intervals on a and b are t-intervals, or
  bootstrap percentiles when n_boot > 0 (runs resampled within each budget).
  """
  N, C, L = (_check_positive(n, x) for n, x in (("N", N), ("C", C), ("loss", L)))
  D = None if D is None else _check_positive("D", D)
  budgets = snap_budgets(C, snap_tol_dex) if budgets is None else _check_positive("budget", budgets)
  if len(np.unique(budgets)) < 2:
    raise ValueError(
        f"IsoFLOP fit needs >= 2 FLOP budgets, the table has "
        f"{len(np.unique(budgets))} (budget {budgets[0]:.3g})"
    )
  win = dict(window_dex=window_dex, window_k=window_k)
  rows, dropped = _isoflop_minima(N, C, L, budgets, D, flops_per_param_token, **win)
  _usable_or_raise(rows, dropped)
  cs, ns, ds, ls, ps, var, wins = (np.array(v) for v in zip(*rows))
  a, k_n, a_int = _weighted_loglog(cs, ns, var, level)
  b, k_d, b_int = _weighted_loglog(cs, ds, var, level)
  if n_boot > 0:
    ab = _bootstrap_isoflop(N, C, L, budgets, D, flops_per_param_token, n_boot, seed, win)
    if len(ab):
      a_int, b_int = (percentile_interval(v, level) for v in ab.T)
  return IsoFlopFit(
      cs,
      ns,
      ds,
      ls,
      ps,
      np.ones(len(cs), bool),
      a,
      k_n,
      b,
      k_d,
      a_int,
      b_int,
      dropped,
      np.sqrt(var),
      wins,
      window=f"{window_k} nearest sizes" if window_k else f"{window_dex:g} dex",
  )


def _bootstrap_isoflop(N, C, L, budgets, D, k, n_boot, seed, win) -> np.ndarray:
  """[n', 2] rows (a, b) from refits on runs resampled within budgets; resamples that leave
  fewer than 2 usable budgets or give a non-finite exponent are skipped."""

  def refit(i):
    r, _ = _isoflop_minima(N[i], C[i], L[i], budgets[i], None if D is None else D[i], k, **win)
    if len(r) < 2:
      return None
    c_, n_, d_, _, _, v_, _ = (np.array(v) for v in zip(*r))
    pair = [_weighted_loglog(c_, n_, v_)[0], _weighted_loglog(c_, d_, v_)[0]]
    return pair if np.all(np.isfinite(pair)) else None

  return _bootstrap(refit, n_boot, len(L), 2, seed, groups=budgets)


def isoflop_vpnls(
    N,
    C,
    L,
    *,
    budgets=None,
    D=None,
    flops_per_param_token=6.0,
    n_boot=0,
    seed=0,
    level=INTERVAL_LEVEL,
    snap_tol_dex=0.05,
) -> dict:
  """The VPNLS cross-check on an IsoFLOP table: a = beta/(alpha+beta) from fit_vpnls, with a
  bootstrap interval (runs resampled within budgets). Same keys as IsoFlopFit.to_dict."""
  N, C, L = (_check_positive(n, x) for n, x in (("N", N), ("C", C), ("loss", L)))
  D = C / (flops_per_param_token * N) if D is None else _check_positive("D", D)
  budgets = snap_budgets(C, snap_tol_dex) if budgets is None else _check_positive("budget", budgets)
  law = fit_vpnls(N, D, L)
  out = dict(
      law.to_dict(),
      n_budgets=int(len(np.unique(budgets))),
      a_interval=None,
      b_interval=None,
  )

  def refit(i):
    try:
      f = fit_vpnls(N[i], D[i], L[i])
    except ValueError:
      return None
    return [f.a, f.b]

  if n_boot > 0:
    ab = _bootstrap(refit, n_boot, len(L), 2, seed, groups=budgets)
    if len(ab):
      out["a_interval"], out["b_interval"] = (percentile_interval(v, level) for v in ab.T)
  out["intervals"] = dict(a=out["a_interval"], b=out["b_interval"])
  return out


# ----------------------------------------------------------------------------- data-constrained

# Starts for (log R_D*, log R_N*): 4 x 4 values from 1 to 125 repetitions.
CONSTRAINED_GRID = np.log(np.array(list(itertools.product([1.0, 5.0, 25.0, 125.0], repeat=2))))
# Box for log R*: a half-life below 0.01 or above 10^4 repetitions is not identified by a
# ladder; an estimate at a bound says so.
LOG_R_STAR_BOUNDS = [(math.log(1e-2), math.log(1e4))] * 2
CONSTRAINED_PARAMS = PARAMS + ("R_D_star", "R_N_star")


def effective_repeated(U, R, R_star):
  """U + U R* (1 - exp(-R/R*)): what U unique units repeated R more times are worth in fresh
  ones (Muennighoff et al. 2023, eq. 5); R* is the repetition count whose value decays by e."""
  U, R = np.asarray(U, float), np.asarray(R, float)
  return U + U * R_star * -np.expm1(-R / R_star)


def unique_params(params_P, U_D):
  """U_N: the compute-optimal size of the Chinchilla rows (E, A, B, alpha, beta) for whom U_D
  tokens are the compute-optimal data (D_opt = G^-1 (C/6)^b, N_opt = G (C/6)^a solved for C)."""
  E, A, B, alpha, beta = (float(x) for x in params_P)
  log_g = (math.log(alpha * A) - math.log(beta * B)) / (alpha + beta)
  return np.exp(log_g + (beta / alpha) * (np.log(np.asarray(U_D, float)) + log_g))


def repetition_terms(N, D, U, params_P) -> dict:
  """Unique data U_D = min(U, D) and its repetitions R_D = D / U_D - 1; unique parameters
  U_N = min(N, N_opt(U_D)) and their "repetitions" R_N = N / U_N - 1 (zero for a model no
  larger than the compute-optimal one for its unique data)."""
  N, D, U = (np.asarray(x, float) for x in (N, D, U))
  U_D = np.minimum(U, D)
  U_N = np.minimum(N, unique_params(params_P, U_D))
  return dict(U_D=U_D, R_D=D / U_D - 1.0, U_N=U_N, R_N=N / U_N - 1.0)


def constrained_objective(log_r_star, terms, params_P, logl_N, delta=HUBER_DELTA):
  """Huber loss of log L - log L(N', D') over (log R_D*, log R_N*) with the Chinchilla
  parameters fixed, and its analytic gradient."""
  E, A, B, alpha, beta = (float(x) for x in params_P)
  rd, rn = np.exp(log_r_star)
  n_eff = effective_repeated(terms["U_N"], terms["R_N"], rn)
  d_eff = effective_repeated(terms["U_D"], terms["R_D"], rd)
  pred_N = E + A * n_eff**-alpha + B * d_eff**-beta
  r_N = np.log(pred_N) - logl_N
  g_N = np.clip(r_N, -delta, delta)
  f = float(np.dot(g_N, r_N - 0.5 * g_N))
  grad = np.empty(2)
  for j, (u, rep, r_star, coef, expo) in enumerate(
      ((terms["U_D"], terms["R_D"], rd, B, beta), (terms["U_N"], terms["R_N"], rn, A, alpha))
  ):
    x = rep / r_star
    # d eff / d log R* = R* U ((1 - e^-x) - x e^-x)
    d_eff_d = r_star * u * (-np.expm1(-x) - x * np.exp(-x))
    eff = d_eff if j == 0 else n_eff
    grad[j] = float(np.dot(g_N / pred_N, -expo * coef * eff ** (-expo - 1) * d_eff_d))
  return f, grad


@dataclasses.dataclass
class DataConstrainedFit:
  """L = E + A / N'^alpha + B / D'^beta with D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*)) and N'
  likewise (Muennighoff et al. 2023): the Chinchilla law `base`, fitted on single-epoch rows,
  and the repetition half-lives R_D*, R_N* fitted on all rows with `base` fixed."""

  base: ChinchillaFit
  R_D_star: float
  R_N_star: float | None  # None: no row has R_N > 0, so the data say nothing about it
  objective: float
  n_points: int
  n_single_epoch: int
  n_at_optimum: int
  grad_norm: float

  @property
  def params(self) -> np.ndarray:
    rn = np.nan if self.R_N_star is None else self.R_N_star
    return np.r_[self.base.params, self.R_D_star, rn]

  def loss(self, N, D, U):
    t = repetition_terms(N, D, U, self.base.params)
    rn = self.R_N_star or 1.0  # irrelevant when every R_N is 0
    n_eff = effective_repeated(t["U_N"], t["R_N"], rn)
    return self.base.loss(n_eff, effective_repeated(t["U_D"], t["R_D"], self.R_D_star))

  def to_dict(self) -> dict:
    own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)[1:]}  # all but base
    verified = bool(self.grad_norm <= GRAD_TOL and self.n_at_optimum >= 2)
    return dict(law="muennighoff2023", **own, verified=verified, base=self.base.to_dict())


def repeated_token_worth(R_D_star, epochs) -> dict:
  """What repetition is worth under R_D*: `marginal`, a token seen for the e-th time against a
  fresh one, exp(-(e - 1) / R_D*); `effective_epochs`, e epochs of U unique tokens in fresh
  tokens, D' / U = 1 + R_D* (1 - exp(-(e - 1) / R_D*)). Arrays broadcast (bootstrap rows)."""
  r_star, e = np.asarray(R_D_star, float), np.asarray(epochs, float)
  return dict(
      marginal=np.exp(-(e - 1.0) / r_star),
      effective_epochs=effective_repeated(1.0, e - 1.0, r_star),
  )


def _checked_constrained(N, D, U, L):
  N, D, U, L = (_check_positive(n, x) for n, x in (("N", N), ("D", D), ("U", U), ("loss", L)))
  if not len(N) == len(D) == len(U) == len(L):
    raise ValueError(f"N, D, U, loss lengths differ: {len(N)}, {len(D)}, {len(U)}, {len(L)}")
  if not np.any(D > U * (1 + 1e-9)):
    raise ValueError(
        "no row repeats its data (tokens > unique tokens): R_D* is not identified; add runs "
        "of several epochs"
    )
  return N, D, U, L


def _fit_repetition(N, D, U, L, base: ChinchillaFit, starts, delta) -> tuple:
  """(best log R*, objective, n_at_optimum, grad_norm) for a fixed Chinchilla `base`."""
  terms = repetition_terms(N, D, U, base.params)
  logl, scale = np.log(L), objective_scale(len(L), delta)

  def scaled(theta):
    f, g = constrained_objective(theta, terms, base.params, logl, delta)
    return f * scale, g * scale

  runs = _lbfgs_runs(scaled, np.atleast_2d(starts), TOLERANCES["scaled"], LOG_R_STAR_BOUNDS)
  best, at_opt, grad_norm = _optimum(runs, lambda th: scaled(th)[1], LOG_R_STAR_BOUNDS)
  return best.x, float(best.fun / scale), at_opt, grad_norm, terms


def fit_data_constrained(
    N, D, U, L, *, base: ChinchillaFit | None = None, grid="full", delta=HUBER_DELTA, starts=None
) -> DataConstrainedFit:
  """Muennighoff et al. (2023) in two stages, as there: the Chinchilla law by
  `fit_chinchilla` on the rows with at most one epoch (D <= U; `base` skips this), then
  (R_D*, R_N*) by L-BFGS-B from CONSTRAINED_GRID (or `starts`) on all rows, Huber loss on
  log residuals as for the base fit."""
  N, D, U, L = _checked_constrained(N, D, U, L)
  single = D <= U * (1 + 1e-9)
  if base is None:
    if single.sum() < 5:
      raise ValueError(
          f"the Chinchilla part needs >= 5 single-epoch rows (tokens <= unique tokens), got "
          f"{int(single.sum())}; add runs of at most one epoch"
      )
    base = fit_chinchilla(N[single], D[single], L[single], grid=grid, delta=delta)
  theta, objective, at_opt, grad_norm, terms = _fit_repetition(
      N, D, U, L, base, CONSTRAINED_GRID if starts is None else starts, delta
  )
  return DataConstrainedFit(
      base=base,
      R_D_star=float(math.exp(theta[0])),
      R_N_star=float(math.exp(theta[1])) if np.any(terms["R_N"] > 1e-9) else None,
      objective=objective,
      n_points=len(L),
      n_single_epoch=int(single.sum()),
      n_at_optimum=at_opt,
      grad_norm=grad_norm,
  )


def design_cells(D, U) -> np.ndarray:
  """A label per row for `bootstrap_data_constrained(groups=...)`: rows sharing the token
  count and whether they repeat data (one per size in an `epochs` ladder). Resampling within
  cells keeps every repetition count in every resample; resampling points can drop all rows
  of the most repeated count, and then R_D* is not identified."""
  D, U = np.asarray(D, float), np.asarray(U, float)
  return np.array([f"{d:.6g}{'r' if d > u * (1 + 1e-9) else 'f'}" for d, u in zip(D, U)])


def bootstrap_data_constrained(
    N, D, U, L, fit: DataConstrainedFit, n_boot: int, *, seed: int = 0, clusters=None, groups=None
) -> np.ndarray:
  """Both stages refitted on resampled rows (from the pooled optimum's neighbourhood, as
  `bootstrap_chinchilla`); rows (E, A, B, alpha, beta, R_D*, R_N*). clusters: whole clusters
  resampled; groups: rows resampled within each group (`design_cells`). Resamples without 5
  single-epoch rows, 2 distinct N and D among them, or a repeated row are skipped."""
  N, D, U, L = (np.asarray(x, float) for x in (N, D, U, L))
  starts = np.r_[[np.log(fit.params[5:7])], CONSTRAINED_GRID[::5]]
  starts = np.nan_to_num(starts, nan=0.0)
  delta = fit.base.huber_delta

  def refit(i):
    one = i[D[i] <= U[i] * (1 + 1e-9)]
    if len(one) < 5 or len(np.unique(N[one])) < 2 or len(np.unique(D[one])) < 2:
      return None
    if len(one) == len(i):
      return None
    base = fit_chinchilla(N[one], D[one], L[one], starts=refit_starts(fit.base), delta=delta)
    return fit_data_constrained(
        N[i], D[i], U[i], L[i], base=base, delta=delta, starts=starts
    ).params

  width = len(CONSTRAINED_PARAMS)
  return _bootstrap(refit, n_boot, len(L), width, seed, groups=groups, clusters=clusters)


def data_constrained_intervals(samples_Bx7, epochs=(), level=INTERVAL_LEVEL) -> dict:
  """Percentile intervals of the 7 parameters and of `repeated_token_worth` at `epochs`;
  None for R_N* when no resample identified it."""
  s = np.asarray(samples_Bx7, float).reshape(-1, len(CONSTRAINED_PARAMS))
  if not len(s):
    raise ValueError(
        "no bootstrap resample could be refitted (each needs 5 single-epoch rows with 2 sizes "
        "and 2 token counts, and a repeated row); add runs or use --bootstrap-by point"
    )
  out = {
      k: percentile_interval(s[:, j], level) if np.isfinite(s[:, j]).any() else None
      for j, k in enumerate(CONSTRAINED_PARAMS)
  }
  for e in epochs:
    worth = repeated_token_worth(s[:, 5], e)
    for k, v in worth.items():
      out[f"{k}@{e:g}"] = percentile_interval(v, level)
  return out


# ----------------------------------------------------------------------------- coverage self-test

# Hoffmann et al.'s published law; the self-test's designs are IsoFLOP grids around its optimum.
CHINCHILLA_LAW = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
SELFTEST_BUDGETS = (1e18, 1e19, 1e20, 1e21, 1e22)


def simulate_isoflop(
    rng,
    law: dict = CHINCHILLA_LAW,
    budgets=SELFTEST_BUDGETS,
    sizes: int = 7,
    span_dex: float = 0.75,
    noise: float = 0.01,
):
  """One Chinchilla-like design: per budget, `sizes` models log-spaced +-span_dex decades
  around the compute-optimal N (jittered by up to a quarter step, as real ladders are), loss
  from `law` times log-normal noise of sd `noise` (about the run-to-run scatter of small
  LMs). Returns N, D, C, L arrays."""
  truth = ChinchillaFit(**law, objective=0.0, n_points=0)
  rows = []
  step = 2 * span_dex / (sizes - 1)
  for c in budgets:
    n_opt = truth.optimal(c)[0]
    shift = rng.uniform(-step / 4, step / 4)
    for f in np.linspace(-span_dex, span_dex, sizes) + shift:
      n = n_opt * 10**f
      rows.append((n, c / (6 * n), c))
  N, D, C = (np.array(v) for v in zip(*rows))
  L = truth.loss(N, D) * np.exp(rng.normal(0, noise, len(N)))
  return N, D, C, L


def quick_starts(N, D, L) -> np.ndarray:
  """Starts for a fast but global fit: the VPNLS solution (a good basin without a 5-D grid)
  plus 27 points of the coarse grid."""
  grid = grid_starts(COARSE_GRID, 2)[::9]
  try:
    v = fit_vpnls(N, D, L)
    return np.r_[v.theta[None], grid]
  except ValueError:
    return grid


def _selftest_one(job) -> dict:
  """Fit one simulated design; for each level and quantity, whether the interval holds the
  truth."""
  seed, n_boot, uncertainty, levels, noise = job
  rng = np.random.default_rng(seed)
  N, D, C, L = simulate_isoflop(rng, noise=noise)
  budget = 10 * max(SELFTEST_BUDGETS)
  truth = derived_quantities(np.array([list(CHINCHILLA_LAW.values())]), budget)
  starts = quick_starts(N, D, L)
  if uncertainty == "profile":
    law = fit_chinchilla(N, D, L, starts=starts, delta=np.inf)
    _, ivs, _ = profile_chinchilla(N, D, L, levels=levels, budget=budget, fit=law)
  else:
    law = fit_chinchilla(N, D, L, starts=starts)
    samples = bootstrap_chinchilla(N, D, L, law, n_boot, seed=seed)
    ivs = {lv: chinchilla_intervals(samples, lv, budget) for lv in levels}
  return {
      lv: {q: bool(iv[q][0] <= truth[q][0] <= iv[q][1]) for q in QUANTITIES}
      for lv, iv in ivs.items()
  }


def selftest(
    sims: int = 200,
    *,
    seed: int = 0,
    n_boot: int = 60,
    uncertainty: str = "bootstrap",
    levels=(0.8, 0.95),
    noise: float = 0.01,
    workers: int = 1,
) -> dict:
  """Empirical coverage of the nominal intervals on `sims` simulated designs (simulate_isoflop)
  from a known law: for a calibrated method, the 95% intervals hold the truth ~95% of the
  time. loss_opt is the loss at the compute-optimal point of 10x the largest budget."""
  if sims < 1:
    raise ValueError(f"--sims must be >= 1, got {sims}")
  if uncertainty not in ("bootstrap", "profile"):
    raise ValueError(f"uncertainty={uncertainty!r}: use bootstrap or profile")
  jobs = [(seed + i, n_boot, uncertainty, tuple(levels), noise) for i in range(sims)]
  if workers > 1:
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
      hits = list(pool.map(_selftest_one, jobs))
  else:
    hits = [_selftest_one(j) for j in jobs]
  coverage = {
      str(lv): {q: float(np.mean([h[lv][q] for h in hits])) for q in QUANTITIES} for lv in levels
  }
  return dict(
      sims=sims,
      coverage=coverage,
      uncertainty=uncertainty,
      n_boot=n_boot,
      noise=noise,
      law=CHINCHILLA_LAW,
      budgets=list(SELFTEST_BUDGETS),
      loss_opt_budget=10 * max(SELFTEST_BUDGETS),
  )


def format_coverage(result: dict) -> str:
  levels = list(result["coverage"])
  lines = [
      f"coverage over {result['sims']} simulated designs ({result['uncertainty']}"
      + (f", {result['n_boot']} resamples" if result["uncertainty"] == "bootstrap" else "")
      + f", noise {result['noise']:g}):",
      "quantity  " + "  ".join(f"nominal {float(lv):.0%}" for lv in levels),
  ]
  for q in QUANTITIES:
    lines.append(f"{q:9} " + "  ".join(f"{result['coverage'][lv][q]:12.1%}" for lv in levels))
  return "\n".join(lines)


# ----------------------------------------------------------------------------- tables + CLI


def load_table(
    csv: str,
    cols: Sequence[str],
    drop_top_loss: int = 0,
    loss_col: str | None = None,
    drop_invalid: bool = False,
) -> pd.DataFrame:
  """Read a CSV and check the columns used. Missing columns, and missing, non-numeric or
  non-positive values, raise ValueError naming them (drop_invalid=True drops those rows
  instead, with a note). drop_top_loss drops the K highest-loss rows (unstable small runs)."""
  try:
    df = pd.read_csv(csv)
  except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
    raise ValueError(f"{csv}: not a readable CSV ({type(e).__name__}: {cli.message(e)})") from None
  missing = [c for c in cols if c not in df.columns]
  if missing:
    raise ValueError(f"{csv}: no column(s) {missing}; columns are {list(df.columns)}")
  sub = df[list(cols)].apply(pd.to_numeric, errors="coerce")
  bad = ~(np.isfinite(sub) & (sub > 0))
  if bad.any().any():
    where = ", ".join(
        f"{c} ({int(bad[c].sum())} rows, first row {int(np.argmax(bad[c]))})"
        for c in cols
        if bad[c].any()
    )
    if not drop_invalid:
      raise ValueError(
          f"{csv}: missing, non-numeric or non-positive values in {where}; "
          "fix or remove those rows (or pass --drop-invalid)"
      )
    warnings.warn(f"{csv}: dropping rows with missing or non-positive values in {where}")
  df = df[~bad.any(axis=1)].reset_index(drop=True)
  df = best_lr_rows(average_seeds(df, loss_col or "val_loss"), loss_col or "val_loss")
  if drop_top_loss:
    if drop_top_loss >= len(df):
      raise ValueError(f"--drop-top-loss {drop_top_loss} would drop all {len(df)} rows")
    df = df.sort_values(loss_col).iloc[:-drop_top_loss].reset_index(drop=True)
  if df.empty:
    raise ValueError(f"{csv}: no rows left to fit")
  return df


# Columns a point's seeds are averaged over (the rest are the point's own: its size, tokens,
# FLOPs and hyperparameters are the same for every seed).
SEED_MEAN_COLUMNS = ("val_loss", "train_loss", "val_bpb", "wall_s")


def average_seeds(df: pd.DataFrame, loss_col: str = "val_loss") -> pd.DataFrame:
  """One row per point of a table whose points were trained with several seeds (rows sharing
  `point`, as eval.ladder writes with ladder.seeds > 1): losses averaged, `val_loss_se` that of
  the mean, `seeds` the count and `seed_loss_sd` the seeds' standard deviation of `loss_col`.

  Averaging first gives every point one weight in the Huber fit whatever its seed count, and
  makes a bootstrap over points resample a point with all its seeds (seed replicas are not
  independent points: resampling them apart would shrink the intervals). Tables without
  repeated `point` values come back unchanged."""
  if "point" not in df.columns:
    return df
  key = df["point"].astype(str).where(df["point"].notna() & (df["point"].astype(str) != ""))
  if "name" in df.columns:
    key = key.fillna(df["name"].astype(str))
  if key.isna().any() or not key.duplicated().any():
    return df
  key = key.rename("_point")  # a key named like a column would drop that column
  groups = df.groupby(key, sort=False)
  out = groups.first()
  for col in {*SEED_MEAN_COLUMNS, loss_col} & set(df.columns):
    out[col] = groups[col].apply(lambda s: pd.to_numeric(s, errors="coerce").mean())
  if "val_loss_se" in df.columns:
    se = pd.to_numeric(df["val_loss_se"], errors="coerce")
    out["val_loss_se"] = se.groupby(key, sort=False).apply(
        lambda s: float(np.sqrt((s**2).sum(min_count=1)) / len(s))
    )
  out["seeds"] = groups.size()
  out["seed_loss_sd"] = (
      pd.to_numeric(df[loss_col], errors="coerce").groupby(key, sort=False).std(ddof=1)
  )
  return out.reset_index(drop=True)


def best_lr_rows(df: pd.DataFrame, loss_col: str = "val_loss") -> pd.DataFrame:
  """An lr_sweep table (rows with `lr_exponent`) reduced to its best learning rate (and
  parametrization) per size and budget: a scaling fit over every grid point would mix
  well- and badly-tuned runs, which is what the sweep exists to avoid. `lr_choices` counts the
  rows each kept row won over. Other tables come back unchanged."""
  if "lr_exponent" not in df.columns or not {"size", "steps"} <= set(df.columns):
    return df
  swept = pd.to_numeric(df["lr_exponent"], errors="coerce").notna()
  if not swept.any():
    return df
  key = df["size"].astype(str) + "|" + df["steps"].astype(str)
  loss = pd.to_numeric(df[loss_col], errors="coerce")
  best = loss.groupby(key, sort=False).idxmin().dropna().astype(int)
  out = df.loc[best.to_numpy()].copy()
  out["lr_choices"] = key.value_counts().reindex(key.loc[best.to_numpy()]).to_numpy()
  return out.reset_index(drop=True)


def fit_range_mask(N, C, bounds) -> np.ndarray:
  """Rows inside the fit range of `bounds` (min_n, max_n, min_c, max_c: eval.fit's flags or
  eval.report's options; inclusive, None means unbounded); ValueError when no row is."""
  N, C = np.asarray(N, float), np.asarray(C, float)
  keep = np.ones(len(N), bool)
  for x, lo, hi in ((N, bounds.min_n, bounds.max_n), (C, bounds.min_c, bounds.max_c)):
    if lo is not None:
      keep &= x >= lo
    if hi is not None:
      keep &= x <= hi
  if keep.sum() == 0:
    raise ValueError(
        f"no rows inside the fit range (--min-n/--max-n/--min-c/--max-c); N spans "
        f"{N.min():.3g}..{N.max():.3g}, C spans {C.min():.3g}..{C.max():.3g}"
    )
  return keep


def _chinchilla_cli(args) -> dict:
  if (args.d_col is None) == (args.c_col is None):
    raise ValueError("chinchilla: give exactly one of --d-col or --c-col")
  cols = [args.n_col, args.d_col or args.c_col, args.loss_col]
  df = load_table(args.csv, cols, args.drop_top_loss, args.loss_col, args.drop_invalid)
  k = args.flops_per_param_token
  N = df[args.n_col].to_numpy(float)
  D = df[args.d_col].to_numpy(float) if args.d_col else df[args.c_col].to_numpy(float) / (k * N)
  keep = fit_range_mask(N, k * N * D, args)
  df, N, D = df[keep].reset_index(drop=True), N[keep], D[keep]
  L = df[args.loss_col].to_numpy(float)
  budget0 = args.budget[0] if args.budget else None
  samples = None
  if args.uncertainty == "profile":
    law, ivs, unbounded = profile_chinchilla(
        N, D, L, levels=(INTERVAL_LEVEL,), budget=budget0, flops_per_param_token=k, grid=args.grid
    )
    out = law.to_dict()
    out["intervals"] = ivs[INTERVAL_LEVEL]
    out["profile"] = dict(level=INTERVAL_LEVEL, unbounded=unbounded, loss_opt_budget=budget0)
  else:
    law = fit_chinchilla(N, D, L, grid=args.grid, delta=args.huber_delta)
    out = law.to_dict()
    if args.bootstrap:
      clusters = cluster_labels(df, args.bootstrap_by, args.n_col)
      samples = bootstrap_chinchilla(
          N,
          D,
          L,
          law,
          args.bootstrap,
          seed=args.seed,
          starts=args.bootstrap_starts,
          clusters=clusters,
      )
      out["intervals"] = chinchilla_intervals(samples, budget=budget0, flops_per_param_token=k)
      meta = dict(level=INTERVAL_LEVEL, starts=args.bootstrap_starts, by=args.bootstrap_by)
      out["bootstrap"] = _bootstrap_json(samples, PARAMS, **meta)
  out["flops_per_param_token"] = k
  if args.budget:
    out["predictions"] = [
        chinchilla_optimal_with_intervals(law, c, samples, k) for c in args.budget
    ]
  return out


def _constrained_cli(args) -> dict:
  if args.budget:
    raise ValueError("constrained: --budget is not supported (no compute-optimal prediction)")
  cols = [args.n_col, args.d_col, args.u_col, args.loss_col]
  df = load_table(args.csv, cols, args.drop_top_loss, args.loss_col, args.drop_invalid)
  N, D, U, L = (df[c].to_numpy(float) for c in cols)
  law = fit_data_constrained(N, D, U, L, grid=args.grid, delta=args.huber_delta)
  out = law.to_dict()
  worth = repeated_token_worth(law.R_D_star, np.array(args.epochs))
  out["repeated_token_worth"] = [
      dict(epochs=e, **{k: float(v[j]) for k, v in worth.items()})
      for j, e in enumerate(args.epochs)
  ]
  if args.bootstrap:
    cells = args.bootstrap_by == "cell"
    samples = bootstrap_data_constrained(
        N,
        D,
        U,
        L,
        law,
        args.bootstrap,
        seed=args.seed,
        clusters=None if cells else cluster_labels(df, args.bootstrap_by, args.n_col),
        groups=design_cells(D, U) if cells else None,
    )
    ivs = data_constrained_intervals(samples, args.epochs)
    out["intervals"] = {k: ivs[k] for k in CONSTRAINED_PARAMS}
    for row in out["repeated_token_worth"]:
      for k in ("marginal", "effective_epochs"):
        row[k + "_interval"] = ivs[f"{k}@{row['epochs']:g}"]
    meta = dict(level=INTERVAL_LEVEL, by=args.bootstrap_by)
    out["bootstrap"] = _bootstrap_json(samples, CONSTRAINED_PARAMS, **meta)
  return out


def _isoflop_cli(args) -> dict:
  cols = [args.n_col, args.c_col, args.loss_col] + [c for c in (args.budget_col, args.d_col) if c]
  df = load_table(args.csv, cols, args.drop_top_loss, args.loss_col, args.drop_invalid)
  keep = fit_range_mask(df[args.n_col].to_numpy(float), df[args.c_col].to_numpy(float), args)
  df = df[keep].reset_index(drop=True)
  col = lambda c: df[c].to_numpy(float) if c else None
  kw = dict(
      budgets=col(args.budget_col),
      D=col(args.d_col),
      flops_per_param_token=args.flops_per_param_token,
      n_boot=args.bootstrap,
      seed=args.seed,
  )
  N, C, L = col(args.n_col), col(args.c_col), col(args.loss_col)
  if args.method == "vpnls":
    out = isoflop_vpnls(N, C, L, **kw)
  else:
    fit = fit_isoflop(N, C, L, window_dex=args.window_dex, window_k=args.window_k, **kw)
    out = fit.to_dict()
  out["n_points"] = len(df)
  if args.budget:
    out["predictions"] = predict_from_json(out, args.budget)
  return out


def _powerlaw_cli(args) -> dict:
  frontier = args.cmd == "frontier"
  xcol = args.c_col if frontier else args.x_col
  df = load_table(
      args.csv, [xcol, args.loss_col], args.drop_top_loss, args.loss_col, args.drop_invalid
  )
  x, L = df[xcol].to_numpy(float), df[args.loss_col].to_numpy(float)
  fn = fit_frontier if frontier else fit_power_law
  fit = fn(x, L, delta=args.huber_delta)
  out = fit.to_dict()
  if frontier:
    out["gamma"] = out["alpha"]
  samples = None
  if args.bootstrap:
    samples = bootstrap_power_law(
        x, L, args.bootstrap, seed=args.seed, frontier=frontier, delta=args.huber_delta
    )
    columns = ["E", "A", "alpha"]
    out["intervals"] = {k: percentile_interval(samples[:, j]) for j, k in enumerate(columns)}
    out["bootstrap"] = _bootstrap_json(samples, columns)
  if args.budget:
    out["predictions"] = [power_prediction(fit, c, samples) for c in args.budget]
  return out


def power_prediction(fit: PowerLawFit, x, samples=None, level=INTERVAL_LEVEL) -> dict:
  out = dict(x=float(x), loss=float(fit.loss(x)))
  if samples is not None and len(samples):
    with np.errstate(all="ignore"):
      vals = samples[:, 0] + samples[:, 1] * float(x) ** -samples[:, 2]
    out["loss_interval"] = percentile_interval(vals, level)
  return out


def _bootstrap_json(samples, columns, **meta) -> dict:
  """A fit's `bootstrap` entry: the resampled parameter rows (predict reads them back)."""
  return dict(n=len(samples), **meta, samples=samples.tolist(), columns=list(columns))


def predict_from_json(fit_json: dict, budgets: Sequence[float]) -> list[dict]:
  """Compute-optimal N, D, loss (chinchilla JSON) or frontier loss (power-law JSON) per budget,
  with intervals when the JSON holds bootstrap samples."""
  samples = None
  if "bootstrap" in fit_json:
    samples = np.asarray(fit_json["bootstrap"]["samples"], float)
  if "k_n" in fit_json:
    return [
        dict(
            budget=c, N=fit_json["k_n"] * c ** fit_json["a"], D=fit_json["k_d"] * c ** fit_json["b"]
        )
        for c in budgets
    ]
  if "beta" in fit_json:
    fit = ChinchillaFit(
        *(fit_json[k] for k in PARAMS),
        objective=fit_json.get("objective", np.nan),
        n_points=fit_json.get("n_points", 0),
    )
    k = fit_json.get("flops_per_param_token", 6.0)
    return [chinchilla_optimal_with_intervals(fit, c, samples, k) for c in budgets]
  if "alpha" in fit_json:
    fit = PowerLawFit(fit_json["E"], fit_json["A"], fit_json["alpha"], np.nan, 0)
    return [power_prediction(fit, c, samples) for c in budgets]
  raise ValueError("predict: the JSON is not a chinchilla, isoflop or power-law fit")


def _fit_subcommand(sub, name: str, summary: str, handler, fit_range: bool = False):
  """A subcommand that fits a table: the flags every fit shares (and --min-n/--max-n/--min-c/
  --max-c where `fit_range`); main runs handler(args) -> the fit's JSON."""
  q = sub.add_parser(name, help=summary)
  q.set_defaults(handler=handler)
  q.add_argument("--csv", required=True)
  q.add_argument("--loss-col", required=True)
  q.add_argument(
      "--drop-top-loss",
      type=int,
      default=0,
      metavar="K",
      help="drop the K highest-loss rows before fitting",
  )
  q.add_argument(
      "--drop-invalid",
      action="store_true",
      help="drop rows with missing or non-positive values instead of failing",
  )
  q.add_argument(
      "--bootstrap",
      type=int,
      default=0,
      metavar="B",
      help="bootstrap resamples of runs for percentile intervals",
  )
  q.add_argument("--seed", type=int, default=0)
  q.add_argument(
      "--huber-delta",
      type=float,
      default=HUBER_DELTA,
      help="Huber threshold on log residuals (default 1e-3)",
  )
  q.add_argument(
      "--budget",
      type=float,
      action="append",
      default=[],
      help="FLOP budget to predict the compute-optimal point for (repeatable)",
  )
  q.add_argument("--json", help="write the fit here (default: stdout)")
  if fit_range:
    for flag, what in (
        ("--min-n", "smallest N"),
        ("--max-n", "largest N"),
        ("--min-c", "smallest FLOPs"),
        ("--max-c", "largest FLOPs"),
    ):
      q.add_argument(flag, type=float, default=None, help=f"fit range: {what} kept")
  return q


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m eval.fit", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="cmd", required=True)

  q = _fit_subcommand(
      sub, "chinchilla", "approach 3: L(N,D) = E + A/N^alpha + B/D^beta", _chinchilla_cli, True
  )
  q.add_argument("--n-col", required=True)
  q.add_argument("--d-col")
  q.add_argument("--c-col", help="FLOPs column; D = C / (k N), k = --flops-per-param-token")
  q.add_argument("--flops-per-param-token", type=float, default=6.0)
  q.add_argument(
      "--grid",
      default="full",
      choices=["full", "coarse"],
      help="start grid: full = 4500 starts (default), coarse = 243",
  )
  q.add_argument(
      "--uncertainty",
      default="bootstrap",
      choices=["bootstrap", "profile"],
      help="bootstrap refits (with --bootstrap B) or profile-likelihood intervals of "
      "a least-squares fit",
  )
  q.add_argument(
      "--bootstrap-by",
      default="point",
      choices=["point", "size", "run"],
      help="resample points, sizes (rows sharing N) or runs (rows sharing `run`, "
      "else `size`: WSD branches of one run)",
  )
  q.add_argument(
      "--bootstrap-starts",
      default="best",
      choices=["best", "coarse", "full"],
      help="starts for each resample: the pooled optimum, its distinct end points "
      "and 4 grid points (default), or a whole grid",
  )

  q = _fit_subcommand(
      sub,
      "constrained",
      "data-constrained law (Muennighoff et al. 2023): R_D*, R_N*",
      _constrained_cli,
  )
  q.add_argument("--n-col", required=True)
  q.add_argument("--d-col", required=True, help="tokens trained on")
  q.add_argument(
      "--u-col", required=True, help="unique tokens available (results.csv: unique_tokens)"
  )
  q.add_argument("--grid", default="full", choices=["full", "coarse"], help="Chinchilla starts")
  q.add_argument(
      "--epochs",
      type=float,
      nargs="+",
      default=[2.0, 4.0, 8.0, 16.0],
      help="epoch counts at which to report what a repeated token is worth",
  )
  q.add_argument(
      "--bootstrap-by",
      default="cell",
      choices=["cell", "point", "size", "run"],
      help="resample rows within design cells (same tokens, repeated or fresh; default), "
      "points, sizes or runs",
  )

  q = _fit_subcommand(
      sub, "isoflop", "approach 2: parabolas in log N per FLOP budget", _isoflop_cli, True
  )
  q.add_argument("--n-col", required=True)
  q.add_argument("--c-col", required=True)
  q.add_argument("--budget-col", help="budget label per run (default: snapped from C)")
  q.add_argument("--d-col", help="tokens column, to derive FLOPs per param-token per budget")
  q.add_argument("--flops-per-param-token", type=float, default=6.0)
  q.add_argument(
      "--method",
      default="parabola",
      choices=["parabola", "vpnls"],
      help="windowed parabolas (default) or VPNLS on the whole surface (cross-check)",
  )
  q.add_argument(
      "--window-dex",
      type=float,
      default=0.5,
      help="parabola window: sizes within this many decades of the minimum",
  )
  q.add_argument(
      "--window-k",
      type=int,
      default=None,
      help="parabola window: the K sizes nearest the minimum (overrides --window-dex)",
  )

  q = _fit_subcommand(sub, "powerlaw", "L(x) = E + A x^-alpha (e.g. x = N)", _powerlaw_cli)
  q.add_argument("--x-col", required=True)

  q = _fit_subcommand(
      sub, "frontier", "L*(C) = E + A C^-gamma on the Pareto frontier", _powerlaw_cli
  )
  q.add_argument("--c-col", required=True)

  q = sub.add_parser("predict", help="compute-optimal point(s) from a saved fit JSON")
  q.add_argument("--fit", required=True, help="JSON written by another subcommand")
  q.add_argument("--budget", type=float, action="append", required=True)
  q.add_argument("--json")

  q = sub.add_parser("selftest", help="coverage of the intervals on simulated Chinchilla designs")
  q.add_argument("--sims", type=int, default=200)
  q.add_argument("--bootstrap", type=int, default=60, help="resamples per simulated design")
  q.add_argument("--uncertainty", default="bootstrap", choices=["bootstrap", "profile"])
  q.add_argument("--noise", type=float, default=0.01, help="log-normal noise sd of each loss")
  q.add_argument("--seed", type=int, default=0)
  q.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
  q.add_argument("--json")
  return p


def _write(out: dict, path: str | None, brief_keys=("bootstrap", "budgets")):
  text = json.dumps(out, indent=2)
  if path:
    with open(path, "w") as f:
      f.write(text + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in brief_keys}, indent=2))
  else:
    print(text)


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"  # one line each
  if args.cmd == "selftest":
    result = selftest(
        args.sims,
        seed=args.seed,
        n_boot=args.bootstrap,
        uncertainty=args.uncertainty,
        noise=args.noise,
        workers=args.workers,
    )
    print(format_coverage(result))
    if args.json:
      with open(args.json, "w") as f:
        f.write(json.dumps(result, indent=2) + "\n")
    return 0
  if args.cmd == "predict":
    with open(args.fit) as f:
      out = dict(predictions=predict_from_json(json.load(f), args.budget))
  else:
    out = args.handler(args)
  _write(out, args.json)
  return 0


if __name__ == "__main__":
  cli.run(main)
