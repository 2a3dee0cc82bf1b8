"""Translate a file with a run trained on pairs and score it the ways papers report BLEU.

    python -m eval.translate --workdir RUN --src test.en --ref test.de [--beam 5] [--json OUT]

Printed scores (the references are the --ref file, detokenized text):
  sacreBLEU    case-sensitive BLEU on detokenized text with sacrebleu's default 13a
               tokenization (the comparable number; its signature is printed with it)
  chrF         sacrebleu's chrF2 on the same text
  tok-lc BLEU  BLEU after 13a tokenization of lowercased text: the "tokenized, lowercased"
               BLEU of fairseq-style papers (e.g. Multi30k results). Papers that score
               against Moses-tokenized references (multi-bleu.perl) can differ by a little.
Both files are one sentence per line (`.gz` allowed) and must have the same number of lines.
The run is an encoder-decoder or a decoder-only model trained on "source <sep> target" rows
(eval/seq2seq.py decodes both); `--average-last N` scores the mean of its last N checkpoints.
"""

from __future__ import annotations

import argparse
import sacrebleu
from eval import seq2seq

from train.data import parallel


def bleu_scores(hypotheses: list[str], references: list[str]) -> dict:
  """{'sacrebleu', 'chrf', 'tok_lc_bleu'} (0-100) and the sacreBLEU signatures."""

  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
  metrics = dict(
      sacrebleu=sacrebleu.metrics.BLEU(),
      chrf=sacrebleu.metrics.CHRF(),
      tok_lc_bleu=sacrebleu.metrics.BLEU(lowercase=True, tokenize="13a"),
  )
  scores = {k: m.corpus_score(hypotheses, [references]).score for k, m in metrics.items()}
  return dict(scores, signatures={k: str(m.get_signature()) for k, m in metrics.items()})


def report_lines(scores: dict) -> list[str]:
  s = scores["signatures"]
  return [
      f"sacreBLEU   {scores['sacrebleu']:6.2f}  (detokenized, cased; {s['sacrebleu']})",
      f"chrF        {scores['chrf']:6.2f}  ({s['chrf']})",
      f"tok-lc BLEU {scores['tok_lc_bleu']:6.2f}  (13a-tokenized, lowercased, as fairseq-style "
      f"papers report; {s['tok_lc_bleu']})",
  ]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m eval.translate", description=__doc__.split("\n")[0])
  seq2seq.add_run_flags(
      ap, beam=5, max_len=128, max_len_help="target tokens per sentence", batch_size=64
  )
  ap.add_argument("--src", required=True, help="source sentences, one per line")
  ap.add_argument("--ref", required=True, help="reference translations, line-aligned")
  ap.add_argument("--out", default="", help="also write the translations here")
  args = ap.parse_args(argv)
  sources, references = parallel.read_lines(args.src), parallel.read_lines(args.ref)
  if len(sources) != len(references):
    raise ValueError(
        f"{args.src} has {len(sources)} lines but {args.ref} has {len(references)}; "
        "they must be line-aligned"
    )

  run, hyps = seq2seq.decode_run(args, sources)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write("\n".join(hyps) + "\n")
  scores = bleu_scores(hyps, references)
  scores.update(sentences=len(hyps), length_penalty=args.length_penalty)
  seq2seq.write_scores(args, scores, run)
  print(f"{len(hyps)} sentences, beam {args.beam}, {run.describe_checkpoint()}")
  print("\n".join(report_lines(scores)))
  return 0


if __name__ == "__main__":
  from train import cli

  cli.run(main)
