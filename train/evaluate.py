"""Held-out evaluation: loss and bits-per-byte per domain and overall, with standard errors.

The eval step returns, per target token, its loss, weight, document id and byte length, so
the host can (a) aggregate exactly (sum loss / sum tokens) however the rows were sharded and
(b) estimate standard errors with documents as clusters. Tokens of one document are
correlated (a window, and the windows a long document spans, share its topic and style);
documents are close to independent draws, and a validation split holds few of them, so
treating rows as independent understates the noise several-fold. For a ratio estimator
r = sum_c L_c / sum_c W_c over G clusters (documents) the cluster-robust (delta-method) SE is
    sqrt(G / (G - 1) * sum_c (L_c - r W_c)^2) / sum_c W_c,
with W = tokens for the loss and W = bytes for bits per byte. A document cut by a truncated
evaluation (`eval.batches`) is one cluster of the part that was scored.

Bits per byte = (sum of the scored tokens' losses) / ln 2 / (sum of their bytes), the bytes
from the tokenizer's per-token table (EOS and other specials: 0 bytes, as in the manifest,
whose `utf8_bytes` are the raw document bytes). So a truncated evaluation divides by the bytes
it scored, not by an average over the whole split, and tokenizers compare on the same bytes.

Masked-LM runs report the loss over masked tokens only ("mlm_loss"): there is no bits per
byte for a model that predicts a few masked tokens from both sides. The masks are drawn per
batch from a key folded with (domain, batch index): different positions in every batch, the
same ones at every evaluation, so evaluations of one run compare like for like.
"""

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from train import inputs as inputs_lib
from train import losses
from train import mesh as mesh_lib
from train import step as step_lib

MLM_EVAL_SEED = 1234


def build_eval_step(
    opts: step_lib.StepOptions,
    mesh: Mesh,
    rules: mesh_lib.Rules,
    model: nn.Module,
    param_shardings: Any,
    batch_keys: tuple[str, ...] = step_lib.BATCH_KEYS,
) -> Callable:
  """(params, batch, doc_ids, token_bytes, mask_index) -> per-token arrays [B, L] (global,
  replicated): "loss" (0 where not scored), "weights", "bytes", "doc_ids". `batch_keys`:
  step.batch_keys(model config) (an encoder-decoder's batches carry the source too)."""
  batch_sharding = mesh_lib.batch_sharding(mesh, rules)
  replicated = mesh_lib.replicated(mesh)

  def eval_step(params, batch, doc_ids, token_bytes, mask_index):
    if opts.objective == "mlm":
      key = jax.random.fold_in(
          jax.random.fold_in(jax.random.key(MLM_EVAL_SEED), mask_index[0]), mask_index[1]
      )
      # Random replacements come from the tokenizer's ids (len(token_bytes)), never from the
      # padding rows of a larger model vocabulary.
      batch = step_lib.mlm_corrupt(
          key,
          batch,
          mask_id=opts.mask_id,
          vocab_size=min(token_bytes.shape[0], opts.vocab_size),
          probability=opts.mlm_probability,
      )
    if opts.compute_dtype != opts.param_dtype:
      params = step_lib.cast_params(params, opts.compute_dtype)
    logits = step_lib.apply_model(model, params, batch, rng=None, deterministic=True)
    w = batch["weights"].astype(jnp.float32)
    nbytes = jnp.take(token_bytes, batch["targets"], mode="clip").astype(jnp.float32) * w
    return {
        "loss": losses.token_nll(logits, batch["targets"]) * w,
        "weights": w,
        "bytes": nbytes,
        "doc_ids": doc_ids,
    }

  batch_in = {k: batch_sharding for k in batch_keys}
  jitted = jax.jit(
      eval_step,
      in_shardings=(param_shardings, batch_in, batch_sharding, replicated, replicated),
      out_shardings=replicated,
  )

  def run(params, batch, doc_ids, token_bytes, mask_index):
    return jitted(
        params, batch, doc_ids, np.asarray(token_bytes, np.int32), np.asarray(mask_index, np.int32)
    )

  run.batch_sharding = batch_sharding
  run.objective = opts.objective
  return run


def cluster_se(num_c: np.ndarray, den_c: np.ndarray) -> float:
  """Cluster-robust SE of sum(num) / sum(den) with one entry per cluster (NaN if < 2)."""
  num_c, den_c = np.asarray(num_c, np.float64), np.asarray(den_c, np.float64)
  g, total = len(den_c), float(den_c.sum())
  if g < 2 or total <= 0:
    return float("nan")
  r = float(num_c.sum()) / total
  return math.sqrt(g / (g - 1) * float(np.sum((num_c - r * den_c) ** 2))) / total


