"""Zero-shot evaluation by log-likelihood: multiple choice, cloze and label-word classification,
scored the way EleutherAI's lm-evaluation-harness (0.4.x) scores them.

Every task becomes a list of `Item(context, choices, label, delimiter)`; the model scores each
choice as the sum of log p(delimiter + choice tokens | context tokens). The scorer only needs a
`token_logprobs_fn(batch) -> (logprob_BxL, is_argmax_BxL)`, so tests can inject a stub with
known answers and the real one runs jitted on the training mesh.

Comparable with lm-evaluation-harness (same log-likelihood per (context, ending) pair, same
metrics) with the defaults: `--bos auto` and the window left at the model's context length.
How a pair becomes tokens, as lm-eval's HF model does: trailing whitespace of the context moves
to the continuation; context and context+continuation are encoded (with BOS when the mode says
so) and the continuation is what the longer encoding has past the context's; an empty context
is the lone BOS token; the window keeps the last `window` tokens.

Task specs (`--task KIND:PATH`):
  hellaswag:FILE.jsonl  original HellaSwag rows (ctx_a, ctx_b, activity_label, endings, label)
                        with lm-eval's preprocessing: comparable. .bz2 ok.
  hellaswag:FILE.txt    6-line text format ('<activity_label>: <ctx>', gold 0-3, 4 endings):
                        NOT comparable (ctx_b lowercase, only some [tags] removed). .bz2 ok.
  sst2:PATH             GLUE TSV (header with `sentence`, `label`), lm-eval's prompt
                        "{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:"
                        and choices " negative" / " positive": comparable
  sst2_review:PATH      the same data as "Review: {sentence}\nSentiment:" (the fine-tuning
                        format of eval/finetune.py): not an lm-eval task
  jsonl:PATH            {"context": str, "choices": [str, ...], "label": int} a line; choices
                        follow the context as written (lm-eval with target_delimiter "")
  cloze:PATH            last-word prediction: .txt one passage a line, or .jsonl with
                        {"text": str}; correct when every target token is the model's argmax

Metrics (lm-eval's names): acc, acc_norm (log-likelihood per character of the choice, without
the delimiter), acc_bytes (per UTF-8 byte), each with `_stderr`; and continuous metrics of the
correct answer, which rank small models more reliably than accuracy: correct_logprob (nats),
correct_bpb (bits per UTF-8 byte of delimiter + choice), correct_prob_norm (its share of the
probability over the choices), each with `_stderr` (standard error of the mean).

    python -m eval.zeroshot --workdir runs/default --task hellaswag:hellaswag_val.jsonl --limit 500
"""

from __future__ import annotations

import argparse
import bz2
import csv
import dataclasses
import io
import json
import math
import pathlib
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from model.config import ModelConfig
from model.transformer import Transformer
from train import cli
from train import losses
from train import mesh as mesh_lib
from train import run as run_lib
from train import paths

BOS_MODES = ("auto", "always", "never")
SST2_PROMPT = "{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:"
SST2_REVIEW_PROMPT = "Review: {sentence}\nSentiment:"
SST2_CHOICES = ("negative", "positive")


@dataclasses.dataclass(frozen=True)
class Item:
  """One question: the scored continuation of choice j is `delimiter + choices[j]`."""

  context: str
  choices: tuple[str, ...]
  label: int
  delimiter: str = ""


@dataclasses.dataclass(frozen=True)
class Task:
  """`kind`: "choice" (pick the most likely choice) or "cloze" (greedy match of choices[0]).
  `skipped`: input records that could not form an item (a one-word cloze line).
  `comparable`: scored as lm-evaluation-harness scores the task of that name."""

  name: str
  kind: str
  items: list[Item]
  skipped: int = 0
  comparable: bool = True


# ----------------------------------------------------------------------------- parsers


