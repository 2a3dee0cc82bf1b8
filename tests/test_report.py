"""eval.report on small constructed ladders: files written, laws and verdicts in report.md."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from eval import fit
from eval import report
from train import cli

LAW = fit.ChinchillaFit(E=1.2, A=30.0, B=60.0, alpha=0.35, beta=0.3, objective=0.0, n_points=0)


def _write_grid(d, with_curves=True):
  rng = np.random.default_rng(0)
  rows = []
  for N in np.geomspace(1e5, 3e6, 5):
    for D in np.geomspace(2e6, 5e7, 3):
      L = LAW.loss(N, D) * np.exp(rng.normal(0, 0.002))
      name = f"n{N:.2e}_d{D:.2e}"
      rows.append(
          dict(
              name=name,
              params_total=N,
              params_non_embedding=0.9 * N,
              tokens=D,
              flops=6 * N * D,
              train_loss=L,
              val_loss=L,
              val_bpb=L / math.log(2),
              wall_s=1.0,
          )
      )
      if with_curves:
        p = d / "points" / name
        p.mkdir(parents=True)
        t = np.geomspace(D / 100, D, 40)
        with open(p / "metrics.jsonl", "w") as f:
          for ti, li in zip(t, LAW.loss(N, t)):
            f.write(
                json.dumps(
                    dict(step=int(ti // 100), kind="train", tokens_seen=float(ti), loss=float(li))
                )
                + "\n"
            )
  pd.DataFrame(rows).to_csv(d / "results.csv", index=False)
  # A prepared synthetic corpus somewhere under the workdir: its floor is E in bits/byte.
  (d / "data").mkdir()
  (d / "data" / "manifest.json").write_text(
      json.dumps(dict(synthetic=dict(entropy_rate_bits_per_byte=LAW.E / math.log(2))))
  )


def test_report_on_a_grid_ladder(tmp_path):
  _write_grid(tmp_path)
  md = report.make_report(tmp_path, bootstrap=5, grid="coarse")
  text = md.read_text()
  out = tmp_path / "report"
  for stem in ("loss_vs_compute", "residuals", "saturation", "training_curves"):
    assert (out / f"{stem}.png").stat().st_size > 1000 and (out / f"{stem}.svg").exists()
  assert "Chinchilla approach 3" in text and "Compute-optimal allocation" in text
  assert "True entropy floor of the synthetic corpus: **1.7312 bits/byte**" in text
  assert "Trend-break test: no trend break" in text
  assert "15 of 15 still improving, 0 have plateaued" in text
  facts = json.loads((out / "report.json").read_text())
  assert facts["chinchilla"]["alpha"] == pytest.approx(0.35, abs=0.03)
  assert facts["fitted_E_bpb"] == pytest.approx(LAW.E / math.log(2), rel=0.03)
  lo, hi = facts["chinchilla"]["intervals"]["E"]
  assert lo <= hi
  assert len(facts["allocation"]) == 3  # largest budget x1, x10, x100


def test_report_on_an_isoflop_ladder_via_cli(tmp_path):
  rng = np.random.default_rng(1)
  rows = []
  for C in [1e13, 1e14, 1e15]:
    n_opt, _, _ = LAW.optimal(C)
    for f in np.linspace(-0.6, 0.6, 5):
      N = n_opt * 10**f
      D = C / (6 * N)
      rows.append(
          dict(
              name=f"c{C:.0e}_{f:.1f}",
              params_total=N,
              tokens=D,
              flops=C,
              budget=C,
              val_loss=LAW.loss(N, D) * np.exp(rng.normal(0, 0.001)),
          )
      )
  pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
  assert report.main(["--workdir", str(tmp_path), "--bootstrap", "0", "--grid", "coarse"]) == 0
  text = (tmp_path / "report" / "report.md").read_text()
  assert "IsoFLOP approach 2" in text and (tmp_path / "report" / "isoflop.svg").exists()
  facts = json.loads((tmp_path / "report" / "report.json").read_text())
  assert facts["isoflop"]["a"] == pytest.approx(LAW.a, abs=0.05)


def test_report_without_results_says_what_to_do(tmp_path, capsys, monkeypatch):
  with pytest.raises(FileNotFoundError, match="results.csv not found.*eval.ladder"):
    report.make_report(tmp_path)
  monkeypatch.delenv("UNLEASH_DEBUG", raising=False)
  with pytest.raises(SystemExit) as e:  # the CLI: one line, exit code 1
    cli.run(lambda: report.main(["--workdir", str(tmp_path)]))
  err = capsys.readouterr().err
  assert e.value.code == 1 and err.count("\n") == 1 and err.startswith("error: ")
  assert "Traceback" not in err
  pd.DataFrame(dict(params_total=[1.0], tokens=[2.0])).to_csv(tmp_path / "results.csv")
  with pytest.raises(ValueError, match=r"missing column\(s\) \['flops', 'val_loss'\]"):
    report.make_report(tmp_path)


def test_conventions_come_first_and_the_allocation_uses_the_table_flops(tmp_path):
  """Counted FLOPs sit 7% above 6ND: the allocation must use the table's own C / (N D)."""
  _write_grid(tmp_path, with_curves=False)
  df = pd.read_csv(tmp_path / "results.csv")
  df["flops_6nd"] = df["flops"]
  df["flops"] = 1.07 * df["flops_6nd"]
  df["flops_per_token"] = df["flops"] / df["tokens"]
  df["scheme"] = "grid"
  df["val_loss_se"] = 0.002
  df.to_csv(tmp_path / "results.csv", index=False)
  a = report.analyze(tmp_path, bootstrap=0, grid="quick")
  assert a.k == pytest.approx(6 * 1.07)
  for row in a.allocation:
    p = row["approach3"]
    assert a.k * p["N"] * p["D"] == pytest.approx(row["budget"])
  text = report.render_markdown(a)
  assert text.index("## Conventions") < text.index("## Fitted laws")
  assert "counted / 6ND = 1.070" in text and "median s.e. of the loss 0.002" in text
  assert (
      "the schedule set to each run's D" in text and "all parameters (embeddings included)" in text
  )
  six = report.analyze(tmp_path, bootstrap=0, grid="quick", flops_col="flops_6nd")
  assert six.k == pytest.approx(6.0) and "6ND (`flops_6nd`)" in report.render_markdown(six)


