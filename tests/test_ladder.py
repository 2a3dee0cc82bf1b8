"""eval.ladder on the tiny ladders: rows, FLOPs from model.summary, WSD branching, resumability."""

import csv
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from eval import zeroshot
from train import run as run_lib
from eval import fit

from configs import ladder as ladder_cfg
from eval import ladder
from eval import report
from model import summary
from train import cpu_devices
from train import trainer


def _rows(d):
  with open(d / "results.csv", newline="") as f:
    return list(csv.DictReader(f))


def test_expand_schemes_and_flops():
  pts = ladder.expand(ladder_cfg.get_config("tiny"))
  assert [p.kind for p in pts] == ["constant", "cooldown", "cooldown"] * 2
  const, cool = pts[0], pts[2]
  assert const.config.train.schedule == "constant" and const.needs_steps == (8, 16)
  assert cool.branch_step == 16 and cool.config.train.steps == 20
  assert "ladder" not in cool.config
  iso = ladder.expand(ladder_cfg.get_config("tiny_isoflop"))
  assert sorted(p.budget for p in iso) == [2e8] * 3 + [4e8] * 3  # 3 sizes per budget
  for p in iso:
    c = p.config
    fpt = summary.flops_per_token_train(c.model, c.data.seq_len)
    tokens = c.train.steps * c.train.batch_size * c.data.seq_len
    assert fpt * tokens == pytest.approx(p.budget, rel=0.1)  # steps rounded to an integer
  grid = ladder.expand(ladder_cfg.get_config("cpu_wsd"))
  assert len({p.size for p in grid}) >= 5 and len([p for p in grid if p.record]) >= 15
  with pytest.raises(ValueError, match="unknown ladder"):
    ladder_cfg.get_config("nope")


@pytest.mark.slow
def test_tiny_wsd_ladder_resumes_after_a_crash(tmp_path, monkeypatch):
  """A point that dies after its first checkpoint resumes from it; finished points are skipped."""
  real = trainer.train_and_evaluate
  calls = []

  def crashing(config, workdir, hooks=None):
    calls.append(config.name)
    if config.name == "d32l1_constant":

      def boom(step):
        raise RuntimeError(f"killed after saving step {step}")

      return real(config, workdir, hooks=trainer.Hooks(after_save=boom))
    return real(config, workdir)

  monkeypatch.setattr(trainer, "train_and_evaluate", crashing)
  cfg = ladder_cfg.get_config("tiny")
  with pytest.raises(RuntimeError, match="killed after saving step"):
    ladder.run_ladder(cfg, tmp_path)
  assert [r["name"] for r in _rows(tmp_path)] == ["d16l1_s10", "d16l1_s20"]
  monkeypatch.setattr(trainer, "train_and_evaluate", real)
  new = ladder.run_ladder(ladder_cfg.get_config("tiny"), tmp_path)
  assert [r["name"] for r in new] == ["d32l1_s10", "d32l1_s20"]
  assert calls == ["d16l1_constant", "d16l1_s10", "d16l1_s20", "d32l1_constant"]
  rows = _rows(tmp_path)
  assert len(rows) == 4
  manifest = json.loads(next((tmp_path / "data").glob("prepared-*/manifest.json")).read_text())
  for r in rows:
    assert r["seed"] == "0" and int(r["unique_tokens"]) == manifest["splits"]["train"]["tokens"]
    assert float(r["flops_6nd"]) == 6 * int(r["params_total"]) * int(r["tokens"])

  def events(name):
    path = tmp_path / "points" / name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]

  const = events("d32l1_constant")
  resumes = [e["step"] for e in const if e.get("event") == "resume"]
  assert resumes == [8]  # crashed after saving step 8, resumed there, went on to 16
  assert max(e["step"] for e in const if e.get("kind") == "train") == 16
  for r in rows:
    assert float(r["tokens"]) == int(r["steps"]) * 4 * 32
    assert float(r["flops"]) == pytest.approx(float(r["flops_per_token"]) * float(r["tokens"]))
    assert math.isfinite(float(r["val_loss"])) and float(r["val_bpb"]) > 0
    assert int(r["params_total"]) > int(r["params_non_embedding"]) > 0
  # A cooldown branched from the constant run's checkpoint: it trained only its last steps.
  cool = events("d32l1_s20")
  assert [e["step"] for e in cool if e.get("event") == "resume"] == [16]
  assert min(e["step"] for e in cool if e.get("kind") == "train") > 16
  # A third run does nothing.
  assert ladder.run_ladder(ladder_cfg.get_config("tiny"), tmp_path) == []


