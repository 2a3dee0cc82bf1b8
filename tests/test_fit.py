"""Scaling-law fits recover known laws from noisy points; CLI contracts of eval.fit."""

import json

import numpy as np
import pandas as pd
import pytest

from eval import fit

TRUE = fit.ChinchillaFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, objective=0.0, n_points=0)


def _chinchilla_points(n=50, noise=0.005, seed=0):
  rng = np.random.default_rng(seed)
  N = np.exp(rng.uniform(np.log(1e7), np.log(1e10), n))
  D = np.exp(rng.uniform(np.log(1e9), np.log(1e12), n))
  L = TRUE.loss(N, D) * np.exp(rng.normal(0, noise, n))
  return N, D, L


def _isoflop_points(noise=0.002, seed=0, jitter=0.0):
  rng = np.random.default_rng(seed)
  rows = []
  for C in [1e18, 1e19, 1e20, 1e21]:
    n_opt, _, _ = TRUE.optimal(C)
    for f in np.linspace(-0.8, 0.8, 9):
      N = n_opt * 10**f
      c = C * np.exp(rng.normal(0, jitter))
      rows.append((N, c / (6 * N), c, C, TRUE.loss(N, C / (6 * N)) * np.exp(rng.normal(0, noise))))
  return (np.array(v) for v in zip(*rows))


def test_objective_gradient_matches_finite_differences():
  N, D, L = _chinchilla_points(n=20)
  logx = np.stack([np.log(N), np.log(D)])
  theta = np.array([6.0, 6.0, 0.5, 0.3, 0.3])
  for reduction in ("sum", "mean"):
    f0, g = fit.lse_huber_objective(theta, logx, np.log(L), 1e-3, reduction)
    num = np.zeros(5)
    for i in range(5):
      e = np.zeros(5)
      e[i] = 1e-6
      num[i] = (
          fit.lse_huber_objective(theta + e, logx, np.log(L), 1e-3, reduction)[0]
          - fit.lse_huber_objective(theta - e, logx, np.log(L), 1e-3, reduction)[0]
      ) / 2e-6
    np.testing.assert_allclose(g, num, rtol=1e-4, atol=1e-9)
  # Huber: quadratic inside delta, linear outside.
  f_sum = fit.lse_huber_objective(theta, logx, np.log(L), 1e-3, "sum")[0]
  f_mean = fit.lse_huber_objective(theta, logx, np.log(L), 1e-3, "mean")[0]
  assert f_sum == pytest.approx(20 * f_mean)


def test_chinchilla_recovers_known_law():
  N, D, L = _chinchilla_points()
  f = fit.fit_chinchilla(N, D, L, grid="coarse")
  assert f.converged and f.n_starts == 243
  assert f.E == pytest.approx(TRUE.E, rel=0.03)
  assert f.alpha == pytest.approx(TRUE.alpha, abs=0.03)
  assert f.beta == pytest.approx(TRUE.beta, abs=0.03)
  assert f.a == pytest.approx(TRUE.a, abs=0.03)
  # The fitted law predicts held-out points to within the noise.
  Nt, Dt, _ = _chinchilla_points(n=30, seed=9)
  np.testing.assert_allclose(f.loss(Nt, Dt), TRUE.loss(Nt, Dt), rtol=0.01)


def test_mean_objective_stops_early_where_summed_does_not():
  """Besiroglu et al. 2024: averaging the Huber loss shrinks the gradient by n, and L-BFGS-B's
  default tolerances (tolerances="scipy") then stop at a worse point. Same data, same starts.
  On the rescaled objective (the default) both reductions reach the same optimum."""
  N, D, L = _chinchilla_points(seed=0)
  f_sum = fit.fit_chinchilla(N, D, L, grid="coarse", reduction="sum", tolerances="scipy")
  f_mean = fit.fit_chinchilla(N, D, L, grid="coarse", reduction="mean", tolerances="scipy")
  # Both report the summed objective: the mean variant's is worse...
  assert f_mean.objective > 1.01 * f_sum.objective
  # ...its parameters are elsewhere...
  assert abs(f_mean.B - f_sum.B) > 0.05 * f_sum.B
  # ...and its end point is not a stationary point of the objective; the summed fit's is.
  logx, logl = np.stack([np.log(N), np.log(D)]), np.log(L)
  g_sum = np.abs(fit.lse_huber_objective(f_sum.theta, logx, logl)[1]).max()
  g_mean = np.abs(fit.lse_huber_objective(f_mean.theta, logx, logl)[1]).max()
  assert g_sum < 1e-4 < g_mean and g_mean > 20 * g_sum
  f_mean_scaled = fit.fit_chinchilla(N, D, L, grid="coarse", reduction="mean")
  assert f_mean_scaled.objective == pytest.approx(f_sum.objective, rel=1e-5)


def test_full_grid_is_the_published_grid():
  starts = fit.grid_starts(fit.FULL_GRID, 2)
  assert starts.shape == (4500, 5)
  assert sorted(set(starts[:, 3])) == [0.0, 0.5, 1.0, 1.5, 2.0]  # alpha
  assert sorted(set(starts[:, 2])) == [-1.0, -0.5, 0.0, 0.5, 1.0]  # e
  assert sorted(set(starts[:, 0])) == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]  # a


