"""Every command in the README's ```bash blocks runs, so the README cannot drift from the code.

Each command is matched to a rewrite rule by its prefix: the rule shrinks what would take long
(tiny model overrides, 2 steps, --limit 3, ...) or skips it with a reason; a command with no
rule fails, so a new README command needs a rule here. Commands run with bash from a temporary
copy of the repository (paths such as runs/default land there), with this checkout's Python on
PATH; the tiny run in runs/default that later commands evaluate is trained once per module, by
the README's own first command, and every dependency runs once.
"""

import bz2
import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
from typing import Callable

import numpy as np
import pytest
import gzip

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PEER = REPO.parent / "shared" / "bench" / "torch_gpt.py"

TINY_MODEL = (
    "--config.model.d_model=32 --config.model.num_layers=1 --config.model.num_heads=2 "
    "--config.model.num_kv_heads=2 --config.model.head_dim=16 --config.model.mlp_dim=64"
)
TINY_RUN = (
    "--config.train.steps=2 --config.train.warmup_steps=1 --config.train.batch_size=4 "
    "--config.train.log_every=1 --config.eval.batches=1 --config.checkpoint.every=2"
)
TINY = f"{TINY_MODEL} {TINY_RUN}"


@dataclasses.dataclass(frozen=True)
class Rule:
  """How a README command starting with `prefix` runs here."""

  prefix: str
  rewrite: Callable[[str], str] = lambda cmd: cmd
  needs: tuple[str, ...] = ()  # prefixes of README commands whose outputs this one reads
  skip: str = ""  # non-empty: the reason the command is not run
  marks: tuple = ()


def append(extra: str) -> Callable[[str], str]:
  return lambda cmd: f"{cmd} {extra}"


def replace(*pairs: tuple[str, str], extra: str = "") -> Callable[[str], str]:
  def rewrite(cmd):
    for old, new in pairs:
      assert old in cmd, f"rule expects {old!r} in {cmd!r}"
      cmd = cmd.replace(old, new)
    return f"{cmd} {extra}".strip()

  return rewrite


FIRST = "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/python -m train"
LADDER = "python -m eval.ladder --config configs/ladder.py:cpu"
EPOCHS = "python -m eval.ladder --config configs/ladder.py:cpu_epochs"
GPT2 = "python -m train --config configs/gpt2.py:size=124M"
EXPORT = "python -m eval.hf export --workdir runs/gpt2"

S2S_TINY = (
    f"{TINY_MODEL} {TINY_RUN} --config.model.num_decoder_layers=1 --config.data.seq_len=64 "
    "--config.model.max_seq_len=64 --config.data.val_fraction=0.1"
)
M30K_BPE = "python -m train.data.tokenizer train --source pairs:data/multi30k"
M30K = "python -m train --config configs/transformer.py:size=tiny --workdir runs/m30k"
M30K_LM = (
    "python -m train --config configs/transformer.py:size=tiny,arch=decoder --workdir runs/m30k_lm"
)
TLDR_BPE = "python -m train.data.tokenizer train --source jsonl:data/scitldr"
TLDR = "python -m train --config configs/transformer.py:size=tiny --workdir runs/tldr"