@pytest.mark.slow
def test_tiny_isoflop_ladder_feeds_the_report(tmp_path):
  """End to end: IsoFLOP points -> results.csv (with budgets) -> report with LM-head spectra."""
  rows = ladder.run_ladder(ladder_cfg.get_config("tiny_isoflop"), tmp_path)
  assert len(rows) == 6 and {float(r["budget"]) for r in rows} == {2e8, 4e8}
  for r in rows:  # the realised FLOPs sit close to the budget (integer steps)
    assert float(r["flops"]) == pytest.approx(float(r["budget"]), rel=0.2)
  md = report.make_report(tmp_path, bootstrap=0, grid="coarse", head_spectrum=True)
  facts = json.loads((md.parent / "report.json").read_text())
  assert set(facts["saturation"]["head_spectrum"]) == {r["name"] for r in rows}
  text = md.read_text()
  assert "LM head: centred effective rank" in text and "IsoFLOP" in text
  assert (md.parent / "training_curves.png").exists()
  # Each run's cost estimate (CPU: chip-hours only; no power or price configured).
  assert all(float(r["chip_hours"]) > 0 and r["usd"] == "" for r in rows)
  assert "This study cost " in text and "chip-hours, USD unknown, energy unknown (est." in text


OLD_COLUMNS = ladder.RESULT_COLUMNS[: ladder.RESULT_COLUMNS.index("wall_s") + 1]


def test_results_csv_from_before_the_new_columns_is_read_and_appended(tmp_path):
  """An old file keeps its rows; a row with newer columns extends the header at the end."""
  old = ",".join(OLD_COLUMNS) + "\n" + ",".join(["a"] + ["1"] * (len(OLD_COLUMNS) - 1))
  (tmp_path / "results.csv").write_text(old)  # no final newline (an editor may drop it)
  row = {c: "2" for c in ladder.RESULT_COLUMNS} | {"name": "b"}
  ladder.append_row(tmp_path, row)
  rows = _rows(tmp_path)
  new_columns = ladder.RESULT_COLUMNS[len(OLD_COLUMNS) :]
  assert list(rows[0]) == list(ladder.RESULT_COLUMNS)
  assert rows[0] == {c: "1" for c in OLD_COLUMNS} | {"name": "a"} | {c: "" for c in new_columns}
  assert rows[1] == row
  assert ladder.finished_names(tmp_path) == {"a", "b"}
  new = tmp_path / "new"
  new.mkdir()
  ladder.append_row(new, row)
  assert (new / "results.csv").read_text().splitlines()[0] == ",".join(ladder.RESULT_COLUMNS)
  assert not list(new.glob("*.tmp")) and not list(tmp_path.glob("*.tmp"))
  (new / "results.csv").write_text("step,loss\n1,2\n")
  with pytest.raises(ValueError, match="no `name` column"):
    ladder.finished_names(new)


def test_task_columns_extend_the_header_and_keep_earlier_rows(tmp_path):
  """A ladder resumed with ladder.tasks added: earlier rows stay, the task columns follow."""
  row = {c: "1" for c in ladder.RESULT_COLUMNS} | {"name": "a"}
  ladder.append_row(tmp_path, row)
  before = (tmp_path / "results.csv").read_text()
  ladder.append_row(tmp_path, row | {"name": "b", "t/correct_logprob": -1.5})
  ladder.append_row(tmp_path, row | {"name": "c"})  # tasks dropped again: the cell stays empty
  rows = _rows(tmp_path)
  assert list(rows[0]) == [*ladder.RESULT_COLUMNS, "t/correct_logprob"]
  assert [r["t/correct_logprob"] for r in rows] == ["", "-1.5", ""]
  assert [r["name"] for r in rows] == ["a", "b", "c"] and rows[0] == row | {"t/correct_logprob": ""}
  assert (tmp_path / "results.csv").read_text().splitlines()[1] == before.splitlines()[1] + ","


HELLASWAG_ROWS = [
    dict(
        activity_label="Cooking",
        ctx_a="A man cuts an onion on a board.",
        ctx_b="he",
        endings=["puts it in a pan.", "flies away.", "sings loudly.", "reads the news."],
        label=0,
    ),
    dict(
        activity_label="Sports",
        ctx_a="A girl runs towards the bar.",
        ctx_b="she",
        endings=["eats soup.", "jumps over it.", "[header] sleeps.", "writes a poem."],
        label=1,
    ),
]


