"""Approach 2 on designs where the old estimator failed: wide grids, flat and edge budgets."""

import warnings

import numpy as np
import pytest

from eval import fit

# alpha < beta makes each IsoFLOP curve asymmetric in log N: a parabola over a wide grid then
# puts its minimum in the wrong place, differently at each budget.
SKEWED = fit.ChinchillaFit(E=1.7, A=400.0, B=400.0, alpha=0.2, beta=0.6, objective=0.0, n_points=0)


def _wide_grid(seed, law=SKEWED, noise=0.002, half_span_dex=1.5):
  """The same sizes at every budget (as ladders are run), each budget keeping the sizes within
  half_span_dex decades of its optimum: 2.25 to 2.75 decades of N per budget, centred on the
  optimum at the middle budgets, off-centre at the smallest and largest."""
  budgets = np.geomspace(1e18, 1e21, 4)
  opts = [law.optimal(c)[0] for c in budgets]
  sizes = np.geomspace(opts[0] / 10**0.75, opts[-1] * 10**0.75, 16)
  rng = np.random.default_rng(seed)
  rows = []
  for c, n_opt in zip(budgets, opts):
    for n in sizes[np.abs(np.log10(sizes / n_opt)) <= half_span_dex]:
      d = c / (6 * n)
      rows.append((n, d, c, law.loss(n, d) * np.exp(rng.normal(0, noise))))
  return (np.array(v) for v in zip(*rows))


@pytest.mark.parametrize("seed", [0, 1])
def test_windowed_parabolas_recover_a_on_a_wide_grid(seed):
  N, D, C, L = _wide_grid(seed)
  spans = [np.ptp(np.log10(N[C == c])) for c in np.unique(C)]
  assert min(spans) >= 2.2 and max(spans) >= 2.7
  whole = fit.fit_isoflop(N, C, L, window_dex=10)  # one parabola over all sizes of a budget
  assert abs(whole.a - SKEWED.a) > 0.05
  iso = fit.fit_isoflop(N, C, L)
  assert iso.a == pytest.approx(SKEWED.a, abs=0.03)
  assert iso.a_interval[0] <= SKEWED.a <= iso.a_interval[1]
  assert iso.to_dict()["intervals"]["a"] == iso.a_interval
  near = fit.fit_isoflop(N, C, L, window_k=5)
  assert near.a == pytest.approx(SKEWED.a, abs=0.03) and near.window == "5 nearest sizes"
  vp = fit.isoflop_vpnls(N, C, L, D=D)
  assert vp["a"] == pytest.approx(SKEWED.a, abs=0.03) and vp["method"] == "vpnls"


def test_minima_are_weighted_by_their_own_uncertainty():
  """A budget sampled with fewer sizes near its minimum gets a larger standard error on ln N*,
  and so less weight in the exponent's fit."""
  N, D, C, L = _wide_grid(0)
  top = C == C.max()
  keep = ~top | (np.arange(len(C)) % 3 == 0)  # every third size at the largest budget
  iso = fit.fit_isoflop(N[keep], C[keep], L[keep], window_dex=1.0)
  assert np.all(np.isfinite(iso.log_n_se)) and len(iso.budgets) == 4
  assert np.argmax(iso.log_n_se) == 3
  d = iso.to_dict()["budgets"]
  assert d[3]["log_N_se"] > 1.5 * max(b["log_N_se"] for b in d[:3])


def test_edge_and_unbracketed_budgets_are_listed_not_fitted():
  N, D, C, L = _wide_grid(0)
  # A budget whose sizes all lie above its optimum: the smallest size is best.
  c_bad = 3e21
  n_opt = SKEWED.optimal(c_bad)[0]
  extra_n = n_opt * np.geomspace(3, 100, 5)
  extra_l = SKEWED.loss(extra_n, c_bad / (6 * extra_n))
  iso = fit.fit_isoflop(np.r_[N, extra_n], np.r_[C, np.full(5, c_bad)], np.r_[L, extra_l])
  assert len(iso.budgets) == 4
  (dropped,) = iso.dropped
  assert dropped["budget"] == c_bad and dropped["unbracketed"]
  assert "does not bracket a minimum" in dropped["reason"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_nan_or_overflow_when_resampling_flat_budgets(seed):
  """Budgets whose loss does not change with N (flat within the noise) give wild or concave
  parabolas under resampling (seed 1 made the old bootstrap raise OverflowError in math.exp);
  the bootstrap skips those, nothing warns, every number is finite."""
  rng = np.random.default_rng(seed)
  rows = []
  for c, curv in zip([1e15, 1e16, 1e17, 1e18, 1e19], [0.02, 0.0, 0.02, 0.0, 0.02]):
    for x in np.linspace(-1, 1, 7):
      n = 1e6 * (c / 1e15) ** 0.5 * 10**x
      rows.append((n, c, 2.0 + curv * x**2 + rng.normal(0, 0.002)))
  N, C, L = (np.array(v) for v in zip(*rows))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    iso = fit.fit_isoflop(N, C, L, n_boot=300)
  d = iso.to_dict()
  assert np.all(np.isfinite([d["a"], d["b"], *d["a_interval"], *d["b_interval"]]))
  assert np.all(np.isfinite(iso.optimal(1e40)))
  assert np.all(np.isfinite(fit.optimal_allocation([1.0, 1e300, 1e-300, 50.0, 1e-6], 1e300)[2]))


def test_one_budget_is_a_named_error():
  N = np.geomspace(1e6, 1e8, 7)
  with pytest.raises(ValueError, match=">= 2 FLOP budgets.*has 1"):
    fit.fit_isoflop(N, np.full(7, 1e18), 2 + (np.log(N) - 16) ** 2 / 100)
