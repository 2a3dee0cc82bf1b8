"""Summarize a jsonl file with a run trained on pairs and score ROUGE-1/2/L (rouge-score).

    python -m eval.summarize --workdir RUN --data test.jsonl [--src-field source]
        [--tgt-field target] [--beam 4] [--json OUT]

Each line holds a source (a string, or a list of sentences joined with spaces) and one
reference or a list of references. Scores are F1 x 100 with rouge-score's stemming; with
several references each summary is scored against the reference with the best ROUGE-1 F1 and
keeps that reference's ROUGE-2/L too (SciTLDR's official scoring).
"""

from __future__ import annotations

import argparse

import numpy as np
from rouge_score import rouge_scorer
from eval import seq2seq

from train.data import parallel

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_scores(summaries: list[str], references: list[list[str]]) -> dict:
  """Mean ROUGE-1/2/L F1 (0-100); per summary the reference with the best ROUGE-1 counts."""

  if len(summaries) != len(references):
    raise ValueError(f"{len(summaries)} summaries but {len(references)} reference lists")
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
  per_doc = []
  for summary, refs in zip(summaries, references):
    if not refs:
      raise ValueError("every summary needs at least one reference")
    scored = [scorer.score(ref, summary) for ref in refs]
    best = max(scored, key=lambda s: s["rouge1"].fmeasure)
    per_doc.append([best[t].fmeasure for t in ROUGE_TYPES])
  means = 100.0 * np.mean(per_doc, axis=0)
  return {t: float(m) for t, m in zip(ROUGE_TYPES, means)}


def read_examples(path: str, src_field: str, tgt_field: str) -> tuple[list[str], list[list[str]]]:
  """Sources and reference lists of a jsonl file (one example per line)."""
  fix = "name them with --src-field/--tgt-field"
  rows = list(parallel.jsonl_examples(path, src_field, tgt_field, fix))
  return [src for _, src, _ in rows], [refs for _, _, refs in rows]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m eval.summarize", description=__doc__.split("\n")[0])
  seq2seq.add_run_flags(ap, beam=4, max_len=64, max_len_help="summary tokens", batch_size=32)
  ap.add_argument("--data", required=True, help="jsonl with a source and references per line")
  ap.add_argument("--src-field", default="source")
  ap.add_argument("--tgt-field", default="target")
  args = ap.parse_args(argv)
  sources, references = read_examples(args.data, args.src_field, args.tgt_field)

  run, summaries = seq2seq.decode_run(args, sources)
  scores = rouge_scores(summaries, references)
  scores.update(documents=len(sources))
  seq2seq.write_scores(args, scores, run)
  print(f"{len(sources)} documents, beam {args.beam}, {run.describe_checkpoint()}")
  print(
      "ROUGE F1 (rouge-score, stemmed, best reference by ROUGE-1): "
      + ", ".join(f"{t} {scores[t]:.2f}" for t in ROUGE_TYPES)
  )
  return 0


if __name__ == "__main__":
  from train import cli

  cli.run(main)
