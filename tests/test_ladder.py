"""eval.ladder on the tiny ladders: rows, FLOPs from model.summary, WSD branching, resumability."""

import csv
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

from configs import ladder as ladder_cfg
from eval import ladder


def _rows(d):
  with open(d / "results.csv", newline="") as f:
    return list(csv.DictReader(f))


def test_expand_schemes_and_flops():
  from model import summary

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
  grid = ladder.expand(ladder_cfg.get_config("cpu"))
  assert len({p.size for p in grid}) >= 5 and len([p for p in grid if p.record]) >= 15
  with pytest.raises(ValueError, match="unknown ladder"):
    ladder_cfg.get_config("nope")


@pytest.mark.slow
def test_tiny_wsd_ladder_resumes_after_a_crash(tmp_path, monkeypatch):
  """A point that dies after its first checkpoint resumes from it; finished points are skipped."""
  from train import trainer

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
  from eval import report

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


OLD_COLUMNS = ladder.RESULT_COLUMNS[: ladder.RESULT_COLUMNS.index("wall_s") + 1]


def test_results_csv_from_before_the_new_columns_is_read_and_appended(tmp_path):
  """An old file keeps its header and rows; a row appended to it fills the columns it has."""
  old = ",".join(OLD_COLUMNS) + "\n" + ",".join(["a"] + ["1"] * (len(OLD_COLUMNS) - 1))
  (tmp_path / "results.csv").write_text(old)  # no final newline (an editor may drop it)
  row = {c: "2" for c in ladder.RESULT_COLUMNS} | {"name": "b"}
  ladder.append_row(tmp_path, row)
  lines = (tmp_path / "results.csv").read_text().splitlines()
  assert lines[:2] == old.splitlines()
  assert lines[2] == ",".join(["b"] + ["2"] * (len(OLD_COLUMNS) - 1))
  assert ladder.finished_names(tmp_path) == {"a", "b"}
  new = tmp_path / "new"
  new.mkdir()
  ladder.append_row(new, row)
  assert (new / "results.csv").read_text().splitlines()[0] == ",".join(ladder.RESULT_COLUMNS)
  assert not list(new.glob("*.tmp")) and not list(tmp_path.glob("*.tmp"))
  (new / "results.csv").write_text("step,loss\n1,2\n")
  with pytest.raises(ValueError, match="no `name` column"):
    ladder.finished_names(new)


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
  from train import cpu_devices

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