def _open_text(path):
  """A task file as UTF-8 text, local or on object storage (train/paths.py)."""
  shown, path = path, paths.path(path)
  if not path.is_file():
    raise FileNotFoundError(f"task file {shown} does not exist; pass an existing file")
  if path.suffix == ".bz2":
    return bz2.open(io.BytesIO(path.read_bytes()), "rt", encoding="utf-8")
  return io.TextIOWrapper(path.open("rb"), encoding="utf-8")


def _read_lines(path) -> list[str]:
  try:
    with _open_text(path) as f:
      return f.read().split("\n")
  except UnicodeDecodeError as e:
    raise ValueError(
        f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); convert the " "file to UTF-8"
    ) from None


def _json_rows(path):
  """(line number, object) for every non-blank line of a JSONL file."""
  for n, line in enumerate(_read_lines(path), start=1):
    if line.strip():
      try:
        yield n, json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}); one JSON object a line") from None


def _is_jsonl(path) -> bool:
  name = pathlib.Path(path).name
  return name.removesuffix(".bz2").endswith((".jsonl", ".json"))


def hellaswag_preprocess(text: str) -> str:
  """lm-eval's HellaSwag cleaning, kept verbatim: it drops every [...] span (WikiHow tags)
  and then halves double spaces once, so an ending that starts with a tag keeps a leading
  space (and is scored after two spaces)."""
  text = text.strip()
  text = text.replace(" [title]", ". ")
  text = re.sub("\\[.*?\\]", "", text)
  return text.replace("  ", " ")


def read_hellaswag(path) -> Task:
  """HellaSwag: original jsonl rows (lm-eval-comparable) or the 6-line text format (not)."""
  return read_hellaswag_jsonl(path) if _is_jsonl(path) else read_hellaswag_text(path)


def read_hellaswag_jsonl(path) -> Task:
  """HellaSwag's own jsonl (fields ctx_a, ctx_b, activity_label, endings, label), built as
  lm-eval builds it: query = preprocess(label + ": " + ctx_a + " " + ctx_b.capitalize()),
  choices = preprocess(ending), each scored after a space."""
  items = []
  for n, row in _json_rows(path):
    try:
      ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
      query = hellaswag_preprocess(row["activity_label"] + ": " + ctx)
      choices = tuple(hellaswag_preprocess(e) for e in row["endings"])
      label = int(row["label"])
    except (KeyError, TypeError, AttributeError, ValueError) as e:
      raise ValueError(
          f"{path}:{n}: expected HellaSwag fields ctx_a, ctx_b, activity_label "
          f"(strings), endings (list of strings), label (int): {e!r}"
      ) from None
    if not 0 <= label < len(choices):
      raise ValueError(
          f"{path}:{n}: label {label} is not an index into the " f"{len(choices)} endings"
      )
    items.append(Item(query, choices, label, " "))
  return Task("hellaswag", "choice", items)


def read_hellaswag_text(path) -> Task:
  """HellaSwag in the 6-line text format (llama.cpp's hellaswag_val_full.txt). Not
  lm-eval-comparable: that file keeps ctx_b lowercase where lm-eval capitalises it, strips
  only some [tags], and has lost the ctx_a/ctx_b boundary. Each ending is scored after a space.
  """
  lines = _read_lines(path)
  while lines and not lines[-1].strip():
    lines.pop()
  if len(lines) % 6:
    raise ValueError(
        f"{path}: {len(lines)} lines is not a multiple of 6; the HellaSwag text "
        "format is context, gold label (0-3), then 4 endings per item"
    )
  items = []
  for i in range(0, len(lines), 6):
    label = lines[i + 1].strip()
    if label not in ("0", "1", "2", "3"):
      raise ValueError(
          f"{path}:{i + 2}: gold label must be 0-3, got {label!r}; is the file in "
          "the 6-line HellaSwag format?"
      )
    endings = tuple(e.strip() for e in lines[i + 2 : i + 6])
    items.append(Item(lines[i].strip(), endings, int(label), " "))
  return Task("hellaswag_text", "choice", items, comparable=False)


