"""Fine-tuning demo: start from a trained run (`config.init_from`), train on SST-2 rendered as
text, and report SST-2 accuracy before and after.

Each training example becomes one document in the review format
("Review: <sentence>\nSentiment: positive"), written as JSONL and read by the data pipeline's
`jsonl:<path>:text` source, and both models are scored on the dev set in that same format
(eval/zeroshot.py task `sst2_review`, label words " negative" / " positive"), so "before" and
"after" compare like for like. (The lm-eval-comparable `sst2` task uses a different prompt.)

    python -m eval.finetune --base runs/default --workdir runs/sst2 \
        --train ../shared/data/sst2/train.tsv --dev ../shared/data/sst2/dev.tsv --steps 300

The same fine-tune through the trainer CLI (model flags must match the base run's):
    python -m train --config configs/default.py --workdir runs/sst2 \
        --config.init_from=runs/default --config.data.source=jsonl:sst2_train.jsonl:text
"""

from __future__ import annotations

import argparse
import json
import pathlib

from eval import zeroshot
from train import cli
from train import run as run_lib
from train import trainer


def render_sst2(tsv_path, out_path, *, limit: int = 0) -> int:
  """Writes SST-2 examples as JSONL documents {"text": prompt + label word}; returns count."""
  task = zeroshot.read_sst2_review(tsv_path)
  items = task.items[:limit] if limit > 0 else task.items
  with open(out_path, "w", encoding="utf-8") as f:
    for item in items:
      text = item.context + item.delimiter + item.choices[item.label]
      f.write(json.dumps({"text": text}) + "\n")
  return len(items)


def finetune_config(
    base_workdir: str,
    source: str,
    *,
    steps: int,
    learning_rate: float,
    warmup_steps: int,
    batch_size: int | None = None,
):
  """The base run's config with init_from=base, a new data source and a short schedule."""
  config = run_lib.config_from_workdir(base_workdir)
  config.init_from = str(base_workdir)
  config.name = f"{config.name}-finetune"
  config.data.source = source
  config.data.prepared_dir = ""
  config.train.steps = steps
  config.train.learning_rate = learning_rate
  config.train.warmup_steps = warmup_steps
  if batch_size:
    config.train.batch_size = batch_size
  config.eval.every = steps
  config.checkpoint.every = steps
  return config


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--base", required=True, help="the trained run to start from")
  ap.add_argument("--workdir", required=True, help="where the fine-tuned run goes")
  ap.add_argument("--train", required=True, help="SST-2 train.tsv (GLUE format)")
  ap.add_argument("--dev", required=True, help="SST-2 dev.tsv, scored before and after")
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--lr", type=float, default=3e-4)
  ap.add_argument("--warmup-steps", type=int, default=20)
  ap.add_argument("--batch-size", type=int, default=0, help="0: the base run's")
  ap.add_argument("--limit-train", type=int, default=0, help="first N training examples")
  ap.add_argument("--limit-dev", type=int, default=0, help="first N dev examples")
  args = ap.parse_args(argv)

  workdir = pathlib.Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  dev = zeroshot.load_task(f"sst2_review:{args.dev}", args.limit_dev)
  jsonl = workdir / "sst2_train.jsonl"
  n = render_sst2(args.train, jsonl, limit=args.limit_train)

  base = run_lib.load_run(args.base)
  with base.context():
    before = zeroshot.evaluate_run(base, dev)
  print(json.dumps({"before": {k: before[k] for k in ("n", "acc", "majority")}}), flush=True)
  config = finetune_config(
      args.base,
      f"jsonl:{jsonl.resolve()}:text",
      steps=args.steps,
      learning_rate=args.lr,
      warmup_steps=args.warmup_steps,
      batch_size=args.batch_size or None,
  )
  out = trainer.train_and_evaluate(config, str(workdir))
  tuned = run_lib.load_run(str(workdir))
  with tuned.context():
    after = zeroshot.evaluate_run(tuned, dev)
  report = dict(
      train_examples=n,
      steps=args.steps,
      dev_n=len(dev.items),
      acc_before=before["acc"],
      acc_after=after["acc"],
      majority=before["majority"],
      finetune_val_loss=out.get("val_loss"),
  )
  (workdir / "finetune_report.json").write_text(json.dumps(report, indent=2) + "\n")
  print(json.dumps(report))


if __name__ == "__main__":
  cli.run(main)
