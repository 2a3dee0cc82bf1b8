"""Saturation metrics on constructed data whose answer is known."""

import math

import numpy as np
import pytest

from eval import fit
from eval import saturation as sat

LAW = fit.ChinchillaFit(E=1.2, A=30.0, B=60.0, alpha=0.35, beta=0.3, objective=0.0, n_points=0)


def _grid(noise=0.0, seed=0, sizes=6, bump_small=0.0):
  rng = np.random.default_rng(seed)
  rows = []
  for i, N in enumerate(np.geomspace(1e5, 1e7, sizes)):
    for D in np.geomspace(2e6, 5e7, 3):
      L = LAW.loss(N, D) * np.exp(rng.normal(0, noise)) * (1 + (bump_small if i < 2 else 0))
      rows.append((N, D, L))
  return (np.array(v) for v in zip(*rows))


def test_doubling_returns_match_direct_differences():
  N, D = 1e6, 1e8
  r = sat.doubling_returns(LAW, N, D)
  assert r["per_doubling_N"] == pytest.approx(LAW.loss(N, D) - LAW.loss(2 * N, D))
  assert r["per_doubling_D"] == pytest.approx(LAW.loss(N, D) - LAW.loss(N, 2 * D))
  samples = np.array([[1.2, 30.0, 60.0, a, 0.3] for a in np.linspace(0.3, 0.4, 21)])
  r = sat.doubling_returns(LAW, N, D, samples)
  lo, hi = r["per_doubling_N_interval"]
  assert lo < r["per_doubling_N"] < hi


def test_local_exponents_and_headroom():
  x = np.geomspace(1e5, 1e8, 6)
  L = 2.0 + 40 * x**-0.3
  k = sat.local_exponents(x, L, E=2.0)["exponent"]
  np.testing.assert_allclose(k, 0.3, rtol=1e-9)
  assert not sat.exponent_trend(k)["falling"]
  # Measured against the wrong floor (0) the exponent falls up the ladder: saturation.
  k0 = sat.local_exponents(x, L, E=0.0)["exponent"]
  assert np.all(np.diff(k0) < 0) and sat.exponent_trend(k0)["falling"]
  np.testing.assert_allclose(sat.headroom(L, 2.0), (L - 2.0) / L)
  rr = sat.rung_returns(x[::-1], L[::-1])  # unsorted input is sorted
  assert rr["per_doubling"][0] == pytest.approx((L[0] - L[1]) / math.log2(x[1] / x[0]))


def test_leave_one_rung_out_is_small_on_an_exact_law():
  N, D, L = _grid(noise=0.002)
  loo = sat.leave_one_rung_out(N, D, L)
  assert len(loo) == 6
  assert all(abs(r["mean_rel_error"]) < 0.01 for r in loo)
  assert loo[-1]["kind"] == "extrapolation" and loo[2]["kind"] == "interpolation"


def test_trend_break_flags_small_models_off_the_law():
  N, D, L = _grid(noise=0.002)
  floor = LAW.E + LAW.B * D**-LAW.beta  # per-row floor: rows with different D compare
  tb = sat.trend_break(N, L, floor)
  assert not tb["break_detected"] and tb["local_alpha_large"] == pytest.approx(0.35, abs=0.03)
  N, D, L = _grid(noise=0.002, bump_small=0.06)
  tb = sat.trend_break(N, L, floor)
  assert tb["break_detected"] and tb["t"] > tb["t_critical"] and "above" in tb["verdict"]
  assert tb["mean_rel_deviation_small"] == pytest.approx(0.06, abs=0.01)
  assert "need >= 4" in sat.trend_break(N[:6], L[:6], 1.0)["verdict"]


def test_plateau_detection():
  rng = np.random.default_rng(0)
  t = np.geomspace(1e5, 1e8, 200)
  improving = 2.0 + 30 * t**-0.3 + rng.normal(0, 0.002, 200)
  p = sat.plateau(t, improving)
  assert not p["plateau"] and not p["late_rise"] and "improving" in p["verdict"]
  flat = 2.0 + 30 * np.minimum(t, 1e6) ** -0.3 + rng.normal(0, 0.01, 200)
  p = sat.plateau(t, flat)
  assert p["plateau"] and not p["late_rise"] and "plateau" in p["verdict"]
  rising = flat + np.where(t > 3e7, 0.2 * np.log(t / 3e7), 0)
  assert sat.plateau(t, rising)["late_rise"]
  noisy = 2.5 + np.random.default_rng(1).normal(0, 0.5, 200)  # too noisy to rule out a gain
  p = sat.plateau(t, noisy)
  assert not p["plateau"] and not p["improving"] and "inconclusive" in p["verdict"]