def read_sst2(path, prompt: str = SST2_PROMPT, name: str = "sst2", strip: bool = False) -> Task:
  """GLUE SST-2 TSV (header `sentence<TAB>label`): classify by scoring " negative" and
  " positive" after `prompt`, with the sentence as written (GLUE's trailing space kept, as
  lm-eval does) unless `strip`."""
  with _open_text(path) as f:
    rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  if not rows or "sentence" not in rows[0] or "label" not in rows[0]:
    raise ValueError(
        f"{path}: expected a GLUE TSV whose header has 'sentence' and 'label' "
        f"columns, got header {rows[0] if rows else 'none (empty file)'}"
    )
  s_col, l_col = rows[0].index("sentence"), rows[0].index("label")
  items = []
  for n, row in enumerate(rows[1:], start=2):
    if not row:
      continue
    try:
      label = int(row[l_col])
    except (IndexError, ValueError):
      raise ValueError(f"{path}:{n}: label column must be 0 or 1, got row {row!r}") from None
    if label not in (0, 1):
      raise ValueError(f"{path}:{n}: label {label} is neither 0 (negative) nor 1 (positive)")
    sentence = row[s_col].strip() if strip else row[s_col]
    items.append(Item(prompt.format(sentence=sentence), SST2_CHOICES, label, " "))
  return Task(name, "choice", items, comparable=prompt == SST2_PROMPT and not strip)


def read_sst2_review(path) -> Task:
  """SST-2 in the fine-tuning format "Review: <sentence>\nSentiment: <label>" (eval/finetune):
  scores a model fine-tuned on that text as it was trained. Not an lm-eval task."""
  return read_sst2(path, SST2_REVIEW_PROMPT, "sst2_review", strip=True)


def read_jsonl(path) -> Task:
  """JSONL multiple choice: {"context": str, "choices": [str, ...], "label": int} a line."""
  items = []
  for n, row in _json_rows(path):
    try:
      context, choices, label = row["context"], row["choices"], row["label"]
    except (KeyError, TypeError) as e:
      raise ValueError(
          f"{path}:{n}: expected a JSON object with keys context (str), choices "
          f"(list of str) and label (int): {e!r}"
      ) from None
    if (
        not isinstance(context, str)
        or not isinstance(choices, list)
        or not choices
        or not all(isinstance(c, str) and c for c in choices)
    ):
      raise ValueError(
          f"{path}:{n}: context must be a string and choices a non-empty list "
          "of non-empty strings"
      )
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
      raise ValueError(
          f"{path}:{n}: label must be an int index into choices "
          f"(0..{len(choices) - 1}), got {label!r}"
      )
    items.append(Item(context, tuple(choices), label))
  return Task(pathlib.Path(path).name.split(".")[0], "choice", items)


def read_cloze(path) -> Task:
  """Last-word prediction: the target is the passage's last word, scored after a space.
  Lines of a single word have no context and are skipped (counted in Task.skipped)."""
  items, skipped = [], 0
  rows = (
      _json_rows(path)
      if _is_jsonl(path)
      else (
          (n, {"text": line}) for n, line in enumerate(_read_lines(path), start=1) if line.strip()
      )
  )
  for n, row in rows:
    text = row.get("text") if isinstance(row, dict) else None
    if not isinstance(text, str):
      raise ValueError(f"{path}:{n}: expected a JSON object with a 'text' string")
    text = text.strip()
    cut = text.rfind(" ")
    if cut <= 0:
      skipped += 1
      continue
    items.append(Item(text[:cut], (text[cut + 1 :],), 0, " "))
  return Task("cloze", "cloze", items, skipped)


READERS = {
    "hellaswag": read_hellaswag,
    "sst2": read_sst2,
    "sst2_review": read_sst2_review,
    "jsonl": read_jsonl,
    "cloze": read_cloze,
}


