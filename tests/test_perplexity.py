"""eval.perplexity reproduces the trainer's held-out numbers and evaluates other sources."""

import math

import pytest

from configs import ladder as ladder_cfg
from eval import ladder, perplexity


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  from train import trainer
  d = tmp_path_factory.mktemp("run")
  cfg = ladder_cfg.get_config("tiny_grid")
  point = ladder.expand(cfg)[0]
  point.config.train.steps = 4
  out = trainer.train_and_evaluate(point.config, str(d))
  return d, out


def test_matches_the_trainers_final_eval(tiny_run):
  d, out = tiny_run
  res = perplexity.evaluate_run(str(d))
  assert res["step"] == 4
  for domain, r in out["val"].items():
    assert res["domains"][domain]["loss"] == pytest.approx(r["loss"], rel=1e-5)
    assert res["domains"][domain]["bpb"] == pytest.approx(r["bpb"], rel=1e-5)
  prose = res["domains"]["prose"]
  assert prose["ppl"] == pytest.approx(math.exp(prose["loss"]))
  # Two small batches may cover a single document: then there is no SE (NaN), honestly.
  assert prose["ppl_se"] == pytest.approx(prose["ppl"] * prose["loss_se"], nan_ok=True)
  assert (prose["docs"] < 2) == math.isnan(prose["loss_se"])
  assert "prose" in perplexity.format_table(res)


def test_other_source_and_cli(tiny_run, tmp_path, capsys):
  d, _ = tiny_run
  out = tmp_path / "ppl.json"
  assert perplexity.main(["--workdir", str(d), "--data", "synthetic:markov:docs=100,doc_len=64",
                          "--val_fraction", "0.2", "--batches", "1", "--json", str(out)]) == 0
  assert "markov" in capsys.readouterr().out and out.exists()
  assert perplexity.main(["--workdir", str(tmp_path / "nothing")]) == 1