RULES = [
    # Encoder-decoder commands run on the tiny stand-in files of _write_inputs.
    Rule(M30K_BPE, replace(("--vocab-size 8000", "--vocab-size 300"))),
    Rule(M30K, append(S2S_TINY), needs=(M30K_BPE,)),
    Rule(
        "python -m eval.translate --workdir runs/m30k",
        replace(("--average-last 10", "--average-last 1"), extra="--max-len 4"),
        needs=(M30K,),
    ),
    Rule(M30K_LM, append(S2S_TINY), needs=(M30K_BPE,)),
    Rule(
        "python -m eval.translate --workdir runs/m30k_lm", append("--max-len 4"), needs=(M30K_LM,)
    ),
    Rule(TLDR_BPE, replace(("--vocab-size 8000", "--vocab-size 300"))),
    Rule(TLDR, append(S2S_TINY), needs=(TLDR_BPE,)),
    Rule("python -m eval.summarize --workdir runs/tldr", append("--max-len 4"), needs=(TLDR,)),
    # The environment is already installed: the first command's training part, tiny.
    Rule(FIRST, lambda cmd: f"python -m train {cmd.split(' -m train ', 1)[1]} {TINY}"),
    Rule("bash scripts/test.sh", skip="runs the test suite that holds this test"),
    Rule(GPT2, append(f"{TINY} --config.data.seq_len=64 --config.model.max_seq_len=64")),
    Rule(
        "python -m train --config configs/default.py:size=tiny",
        replace(("/tmp/smoke", "runs/smoke"), extra="--config.train.steps=2"),
    ),
    Rule("python -m model.summary --config configs/gpt3.py:size=175B"),
    Rule("python -m eval.perplexity --workdir runs/default", append("--batches 1"), needs=(FIRST,)),
    Rule("python -m eval.perplexity --workdir runs/default --data text:notes.txt", needs=(FIRST,)),
    # The tiny ladder (the same WSD scheme, 2 sizes) at 3 budgets: 6 points, enough to fit.
    Rule(LADDER, replace((":cpu", ":tiny"), extra="'--config.ladder.steps=(4,6,8)'")),
    # The MoE twins: 2 tiny sizes, 2 short budgets each.
    Rule(
        "python -m eval.ladder --config configs/ladder.py:moe ",
        replace((":moe ", ":tiny_moe "), extra="'--config.ladder.steps=(4,6)'"),
    ),
    Rule(
        "python -m eval.ladder --config configs/ladder.py:moe_dense",
        replace((":moe_dense", ":tiny_moe_dense"), extra="'--config.ladder.steps=(4,6)'"),
    ),
    Rule(
        f"{LADDER} --workdir runs/ladder --executor local",
        replace((":cpu", ":tiny"), extra="'--config.ladder.steps=(4,6,8)'"),
        needs=(LADDER,),
    ),
    # One width, one budget, both seeds: 2 constant runs and their cooldowns.
    Rule(
        f"{LADDER}_recipe",
        replace(
            (":cpu_recipe", ":tiny_recipe"),
            extra="'--config.ladder.steps=(4,)' '--config.ladder.recipe.widths=(16,)'",
        ),
    ),
    # 2 sizes x sp, mup x one learning rate, 3 steps each.
    Rule(
        f"{LADDER}_lr_sweep",
        replace(
            (":cpu_lr_sweep", ":tiny_lr_sweep"),
            extra="'--config.ladder.steps=(3,)' '--config.ladder.lr_exponents=(-6,)'",
        ),
    ),
    Rule("python -m eval.lr_transfer --workdir runs/lr_sweep", needs=(f"{LADDER}_lr_sweep",)),
    # A tiny IsoFLOP ladder (8 points at 3 budgets), then its prediction at 4x the largest
    # (fitted from the coarse grid with 4 resamples, as the report rule fits).
    Rule(
        f"{LADDER} --workdir runs/ladder --predict-budget",
        replace(
            (":cpu", ":tiny_isoflop"),
            ("runs/ladder", "runs/ladder_predict"),
            ("--predict-budget 1.2e12", "--predict-budget 1.6e9"),
            extra="'--config.ladder.flop_budgets=(1e8,2e8,4e8)' "
            "--predict-grid coarse --predict-bootstrap 4",
        ),
    ),
    Rule(
        f"{LADDER} --workdir /shared/ladder --executor ray",
        skip="needs a Ray cluster at HEAD:6379 (tests/test_ladder_ray.py runs a local one)",
    ),
    Rule('pip install -e ".[ray]"', skip="installs packages into the environment"),
    Rule(
        "python -m eval.report --workdir runs/ladder",
        append("--bootstrap 4 --grid coarse"),
        needs=(LADDER,),
    ),
    Rule(
        "python -m eval.fit chinchilla --csv runs/ladder/results.csv",
        replace(("--bootstrap 200", "--bootstrap 4"), extra="--grid coarse"),
        needs=(LADDER,),
    ),
    Rule("python -m eval.fit isoflop --csv FILE", replace(("FILE", "isoflop.csv"))),
    # The data-constrained ladder, tiny: 2 sizes x 1..3 epochs (+ fresh twins), 10 points (6
    # of one epoch at most: the Chinchilla part of `eval.fit constrained` needs 5).
    Rule(
        EPOCHS,
        replace((":cpu_epochs", ":tiny_epochs"), extra="'--config.ladder.epochs=(1,2,3)'"),
    ),
    Rule("python -m train --config configs/default.py --workdir runs/capped", append(TINY)),
    Rule(
        "python -m eval.bias --workdir runs/ladder_epochs",
        replace(
            ("d48l2_e16_fresh", "d32l1_e3_fresh"),
            (
                "../shared/data/bias/crows_pairs/crows_pairs_anonymized.csv",
                "crows_pairs_anonymized.csv",
            ),
            extra="--limit 4",
        ),
        needs=(EPOCHS,),
    ),
    Rule(
        "python -m eval.fit constrained --csv runs/ladder_epochs/results.csv",
        replace(("--bootstrap 200", "--bootstrap 4")),
        needs=(EPOCHS,),
    ),
    Rule("python -m eval.generate --workdir runs/default", needs=(FIRST,)),
    Rule("python -m eval.zeroshot --workdir runs/default", append("--limit 3"), needs=(FIRST,)),
    Rule("python -m eval.bias --workdir runs/default", append("--limit 4"), needs=(FIRST,)),
    Rule(
        "python -m train --config configs/default.py --workdir runs/ft",
        append(TINY),
        needs=(FIRST,),
    ),
    Rule(EXPORT, needs=(GPT2,)),
    Rule("python -m eval.hf import --hf-dir hf_dir", needs=(EXPORT,)),
    Rule('pip install -e ".[tpu]"', skip="installs packages into the environment"),
    Rule(
        "python -m eval.coord_check --config configs/default.py:size=tiny",
        replace(
            ("--widths 64,128,256,512", "--widths 32,64"),
            ("--steps 10", "--steps 2"),
            extra="--seeds 1",
        ),
    ),
    Rule(
        "python -m eval.lr_transfer --config configs/default.py:size=tiny",
        replace(
            ("--widths 32,64,128", "--widths 32,64"),
            ("--lr-exponents=-11,-10,-9,-8,-7,-6", "--lr-exponents=-8,-7"),
            ("--parametrizations mup,sp", "--parametrizations mup"),
            ("--steps 1000", "--steps 4"),
            ("--eval-batches 64", "--eval-batches 1"),
            ("docs/lr_transfer.png", "runs/lr_transfer.png"),
        ),
    ),
    # Searching batch sizes compiles the TPU step many times (minutes): the analytic plan.
    Rule(
        "python -m train.plan --config configs/gpt3.py:size=1.3B",
        replace(("--search", "--analytic")),
    ),
    Rule(
        "python -m train.bench --config configs/bench.py:S",
        replace((":S", ":tiny"), ("--steps 10", "--steps 2"), ("--compile_depth_check", "")),
    ),
    Rule("python -m train.data.bench", append("--steps 2 --dir runs/loader-bench")),
    Rule(
        "python scripts/bench_vs_torch.py --config S",
        replace(
            ("--config S", "--config tiny"),
            extra=f"--rounds 1 --k 1 --allow-noisy --torch_python {sys.executable} --peer {PEER}",
        ),
        skip="" if PEER.is_file() else f"{PEER} (the PyTorch peer) is not present",
    ),
    Rule(
        "python scripts/profile_step.py --config S",
        replace(("--config S", "--config tiny"), extra=f"--steps 1 --peer {PEER}"),
        skip="" if PEER.is_file() else f"{PEER} (the PyTorch peer) is not present",
    ),
    Rule("bash scripts/gpu_check.sh", skip="needs a GPU (docs/gpu.md)"),
]


