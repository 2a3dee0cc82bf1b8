"""The data-constrained law (Muennighoff et al. 2023) in eval.fit: gradient, recovery of R_D*
from simulated ladders, what a repeated token is worth, and one-line errors."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.optimize

from eval import fit

TRUTH = dict(R_D_star=15.4, R_N_star=5.3)  # the published fit
SIZES = (1e8, 2e8, 5e8, 1e9, 2e9)
EPOCHS = (0.25, 0.5, 1, 2, 4, 8, 16, 32)
UNIQUE = 1e10


def true_law():
  base = fit.ChinchillaFit(**fit.CHINCHILLA_LAW, objective=0.0, n_points=0)
  return fit.DataConstrainedFit(
      base, **TRUTH, objective=0, n_points=0, n_single_epoch=0, n_at_optimum=0, grad_norm=0
  )


def simulate(seed=0, noise=0.005):
  """Sizes x epochs of UNIQUE tokens, and for every e > 1 a fresh-data twin (unique tokens
  far beyond D): the design of the `epochs` ladder scheme. Log-normal noise of sd `noise`."""
  N, E = (a.ravel() for a in np.meshgrid(SIZES, EPOCHS))
  rep = E > 1
  N, D = np.r_[N, N[rep]], np.r_[E, E[rep]] * UNIQUE
  U = np.r_[np.full(len(E), UNIQUE), np.full(rep.sum(), 1e3 * UNIQUE)]
  L = true_law().loss(N, D, U) * np.exp(np.random.default_rng(seed).normal(0, noise, len(N)))
  return N, D, U, L


def test_gradient_matches_finite_differences():
  N, D, U, L = simulate()
  params = true_law().base.params
  terms = fit.repetition_terms(N, D, U, params)
  assert (terms["R_N"] > 0).any() and (terms["R_D"] > 0).any()
  f = lambda x: fit.constrained_objective(x, terms, params, np.log(L), np.inf)
  theta = np.log([10.0, 3.0])
  np.testing.assert_allclose(
      f(theta)[1], scipy.optimize.approx_fprime(theta, lambda x: f(x)[0], 1e-7), rtol=1e-4
  )


def test_noiseless_points_give_back_the_law():
  N, D, U, L = simulate(noise=0.0)
  law = fit.fit_data_constrained(N, D, U, L, base=true_law().base)
  assert law.R_D_star == pytest.approx(TRUTH["R_D_star"], rel=1e-4)
  assert law.R_N_star == pytest.approx(TRUTH["R_N_star"], rel=1e-3)
  assert law.grad_norm < fit.GRAD_TOL


def test_fit_recovers_r_d_star_within_its_bootstrap_interval():
  N, D, U, L = simulate(seed=0)
  law = fit.fit_data_constrained(N, D, U, L, grid="coarse")
  assert law.R_D_star == pytest.approx(TRUTH["R_D_star"], rel=0.3)
  assert law.to_dict()["verified"]  # stationary, and several starts agree
  samples = fit.bootstrap_data_constrained(N, D, U, L, law, 20, seed=1)
  assert len(samples) >= 15
  lo, hi = fit.data_constrained_intervals(samples)["R_D_star"]
  assert lo <= TRUTH["R_D_star"] <= hi
  assert hi < 3 * TRUTH["R_D_star"]  # bounded: the data pin R_D* down


def test_repeated_token_worth():
  worth = fit.repeated_token_worth(15.4, np.array([1.0, 2.0, 16.0]))
  np.testing.assert_allclose(worth["marginal"], np.exp(-np.array([0, 1, 15]) / 15.4))
  assert worth["effective_epochs"][0] == 1.0
  assert 1 < worth["effective_epochs"][2] < 16
  # Unbounded R* (repeats as good as fresh data): e epochs are worth e.
  assert fit.repeated_token_worth(1e9, 16.0)["effective_epochs"] == pytest.approx(16.0)


def test_bad_tables_give_one_line_errors(tmp_path, capsys):
  N, D, U, L = simulate()
  single = D <= U
  with pytest.raises(ValueError, match="no row repeats its data"):
    fit.fit_data_constrained(N[single], D[single], U[single], L[single])
  few = np.flatnonzero(single)[:4].tolist() + np.flatnonzero(~single).tolist()
  with pytest.raises(ValueError, match=">= 5 single-epoch rows"):
    fit.fit_data_constrained(N[few], D[few], U[few], L[few])
  csv = tmp_path / "r.csv"
  pd.DataFrame(dict(n=N, d=D, loss=L)).to_csv(csv, index=False)
  args = ["constrained", "--csv", str(csv), "--n-col", "n", "--d-col", "d", "--u-col", "u"]
  with pytest.raises(ValueError, match=r"no column\(s\) \['u'\]"):
    fit.main(args + ["--loss-col", "loss"])


def test_cli_writes_the_fit_and_the_worth_of_a_repeat(tmp_path):
  N, D, U, L = simulate(seed=2)
  csv, out = tmp_path / "r.csv", tmp_path / "fit.json"
  pd.DataFrame(dict(n=N, d=D, u=U, loss=L)).to_csv(csv, index=False)
  fit.main(
      [
          "constrained",
          "--csv",
          str(csv),
          "--n-col",
          "n",
          "--d-col",
          "d",
          "--u-col",
          "u",
          "--loss-col",
          "loss",
          "--grid",
          "coarse",
          "--bootstrap",
          "4",
          "--epochs",
          "4",
          "--json",
          str(out),
      ]
  )
  res = json.loads(out.read_text())
  assert res["law"] == "muennighoff2023" and res["n_single_epoch"] == 5 * 3 + 5 * 5
  (row,) = res["repeated_token_worth"]
  assert row["marginal"] == pytest.approx(math.exp(-3 / res["R_D_star"]))
  lo, hi = row["marginal_interval"]
  assert lo <= hi and len(res["bootstrap"]["samples"]) == res["bootstrap"]["n"]


def test_r_n_star_is_none_when_no_model_exceeds_the_optimal_size_for_its_data():
  N, D, U, L = simulate()
  small = (N < 2e8) & (D >= UNIQUE)  # N below N_opt(U_D >= 1e10) ~ 3e8: no excess N
  N, D, U, L = N[small], D[small], U[small], L[small]
  law = fit.fit_data_constrained(N, D, U, L, base=true_law().base)
  assert law.R_N_star is None and law.R_D_star == pytest.approx(15.4, rel=0.3)
  samples = np.c_[np.tile(law.params[:6], (3, 1)), np.full(3, np.nan)]
  assert fit.data_constrained_intervals(samples)["R_N_star"] is None
  with pytest.raises(ValueError, match="no bootstrap resample could be refitted"):
    fit.data_constrained_intervals(np.zeros((0, 7)))


def test_resampling_within_design_cells_keeps_every_repetition_count():
  N, D, U, L = simulate()
  cells = fit.design_cells(D, U)
  assert len(set(cells)) == len(EPOCHS) + sum(e > 1 for e in EPOCHS)  # repeated + fresh twins
  i = fit._resample_index(len(L), np.random.default_rng(0), groups=cells)
  assert sorted(cells[i]) == sorted(cells)  # same design, sizes drawn with replacement
