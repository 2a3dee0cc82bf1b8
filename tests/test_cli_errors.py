"""Every entry point meets bad input (a bad config value, an unknown preset size, a missing
workdir or data file, a bad CSV) with one line on stderr starting `error:`, a non-zero exit code
and no traceback."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
MISSING = "/nonexistent/unleash-run"

# (id, argv after `python`, marks). {tmp} is a fresh temporary directory; {bad_csv} a CSV whose
# loss column holds text.
CASES = [
    (
        "train-heads",
        [
            "-m",
            "train",
            "--config",
            "configs/default.py:size=tiny",
            "--workdir",
            "{tmp}/run",
            "--config.model.num_heads=3",
            "--config.model.num_kv_heads=2",
        ],
        (),
    ),
    (
        "train-size",
        ["-m", "train", "--config", "configs/gpt2.py:size=1T", "--workdir", "{tmp}/run"],
        (),
    ),
    (
        "train-field",
        [
            "-m",
            "train",
            "--config",
            "configs/default.py:size=tiny",
            "--workdir",
            "{tmp}/run",
            "--config.model.no_such_field=1",
        ],
        (),
    ),
    (
        "train-positional",
        [
            "-m",
            "train",
            "--config",
            "configs/default.py:size=tiny",
            "--workdir",
            "{tmp}/run",
            "extra",
        ],
        (),
    ),
    (
        "train-data",
        [
            "-m",
            "train",
            "--config",
            "configs/default.py:size=tiny",
            "--workdir",
            "{tmp}/run",
            "--config.data.source=text:/nonexistent/*.txt",
        ],
        (),
    ),
    ("perplexity", ["-m", "eval.perplexity", "--workdir", MISSING], ()),
    ("perplexity-flags", ["-m", "eval.perplexity", "--batches", "many"], ()),
    ("generate", ["-m", "eval.generate", "--workdir", MISSING, "--prompt", "hi"], ()),
    (
        "generate-samples",
        ["-m", "eval.generate", "--workdir", MISSING, "--prompt", "hi", "--num-samples", "0"],
        (),
    ),
    ("zeroshot", ["-m", "eval.zeroshot", "--workdir", MISSING, "--task", "sst2:dev.tsv"], ()),
    (
        "fit",
        [
            "-m",
            "eval.fit",
            "chinchilla",
            "--csv",
            "{bad_csv}",
            "--n-col",
            "N",
            "--d-col",
            "D",
            "--loss-col",
            "loss",
        ],
        (),
    ),
    (
        "fit-missing",
        [
            "-m",
            "eval.fit",
            "isoflop",
            "--csv",
            "{tmp}/none.csv",
            "--n-col",
            "N",
            "--c-col",
            "C",
            "--loss-col",
            "L",
        ],
        (),
    ),
    ("report", ["-m", "eval.report", "--workdir", MISSING], ()),
    (
        "ladder",
        [
            "-m",
            "eval.ladder",
            "--config",
            "configs/ladder.py:no_such_ladder",
            "--workdir",
            "{tmp}/ladder",
        ],
        (),
    ),
    ("hf-export", ["-m", "eval.hf", "export", "--workdir", MISSING, "--out", "{tmp}/hf"], ()),
    ("hf-import", ["-m", "eval.hf", "import", "--hf-dir", MISSING, "--workdir", "{tmp}/imp"], ()),
    ("summary", ["-m", "model.summary", "--config", "configs/gpt3.py:size=1T"], ()),
    (
        "plan",
        ["-m", "train.plan", "--config", "configs/gpt3.py:size=1T", "--topology", "v5e:4x4"],
        (),
    ),
    (
        "plan-cost",
        [
            "-m",
            "train.plan",
            "--config",
            "configs/default.py:size=tiny",
            "--topology",
            "h100:8",
            "--config.cost.usd_per_chip_hour=-2",
        ],
        (),
    ),
    (
        "bench",
        [
            "-m",
            "train.bench",
            "--config",
            "configs/bench.py:tiny",
            "--config.model.num_heads=3",
            "--config.model.num_kv_heads=2",
        ],
        (),
    ),
    (
        "prepare",
        ["-m", "train.data.prepare", "--source", "text:/nonexistent/*.txt", "--out", "{tmp}/prep"],
        (),
    ),
    (
        "tokenizer",
        [
            "-m",
            "train.data.tokenizer",
            "train",
            "--source",
            "text:/nonexistent/*.txt",
            "--vocab-size",
            "300",
            "--out",
            "{tmp}/tok.json",
        ],
        (),
    ),
    (
        "data-bench",
        ["-m", "train.data.bench", "--source", "text:/nonexistent/*.txt", "--dir", "{tmp}/bench"],
        (),
    ),
    (
        "bench-vs-torch",
        ["scripts/bench_vs_torch.py", "--config", "tiny", "--torch_python", "{tmp}/no-python"],
        (),
    ),
]


def run_entry_point(argv, tmp_path, timeout=300):
  """Runs `python ARGV` from the repository root with this checkout's code on the path."""
  bad_csv = tmp_path / "bad.csv"
  bad_csv.write_text(
      "N,D,loss\n" + "".join(f"{n}e6,{n}e8,3.{n}\n" for n in range(1, 7)) + "7e6,7e8,abc\n"
  )
  args = [a.format(tmp=tmp_path, bad_csv=bad_csv) for a in argv]
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  env.pop("UNLEASH_DEBUG", None)
  return subprocess.run(
      [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
  )


@pytest.mark.parametrize("argv", [pytest.param(a, id=i, marks=m) for i, a, m in CASES])
def test_bad_input_is_one_error_line(argv, tmp_path):
  p = run_entry_point(argv, tmp_path)
  errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
  assert p.returncode != 0, p.stdout + p.stderr
  assert "Traceback" not in p.stderr, p.stderr
  assert len(errors) == 1, p.stderr
  assert len(errors[0]) > len("error: ") + 10, p.stderr