def test_unidentified_floor_is_flagged_and_its_tables_withheld(tmp_path):
  """Runs far above the floor cannot pin E down: the report says so next to E and withholds
  the headroom and the extrapolated losses instead of printing them."""
  rng = np.random.default_rng(0)
  law = fit.ChinchillaFit(E=0.05, A=30.0, B=60.0, alpha=0.35, beta=0.3, objective=0, n_points=0)
  rows = []
  for N in np.geomspace(1e5, 4e5, 4):
    for D in np.geomspace(2e6, 8e6, 3):
      L = law.loss(N, D) * np.exp(rng.normal(0, 0.01))
      rows.append(
          dict(name=f"{N:.0f}_{D:.0f}", params_total=N, tokens=D, flops=6 * N * D, val_loss=L)
      )
  pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
  md = report.make_report(tmp_path, bootstrap=16, grid="quick")
  text = md.read_text()
  facts = json.loads((md.parent / "report.json").read_text())
  assert "E" in facts["unidentified"] and "**E is not identified**" in text
  assert "headroom" in facts["withheld"] and "extrapolated_loss" in facts["withheld"]
  assert "Headroom (L-E)/L at the largest size: withheld" in text
  assert "| withheld |" in text


def test_sensitivity_backtest_and_wsd_plateaus(tmp_path):
  _write_grid(tmp_path, with_curves=False)
  df = pd.read_csv(tmp_path / "results.csv")
  name = df["name"].iloc[-1]
  t = np.linspace(1e5, 5e7, 100)
  lr = np.where(t < 4e7, 1e-3, 1e-3 * (5e7 - t) / 1e7)
  loss = 1.5 + 20 * np.minimum(t, 5e6) ** -0.3 - np.where(t > 4e7, 0.05 * (t - 4e7) / 1e7, 0)
  loss += np.random.default_rng(0).normal(0, 0.001, len(t))
  (tmp_path / "points" / name).mkdir(parents=True)
  with open(tmp_path / "points" / name / "metrics.jsonl", "w") as f:
    for ti, li, r in zip(t, loss, lr):
      f.write(
          json.dumps(dict(step=int(ti), tokens_seen=float(ti), loss=float(li), lr=float(r))) + "\n"
      )
  a = report.analyze(tmp_path, bootstrap=8, grid="quick")
  variants = [r["variant"] for r in a.sensitivity]
  assert variants == [
      "Huber delta 0.0001",
      "Huber delta 0.001",
      "Huber delta 0.01",
      "Huber delta 0.1",
      "without the smallest size",
      "without the largest budget",
  ]
  assert all(abs(r["alpha"] - LAW.alpha) < 0.05 for r in a.sensitivity)
  assert a.sensitivity[4]["n_points"] == 12
  bt = a.backtest
  assert len(bt["rows"]) == 3 and bt["n_train"] == 12
  assert bt["mean_abs_rel_error"] < 0.02 and bt["n_inside"] >= 2
  p = a.saturation["plateau"][name]
  assert p["plateau"] and "stable phase" in p["phase"]
  text = report.render_markdown(a)
  assert "## Backtest" in text and "## Sensitivity of approach 3" in text
  assert "Leave-one-rung-out" not in text


def test_backtest_intervals_include_the_evaluation_noise_when_recorded():
  rng = np.random.default_rng(0)
  N = np.repeat(np.geomspace(1e5, 3e6, 5), 3)
  D = np.tile(np.geomspace(2e6, 5e7, 3), 5)
  L = LAW.loss(N, D) * np.exp(rng.normal(0, 0.002, len(N)))
  test = report.holdout_mask(6 * N * D, None, False)
  assert test.sum() == 3
  quiet = report.backtest(N, D, L, test, n_boot=0)
  noisy = report.backtest(N, D, L, test, n_boot=0, loss_se=np.full(len(N), 0.05))
  width = lambda bt: np.mean([r["interval"][1] - r["interval"][0] for r in bt["rows"]])
  assert width(noisy) > 5 * width(quiet)
  assert quiet["rows"][0]["predicted"] == noisy["rows"][0]["predicted"]
  assert noisy["n_inside"] == 3