def load_task(spec: str, limit: int = 0) -> Task:
  """`spec` is KIND:PATH with KIND in READERS; `limit` > 0 keeps the first `limit` items."""
  kind, sep, path = spec.partition(":")
  if not sep or kind not in READERS or not path:
    raise ValueError(
        f"task spec {spec!r}: use KIND:PATH with KIND one of {sorted(READERS)}, "
        "e.g. hellaswag:data/hellaswag_val.jsonl"
    )
  task = READERS[kind](path)
  if not task.items:
    raise ValueError(f"task {spec!r} has no items; check the file")
  if limit > 0:
    task = dataclasses.replace(task, items=task.items[:limit])
  return task


# ----------------------------------------------------------------------------- scoring


@dataclasses.dataclass(frozen=True)
class Encoder:
  """Text -> token ids as the scorer sees them. `encode` adds no special tokens; `bos_id`
  (None: none) starts every encoded context, as a tokenizer's post-processor would; an
  empty context is the lone `prefix_id` (lm-eval's prefix token: BOS)."""

  encode: Callable[[str], Sequence[int]]
  bos_id: int | None
  prefix_id: int

  def ids(self, text: str) -> list[int]:
    return ([] if self.bos_id is None else [self.bos_id]) + list(self.encode(text))

  def pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval's HF model builds them (module doc)."""
    if not context:
      return [self.prefix_id], list(self.encode(continuation))
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
      context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    ctx = self.ids(context)
    return ctx, self.ids(context + continuation)[len(ctx) :]


def bos_added(tok, bos: str) -> bool:
  """Whether BOS starts each context: `auto` follows the tokenizer's own convention
  (`tok.adds_bos`, its post-processor), as lm-eval does with HF tokenizers."""
  if bos not in BOS_MODES:
    raise ValueError(f"--bos {bos!r}: choose one of {', '.join(BOS_MODES)}")
  return bos == "always" or (bos == "auto" and bool(tok.adds_bos))


def make_encoder(tok, bos: str = "auto") -> Encoder:
  """The Encoder for tokenizer `tok` and a BOS mode (BOS_MODES)."""
  add = bos_added(tok, bos)
  return Encoder(tok.encode, tok.bos_id if add else None, tok.bos_id)


def request_windows(ctx, cont, window: int):
  """Splits one (context, continuation) request into model windows.

  Returns [(window_tokens, n_scored)]: each window has at most window + 1 tokens (inputs
  window[:-1], targets window[1:]) and scores its last n_scored targets. The context is cut
  from the left, as lm-eval does. A continuation longer than `window` (where lm-eval would
  truncate it) spans several windows, each with as much preceding text as fits, so nothing
  of the scored part is dropped.
  """
  if not cont:
    raise ValueError("the continuation adds no tokens to the context: nothing to score")
  full = list(ctx) + list(cont)
  first = len(full) - len(cont)  # index of the first scored token
  if first == 0:
    raise ValueError(
        "empty context and no BOS token: the first continuation token has "
        "nothing to be predicted from"
    )
  windows, end = [], len(full)
  while end > first:
    start = max(first, end - window)
    windows.append((full[max(0, end - window - 1) : end], end - start))
    end = start
  return windows[::-1]


def empty_batch(n: int, width: int, pad_id: int) -> dict:
  """An all-padding batch [n, width] in the data pipeline's layout, for rows to fill in."""
  return dict(
      inputs=np.full((n, width), pad_id, np.int32),
      targets=np.full((n, width), pad_id, np.int32),
      segment_ids=np.zeros((n, width), np.int32),
      positions=np.zeros((n, width), np.int32),
      weights=np.zeros((n, width), np.float32),
  )