@pytest.mark.slow
def test_ladder_tasks_add_zero_shot_columns_equal_to_direct_scoring(tmp_path):
  """ladder.tasks: every row carries the task's continuous metrics with standard errors,
  equal to eval.zeroshot scoring that point's final parameters directly."""

  task_file = tmp_path / "hellaswag_val.jsonl"
  task_file.write_text("".join(json.dumps(r) + "\n" for r in HELLASWAG_ROWS))
  cfg = ladder_cfg.get_config("tiny_grid")
  cfg.ladder.sizes = cfg.ladder.sizes[:1]
  cfg.ladder.steps = (4,)
  cfg.ladder.tasks = (f"hellaswag:{task_file}",)
  workdir = tmp_path / "ladder"
  ladder.run_ladder(cfg, workdir)
  rows = _rows(workdir)
  assert [r["name"] for r in rows] == ["d16l1_s4"]
  metrics = ("correct_logprob", "correct_bpb", "correct_prob_norm", "acc", "acc_norm")
  columns = [f"hellaswag/{m}{se}" for m in metrics for se in ("", "_stderr")]
  for r in rows:
    assert all(math.isfinite(float(r[c])) for c in columns), r
    assert float(r["hellaswag/n"]) == 2 and 0 < float(r["hellaswag/correct_prob_norm"]) < 1
    direct = zeroshot.evaluate_run(
        run_lib.load_run(str(workdir / "points" / r["name"])),
        zeroshot.load_task(f"hellaswag:{task_file}"),
    )
    for c in columns:
      assert float(r[c]) == pytest.approx(direct[c.split("/")[1]], rel=1e-6), c
  cfg.ladder.tasks = ("hellaswag:missing.jsonl",)
  with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
    ladder.expand(cfg)


def test_result_row_records_noise_seed_and_both_flop_conventions():
  point = ladder.expand(ladder_cfg.get_config("tiny"))[1]
  out = {"val_loss": 4.0, "val_bpb": 5.0, "val": {"all": {"loss": 4.0, "loss_se": 0.25}}}
  row = ladder.result_row(point, out, 1.0, "wsd")
  assert row["val_loss_se"] == 0.25 and row["seed"] == 0
  assert row["flops_6nd"] == 6 * row["params_total"] * row["tokens"]
  assert row["flops"] == row["flops_per_token"] * row["tokens"] != row["flops_6nd"]
  assert row["unique_tokens"] == ""  # the data was never prepared
  row = ladder.result_row(point, {"val_loss": 4.0, "val": {"all": {"loss": 4.0}}}, 1.0, "wsd")
  assert row["val_loss_se"] == ""


def _cpu_devices_used(stdout: str) -> set[int]:
  return {int(n) for n in re.findall(r"(\d+) cpu device\(s\)", stdout)}


