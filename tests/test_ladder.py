"""eval.ladder on the tiny ladders: rows, FLOPs from model.summary, WSD branching, resumability."""

import csv
import json
import math

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
