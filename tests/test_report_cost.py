"""eval.report's cost: the study's total, per budget, and the allocation table's prices, from
the cost columns eval.ladder records (hand-computed values on a constructed table)."""

import json

import numpy as np
import pandas as pd
import pytest

from eval import fit, ladder, report

LAW = fit.ChinchillaFit(E=1.2, A=30.0, B=60.0, alpha=0.35, beta=0.3, objective=0.0, n_points=0)


def _write_isoflop(d, usd=True):
  """5 sizes at each of 3 budgets; every run cost 1e-12 chip-hours per FLOP, 2 USD per
  chip-hour, 0.5 kWh per chip-hour and 0.2 kg CO2e per chip-hour."""
  rows = []
  for C in [1e13, 1e14, 1e15]:
    n_opt, _, _ = LAW.optimal(C)
    for f in np.linspace(-0.6, 0.6, 5):
      N = n_opt * 10**f
      chip_hours = C * 1e-12
      rows.append(
          dict(
              name=f"c{C:.0e}_{f:.1f}",
              params_total=N,
              tokens=C / (6 * N),
              flops=C,
              budget=C,
              val_loss=LAW.loss(N, C / (6 * N)),
              chip_hours=chip_hours,
              kwh=0.5 * chip_hours,
              usd=2.0 * chip_hours if usd else "",
              kgco2e=0.2 * chip_hours,
          )
      )
  pd.DataFrame(rows).to_csv(d / "results.csv", index=False)


def test_report_states_the_study_cost_and_prices_the_next_budget(tmp_path):
  _write_isoflop(tmp_path)
  a = report.analyze(tmp_path, bootstrap=0, grid="coarse", budgets=[1e16])
  # 5 runs at each budget: 5 x (10 + 100 + 1000) = 5550 chip-hours, 11100 USD.
  assert a.cost["runs"] == 15
  assert a.cost["chip_hours"] == pytest.approx(5550.0)
  assert a.cost["usd"] == pytest.approx(11100.0)
  assert a.cost["kwh"] == pytest.approx(2775.0) and a.cost["kgco2e"] == pytest.approx(1110.0)
  assert [r["chip_hours"] for r in a.cost["per_budget"]] == pytest.approx([50, 500, 5000])
  # The next budget at the study's rate: 1e16 FLOPs x 1e-12 chip-hours per FLOP.
  nxt = report.budget_cost(a, 1e16)
  assert nxt["chip_hours"] == pytest.approx(1e4) and nxt["usd"] == pytest.approx(2e4)
  md = report.render_markdown(a)
  assert (
      "This study cost 5.55e+03 chip-hours, $1.11e+04, 2.78e+03 kWh, 1.11e+03 kg CO2e (est." in md
  )
  assert "est. cost at this study's rate |" in md
  assert "| 1e+16 |" in md and "1e+04 chip-hours, $2e+04" in md
  assert "## Cost (estimates)" in md and "| 1e+15 | 5000 | 1e+04 | 2500 | 1000 |" in md
  assert json.loads(json.dumps(report.analysis_facts(a)))["cost"]["usd"] == pytest.approx(11100)


def test_unknown_prices_stay_unknown_and_no_cost_columns_means_no_cost(tmp_path):
  _write_isoflop(tmp_path, usd=False)
  a = report.analyze(tmp_path, bootstrap=0, grid="coarse")
  assert a.cost["usd"] is None and a.cost["chip_hours"] == pytest.approx(5550.0)
  assert "5.55e+03 chip-hours, USD unknown" in report.render_markdown(a)
  df = pd.read_csv(tmp_path / "results.csv").drop(columns=list(report.COST_COLUMNS))
  df.to_csv(tmp_path / "results.csv", index=False)
  a = report.analyze(tmp_path, bootstrap=0, grid="coarse")
  assert a.cost == {} and "study cost" not in report.render_markdown(a)


def test_ladder_rows_carry_the_runs_cost_estimate():
  out = {"cost": {"chip_hours": 0.5, "kwh": None, "usd": 1.8, "kgco2e": None}}
  assert ladder._cost_columns(out) == {"chip_hours": 0.5, "kwh": "", "usd": 1.8, "kgco2e": ""}
  assert ladder._cost_columns({}) == {"chip_hours": "", "kwh": "", "usd": "", "kgco2e": ""}
  i = ladder.RESULT_COLUMNS.index(report.COST_COLUMNS[0])
  assert ladder.RESULT_COLUMNS[i : i + len(report.COST_COLUMNS)] == report.COST_COLUMNS