@pytest.mark.slow
def test_ladder_points_use_the_device_split_of_python_m_train(tmp_path):
  """Both entry points split the CPU host the same way (train/cpu_devices.py)."""
  repo = pathlib.Path(__file__).resolve().parents[1]
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", cpu_devices.ENV)}
  common = ["--config", "configs/ladder.py:tiny_grid"]
  ladder_cmd = [
      "-m",
      "eval.ladder",
      *common,
      "--config.ladder.steps=(3,)",
      "--config.ladder.sizes=(('d16l1',16,1,2),)",
      f"--workdir={tmp_path / 'l'}",
  ]
  train_cmd = ["-m", "train", *common, "--config.train.steps=3", f"--workdir={tmp_path / 't'}"]
  used = []
  for cmd in (ladder_cmd, train_cmd):
    proc = subprocess.run(
        [sys.executable, *cmd], cwd=repo, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    used.append(_cpu_devices_used(proc.stdout + proc.stderr))
  point = ladder.expand(ladder_cfg.get_config("tiny_grid"))[0]
  assert used[0] == used[1] == {cpu_devices.choose(point.config)}


def test_train_loss_skips_a_metrics_line_cut_short_by_a_kill(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(
      '{"kind": "train", "step": 2, "loss_mean": 3.5}\n{"kind": "tra\n'
      '{"kind": "eval", "step": 4}\n{"kind": "train", "step": 4, "loss_mean": 2.5}\n'
  )
  last_train_loss = ladder._last_train_loss  # pylint: disable=protected-access
  assert last_train_loss(str(path), math.nan) == 2.5
  assert math.isnan(last_train_loss(str(tmp_path / "none"), math.nan))


# A law whose compute-optimal N at 8e8 FLOPs (C = 6 N D) is ~2.3e4, a tiny-ladder size.
_PREDICT_LAW = dict(E=1.5, A=606.0, B=400.0, alpha=0.3, beta=0.3)


def _law_table(d, budgets=(5e7, 1e8, 2e8)):
  """results.csv of a ladder from _PREDICT_LAW with 0.2% noise: 5 sizes around each optimum."""

  law = fit.ChinchillaFit(**_PREDICT_LAW, objective=0.0, n_points=0)
  rng = np.random.default_rng(0)
  rows = []
  for c in budgets:
    for n in law.optimal(c)[0] * np.geomspace(0.25, 4, 5):
      tokens = c / (6 * n)
      loss = float(law.loss(n, tokens)) * math.exp(rng.normal(0, 0.002))
      rows.append(dict(name=f"n{n:.3g}_C{c:.0e}", params_total=n, tokens=tokens, flops=c))
      rows[-1].update(val_loss=loss, budget=c)
  with open(d / "results.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  return law


def test_nearest_shape_follows_the_ladders_shape_rule():

  cfg = ladder_cfg.get_config("cpu")
  for n_target in (2e4, 1e5, 2e6):
    name, d_model, layers, heads = ladder.nearest_shape(cfg, n_target)
    c = ladder._train_config(cfg, (name, d_model, layers, heads), name)
    n = summary.param_counts(c.model)["total"]
    assert abs(math.log(n / n_target)) < math.log(1.5), (n_target, name, n)
    assert d_model % 8 == 0 and d_model % heads == 0 and layers >= 1
  assert ladder.nearest_shape(cfg, 1e6)[2] > ladder.nearest_shape(cfg, 2e4)[2]  # deeper


@pytest.mark.slow
def test_predict_then_check_trains_the_predicted_optimum(tmp_path):
  """The fit recovers the law's optimum at 4x the largest rung, the nearest shape is trained
  for that budget, and predicted vs achieved lands in prediction.json and the report."""

  law = _law_table(tmp_path)
  cfg = ladder_cfg.get_config("tiny_isoflop")
  budget = 8e8
  check = ladder.predict_then_check(
      cfg, tmp_path, budget, n_boot=20, grid="coarse", log=lambda *_: None
  )
  n_true, d_true, loss_true = law.optimal(budget)
  p = check["predicted"]
  assert p["N"] == pytest.approx(n_true, rel=0.15) and p["D"] == pytest.approx(d_true, rel=0.15)
  assert p["loss"] == pytest.approx(loss_true, rel=0.01)
  assert p["N_interval"][0] <= p["N"] <= p["N_interval"][1]
  assert abs(math.log(check["trained"]["params_total"] / p["N"])) < math.log(1.5)
  assert check["trained_flops"] == pytest.approx(budget, rel=0.02)
  assert check["largest_rung_flops"] == 2e8 and check["rungs"] == 15
  achieved = check["achieved"]["val_loss"]
  lo, hi = check["predicted_at_trained"]["interval"]
  assert math.isfinite(achieved) and check["inside"] == (lo <= achieved <= hi)
  assert check["rel_error"] == pytest.approx(
      (check["predicted_at_trained"]["loss"] - achieved) / achieved
  )
  assert (tmp_path / "points" / check["trained"]["name"] / "metrics.jsonl").exists()
  assert len(_rows(tmp_path)) == 15  # the check point is not a rung of the ladder
  saved = json.loads((tmp_path / "prediction.json").read_text())["checks"]
  assert [c["budget"] for c in saved] == [budget]
  a = report.analyze(tmp_path, bootstrap=0, grid="quick")
  assert a.prediction_checks[0]["achieved"]["val_loss"] == achieved
  text = report.render_markdown(a)
  assert "## Prediction check" in text and f"{achieved:.4f}" in text
  assert report.analysis_facts(a)["prediction_check"][0]["budget"] == budget


def test_predict_budget_must_extrapolate_from_enough_rungs(tmp_path):
  _law_table(tmp_path)
  with pytest.raises(ValueError, match="not above the largest rung"):
    ladder.predict_optimum(tmp_path, 1e8)
  _law_table(tmp_path, budgets=(5e7,))
  with pytest.raises(ValueError, match="needs >= 8 finished rungs"):
    ladder.predict_optimum(tmp_path, 1e9)


def test_cli_predict_fit_flags_reach_the_prediction(tmp_path, monkeypatch):
  """--predict-bootstrap / --predict-grid set predict_then_check's n_boot and grid (unset: its
  defaults); without --predict-budget, or with a negative count, they are one-line errors."""
  calls = []
  monkeypatch.setattr(ladder, "_run_local", lambda *a: None)  # the rungs are not the point
  monkeypatch.setattr(ladder, "predict_then_check", lambda *a, **kw: calls.append((a[2], kw)))
  base = ["--config", "configs/ladder.py:tiny_isoflop", "--workdir", os.fspath(tmp_path)]
  ladder.main([*base, "--predict-budget", "8e8"])
  ladder.main(
      [*base, "--predict-budget", "8e8", "--predict-bootstrap", "4", "--predict-grid=coarse"]
  )
  assert calls == [(8e8, {}), (8e8, {"n_boot": 4, "grid": "coarse"})]
  with pytest.raises(
      ValueError, match="--predict-bootstrap and --predict-grid need --predict-budget"
  ):
    ladder.main([*base, "--predict-grid", "quick"])
  with pytest.raises(ValueError, match="--predict-bootstrap=-1: use a number of resamples >= 0"):
    ladder.main([*base, "--predict-budget", "8e8", "--predict-bootstrap=-1"])
  assert len(calls) == 2


def _points_by_budget(cfg):

  by_budget = {}
  for p in ladder.expand(cfg):
    c = p.config
    tokens = c.train.steps * c.train.batch_size * c.data.seq_len
    assert ladder.flops_per_token(c) * tokens == pytest.approx(p.budget, rel=0.01)
    n = summary.param_counts(c.model)["total"]
    by_budget.setdefault(p.budget, []).append((n, tokens))
  return by_budget


def test_cpu_ladder_brackets_the_optimum_of_every_budget():
  """A check of the design, no training: at each FLOP budget of the default cpu ladder every
  size is trained to that budget (within 1%), and the sizes reach at least 0.15 decade past the
  compute-optimal N of the law fitted to this ladder on both sides (so an IsoFLOP parabola
  finds an interior minimum)."""

  law = fit.ChinchillaFit(**ladder_cfg.CPU_DESIGN_LAW, objective=0.0, n_points=0)
  by_budget = _points_by_budget(ladder_cfg.get_config("cpu"))
  assert sorted(by_budget) == sorted(ladder_cfg.CPU_FLOP_BUDGETS)
  for budget, points in by_budget.items():
    ns = np.array([n for n, _ in points])
    k = np.median([budget / (n * d) for n, d in points])  # counted FLOPs per param-token
    n_opt = law.optimal(budget, k)[0]
    assert len(ns) >= 4
    assert np.log10(ns.min() / n_opt) < -0.15 and np.log10(ns.max() / n_opt) > 0.15, (
        budget,
        n_opt,
        sorted(ns),
    )
  # The check can fail: the cpu_isoflop design's sizes all sit above the optimum.
  iso = _points_by_budget(ladder_cfg.get_config("cpu_isoflop"))
  assert any(min(n for n, _ in pts) > law.optimal(c, 6.0)[0] for c, pts in iso.items())


def test_epochs_scheme_expands_sizes_by_repetitions():
  pts = ladder.expand(ladder_cfg.get_config("cpu_epochs"))
  assert len({p.size for p in pts}) == 3 and len(pts) == 3 * (6 + 4)  # 4 fresh twins (e > 1)
  for p in pts:
    c = p.config
    fresh = p.name.endswith("_fresh")
    assert c.data.max_unique_tokens == (0 if fresh else 10240)
    e = float(p.name.removesuffix("_fresh").rpartition("_e")[2])
    assert c.train.steps * c.train.batch_size * c.data.seq_len == e * 10240
    assert not fresh or e > 1
  cfg = ladder_cfg.get_config("tiny_epochs")
  cfg.ladder.epochs = (0.01,)
  with pytest.raises(ValueError, match="ladder.epochs entry 0.01"):
    ladder.expand(cfg)


@pytest.mark.slow
def test_tiny_epochs_ladder_records_unique_tokens_and_epochs(tmp_path):
  ladder.run_ladder(ladder_cfg.get_config("tiny_epochs"), tmp_path)
  rows = {r["name"]: r for r in _rows(tmp_path)}
  assert sorted(rows) == [f"d{d}l1_{e}" for d in (16, 32) for e in ("e1", "e3", "e3_fresh")]
  manifest = json.loads(next((tmp_path / "data").glob("prepared-*/manifest.json")).read_text())
  whole = manifest["splits"]["train"]["tokens"]
  for name, r in rows.items():
    unique = whole if name.endswith("_fresh") else 512
    assert int(r["unique_tokens"]) == unique and r["scheme"] == "epochs"
    assert float(r["epochs"]) == int(r["tokens"]) / unique
    assert math.isfinite(float(r["val_loss"]))
  assert float(rows["d16l1_e3"]["epochs"]) == 3 and float(rows["d16l1_e3_fresh"]["epochs"]) < 1
