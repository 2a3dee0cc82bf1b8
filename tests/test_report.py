"""eval.report on small constructed ladders: files written, laws and verdicts in report.md."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from eval import fit
from eval import report

LAW = fit.ChinchillaFit(E=1.2, A=30.0, B=60.0, alpha=0.35, beta=0.3, objective=0.0, n_points=0)


def _write_grid(d, with_curves=True):
  rng = np.random.default_rng(0)
  rows = []
  for N in np.geomspace(1e5, 3e6, 5):
    for D in np.geomspace(2e6, 5e7, 3):
      L = LAW.loss(N, D) * np.exp(rng.normal(0, 0.002))
      name = f"n{N:.2e}_d{D:.2e}"
      rows.append(dict(name=name, params_total=N, params_non_embedding=0.9 * N, tokens=D,
                       flops=6 * N * D, train_loss=L, val_loss=L, val_bpb=L / math.log(2), wall_s=1.0))
      if with_curves:
        p = d / "points" / name
        p.mkdir(parents=True)
        t = np.geomspace(D / 100, D, 40)
        with open(p / "metrics.jsonl", "w") as f:
          for ti, li in zip(t, LAW.loss(N, t)):
            f.write(json.dumps(dict(step=int(ti // 100), kind="train", tokens_seen=float(ti), loss=float(li))) + "\n")
  pd.DataFrame(rows).to_csv(d / "results.csv", index=False)
  # A prepared synthetic corpus somewhere under the workdir: its floor is E in bits/byte.
  (d / "data").mkdir()
  (d / "data" / "manifest.json").write_text(json.dumps(
      dict(synthetic=dict(entropy_rate_bits_per_byte=LAW.E / math.log(2)))))


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
      N = n_opt * 10 ** f
      D = C / (6 * N)
      rows.append(dict(name=f"c{C:.0e}_{f:.1f}", params_total=N, tokens=D, flops=C, budget=C,
                       val_loss=LAW.loss(N, D) * np.exp(rng.normal(0, 0.001))))
  pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
  assert report.main(["--workdir", str(tmp_path), "--bootstrap", "0", "--grid", "coarse"]) == 0
  text = (tmp_path / "report" / "report.md").read_text()
  assert "IsoFLOP approach 2" in text and (tmp_path / "report" / "isoflop.svg").exists()
  facts = json.loads((tmp_path / "report" / "report.json").read_text())
  assert facts["isoflop"]["a"] == pytest.approx(LAW.a, abs=0.05)


def test_report_without_results_says_what_to_do(tmp_path):
  with pytest.raises(SystemExit, match="results.csv not found.*eval.ladder"):
    report.make_report(tmp_path)
