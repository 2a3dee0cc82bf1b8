"""eval.fit on the command line: new flags, the self-test, and one-line errors on bad input."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from eval import fit
from train import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRUE = fit.ChinchillaFit(**fit.CHINCHILLA_LAW, objective=0.0, n_points=0)


def _run(*args):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  env.pop("UNLEASH_DEBUG", None)
  return subprocess.run(
      [sys.executable, "-m", "eval.fit", *map(str, args)],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )


def _isoflop_csv(path, budgets=(1e19, 1e20, 1e21), offsets=np.linspace(-0.6, 0.6, 7)):
  rng = np.random.default_rng(0)
  rows = []
  for c in budgets:
    for f in offsets:
      n = TRUE.optimal(c)[0] * 10**f
      rows.append(
          dict(
              n=n,
              d=c / (6 * n),
              c=c,
              size=f"s{f:.1f}",
              loss=TRUE.loss(n, c / (6 * n)) * np.exp(rng.normal(0, 0.003)),
          )
      )
  pd.DataFrame(rows).to_csv(path, index=False)
  return path


def _assert_one_line_error(code, stderr, *needles):
  assert code == 1, stderr
  assert "Traceback" not in stderr
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr
  for n in needles:
    assert n in lines[0], lines[0]


def _in_process(capsys, *args):
  """The entry point as `python -m eval.fit` runs it (cli.run(main)), without a new process."""
  with pytest.raises(SystemExit) as e:
    cli.run(lambda: fit.main([str(a) for a in args]))
  return e.value.code, capsys.readouterr().err


def test_missing_column_is_one_line_from_the_real_entry_point(tmp_path):
  good = _isoflop_csv(tmp_path / "good.csv")
  r = _run("chinchilla", "--csv", good, "--n-col", "n", "--loss-col", "loss", "--d-col", "tokens")
  _assert_one_line_error(r.returncode, r.stderr, "no column(s) ['tokens']", "columns are")


def test_bad_tables_give_one_line_errors(tmp_path, capsys, monkeypatch):
  monkeypatch.delenv("UNLEASH_DEBUG", raising=False)
  good = _isoflop_csv(tmp_path / "good.csv")
  base = ["--n-col", "n", "--loss-col", "loss"]
  df = pd.read_csv(good)
  df.loc[3, "loss"] = -1.0
  df.to_csv(tmp_path / "neg.csv", index=False)
  _assert_one_line_error(
      *_in_process(
          capsys,
          "chinchilla",
          "--csv",
          tmp_path / "neg.csv",
          *base,
          "--d-col",
          "d",
          "--grid",
          "coarse",
      ),
      "non-positive",
      "loss",
      "--drop-invalid",
  )
  one = _isoflop_csv(tmp_path / "one.csv", budgets=(1e20,))
  _assert_one_line_error(
      *_in_process(capsys, "isoflop", "--csv", one, *base, "--c-col", "c"),
      "2 FLOP budgets",
      "has 1",
  )
  edges = _isoflop_csv(tmp_path / "edges.csv", offsets=np.linspace(0.3, 1.2, 5))
  _assert_one_line_error(
      *_in_process(capsys, "isoflop", "--csv", edges, *base, "--c-col", "c"),
      "usable: 0",
      "does not bracket a minimum",
  )
  _assert_one_line_error(
      *_in_process(capsys, "chinchilla", "--csv", tmp_path / "missing.csv", *base, "--d-col", "d"),
      "missing.csv",
  )
  _assert_one_line_error(
      *_in_process(capsys, "chinchilla", "--csv", good, *base, "--d-col", "d", "--min-n", "1e30"),
      "no rows inside the fit range",
  )
  # --drop-invalid fits the rest instead.
  assert (
      fit.main(
          [
              "chinchilla",
              "--csv",
              str(tmp_path / "neg.csv"),
              *base,
              "--d-col",
              "d",
              "--grid",
              "coarse",
              "--drop-invalid",
              "--json",
              str(tmp_path / "o.json"),
          ]
      )
      == 0
  )


def _main(*args):
  return fit.main([str(a) for a in args])


def test_chinchilla_cli_profile_cluster_bootstrap_and_range(tmp_path):
  csv = _isoflop_csv(tmp_path / "t.csv", budgets=(1e18, 1e19, 1e20, 1e21))
  base = [
      "chinchilla",
      "--csv",
      csv,
      "--n-col",
      "n",
      "--d-col",
      "d",
      "--loss-col",
      "loss",
      "--grid",
      "coarse",
      "--budget",
      "1e22",
  ]
  out = tmp_path / "boot.json"
  assert (
      _main(
          *base,
          "--bootstrap",
          "12",
          "--bootstrap-by",
          "size",
          "--huber-delta",
          "1e-2",
          "--min-c",
          "5e18",
          "--json",
          out,
      )
      == 0
  )
  j = json.loads(out.read_text())
  assert j["n_points"] == 21 and j["huber_delta"] == 1e-2 and j["bootstrap"]["by"] == "size"
  assert set(j["intervals"]) == set(fit.QUANTITIES)
  assert j["verified"] and j["n_at_optimum"] >= 2
  out = tmp_path / "prof.json"
  assert _main(*base, "--uncertainty", "profile", "--json", out) == 0
  j = json.loads(out.read_text())
  lo, hi = j["intervals"]["alpha"]
  assert lo < j["alpha"] < hi and j["profile"]["unbounded"] == {}


def test_isoflop_cli_vpnls_keeps_the_json_keys(tmp_path):
  csv = _isoflop_csv(tmp_path / "t.csv")
  for method in ("parabola", "vpnls"):
    out = tmp_path / f"{method}.json"
    assert (
        _main(
            "isoflop",
            "--csv",
            csv,
            "--n-col",
            "n",
            "--c-col",
            "c",
            "--loss-col",
            "loss",
            "--method",
            method,
            "--bootstrap",
            "20",
            "--budget",
            "1e22",
            "--json",
            out,
        )
        == 0
    )
    j = json.loads(out.read_text())
    assert j["a"] == pytest.approx(TRUE.a, abs=0.03) and j["method"] == method
    assert j["intervals"]["a"][0] <= j["a"] <= j["intervals"]["a"][1]
    assert j["predictions"][0]["budget"] == 1e22


def test_selftest_cli_writes_coverage_json(tmp_path, capsys):
  out = tmp_path / "cov.json"
  assert _main("selftest", "--sims", "2", "--bootstrap", "10", "--workers", "1", "--json", out) == 0
  j = json.loads(out.read_text())
  assert j["sims"] == 2 and set(j["coverage"]) == {"0.8", "0.95"}
  assert set(j["coverage"]["0.95"]) == set(fit.QUANTITIES)
  assert all(0.0 <= v <= 1.0 for v in j["coverage"]["0.8"].values())
  text = capsys.readouterr().out
  assert "nominal 95%" in text and "loss_opt" in text
