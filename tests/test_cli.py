"""train/cli.py's shared flag parsing: every entry point takes --config FILE[:ARG] with typed
--config.a.b overrides through argparse, and a bad flag is one error line."""

import argparse
import json
import os
import pathlib
import subprocess
import sys

import pytest

from train import cli

CONFIG = "configs/default.py:size=tiny"
REPO = pathlib.Path(__file__).resolve().parents[1]


def _parser(lock_config=True) -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="prog")
  cli.add_config(ap, lock_config=lock_config)
  ap.add_argument("--workdir", default="")
  ap.add_argument(*cli.flag_names("num_slices"), type=int, default=1)
  cli.add_bool(ap, "search", False, "search")
  cli.add_bool(ap, "count_flops", True, "count")
  return ap


def test_overrides_keep_the_field_types():
  args = cli.parse_args(
      _parser(),
      [
          "--config",
          CONFIG,
          "--config.train.steps=7",  # int stays int
          "--config.train.weight_decay=1",  # a float field takes an int
          "--config.mesh.shape=(1,-1,1)",  # tuples
          "--config.train.decay_embeddings=True",
          "--config.train.b1=0.8",  # a placeholder(float), None by default
          "--workdir",
          "w",
      ],
  )
  train = args.config.train
  assert train.steps == 7 and type(train.steps) is int
  assert train.weight_decay == 1.0 and type(train.weight_decay) is float
  assert tuple(args.config.mesh.shape) == (1, -1, 1)
  assert train.decay_embeddings is True
  assert train.b1 == 0.8 and train.b2 is None
  assert args.workdir == "w" and args.config_spec == CONFIG


def test_space_separated_overrides_and_negative_values():
  args = cli.parse_args(
      _parser(), ["--config", CONFIG, "--config.train.steps", "9", "--config.data.seq_len", "-1"]
  )
  assert args.config.train.steps == 9 and args.config.data.seq_len == -1


def test_a_bad_override_value_is_a_value_error_naming_the_flag():
  with pytest.raises(ValueError, match=r"--config.train.steps=abc: invalid literal for int"):
    cli.parse_args(_parser(), ["--config", CONFIG, "--config.train.steps=abc"])
  with pytest.raises(ValueError, match=r"--config.train.steps=1.5"):
    cli.load_config(CONFIG, ["--config.train.steps=1.5"])


def test_an_unknown_override_key_names_the_key():
  with pytest.raises(ValueError) as e:
    cli.parse_args(_parser(), ["--config", CONFIG, "--config.model.no_such_field=1"])
  assert str(e.value).startswith("--config.model.no_such_field: no such config field")
  assert "\n" not in str(e.value)


def test_lock_config_decides_whether_the_program_may_add_fields():
  assert cli.parse_args(_parser(lock_config=True), ["--config", CONFIG]).config.is_locked
  assert not cli.parse_args(_parser(lock_config=False), ["--config", CONFIG]).config.is_locked


def test_a_missing_config_file_says_so():
  with pytest.raises(FileNotFoundError, match="--config configs/nope.py: no such config file"):
    cli.load_config("configs/nope.py:size=tiny")


def test_a_config_file_that_raises_is_its_own_error():
  with pytest.raises(ValueError, match="1T") as e:
    cli.load_config("configs/gpt2.py:size=1T")
  assert "Traceback" not in str(e.value)


def test_both_spellings_and_absl_booleans():
  base = ["--config", CONFIG]
  assert cli.parse_args(_parser(), base + ["--num-slices", "2"]).num_slices == 2
  assert cli.parse_args(_parser(), base + ["--num_slices=3"]).num_slices == 3
  args = cli.parse_args(_parser(), base)
  assert args.search is False and args.count_flops is True
  args = cli.parse_args(_parser(), base + ["--search", "--nocount_flops"])
  assert args.search is True and args.count_flops is False
  args = cli.parse_args(_parser(), base + ["--search=false", "--count-flops=true"])
  assert args.search is False and args.count_flops is True


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--config", CONFIG, "--bogus=1"], "prog: unrecognized arguments: --bogus=1"),
        (["--config", CONFIG, "extra"], "unexpected arguments ['extra']"),
        (["--workdir", "w"], "the following arguments are required: --config"),
        (["--config", CONFIG, "--search=maybe"], "expected true or false, got 'maybe'"),
    ],
)
def test_bad_flags_are_one_error_line(argv, expected, capsys):
  def main():
    cli.parse_args(_parser(), argv)

  with pytest.raises(SystemExit) as e:
    cli.run(main)
  assert e.value.code == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err and expected in err, err


def test_entry_points_that_set_xla_flags_import_no_jax_at_the_top():
  """python -m train, train.bench and eval.ladder set XLA_FLAGS from the parsed config, which
  only works before jax is imported (train/cpu_devices.py)."""
  code = "import json, sys, train.__main__, train.bench, eval.ladder; print(json.dumps(list(sys.modules)))"
  env = dict(os.environ, PYTHONPATH=str(REPO))
  p = subprocess.run(
      [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
  )
  assert p.returncode == 0, p.stderr
  modules = json.loads(p.stdout)
  assert "train.cli" in modules and "jax" not in modules and "grain" not in modules