def test_chinchilla_cli_d_col_and_c_col_agree(tmp_path):
  N, D, L = _chinchilla_points(n=25, seed=3)
  csv = tmp_path / "runs.csv"
  pd.DataFrame(dict(n=N, d=D, c=6 * N * D, loss=L)).to_csv(csv, index=False)
  out_d, out_c = tmp_path / "d.json", tmp_path / "c.json"
  base = ["chinchilla", "--csv", str(csv), "--n-col", "n", "--loss-col", "loss", "--grid", "coarse"]
  assert fit.main(base + ["--d-col", "d", "--json", str(out_d)]) == 0
  assert (
      fit.main(
          base + ["--c-col", "c", "--bootstrap", "8", "--budget", "1e21", "--json", str(out_c)]
      )
      == 0
  )
  jd, jc = json.loads(out_d.read_text()), json.loads(out_c.read_text())
  for k in ("E", "A", "B", "alpha", "beta", "objective", "n_points", "a", "b"):
    assert k in jc
  assert jc["n_points"] == 25
  assert jc["alpha"] == pytest.approx(jd["alpha"], rel=1e-4)
  assert jc["a"] == pytest.approx(jc["beta"] / (jc["alpha"] + jc["beta"]))
  lo, hi = jc["intervals"]["E"]
  assert lo <= hi and len(jc["bootstrap"]["samples"]) == 8
  p = jc["predictions"][0]
  assert p["budget"] == 1e21 and p["N_interval"][0] <= p["N"] <= p["N_interval"][1]
  assert 6 * p["N"] * p["D"] == pytest.approx(1e21)
  # predict from the saved JSON gives the same point.
  out_p = tmp_path / "p.json"
  assert fit.main(["predict", "--fit", str(out_c), "--budget", "1e21", "--json", str(out_p)]) == 0
  assert json.loads(out_p.read_text())["predictions"][0]["N"] == pytest.approx(p["N"])


def test_cli_errors_name_the_column_and_drop_top_loss(tmp_path):
  N, D, L = _chinchilla_points(n=12, seed=4)
  csv = tmp_path / "runs.csv"
  pd.DataFrame(dict(n=N, d=D, loss=L)).to_csv(csv, index=False)
  with pytest.raises(ValueError, match="no column.*'tokens'"):
    fit.main(
        ["chinchilla", "--csv", str(csv), "--n-col", "n", "--d-col", "tokens", "--loss-col", "loss"]
    )
  df = fit.load_table(str(csv), ["n", "d", "loss"], drop_top_loss=3, loss_col="loss")
  assert len(df) == 9 and df["loss"].max() == pytest.approx(np.sort(L)[-4])
  with pytest.raises(ValueError, match="non-positive"):
    fit.fit_chinchilla(np.r_[N[:-1], 0.0], D, L, grid="coarse")


def test_isoflop_recovers_exponents_with_snapped_budgets(tmp_path):
  N, D, C, budget, L = _isoflop_points(jitter=0.02)
  iso = fit.fit_isoflop(N, C, L, n_boot=50)
  assert len(iso.budgets) == 4 and iso.in_range.all()
  assert iso.a == pytest.approx(TRUE.a, abs=0.02)
  assert iso.b == pytest.approx(TRUE.b, abs=0.02)
  assert iso.a_interval[0] <= iso.a <= iso.a_interval[1]
  assert iso.a_interval[0] - 0.01 <= TRUE.a <= iso.a_interval[1] + 0.01
  n_opt, _, _ = TRUE.optimal(1e20)
  np.testing.assert_allclose(iso.optimal(1e20)[0], n_opt, rtol=0.1)
  # CLI with explicit budget column.
  csv = tmp_path / "iso.csv"
  pd.DataFrame(dict(n=N, c=C, b=budget, loss=L)).to_csv(csv, index=False)
  out = tmp_path / "iso.json"
  assert (
      fit.main(
          [
              "isoflop",
              "--csv",
              str(csv),
              "--n-col",
              "n",
              "--c-col",
              "c",
              "--budget-col",
              "b",
              "--loss-col",
              "loss",
              "--budget",
              "1e22",
              "--json",
              str(out),
          ]
      )
      == 0
  )
  j = json.loads(out.read_text())
  assert j["a"] == pytest.approx(TRUE.a, abs=0.02) and j["n_budgets"] == 4
  assert len(j["a_interval"]) == 2 and j["predictions"][0]["budget"] == 1e22


def test_snap_budgets_groups_nearby_flops():
  C = np.array([1e18, 1.05e18, 0.97e18, 1e19, 1.02e19])
  labels = fit.snap_budgets(C)
  assert len(np.unique(labels)) == 2
  assert labels[0] == labels[1] == labels[2]


def test_power_law_and_frontier_recover_known_exponents():
  rng = np.random.default_rng(0)
  x = np.geomspace(1e6, 1e9, 10)
  L = (2.0 + 50 * x**-0.3) * np.exp(rng.normal(0, 0.001, 10))
  p = fit.fit_power_law(x, L)
  assert p.E == pytest.approx(2.0, rel=0.02) and p.alpha == pytest.approx(0.3, abs=0.03)
  # Frontier: dominated runs (above the envelope) are ignored.
  C = np.geomspace(1e15, 1e20, 12)
  Lc = 1.5 + 300 * C**-0.12
  C_all = np.r_[C, C[3:6]]
  L_all = np.r_[Lc, Lc[3:6] + 0.3]
  assert len(fit.pareto_frontier(C_all, L_all)) == 12
  fr = fit.fit_frontier(C_all, L_all)
  assert fr.alpha == pytest.approx(0.12, abs=0.01) and fr.E == pytest.approx(1.5, rel=0.02)
