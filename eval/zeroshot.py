"""Zero-shot evaluation by log-likelihood: multiple choice, cloze and label-word classification.

Every task becomes a list of `Item(context, choices, label)`. The model scores each choice as
the sum of log p(choice tokens | context tokens); the prediction is the best-scoring choice.
The scorer only needs a `token_logprobs_fn(batch) -> (logprob_BxL, is_argmax_BxL)`, so tests
can inject a stub with known answers and the real one runs jitted on the training mesh.

Task specs (`--task KIND:PATH`):
  hellaswag:PATH  6-line text format ('<activity_label>: <ctx>', gold 0-3, 4 endings), .bz2 ok
  sst2:PATH       GLUE TSV with a header holding `sentence` and `label` (0 negative, 1 positive);
                  scored as the label word after a prompt
  jsonl:PATH      one JSON object a line: {"context": str, "choices": [str, ...], "label": int}
  cloze:PATH      last-word prediction: .txt one passage a line, or .jsonl with {"text": str};
                  correct when every target token is the model's argmax (LAMBADA-style)

    python -m eval.zeroshot --workdir runs/default --task hellaswag:PATH --limit 500
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import json
import pathlib
import sys
from typing import Callable, Sequence

import numpy as np

# SST-2 rendered as a prompt and two label words. The fine-tuning demo (eval/finetune.py)
# renders its training text with the same template so "before" and "after" compare like for like.
SST2_TEMPLATE = "Review: {sentence}\nSentiment:"
SST2_LABEL_WORDS = (" negative", " positive")


@dataclasses.dataclass(frozen=True)
class Item:
  context: str
  choices: tuple[str, ...]
  label: int


@dataclasses.dataclass(frozen=True)
class Task:
  """`kind`: "choice" (pick the most likely choice) or "cloze" (greedy match of choices[0]).
  `skipped`: input records that could not form an item (a one-word cloze line)."""
  name: str
  kind: str
  items: list[Item]
  skipped: int = 0


# ----------------------------------------------------------------------------- parsers


def _open_text(path):
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"task file {path} does not exist; pass an existing file")
  if path.suffix == ".bz2":
    return bz2.open(path, "rt", encoding="utf-8")
  return open(path, encoding="utf-8")


def read_hellaswag(path) -> Task:
  """HellaSwag in the 6-line text format (llama.cpp's hellaswag_val_full.txt).

  Context is line 1 as written ('<activity_label>: <ctx>'); each ending is scored after a
  space, as in the original evaluation.
  """
  with _open_text(path) as f:
    lines = f.read().split("\n")
  while lines and not lines[-1].strip():
    lines.pop()
  if len(lines) % 6:
    raise ValueError(f"{path}: {len(lines)} lines is not a multiple of 6; the HellaSwag text "
                     "format is context, gold label (0-3), then 4 endings per item")
  items = []
  for i in range(0, len(lines), 6):
    label = lines[i + 1].strip()
    if label not in ("0", "1", "2", "3"):
      raise ValueError(f"{path}:{i + 2}: gold label must be 0-3, got {label!r}; is the file in "
                       "the 6-line HellaSwag format?")
    endings = tuple(" " + e.strip() for e in lines[i + 2:i + 6])
    items.append(Item(lines[i].strip(), endings, int(label)))
  return Task("hellaswag", "choice", items)


def read_sst2(path, template: str = SST2_TEMPLATE,
              label_words: Sequence[str] = SST2_LABEL_WORDS) -> Task:
  """GLUE SST-2 TSV (header `sentence<TAB>label`): classify by scoring the label words."""
  with _open_text(path) as f:
    rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  if not rows or "sentence" not in rows[0] or "label" not in rows[0]:
    raise ValueError(f"{path}: expected a GLUE TSV whose header has 'sentence' and 'label' "
                     f"columns, got header {rows[0] if rows else 'none (empty file)'}")
  s_col, l_col = rows[0].index("sentence"), rows[0].index("label")
  items = []
  for n, row in enumerate(rows[1:], start=2):
    if not row:
      continue
    try:
      label = int(row[l_col])
    except (IndexError, ValueError):
      raise ValueError(f"{path}:{n}: label column must be an integer 0..{len(label_words) - 1}, "
                       f"got row {row!r}") from None
    if not 0 <= label < len(label_words):
      raise ValueError(f"{path}:{n}: label {label} out of range for label words {label_words}")
    items.append(Item(template.format(sentence=row[s_col].strip()), tuple(label_words), label))
  return Task("sst2", "choice", items)


def read_jsonl(path) -> Task:
  """JSONL multiple choice: {"context": str, "choices": [str, ...], "label": int} a line."""
  items = []
  with _open_text(path) as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        context, choices, label = row["context"], row["choices"], row["label"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}:{n}: expected a JSON object with keys context (str), choices "
                         f"(list of str) and label (int): {e!r}") from None
      if (not isinstance(context, str) or not isinstance(choices, list) or not choices
          or not all(isinstance(c, str) for c in choices)):
        raise ValueError(f"{path}:{n}: context must be a string and choices a non-empty list "
                         "of strings")
      if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise ValueError(f"{path}:{n}: label must be an int index into choices "
                         f"(0..{len(choices) - 1}), got {label!r}")
      items.append(Item(context, tuple(choices), label))
  return Task(pathlib.Path(path).stem, "choice", items)


def read_cloze(path) -> Task:
  """Last-word prediction: the target is the passage's last word (with its leading space).
  Lines of a single word have no context and are skipped (counted in Task.skipped)."""
  path = pathlib.Path(path)
  items, skipped = [], 0
  with _open_text(path) as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      if path.suffix == ".jsonl":
        try:
          text = json.loads(line)["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
          raise ValueError(f"{path}:{n}: expected a JSON object with a 'text' string: {e!r}"
                           ) from None
      else:
        text = line
      text = text.strip()
      cut = text.rfind(" ")
      if cut <= 0:
        skipped += 1
        continue
      items.append(Item(text[:cut], (text[cut:],), 0))
  return Task("cloze", "cloze", items, skipped)


READERS = {"hellaswag": read_hellaswag, "sst2": read_sst2, "jsonl": read_jsonl,
           "cloze": read_cloze}


def load_task(spec: str, limit: int = 0) -> Task:
  """`spec` is KIND:PATH with KIND in READERS; `limit` > 0 keeps the first `limit` items."""
  kind, sep, path = spec.partition(":")
  if not sep or kind not in READERS or not path:
    raise ValueError(f"task spec {spec!r}: use KIND:PATH with KIND one of {sorted(READERS)}, "
                     "e.g. hellaswag:data/hellaswag_val.txt")
  task = READERS[kind](path)
  if limit > 0:
    task = dataclasses.replace(task, items=task.items[:limit])
  return task


# ----------------------------------------------------------------------------- scoring


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str):
  """Token ids of context and continuation such that ctx + cont tokenizes the joined text.

  Encoding the joined string keeps merges across the boundary (BPE); when the context's own
  encoding is not a prefix of it, fall back to encoding the two parts separately.
  """
  ctx = list(encode(context))
  whole = list(encode(context + continuation))
  if whole[:len(ctx)] == ctx and len(whole) > len(ctx):
    return ctx, whole[len(ctx):]
  return ctx, list(encode(continuation))


def request_windows(ctx, cont, seq_len: int, bos_id: int | None = None):
  """Splits one (context, continuation) request into model windows.

  Returns [(window_tokens, n_scored)]: each window has at most seq_len + 1 tokens (inputs
  window[:-1], targets window[1:]) and scores its last n_scored targets. A continuation longer
  than seq_len spans several windows, each with as much preceding text as fits (like
  lm-eval-harness' rolling log-likelihood), so nothing is truncated from the scored part.
  """
  if not cont:
    raise ValueError("empty continuation: nothing to score")
  full = ([bos_id] if bos_id is not None else []) + list(ctx) + list(cont)
  first = len(full) - len(cont)  # index of the first scored token
  if first == 0:
    raise ValueError("empty context and no BOS token: the first continuation token has "
                     "nothing to be predicted from")
  windows, end = [], len(full)
  while end > first:
    start = max(first, end - seq_len)
    windows.append((full[max(0, end - seq_len - 1):end], end - start))
    end = start
  return windows[::-1]


def make_batch(windows, seq_len: int, pad_id: int = 0):
  """Packs (window_tokens, n_scored) rows, right-padded to seq_len.

  Returns numpy arrays [N, seq_len] in the data pipeline's layout: inputs, targets,
  segment_ids (1 for the row's tokens, 0 for padding), positions and weights (1 on the
  scored targets, the last n_scored of the row).
  """
  n = len(windows)
  out = dict(inputs=np.full((n, seq_len), pad_id, np.int32),
             targets=np.full((n, seq_len), pad_id, np.int32),
             segment_ids=np.zeros((n, seq_len), np.int32),
             positions=np.zeros((n, seq_len), np.int32),
             weights=np.zeros((n, seq_len), np.float32))
  for r, (tokens, n_scored) in enumerate(windows):
    length = len(tokens) - 1
    if not 0 < n_scored <= length <= seq_len:
      raise ValueError(f"row {r}: {len(tokens)} tokens scoring {n_scored} do not fit seq_len "
                       f"{seq_len}")
    out["inputs"][r, :length] = tokens[:-1]
    out["targets"][r, :length] = tokens[1:]
    out["segment_ids"][r, :length] = 1
    out["positions"][r, :length] = np.arange(length)
    out["weights"][r, length - n_scored:length] = 1.0
  return out


def score_requests(token_logprobs_fn, requests, *, seq_len: int, batch_size: int,
                   pad_id: int = 0, bos_id: int | None = None):
  """Sum of continuation log-probs and whether the continuation is the greedy one, per
  (context_ids, continuation_ids) request.

  `token_logprobs_fn(batch)` gets a make_batch dict with exactly `batch_size` rows (the last
  batch is padded with copies of the first row) and returns numpy-convertible
  (logprob_BxL of the targets, is_argmax_BxL).
  """
  rows, owner = [], []
  for i, (ctx, cont) in enumerate(requests):
    try:
      w = request_windows(ctx, cont, seq_len, bos_id)
    except ValueError as e:
      raise ValueError(f"request {i}: {e}") from None
    rows += w
    owner += [i] * len(w)
  owner = np.array(owner, np.int64)
  logprob_R = np.zeros(len(rows), np.float64)
  hit_R = np.zeros(len(rows), bool)
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    real = len(chunk)
    batch = make_batch(chunk + [rows[0]] * (batch_size - real), seq_len, pad_id)
    logprob_BxL, argmax_BxL = token_logprobs_fn(batch)
    w_BxL = batch["weights"]
    logprob_R[start:start + real] = (np.asarray(logprob_BxL, np.float64) * w_BxL).sum(-1)[:real]
    hit_R[start:start + real] = np.all(np.asarray(argmax_BxL) | (w_BxL == 0), axis=-1)[:real]
  logprob_N = np.zeros(len(requests), np.float64)
  np.add.at(logprob_N, owner, logprob_R)
  greedy_N = np.ones(len(requests), bool)
  np.logical_and.at(greedy_N, owner, hit_R)
  return logprob_N, greedy_N


def evaluate_task(task: Task, token_logprobs_fn, encode, *, seq_len: int, batch_size: int,
                  pad_id: int = 0, bos_id: int | None = None) -> dict:
  """Scores every (item, choice) and returns the metrics.

  choice: acc (argmax of summed log-prob) and acc_norm (argmax of log-prob per byte of the
  choice, lm-eval-harness' length normalisation). cloze: acc (target is the greedy
  continuation) and the mean target log-prob. Also `predictions` (per item) and `n`.
  """
  requests, owner = [], []
  for i, item in enumerate(task.items):
    for choice in item.choices:
      requests.append(encode_pair(encode, item.context, choice))
      owner.append(i)
  logprob_R, greedy_R = score_requests(token_logprobs_fn, requests, seq_len=seq_len,
                                       batch_size=batch_size, pad_id=pad_id, bos_id=bos_id)
  labels = np.array([item.label for item in task.items])
  if task.kind == "cloze":
    return dict(task=task.name, n=len(task.items), acc=float(greedy_R.mean()),
                mean_logprob=float(logprob_R.mean()), skipped=task.skipped,
                predictions=greedy_R.tolist())
  acc_hits, norm_hits, preds, r = [], [], [], 0
  for item in task.items:
    k = len(item.choices)
    ll = logprob_R[r:r + k]
    nbytes = np.array([max(1, len(c.encode("utf-8"))) for c in item.choices])
    preds.append(int(np.argmax(ll)))
    acc_hits.append(preds[-1] == item.label)
    norm_hits.append(int(np.argmax(ll / nbytes)) == item.label)
    r += k
  return dict(task=task.name, n=len(task.items), acc=float(np.mean(acc_hits)),
              acc_norm=float(np.mean(norm_hits)), predictions=preds,
              majority=float(np.mean(labels == np.bincount(labels).argmax())))


# ----------------------------------------------------------------------------- the model


def make_token_logprobs_fn(model_cfg, params, mesh=None, rules=None):
  """The scorer's `token_logprobs_fn` for our Transformer, jitted once per batch shape.

  With a mesh (the run's training mesh), the batch is sharded over its data axes like a
  training batch and the params stay in their training shardings; batch_size must then be a
  multiple of the data-parallel size (`evaluate_run` rounds it up).
  """
  import jax
  import jax.numpy as jnp
  from model.config import ModelConfig
  from model.transformer import Transformer
  model = Transformer(ModelConfig.from_config(model_cfg))

  def fn(params, batch):
    logits_BxLxV = model.apply({"params": params}, batch["inputs"],
                               positions_BxL=batch["positions"],
                               segment_ids_BxL=batch["segment_ids"])
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV, axis=-1)
    target_BxL = jnp.take_along_axis(logp_BxLxV, batch["targets"][..., None], axis=-1)[..., 0]
    return target_BxL, jnp.argmax(logits_BxLxV, axis=-1) == batch["targets"]

  if mesh is None:
    jitted = jax.jit(fn)
    return lambda batch: jitted(params, batch)

  from train import mesh as mesh_lib
  sharding = mesh_lib.batch_sharding(mesh, rules)
  with mesh_lib.mesh_context(mesh, rules):
    jitted = jax.jit(fn, out_shardings=(sharding, sharding))

  def run(batch):
    arrays = {k: jax.device_put(v, sharding) for k, v in batch.items()}
    with mesh_lib.mesh_context(mesh, rules):
      logprob, hit = jitted(params, arrays)
    return np.asarray(logprob), np.asarray(hit)
  return run


def evaluate_run(run, task: Task, *, batch_size: int = 32, seq_len: int | None = None) -> dict:
  """Evaluates `task` with a run from train.trainer.load_run, on the run's mesh."""
  from train import mesh as mesh_lib
  rules = mesh_lib.axis_rules(run.config)
  dp = mesh_lib.data_parallel_size(run.mesh, rules)
  batch_size = -(-batch_size // dp) * dp
  seq_len = seq_len or int(run.config.data.seq_len)
  fn = make_token_logprobs_fn(run.config.model, run.params, run.mesh, rules)
  tok = run.tokenizer
  return evaluate_task(task, fn, tok.encode, seq_len=seq_len, batch_size=batch_size,
                       pad_id=tok.pad_id, bos_id=tok.bos_id)


def main(argv=None):
  import argparse
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True, help="a training run directory")
  ap.add_argument("--task", action="append", required=True,
                  help="KIND:PATH, KIND in hellaswag|sst2|jsonl|cloze; repeatable")
  ap.add_argument("--limit", type=int, default=0, help="first N items per task (0: all)")
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument("--seq-len", type=int, default=0, help="0: the run's data.seq_len")
  ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  ap.add_argument("--json", default="", help="also write the metrics here")
  args = ap.parse_args(argv)
  tasks = [load_task(spec, args.limit) for spec in args.task]  # parse errors before loading
  from train import trainer
  run = trainer.load_run(args.workdir, step=args.step)
  results = []
  for task in tasks:
    res = evaluate_run(run, task, batch_size=args.batch_size, seq_len=args.seq_len or None)
    res.pop("predictions")
    results.append(res)
    print(json.dumps(res))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
  main()