def test_head_spectrum_stable_rank_and_entropy():
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(260, 64)))
  q -= q.mean(axis=0)
  spread = sat.head_spectrum(q * 3.0)  # (almost) all 64 singular values equal
  assert spread["stable_rank"] == pytest.approx(64, rel=0.02)
  assert spread["sv_entropy"] == pytest.approx(1.0, abs=0.01)
  assert spread["effective_rank"] == pytest.approx(64, rel=0.02)
  assert "no sign" in sat.head_verdict(spread)
  # A shared direction dominates the raw spectrum but not the centred one.
  shifted = q * 3.0 + 5.0 * rng.normal(size=64)
  s = sat.head_spectrum(shifted.T)  # [d, vocab] works too
  assert s["stable_rank"] < 2 and s["centered_stable_rank"] == pytest.approx(64, rel=0.02)
  low = rng.normal(size=(260, 4)) @ rng.normal(size=(4, 64)) + 1e-3 * rng.normal(size=(260, 64))
  s = sat.head_spectrum(low)
  assert s["centered_effective_rank"] < 8
  assert "softmax-bottleneck" in sat.head_verdict(s)
  with pytest.raises(ValueError, match="2-D"):
    sat.head_spectrum(np.zeros(3))


def _clustered_grid(rng, size_sd=0.01, row_sd=0.002):
  """An exact law with noise shared by the rows of one size (one run and its WSD branches)."""
  rows = []
  for N in np.geomspace(1e5, 1e7, 6):
    shared = rng.normal(0, size_sd)
    for D in np.geomspace(2e6, 5e7, 3):
      rows.append((N, D, LAW.loss(N, D) * np.exp(shared + rng.normal(0, row_sd))))
  return (np.array(v) for v in zip(*rows))


def test_trend_break_false_alarms_stay_near_nominal_with_clustered_noise():
  """Rows of one size share noise. Treating rows as independent (one cluster per row, the old
  test) flags a break far more often than the nominal 1%; clustering by size does not."""
  rng = np.random.default_rng(0)
  naive = clustered = 0
  sims = 300
  for _ in range(sims):
    N, D, L = _clustered_grid(rng)
    floor = LAW.E + LAW.B * D**-LAW.beta
    naive += sat.trend_break(N, L, floor, clusters=np.arange(len(N)))["break_detected"]
    clustered += sat.trend_break(N, L, floor)["break_detected"]
  assert naive / sims > 0.10
  assert clustered / sims <= 0.04


def test_trend_break_test_fits_its_floor_without_the_small_sizes():
  N, D, L = _grid(noise=0.002, bump_small=0.08)
  tb = sat.trend_break_test(N, D, L)
  assert tb["break_detected"] and "fitted on the large sizes" in tb["floor"]
  N, D, L = _grid(noise=0.002)
  assert not sat.trend_break_test(N, D, L)["break_detected"]


def _wsd_curve(rng, flat_from=2e6, cool_from=8e6, total=1e7, points=200):
  """Loss that stops improving at flat_from at constant LR, then drops in the cooldown."""
  t = np.linspace(total / points, total, points)
  lr = np.where(t < cool_from, 1e-3, 1e-3 * (total - t) / (total - cool_from))
  lr[:5] = np.linspace(2e-4, 1e-3, 5)  # warmup
  loss = 2.0 + 30 * np.minimum(t, flat_from) ** -0.3
  loss = loss - np.where(t > cool_from, 0.1 * (t - cool_from) / (total - cool_from), 0)
  return t, loss + rng.normal(0, 0.001, points), lr


def test_plateau_is_judged_before_the_wsd_cooldown():
  rng = np.random.default_rng(0)
  t, loss, lr = _wsd_curve(rng)
  end = sat.stable_phase_end(lr)
  assert t[end - 1] <= 8e6 < t[end]
  blind = sat.plateau(t, loss)  # the last 20% is the cooldown: the loss falls there
  assert blind["improving"] and not blind["plateau"]
  p = sat.plateau(t, loss, lr=lr)
  assert p["plateau"] and not p["improving"] and "stable phase" in p["phase"]
  # A cosine schedule has no stable phase: the whole curve is judged.
  cos = 1e-3 * 0.5 * (1 + np.cos(np.pi * t / t.max()))
  assert sat.stable_phase_end(cos) is None
  assert sat.plateau(t, loss, lr=cos)["phase"] == "the whole curve"
