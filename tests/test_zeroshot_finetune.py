"""Fine-tuning end to end (config.init_from): a tiny base run, then eval/finetune.py on an
SST-2-format task whose sentences are single sentiment words (learnable by a tiny model in a
few seconds; with "a great film" it needs many more steps), scored before and after."""

import json
import random

import pytest

from configs import default
from eval import finetune
from train import run as run_lib
from train import trainer

# Distinct first letters: a tiny byte model separates them within the step budget (with
# "boring"/"brilliant" it needs many more steps to look past the shared "b").
POS = ["great", "wonderful", "superb", "lovely", "happy"]
NEG = ["awful", "terrible", "dull", "bad", "crude"]


# Neutral words after the sentiment word make the rows distinct texts: the train/validation
# split hashes content, so 10 identical-row texts could leave a word out of training.
FILLERS = ["film", "plot", "cast", "ending", "music", "story", "pace", "script"]


def _tsv(path, n, seed):
  rng = random.Random(seed)
  rows = ["sentence\tlabel"]
  for i in range(n):
    label = i % 2
    rows.append(f"{rng.choice(POS if label else NEG)} {rng.choice(FILLERS)} \t{label}")
  path.write_text("\n".join(rows) + "\n")


def _tiny(config):
  config.model.update(
      d_model=64,
      num_layers=2,
      num_heads=2,
      num_kv_heads=2,
      head_dim=32,
      mlp_dim=128,
      max_seq_len=64,
  )
  config.data.seq_len = 64
  config.train.batch_size = 16
  config.train.warmup_steps = 5
  config.eval.batches = 1
  config.checkpoint.async_save = False
  return config


@pytest.mark.slow
def test_finetune_from_run_learns_the_task(tmp_path, capsys):
  (tmp_path / "base.txt").write_text(
      "\n".join(f"plain text number {i}, no reviews in it." for i in range(200))
  )
  base = _tiny(default.get_config())
  base.data.source = f"text:{tmp_path / 'base.txt'}:\\n"
  base.data.val_fraction = 0.2  # inherited by the fine-tune: 80 of its 400 examples
  base.train.steps = 5
  base.train.warmup_steps = 1
  base.eval.every = base.checkpoint.every = 5
  trainer.train_and_evaluate(base, str(tmp_path / "base"))

  _tsv(tmp_path / "train.tsv", 400, seed=0)
  _tsv(tmp_path / "dev.tsv", 40, seed=1)
  finetune.main(
      [
          "--base",
          str(tmp_path / "base"),
          "--workdir",
          str(tmp_path / "ft"),
          "--train",
          str(tmp_path / "train.tsv"),
          "--dev",
          str(tmp_path / "dev.tsv"),
          "--steps",
          "300",
          "--lr",
          "3e-3",
          "--warmup-steps",
          "5",
      ]
  )
  out = capsys.readouterr().out
  assert f"initialised parameters from {tmp_path / 'base'}" in out
  report = json.loads((tmp_path / "ft" / "finetune_report.json").read_text())
  assert report["dev_n"] == 40 and report["train_examples"] == 400
  assert report["acc_after"] >= 0.9 > report["acc_before"]
  # The fine-tuned run kept the base model's shape and is a normal run.
  assert run_lib.config_from_workdir(str(tmp_path / "ft")).init_from == str(tmp_path / "base")
