"""Held-out evaluation: loss and bits-per-byte per domain, with standard errors.

The eval step returns, per row, the summed token loss and the number of target tokens, so
the host can (a) aggregate exactly (sum loss / sum tokens) however the rows were sharded and
(b) estimate a standard error treating rows as the sampling unit (tokens within a row are
correlated; rows are close to independent windows of the validation text). For a ratio
mean r = sum(l_i) / sum(w_i) the delta-method SE is
    sqrt(sum((l_i - r w_i)^2) / (n (n - 1))) / mean(w_i).
Bits per byte = loss / ln 2 / (bytes per token of the domain), from the data manifest.
"""

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from train import inputs as inputs_lib
from train import mesh as mesh_lib
from train import step as step_lib


def build_eval_step(config, mesh: Mesh, model: nn.Module, param_shardings: Any, *,
                    mask_id: int | None = None) -> Callable:
  """jitted (params, batch) -> {"loss_sum": [B], "tokens": [B]}; MLM masks with a fixed key
  so every evaluation sees the same corruption."""
  opts = step_lib.StepOptions.from_config(config, mask_id)
  rules = mesh_lib.axis_rules(config)
  batch_sharding = mesh_lib.batch_sharding(mesh, rules)

  def eval_step(params, batch):
    if opts.objective == "mlm":
      batch = step_lib.mlm_corrupt(jax.random.key(1234), batch, mask_id=opts.mask_id,
                                   vocab_size=opts.vocab_size,
                                   probability=opts.mlm_probability)
    if opts.compute_dtype != opts.param_dtype:
      params = step_lib.cast_params(params, opts.compute_dtype)
    logits = step_lib.apply_model(model, params, batch, rng=None, deterministic=True)
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    tgt = jnp.take_along_axis(logits, batch["targets"][..., None], axis=-1)[..., 0]
    w = batch["weights"].astype(jnp.float32)
    return {"loss_sum": jnp.sum((log_z - tgt) * w, axis=1), "tokens": jnp.sum(w, axis=1)}

  jitted = jax.jit(eval_step,
                   in_shardings=(param_shardings, {k: batch_sharding for k in step_lib.BATCH_KEYS}),
                   out_shardings=mesh_lib.replicated(mesh))

  run = mesh_lib.MeshFunction(jitted, mesh, rules)
  run.batch_sharding = batch_sharding
  return run


def summarize_rows(loss_sum: np.ndarray, tokens: np.ndarray, bytes_per_token: float | None
                   ) -> dict[str, float]:
  """Exact mean loss over tokens and its row-level standard error; bpb when bytes known."""
  keep = tokens > 0
  l, w = np.asarray(loss_sum, np.float64)[keep], np.asarray(tokens, np.float64)[keep]
  n = len(w)
  total_w = float(w.sum())
  loss = float(l.sum() / total_w) if total_w else float("nan")
  if n > 1:
    se = math.sqrt(float(np.sum((l - loss * w) ** 2)) / (n * (n - 1))) / float(w.mean())
  else:
    se = float("nan")
  out = {"loss": loss, "loss_se": se, "tokens": total_w, "rows": n}
  if bytes_per_token:
    out["bpb"] = loss / math.log(2) / bytes_per_token
    out["bpb_se"] = se / math.log(2) / bytes_per_token
  return out


def evaluate(eval_step: Callable, params: Any, eval_source, *, global_batch_size: int,
             max_batches: int | None, process_index: int = 0, process_count: int = 1
             ) -> dict[str, dict[str, float]]:
  """{domain: {loss, loss_se, bpb, bpb_se, tokens, rows}} plus "all" (token-weighted loss;
  bits per byte over the bytes those tokens stand for)."""
  results = {}
  total_loss = total_tokens = total_bytes = 0.0
  for domain in eval_source.domains:
    sums, toks = [], []
    for local in eval_source.batches(domain, global_batch_size=global_batch_size,
                                     process_index=process_index, process_count=process_count,
                                     max_batches=max_batches):
      batch = inputs_lib.to_global(local, eval_step.batch_sharding, global_batch_size)
      out = jax.device_get(eval_step(params, batch))
      sums.append(out["loss_sum"])
      toks.append(out["tokens"])
    if not sums:
      continue
    bpt = eval_source.bytes_per_token(domain)
    r = summarize_rows(np.concatenate(sums), np.concatenate(toks), bpt)
    results[domain] = r
    total_loss += r["loss"] * r["tokens"]
    total_tokens += r["tokens"]
    total_bytes += r["tokens"] * bpt
  if total_tokens:
    all_rows = {"loss": total_loss / total_tokens, "tokens": total_tokens,
                "bpb": total_loss / math.log(2) / total_bytes if total_bytes else float("nan")}
    results["all"] = all_rows
  return results


def flat_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
  """{"val/<domain>/loss": ...} for logging."""
  return {f"{d}/{k}": v for d, r in results.items() for k, v in r.items()}