def _strip_comment(line: str) -> str:
  """The line without a trailing shell comment (a '#' outside quotes)."""
  for m in re.finditer(r"(?:^|\s)#", line):
    before = line[: m.start()]
    if before.count('"') % 2 == 0 and before.count("'") % 2 == 0:
      return before.strip()
  return line.strip()


def readme_commands(text: str) -> list[str]:
  """Every command of every ```bash block, continuation lines joined, comments dropped."""
  commands = []
  for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
    for line in block.replace("\\\n", " ").splitlines():
      line = " ".join(_strip_comment(line).split())
      if line:
        commands.append(line)
  return commands


def rule_for(command: str) -> Rule | None:
  matches = [r for r in RULES if command.startswith(r.prefix)]
  return max(matches, key=lambda r: len(r.prefix)) if matches else None


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def _params():
  params = []
  for cmd in COMMANDS:
    rule = rule_for(cmd)
    slug = re.sub(r"[^A-Za-z0-9.:=_/-]+", "_", cmd)[:60]
    params.append(pytest.param(cmd, id=slug, marks=rule.marks if rule else ()))
  return params


def _write_seq2seq_inputs(ws: pathlib.Path) -> None:
  """Stand-ins for Multi30k (gzip, line-aligned) and SciTLDR (jsonl, several references)."""

  words = ["a", "dog", "runs", "the", "cat", "sits", "on", "grass", "red", "ball"]
  en = [" ".join(words[(i * k) % 10] for k in range(1, 4 + i % 3)) for i in range(60)]
  (ws / "data" / "multi30k").mkdir(parents=True)
  for name, lines in (("train", en), ("test_2016_flickr", en[:5])):
    for lang, side in (("en", lines), ("de", [line[::-1] for line in lines])):
      with gzip.open(ws / "data" / "multi30k" / f"{name}.{lang}.gz", "wt") as f:
        f.write("\n".join(side) + "\n")
  (ws / "data" / "scitldr").mkdir(parents=True)
  rows = [{"source": [line, line[::-1]], "target": [line[:9], line[-9:]]} for line in en]
  for name, part in (("train", rows), ("test", rows[:4])):
    (ws / "data" / "scitldr" / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in part))


