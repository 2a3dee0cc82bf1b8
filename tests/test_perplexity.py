"""eval.perplexity reproduces the trainer's held-out numbers and evaluates other sources."""

import json
import math
import pathlib
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import pytest

from configs import ladder as ladder_cfg
from eval import ladder, perplexity
from train import evaluate as eval_lib
from train import run as run_lib
from train import step as step_lib
from train import trainer
from train.data import tokenizer as tok_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tiny_config(steps):
  config = ladder.expand(ladder_cfg.get_config("tiny_grid"))[0].config
  config.train.steps = steps
  return config


def _train_counting_tokenizer_loads(config, workdir) -> tuple[dict, int]:
  """train_and_evaluate's summary and how often it loaded a tokenizer in this process."""
  loads = []
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(tok_lib, "load", lambda spec, _load=tok_lib.load: loads.append(spec) or _load(spec))
    out = trainer.train_and_evaluate(config, str(workdir))
  return out, len(loads)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A fresh workdir: its data is prepared (under the workdir) during the run."""
  d = tmp_path_factory.mktemp("run")
  out, loads = _train_counting_tokenizer_loads(_tiny_config(4), d)
  return d, {**out, "tokenizer_loads": loads}


def test_a_run_loads_its_tokenizer_once_fresh_and_resumed(tiny_run, tmp_path):
  d, out = tiny_run
  assert out["tokenizer_loads"] == 1  # data preparation included
  shutil.copytree(d, tmp_path / "run")
  resumed, loads = _train_counting_tokenizer_loads(_tiny_config(5), tmp_path / "run")
  assert resumed["step"] == 5 and loads == 1


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
  assert (
      perplexity.main(
          [
              "--workdir",
              str(d),
              "--data",
              "synthetic:markov:docs=100,doc_len=64",
              "--val_fraction",
              "0.2",
              "--batches",
              "1",
              "--json",
              str(out),
          ]
      )
      == 0
  )
  assert "markov" in capsys.readouterr().out and out.exists()
  with pytest.raises(FileNotFoundError, match="no checkpoints"):
    perplexity.main(["--workdir", str(tmp_path / "nothing")])


def test_split_all_scores_every_byte_of_a_single_file(tiny_run, tmp_path):
  d, _ = tiny_run
  text = "".join(f"line {i}: held-out text, ünïcode too\n" for i in range(60))
  (tmp_path / "held_out.txt").write_text(text, encoding="utf-8")
  out = tmp_path / "all.json"
  assert (
      perplexity.main(
          [
              "--workdir",
              str(d),
              "--data",
              f"text:{tmp_path}/held_out.txt",
              "--split",
              "all",
              "--json",
              str(out),
          ]
      )
      == 0
  )
  res = json.loads(out.read_text())
  assert res["split"] == "all" and res["batches"] == -1
  r = res["domains"]["text"]
  assert r["bytes"] == len(text.encode()) and r["tokens"] == len(text.encode()) + 1
  assert r["docs"] == 1 and math.isnan(r["loss_se"])  # one document: no clustered SE


def test_cli_errors_are_one_line(tiny_run, tmp_path):
  d, _ = tiny_run
  (tmp_path / "f.txt").write_text("some text")
  bad_fraction = ["--data", f"text:{tmp_path}/f.txt", "--val_fraction", "1.5"]
  for args, what in (
      [bad_fraction, "val_fraction"],
      [["--split", "all"], "--data"],
      [["--data", f"jsonl:{tmp_path}/missing*.jsonl:text"], "no files match"],
  ):
    p = subprocess.run(
        [sys.executable, "-m", "eval.perplexity", "--workdir", str(d), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("error: ")
    assert what in p.stderr


def _val_losses(run, spec, workdir):
  """Per-domain validation results of a loaded run, with an eval step built (so traced) anew."""
  shardings = jax.tree_util.tree_map(lambda x: x.sharding, run.params)
  opts = step_lib.StepOptions.from_spec(spec, run.tokenizer.mask_id)
  eval_step = eval_lib.build_eval_step(opts, run.mesh, spec.mesh.axis_rules, run.model, shardings)
  source = trainer.load_data(spec, workdir, run.tokenizer, progress=False).eval_source
  return eval_lib.evaluate(eval_step, run.params, source, global_batch_size=2, max_batches=2)


def test_run_context_installs_the_runs_mesh_and_leaves_the_numbers_unchanged(tiny_run):
  d, _ = tiny_run
  run = run_lib.load_run(str(d))
  rules = tuple(tuple(r) for r in run.spec.mesh.axis_rules)
  assert jax.sharding.get_abstract_mesh().empty
  with run.context():
    assert jax.sharding.get_abstract_mesh() == run.mesh.abstract_mesh
    assert tuple(tuple(r) for r in nn.get_logical_axis_rules()) == rules
    inside = _val_losses(run, run.spec, str(d))
  assert jax.sharding.get_abstract_mesh().empty and not nn.get_logical_axis_rules()
  outside = _val_losses(run, run.spec, str(d))
  assert inside.keys() == outside.keys() and inside["prose"]["tokens"] > 0
  for domain, r in inside.items():
    assert outside[domain]["loss"] == pytest.approx(r["loss"], rel=1e-6)