def make_batch(windows, width: int, pad_id: int = 0):
  """Packs (window_tokens, n_scored) rows, right-padded to `width`.

  Returns numpy arrays [N, width] in the data pipeline's layout: inputs, targets,
  segment_ids (1 for the row's tokens, 0 for padding), positions and weights (1 on the
  scored targets, the last n_scored of the row).
  """
  out = empty_batch(len(windows), width, pad_id)
  for r, (tokens, n_scored) in enumerate(windows):
    length = len(tokens) - 1
    if not 0 < n_scored <= length <= width:
      raise ValueError(
          f"row {r}: {len(tokens)} tokens scoring {n_scored} do not fit width " f"{width}"
      )
    out["inputs"][r, :length] = tokens[:-1]
    out["targets"][r, :length] = tokens[1:]
    out["segment_ids"][r, :length] = 1
    out["positions"][r, :length] = np.arange(length)
    out["weights"][r, length - n_scored : length] = 1.0
  return out


def _bucket(length: int, window: int) -> int:
  """Padded width for rows of up to `length` inputs: a power of two (at least 16, at most
  the window), so a task compiles a handful of shapes, not one per length."""
  return min(window, max(16, 1 << (length - 1).bit_length()))


def score_requests(token_logprobs_fn, requests, *, window: int, batch_size: int, pad_id: int = 0):
  """Sum of continuation log-probs and whether the continuation is the greedy one, per
  (context_ids, continuation_ids) request.

  Rows are batched longest first (similar lengths share a padded width). `token_logprobs_fn
  (batch)` gets a make_batch dict with exactly `batch_size` rows (the last batch is padded
  with copies of its first row) and returns numpy-convertible (logprob_BxL of the targets,
  is_argmax_BxL).
  """
  rows, owner = [], []
  for i, (ctx, cont) in enumerate(requests):
    try:
      w = request_windows(ctx, cont, window)
    except ValueError as e:
      raise ValueError(f"request {i}: {e}") from None
    rows += w
    owner += [i] * len(w)
  order = sorted(range(len(rows)), key=lambda r: -len(rows[r][0]))
  logprob_R = np.zeros(len(rows), np.float64)
  hit_R = np.zeros(len(rows), bool)
  for start in range(0, len(rows), batch_size):
    idx = order[start : start + batch_size]
    chunk = [rows[r] for r in idx]
    width = _bucket(len(chunk[0][0]) - 1, window)
    batch = make_batch(chunk + [chunk[0]] * (batch_size - len(chunk)), width, pad_id)
    logprob_BxL, argmax_BxL = token_logprobs_fn(batch)
    w_BxL = batch["weights"]
    real = len(chunk)
    logprob_R[idx] = (np.asarray(logprob_BxL, np.float64) * w_BxL).sum(-1)[:real]
    hit_R[idx] = np.all(np.asarray(argmax_BxL) | (w_BxL == 0), axis=-1)[:real]
  owner = np.array(owner, np.int64)
  logprob_N = np.zeros(len(requests), np.float64)
  np.add.at(logprob_N, owner, logprob_R)
  greedy_N = np.ones(len(requests), bool)
  np.logical_and.at(greedy_N, owner, hit_R)
  return logprob_N, greedy_N


def mean_and_stderr(name: str, values) -> dict:
  """{name: mean, name_stderr: sample std / sqrt(n)} (lm-eval's `mean_stderr`); the error is
  None below two values."""
  v = np.asarray(values, np.float64)
  err = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None
  return {name: float(v.mean()), f"{name}_stderr": err}


def choice_metrics(items: Sequence[Item], logprob_R: np.ndarray) -> tuple[dict, list[int]]:
  """acc / acc_norm / acc_bytes as lm-eval computes them, and the continuous metrics of the
  correct answer, from the summed log-prob of every (item, choice) in item order."""
  names = ("acc", "acc_norm", "acc_bytes", "correct_logprob", "correct_bpb", "correct_prob_norm")
  per = {k: [] for k in names}
  preds, r = [], 0
  for item in items:
    ll = logprob_R[r : r + len(item.choices)]
    r += len(item.choices)
    chars = np.array([float(len(c)) for c in item.choices])
    nbytes = np.array([float(len(c.encode("utf-8"))) for c in item.choices])
    preds.append(int(np.argmax(ll)))
    per["acc"].append(preds[-1] == item.label)
    per["acc_norm"].append(int(np.argmax(ll / chars)) == item.label)
    per["acc_bytes"].append(int(np.argmax(ll / nbytes)) == item.label)
    gold = item.delimiter + item.choices[item.label]
    per["correct_logprob"].append(ll[item.label])
    per["correct_bpb"].append(-ll[item.label] / (math.log(2) * len(gold.encode("utf-8"))))
    per["correct_prob_norm"].append(math.exp(ll[item.label] - special.logsumexp(ll)))
  out = {}
  for name, values in per.items():
    out.update(mean_and_stderr(name, values))
  return out, preds