def _write_inputs(ws: pathlib.Path) -> None:
  """The files README commands name that a user brings: tiny stand-ins."""
  items = [
      (
          "Cooking: A man cracks an egg into a bowl. he",
          1,
          ["flies away.", "whisks it with a fork.", "sings loudly.", "paints the wall."],
      ),
      (
          "Running: A woman ties her shoes. she",
          0,
          ["starts to jog down the road.", "eats soup.", "reads a book.", "sleeps."],
      ),
  ] * 2
  lines = [line for ctx, gold, endings in items for line in (ctx, str(gold), *endings)]
  (ws / "hellaswag_val.txt.bz2").write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
  (ws / "hellaswag_val.jsonl").write_text(
      "".join(
          json.dumps(
              dict(
                  activity_label=ctx.split(":")[0],
                  ctx_a=ctx.split(": ", 1)[1].rsplit(". ", 1)[0] + ".",
                  ctx_b=ctx.rsplit(". ", 1)[1],
                  ctx=ctx.split(": ", 1)[1],
                  endings=endings,
                  label=gold,
                  split="val",
                  split_type="indomain",
                  source_id="x",
                  ind=i,
              )
          )
          + "\n"
          for i, (ctx, gold, endings) in enumerate(items)
      )
  )
  _write_seq2seq_inputs(ws)
  (ws / "notes.txt").write_text("Held-out notes of a user.\n\nA second paragraph of them.\n")
  (ws / "crows_pairs_anonymized.csv").write_text(
      ",sent_more,sent_less,stereo_antistereo,bias_type,annotations,anon_writer,anon_annotators\n"
      + "".join(
          f'{i},"The poor are lazy {i}.","The rich are lazy {i}.",stereo,socioeconomic,'
          f"\"[['socioeconomic']]\",a{i},\"['a1']\"\n"
          for i in range(4)
      )
  )
  (ws / "dev.tsv").write_text(
      "sentence\tlabel\na charming journey\t1\nbleak and dull\t0\n" "a delight\t1\na mess\t0\n"
  )
  (ws / "sst2_train.jsonl").write_text(
      "".join(  # distinct reviews: the split hashes content
          f'{{"text": "Review: {s} {i}\\nSentiment: {w}"}}\n'
          for i, (s, w) in enumerate([("lovely", "positive"), ("awful", "negative")] * 250)
      )
  )
  # IsoFLOP grid from a known law L = 1.7 + 400/N^0.34 + 410/D^0.28, D = C / (6 N).
  rows = ["N,C,L"]
  for c in (1e15, 1e16, 1e17):
    for n in np.geomspace(1e5, 1e8, 7):
      d = c / (6 * n)
      rows.append(f"{n:.6g},{c:.6g},{1.7 + 400 / n ** 0.34 + 410 / d ** 0.28:.6g}")
  (ws / "isoflop.csv").write_text("\n".join(rows) + "\n")