def summarize_clusters(
    loss_c, tokens_c, bytes_c, *, objective: str = "next_token"
) -> dict[str, float]:
  """Exact mean loss over tokens, bits per byte over the bytes scored, and their
  document-clustered SEs, from per-document sums (documents with no scored token dropped)."""
  loss_c, tokens_c = np.asarray(loss_c, np.float64), np.asarray(tokens_c, np.float64)
  bytes_c = np.asarray(bytes_c, np.float64)
  keep = tokens_c > 0
  loss_c, tokens_c, bytes_c = loss_c[keep], tokens_c[keep], bytes_c[keep]
  total_w = float(tokens_c.sum())
  loss = float(loss_c.sum()) / total_w if total_w else float("nan")
  se = cluster_se(loss_c, tokens_c)
  if objective == "mlm":
    return {
        "mlm_loss": loss,
        "mlm_loss_se": se,
        "loss": loss,
        "loss_se": se,
        "tokens": total_w,
        "docs": int(keep.sum()),
    }
  out = {
      "loss": loss,
      "loss_se": se,
      "tokens": total_w,
      "bytes": float(bytes_c.sum()),
      "docs": int(keep.sum()),
  }
  if out["bytes"] > 0:
    out["bpb"] = float(loss_c.sum()) / math.log(2) / out["bytes"]
    out["bpb_se"] = cluster_se(loss_c, bytes_c) / math.log(2)
  return out


class _DocSums:
  """Running per-document sums of loss, tokens and bytes (documents as cluster keys)."""

  def __init__(self):
    self.parts = []

  def add(self, out: dict) -> None:
    w = np.asarray(out["weights"]).ravel()
    m = w > 0
    self.parts.append(
        (
            np.asarray(out["doc_ids"]).ravel()[m],
            np.asarray(out["loss"], np.float64).ravel()[m],
            w[m].astype(np.float64),
            np.asarray(out["bytes"], np.float64).ravel()[m],
        )
    )

  def per_doc(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(doc ids, loss, tokens, bytes), one entry per document."""
    if not self.parts:
      return (np.zeros(0, np.int64),) + (np.zeros(0),) * 3
    doc, loss, w, b = (np.concatenate(x) for x in zip(*self.parts))
    ids, inv = np.unique(doc, return_inverse=True)
    n = len(ids)
    return (ids, np.bincount(inv, loss, n), np.bincount(inv, w, n), np.bincount(inv, b, n))


def evaluate(
    eval_step: Callable,
    params: Any,
    eval_source,
    *,
    global_batch_size: int,
    max_batches: int | None,
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, dict[str, float]]:
  """{domain: {loss, loss_se, bpb, bpb_se, tokens, bytes, docs}} plus "all" (every scored
  token of every domain; documents of all domains as clusters). MLM: mlm_loss(_se), no bpb."""
  objective = getattr(eval_step, "objective", "next_token")
  sharding = eval_step.batch_sharding
  results, pooled = {}, []
  for i, domain in enumerate(eval_source.domains):
    sums = _DocSums()
    batches = eval_source.batches(
        domain,
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
        max_batches=max_batches,
    )
    for g, local in enumerate(batches):
      batch = inputs_lib.to_global(local, sharding, global_batch_size)
      doc_ids = jax.make_array_from_process_local_data(
          sharding, local["doc_ids"], (global_batch_size,) + local["doc_ids"].shape[1:]
      )
      sums.add(jax.device_get(eval_step(params, batch, doc_ids, eval_source.token_bytes, (i, g))))
    _, loss_c, tok_c, bytes_c = sums.per_doc()
    if not len(tok_c):
      continue
    results[domain] = summarize_clusters(loss_c, tok_c, bytes_c, objective=objective)
    pooled.append((loss_c, tok_c, bytes_c))
  if pooled:
    loss_c, tok_c, bytes_c = (np.concatenate(x) for x in zip(*pooled))
    results["all"] = summarize_clusters(loss_c, tok_c, bytes_c, objective=objective)
  return results


def summary_line(results: dict[str, dict[str, float]]) -> str:
  """One log line: the overall loss (and bits per byte), then each domain's with its SE."""

  def pm(x, se):
    return f"{x:.4f}±{se:.4f}" if math.isfinite(se) else f"{x:.4f}±n/a"

  a = results.get("all", {})
  if "mlm_loss" in a:
    per = ", ".join(
        f"{d} {pm(r['mlm_loss'], r['mlm_loss_se'])}" for d, r in results.items() if d != "all"
    )
    return f"val masked-token loss {pm(a['mlm_loss'], a.get('mlm_loss_se', math.nan))} ({per})"
  per = ", ".join(
      f"{d} {pm(r['bpb'], r.get('bpb_se', math.nan))}"
      for d, r in results.items()
      if d != "all" and "bpb" in r
  )
  return (
      f"val loss {pm(a.get('loss', math.nan), a.get('loss_se', math.nan))}, "
      f"bpb {a.get('bpb', math.nan):.4f} ({per})"
  )


def flat_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
  """{"val/<domain>/loss": ...} for logging."""
  return {f"{d}/{k}": v for d, r in results.items() for k, v in r.items()}