def evaluate_task(
    task: Task,
    token_logprobs_fn,
    encoder: Encoder,
    *,
    window: int,
    batch_size: int,
    pad_id: int = 0,
) -> dict:
  """Scores every (item, choice) and returns the metrics (module doc) with `n`, per item
  `predictions` and `loglikelihoods` (one per choice: what lm-eval's loglikelihood returns
  for the pair) and, for choice tasks, `majority` (the most frequent label's share).
  Cloze: acc is "every target token is the greedy one"; no acc_norm."""
  requests = []
  for i, item in enumerate(task.items):
    for choice in item.choices:
      try:
        requests.append(encoder.pair(item.context, item.delimiter + choice))
      except ValueError as e:
        raise ValueError(f"{task.name} item {i}: {e}") from None
  logprob_R, greedy_R = score_requests(
      token_logprobs_fn, requests, window=window, batch_size=batch_size, pad_id=pad_id
  )
  out = dict(task=task.name, n=len(task.items), lm_eval_comparable=task.comparable)
  if task.kind == "cloze":
    nbytes = [len((it.delimiter + it.choices[0]).encode("utf-8")) for it in task.items]
    out.update(mean_and_stderr("acc", greedy_R))
    out.update(mean_and_stderr("correct_logprob", logprob_R))
    out.update(mean_and_stderr("correct_bpb", -logprob_R / (math.log(2) * np.array(nbytes))))
    return dict(
        out,
        skipped=task.skipped,
        predictions=greedy_R.tolist(),
        loglikelihoods=[[float(x)] for x in logprob_R],
    )
  metrics, preds = choice_metrics(task.items, logprob_R)
  labels = np.array([item.label for item in task.items])
  bounds = np.cumsum([0] + [len(item.choices) for item in task.items])
  return dict(
      out,
      **metrics,
      majority=float(np.mean(labels == np.bincount(labels).argmax())),
      predictions=preds,
      loglikelihoods=[logprob_R[a:b].tolist() for a, b in zip(bounds, bounds[1:])],
  )


# ----------------------------------------------------------------------------- the model


def make_token_logprobs_fn(model_cfg, params, mesh=None, rules=None):
  """The scorer's `token_logprobs_fn` for our Transformer, jitted once per batch shape.

  With a mesh (the run's training mesh), the batch is sharded over its data axes like a
  training batch and the params stay in their training shardings; batch_size must then be a
  multiple of the data-parallel size (`evaluate_run` rounds it up).
  """
  model = Transformer(ModelConfig.from_config(model_cfg))

  def fn(params, batch):
    logits_BxLxV = model.apply(
        {"params": params},
        batch["inputs"],
        positions_BxL=batch["positions"],
        segment_ids_BxL=batch["segment_ids"],
    )
    logprob_BxL = -losses.token_nll(logits_BxLxV, batch["targets"])
    return logprob_BxL, jnp.argmax(logits_BxLxV, axis=-1) == batch["targets"]

  if mesh is None:
    jitted = jax.jit(fn)
    return lambda batch: jitted(params, batch)

  sharding = mesh_lib.batch_sharding(mesh, rules)
  compiled = jax.jit(fn, out_shardings=(sharding, sharding))  # traced in the caller's context

  def run(batch):
    arrays = {k: jax.device_put(v, sharding) for k, v in batch.items()}
    logprob, hit = compiled(params, arrays)
    return np.asarray(logprob), np.asarray(hit)

  return run