class Workspace:
  """A temporary copy of the repository where README commands run, each at most once."""

  def __init__(self, root: pathlib.Path):
    self.root = root
    self.results: dict[str, subprocess.CompletedProcess] = {}
    bin_dir = pathlib.Path(sys.executable).parent
    self.env = dict(
        os.environ,
        PYTHONPATH=str(root),
        JAX_PLATFORMS="cpu",
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    self.env.pop("UNLEASH_DEBUG", None)

  def run(self, command: str) -> subprocess.CompletedProcess:
    """Runs the README command (rewritten by its rule) after the commands it needs."""
    if command not in self.results:
      rule = rule_for(command)
      for prefix in rule.needs:
        dep = next(c for c in COMMANDS if c.startswith(prefix))
        if self.run(dep).returncode != 0:
          pytest.fail(f"needs `{dep}`, which failed")
      self.results[command] = subprocess.run(
          ["bash", "-c", rule.rewrite(command)],
          cwd=self.root,
          env=self.env,
          capture_output=True,
          text=True,
          timeout=900,
      )
    return self.results[command]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  root = tmp_path_factory.mktemp("readme") / "unleash"
  shutil.copytree(
      REPO,
      root,
      ignore=shutil.ignore_patterns(
          ".git", ".venv", "runs", "__pycache__", ".pytest_cache", "*.egg-info"
      ),
  )
  _write_inputs(root)
  return Workspace(root)


@pytest.mark.parametrize("command", _params())
def test_readme_command_runs(command, workspace):
  rule = rule_for(command)
  assert rule is not None, (
      f"README command `{command}` has no rule in tests/test_readme.py; "
      "add one (a tiny rewrite, or a skip with its reason)"
  )
  if rule.skip:
    pytest.skip(rule.skip)
  p = workspace.run(command)
  assert p.returncode == 0, (
      f"`{rule.rewrite(command)}` exited {p.returncode}\n" f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
  )
  assert "Traceback" not in p.stderr, p.stderr[-3000:]


def test_every_rule_matches_a_readme_command():
  """A rule whose command left the README is stale: remove it with the command."""
  stale = [r.prefix for r in RULES if not any(c.startswith(r.prefix) for c in COMMANDS)]
  assert not stale, stale


def test_readme_commands_parsing():
  text = (
      'x\n```bash\npython -m a --p "x # y"   # note\n# only a comment\n'
      "python -m b --q 1 \\\n    --r 2\n```\n```python\nnot = 'bash'\n```\n"
  )
  assert readme_commands(text) == ['python -m a --p "x # y"', "python -m b --q 1 --r 2"]
