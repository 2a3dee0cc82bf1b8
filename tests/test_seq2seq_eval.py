"""Translation and summarization metrics agree with sacrebleu / rouge-score, and the whole path
(train an encoder-decoder with the trainer, then eval.translate / eval.summarize) runs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from eval import summarize
from eval import translate
from train import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO}
HYPS = ["The cat sat on the mat .", "A dog runs in the park", "hello there"]
REFS = ["the cat sat on the mat .", "A dog is running in the park", "Hello there"]


def test_bleu_wrapper_agrees_with_sacrebleu():
  s = translate.bleu_scores(HYPS, REFS)
  assert s["sacrebleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
  assert s["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
  lower = sacrebleu.corpus_bleu([h.lower() for h in HYPS], [[r.lower() for r in REFS]]).score
  assert s["tok_lc_bleu"] == pytest.approx(lower)
  assert s["tok_lc_bleu"] > s["sacrebleu"]  # only the case differs in two sentences
  assert translate.bleu_scores(REFS, REFS)["sacrebleu"] == pytest.approx(100.0)
  assert "case:lc" in s["signatures"]["tok_lc_bleu"]
  assert "case:mixed" in s["signatures"]["sacrebleu"]


def test_rouge_takes_the_reference_with_the_best_rouge1():
  refs = [["the cat sat on the mat", "a completely different text"], ["dogs bark loudly"]]
  out = summarize.rouge_scores(["the cat sat", "dogs bark"], refs)
  # hand count: "the cat sat" vs its first reference: P 3/3, R 3/6 -> F1 2/3;
  # "dogs bark" vs "dogs bark loudly": P 1, R 2/3 -> F1 0.8
  assert out["rouge1"] == pytest.approx(100 * (2 / 3 + 0.8) / 2)
  scorer = rouge_scorer.RougeScorer(["rouge2", "rougeL"], use_stemmer=True)
  want = [
      scorer.score("the cat sat on the mat", "the cat sat"),
      scorer.score(refs[1][0], "dogs bark"),
  ]
  for t in ("rouge2", "rougeL"):
    assert out[t] == pytest.approx(100 * sum(w[t].fmeasure for w in want) / 2)


TINY = dict(
    model__vocab_size=260,
    model__d_model=32,
    model__head_dim=8,
    model__mlp_dim=64,
    data__seq_len=16,
    data__val_fraction=0.1,
    train__batch_size=8,
    train__warmup_steps=1,
    eval__batches=1,
)


def _toy_pairs(tmp_path):
  src = tmp_path / "src.txt"
  tgt = tmp_path / "tgt.txt"
  words = ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op"]
  lines = [f"{words[i % 8]} {words[(3 * i) % 8]}" for i in range(64)]
  src.write_text("\n".join(lines) + "\n")
  tgt.write_text("\n".join(line[::-1] for line in lines) + "\n")
  return src, tgt


def _train(run, preset, src, tgt, **overrides):
  train = [sys.executable, "-m", "train", "--config", preset]
  train += ["--workdir", str(run), f"--config.data.source=pairs:{src}:{tgt}"]
  for k, v in {**TINY, **overrides}.items():
    train.append(f"--config.{k.replace('__', '.')}={v}")
  subprocess.run(train, check=True, capture_output=True, cwd=REPO, env=ENV)


def _translate(run, src, tgt, out, *flags):
  return subprocess.run(
      [sys.executable, "-m", "eval.translate", "--workdir", str(run), "--src", str(src)]
      + ["--ref", str(tgt), "--max-len", "8", "--json", str(out), *flags],
      capture_output=True,
      text=True,
      cwd=REPO,
      env=ENV,
  )


def test_translate_and_summarize_a_trained_run(tmp_path):
  src, tgt = _toy_pairs(tmp_path)
  run = tmp_path / "run"
  _train(
      run,
      "configs/transformer.py:size=tiny",
      src,
      tgt,
      model__num_layers=1,
      model__num_decoder_layers=1,
      train__steps=4,
      eval__every=4,
      checkpoint__every=2,
  )
  out = tmp_path / "bleu.json"
  p = _translate(run, src, tgt, out, "--beam", "2", "--average-last", "2")
  assert p.returncode == 0, p.stderr
  assert "average of the last 2 checkpoints (steps 2, 4)" in p.stdout
  scores = json.loads(out.read_text())
  assert scores["sentences"] == 64 and 0 <= scores["sacrebleu"] <= 100
  assert scores["averaged_steps"] == [2, 4]
  too_many = _translate(run, src, tgt, out, "--average-last", "5")
  assert too_many.returncode == 1 and too_many.stderr.strip().count("\n") == 0
  assert "holds 2" in too_many.stderr and "checkpoint.keep >= 5" in too_many.stderr
  data = tmp_path / "d.jsonl"
  data.write_text("\n".join(json.dumps({"source": a, "target": [b, a]}) for a, b in [("ab", "ba")]))
  out = tmp_path / "rouge.json"
  subprocess.run(
      [sys.executable, "-m", "eval.summarize", "--workdir", str(run), "--data", str(data)]
      + ["--beam", "1", "--max-len", "6", "--json", str(out)],
      check=True,
      capture_output=True,
      cwd=REPO,
      env=ENV,
  )
  assert set(summarize.ROUGE_TYPES) <= set(json.loads(out.read_text()))
  bad = subprocess.run(
      [sys.executable, "-m", "eval.translate", "--workdir", str(run), "--src", str(src)]
      + ["--ref", str(data)],
      capture_output=True,
      text=True,
      cwd=REPO,
      env=ENV,
  )
  assert bad.returncode == 1
  assert bad.stderr.strip().count("\n") == 0 and "line-aligned" in bad.stderr


def test_a_decoder_only_run_on_pairs_learns_and_translates(tmp_path):
  """model.arch=decoder on a parallel source trains on "source <sep> target" rows (the loss
  falls) and eval.translate decodes it from the prompt BOS source <sep>."""
  src, tgt = _toy_pairs(tmp_path)
  run = tmp_path / "run"
  _train(
      run,
      "configs/transformer.py:size=tiny,arch=decoder",
      src,
      tgt,
      model__num_layers=2,
      data__seq_len=32,
      train__steps=30,
      train__learning_rate=0.003,
      train__log_every=1,
      eval__every=30,
      checkpoint__every=30,
  )
  losses = [r["loss"] for r in metrics.read_jsonl(str(run / "metrics.jsonl")) if "loss" in r]
  assert len(losses) == 30 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
  out = tmp_path / "bleu.json"
  p = _translate(run, src, tgt, out, "--beam", "2")
  assert p.returncode == 0, p.stderr
  assert json.loads(out.read_text())["sentences"] == 64