def context_length(run) -> int:
  """The model's context length (model.max_seq_len: the learned position table, or the
  max_position_embeddings an HF export declares), the window lm-eval scores with."""
  return run.spec.model.max_seq_len


def evaluate_run(
    run, task: Task, *, batch_size: int = 32, window: int | None = None, bos: str = "auto"
) -> dict:
  """Evaluates `task` with a run from train.run.load_run, on the run's mesh. `window`
  defaults to the model's context length; the result records `window`, `bos` (the mode) and
  `bos_added`, and `lm_eval_comparable` is true only with the comparable settings."""
  rules = run.spec.mesh.axis_rules
  dp = mesh_lib.data_parallel_size(run.mesh, rules)
  batch_size = -(-batch_size // dp) * dp
  full = context_length(run)
  window = window or full
  if window > full and run.spec.model.pos_encoding == "learned":
    raise ValueError(
        f"--window {window} exceeds the learned position table ({full}); use at " f"most {full}"
    )
  fn = make_token_logprobs_fn(run.spec.model, run.params, run.mesh, rules)
  tok = run.tokenizer
  encoder = make_encoder(tok, bos)
  res = evaluate_task(task, fn, encoder, window=window, batch_size=batch_size, pad_id=tok.pad_id)
  comparable = res["lm_eval_comparable"] and bos == "auto" and window == full
  return dict(
      res,
      lm_eval_comparable=comparable,
      window=window,
      bos=bos,
      bos_added=encoder.bos_id is not None,
  )


def ladder_columns(
    run, task_specs: Sequence[str], *, limit: int = 0, batch_size: int = 32, bos: str = "auto"
) -> dict[str, float]:
  """Flat `{task}/{metric}` numbers of every task in `task_specs` (KIND:PATH), for one row of
  a ladder's results.csv (`ladder.tasks`), so scaling fits can use downstream metrics too."""
  row = {}
  for spec in task_specs:
    res = evaluate_run(run, load_task(spec, limit), batch_size=batch_size, bos=bos)
    for key, value in res.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "window":
        row[f"{res['task']}/{key}"] = float(value)
  return row


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True, help="a training run directory")
  ap.add_argument(
      "--task",
      action="append",
      required=True,
      help=f"KIND:PATH, KIND in {'|'.join(READERS)}; repeatable",
  )
  ap.add_argument("--limit", type=int, default=0, help="first N items per task (0: all)")
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument(
      "--window",
      "--seq-len",
      type=int,
      default=0,
      help="tokens per scoring window (0: the model's context length, as lm-eval)",
  )
  ap.add_argument(
      "--bos",
      choices=BOS_MODES,
      default="auto",
      help="BOS before each context: auto = the tokenizer's own post-processor "
      "(lm-eval-comparable), always, or never",
  )
  ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  ap.add_argument("--json", default="", help="also write the metrics here")
  args = ap.parse_args(argv)
  if args.window < 0 or args.batch_size < 1 or args.limit < 0:
    raise ValueError("--window and --limit must be >= 0 and --batch-size >= 1")
  tasks = [load_task(spec, args.limit) for spec in args.task]  # parse errors before loading
  run = run_lib.load_run(args.workdir, step=args.step)
  window = args.window or context_length(run)
  print(
      f"scoring with a {window}-token window (model context length "
      f"{context_length(run)}), bos={args.bos} (BOS added: "
      f"{'yes' if bos_added(run.tokenizer, args.bos) else 'no'})",
      flush=True,
  )
  results = []
  with run.context():
    for task in tasks:
      res = evaluate_run(run, task, batch_size=args.batch_size, window=window, bos=args.bos)
      res.pop("predictions")
      res.pop("loglikelihoods")
      results.append(res)
      print(json.dumps(res))
  if args.json:
    paths.path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
  cli.run(main)
