"""Training accounting: memory per device and optimizer-state sizes, plus the summary CLI.

What a *run* costs in memory depends on the optimizer, the mesh and the remat policy, which are
training choices, so it lives here; what the *model* is (parameter counts, FLOPs per token) is
model/summary.py's. Everything goes through jax.eval_shape, so the 175B preset takes seconds.

    python -m train.accounting --config configs/gpt3.py:size=175B [--json OUT]
        [--batch_size B] [--seq_len L] [--num_devices D]

(`python -m model.summary` with the same flags runs this CLI.)
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any, Sequence

from train import cli

from model.config import REMAT_POLICIES, ModelConfig
from model.summary import as_model_config, flops_per_token_forward, flops_per_token_train
from model.summary import EXPERT_PARAMS, param_counts, param_shapes

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _optimizer_state_elems(shapes: Sequence[tuple[int, ...]], optimizer: str) -> float:
  """Float32 elements of optimizer state: adamw 2 per param (mu, nu); lion 1 (momentum);
  adafactor factored second moments (rows + cols for >= 2-d params, full for vectors); muon
  at most adamw's (1 momentum for its matrices, 2 moments for the rest: counted as 2)."""
  total = sum(math.prod(s) for s in shapes)
  if optimizer in ("adamw", "muon"):
    return 2.0 * total
  if optimizer == "lion":
    return 1.0 * total
  if optimizer == "adafactor":
    return float(
        sum(
            (math.prod(s[:-1]) + math.prod(s[:-2]) * s[-1]) if len(s) >= 2 else math.prod(s)
            for s in shapes
        )
    )
  raise ValueError(f"optimizer {optimizer!r}: choose adamw|adafactor|lion|muon")


def _attention_elems(cfg: ModelConfig, seq_len: int, remat: str, tensor: int):
  """(compute-dtype, float32) elements per token kept by a layer's attention and norms:
  none: every matmul/nonlinearity input; dots_saveable: only matmul outputs (incl. the score
  matrix); dots_with_no_batch_dims_saveable: projection outputs, not the scores."""
  d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  qkv, attn = (n + 2 * k) * h / tensor, n * h / tensor
  scores = n * seq_len / tensor
  if remat == "none":
    return 6 * d + qkv + attn, 2 * scores
  if remat == "dots_saveable":
    return 2 * d + qkv + attn, scores
  return 2 * d + qkv, 0.0  # dots_with_no_batch_dims_saveable


def _dense_mlp_elems(cfg: ModelConfig, mlp: str, width: int, remat: str, tensor: int) -> float:
  """Compute-dtype elements per token kept by a dense MLP of hidden `width`: every hidden
  activation without remat (gate, up, product for swiglu), the hidden matmul outputs with it."""
  n_mlp = 3 if mlp == "swiglu" else 2
  return (n_mlp if remat == "none" else n_mlp - 1) * width / tensor


def _moe_elems(cfg: ModelConfig, remat: str, tensor: int, expert: int) -> tuple[float, float]:
  """(compute-dtype, float32) elements per token kept by an MoE feed-forward (model/moe.py).

  Dropless: each token's row is copied k times (sorted by expert) and the three grouped
  matmuls run over tokens * k rows, so gate, up and their product hold k * F per token, not
  E * F (on TPU and GPU, whose ragged_dot is a grouped matmul; JAX's CPU lowering of
  ragged_dot masks the rows into a dense product over all E experts). Expert parallelism
  (model/moe_parallel.py) receives into worst-case buffers of `expert` ranks x the local
  assignments, so the experts see `expert` times the rows, and its shard_map runs whole
  experts (F is split over the tensor axis only without it).
  Without remat: the sorted input rows, gate/up/product, the k outputs the combine weighs, the
  shared experts' SwiGLU, and in float32 the router's input, logits and probabilities. The
  grouped matmuls are not dot_general, so the dots policies recompute them and keep only the
  router logits and the shared experts' matmul outputs."""
  d, e, f, k = cfg.d_model, cfg.num_experts, cfg.moe_mlp_dim, cfg.experts_per_token
  shared = _dense_mlp_elems(cfg, "swiglu", cfg.num_shared_experts * f, remat, tensor)
  if remat == "none":
    f_split = tensor if expert == 1 else 1
    routed = k * (d * expert + 3 * f * expert / f_split + d)
    return routed + shared, d + 2.0 * e
  return shared, float(e)


def _layer_elems(cfg: ModelConfig, seq_len: int, remat: str, tensor: int, expert: int):
  """[(layers, compute-dtype elements, float32 elements)] per token for each kind of layer:
  dense ones, and with mlp=moe the MoE ones (every moe_every-th); `full` keeps only the
  layer input."""
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat {remat!r}: choose {'|'.join(REMAT_POLICIES)}")
  if remat == "full":
    return [(cfg.num_layers, float(cfg.d_model), 0.0)]
  att, att_f32 = _attention_elems(cfg, seq_len, remat, tensor)
  dense_mlp = "swiglu" if cfg.mlp == "moe" else cfg.mlp
  dense = att + _dense_mlp_elems(cfg, dense_mlp, cfg.mlp_dim, remat, tensor)
  if cfg.mlp != "moe":
    return [(cfg.num_layers, dense, att_f32)]
  n_moe = cfg.num_layers // cfg.moe_every
  moe, moe_f32 = _moe_elems(cfg, remat, tensor, expert)
  return [(cfg.num_layers - n_moe, dense, att_f32), (n_moe, att + moe, att_f32 + moe_f32)]


def _activation_bytes(cfg: ModelConfig, tokens: float, seq_len: int, remat: str, mesh) -> float:
  """Bytes of activations kept for the backward pass by `tokens` tokens on one device, plus
  (when rematerialising) the largest layer's full activations, live again in its backward."""
  _, _, tensor, expert = mesh
  abytes = _BYTES[cfg.dtype]
  kept = sum(
      n * (a * abytes + a32 * 4) for n, a, a32 in _layer_elems(cfg, seq_len, remat, tensor, expert)
  )
  if remat != "none":
    full = _layer_elems(cfg, seq_len, "none", tensor, expert)
    kept += max(a * abytes + a32 * 4 for n, a, a32 in full if n)
  return tokens * kept


def _mesh_sizes(mesh_shape: Sequence[int]) -> tuple[int, int, int, int]:
  """(data, fsdp, tensor, expert) from a 3- or 4-entry mesh shape (expert 1 when absent)."""
  if len(mesh_shape) not in (3, 4) or any(int(a) < 1 for a in mesh_shape):
    raise ValueError(
        f"mesh_shape must be 3 or 4 positive ints (data, fsdp, tensor[, expert]), got "
        f"{tuple(mesh_shape)}; resolve -1 first"
    )
  sizes = tuple(int(a) for a in mesh_shape)
  return sizes + (1,) * (4 - len(sizes))


def memory_per_device(
    cfg,
    *,
    batch_size: int,
    seq_len: int,
    mesh_shape: Sequence[int] = (1, 1, 1),
    remat: str | None = None,
    optimizer: str = "adamw",
) -> dict[str, float]:
  """Estimated bytes per device while training, for a (data, fsdp, tensor[, expert]) mesh.

  params/grads: param_dtype, sharded over fsdp x tensor (replicated over data); the routed
  experts' weights (model.mlp=moe) also over the expert axis.
  optimizer: float32 state (see _optimizer_state_elems), sharded like the params.
  activations: per-device batch (batch / (data * fsdp * expert): the expert axis splits the
  batch too, configs.base.EXPERT_PARALLEL_AXIS_RULES) x seq_len tokens x the per-layer count
  for `remat` (default cfg.remat; MoE layers: see _moe_elems), plus one layer recomputed in
  full when rematerialising, plus float32 logits and their gradient (vocab over tensor).
  An estimate: it ignores XLA's temporaries and fusion, typically within ~30%.
  """
  cfg = as_model_config(cfg)
  remat = cfg.remat if remat is None else remat
  mesh = _mesh_sizes(mesh_shape)
  data, fsdp, tensor, expert = mesh
  shapes = param_shapes(cfg)
  experts = [s for name, s in shapes.items() if name.endswith(EXPERT_PARAMS)]
  others = [s for name, s in shapes.items() if not name.endswith(EXPERT_PARAMS)]
  shards = fsdp * tensor

  def per_device(count) -> float:
    """count(shapes) of the other params over fsdp x tensor, of the experts' also / expert."""
    return count(others) / shards + count(experts) / (shards * expert)

  param_elems = per_device(lambda shapes: sum(math.prod(s) for s in shapes))
  opt = per_device(lambda shapes: _optimizer_state_elems(shapes, optimizer))
  pbytes = _BYTES[cfg.param_dtype]
  tokens = batch_size / (data * fsdp * expert) * seq_len
  logits = tokens * cfg.vocab_size / tensor * 4 * 2
  out = {
      "params_bytes": param_elems * pbytes,
      "grads_bytes": param_elems * pbytes,
      "optimizer_bytes": opt * 4,
      "activations_bytes": _activation_bytes(cfg, tokens, seq_len, remat, mesh) + logits,
  }
  out["total_bytes"] = sum(out.values())
  return out


def summarize(
    cfg,
    seq_len: int,
    batch_size: int,
    *,
    mesh_shape: Sequence[int] = (1, 1, 1),
    optimizer: str = "adamw",
) -> dict[str, Any]:
  """Everything above in one JSON-able dict."""
  cfg = as_model_config(cfg)
  counts = param_counts(cfg)
  per_token = flops_per_token_train(cfg, seq_len)
  mem = memory_per_device(
      cfg, batch_size=batch_size, seq_len=seq_len, mesh_shape=mesh_shape, optimizer=optimizer
  )
  return {
      "params_total": counts["total"],
      "params_active": counts["active"],
      "params_non_embedding": counts["non_embedding"],
      "params_per_module": counts["per_module"],
      "seq_len": seq_len,
      "batch_size": batch_size,
      "flops_per_token_train": per_token,
      "flops_per_step_train": per_token * seq_len * batch_size,
      "flops_per_token_forward_parts": flops_per_token_forward(cfg, seq_len),
      "mesh_shape": list(mesh_shape),
      "remat": cfg.remat,
      "optimizer": optimizer,
      "memory_per_device": mem,
      "model": cfg.to_dict(),
  }


def format_table(s: dict[str, Any]) -> str:
  lines = [f"{'module':<40}{'params':>18}{'share':>8}"]
  total = s["params_total"]
  for name, n in s["params_per_module"].items():
    lines.append(f"{name:<40}{n:>18,}{100 * n / total:>7.2f}%")
  gib = lambda b: f"{b / 2**30:,.2f} GiB" if b >= 2**30 else f"{b / 2**20:,.1f} MiB"
  mem = s["memory_per_device"]
  lines += [
      "-" * 66,
      f"{'total':<40}{total:>18,}",
      f"{'active per token (moe: k of E experts)':<40}{s['params_active']:>18,}",
      f"{'non-embedding (no token/pos/type tables)':<40}{s['params_non_embedding']:>18,}",
      f"train FLOPs/token (seq {s['seq_len']}): {s['flops_per_token_train']:.4g}",
      f"train FLOPs/step (batch {s['batch_size']}): {s['flops_per_step_train']:.4g}",
      f"memory/device, mesh {tuple(s['mesh_shape'])}, remat {s['remat']}, {s['optimizer']}: "
      + ", ".join(f"{k.removesuffix('_bytes')} {gib(v)}" for k, v in mem.items()),
  ]
  return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(
      prog="python -m train.accounting", description=__doc__.split("\n\n")[0]
  )
  cli.add_config(ap, lock_config=False)
  ap.add_argument("--json", default=None, help="write the summary as JSON here")
  ap.add_argument(
      *cli.flag_names("batch_size"), type=int, default=0, help="global batch (default: config)"
  )
  ap.add_argument(
      *cli.flag_names("seq_len"), type=int, default=0, help="sequence length (default: config)"
  )
  ap.add_argument(
      *cli.flag_names("num_devices"), type=int, default=1, help="devices to fill a -1 in mesh.shape"
  )
  return ap


def main(argv: Sequence[str] | None = None) -> None:
  """The summary CLI (also behind `python -m model.summary`)."""
  f = cli.parse_args(_parser(), argv)
  config = f.config
  mesh = [int(a) for a in config.mesh.shape]
  if mesh.count(-1) > 1:
    raise ValueError(f"mesh.shape {tuple(mesh)}: at most one -1")
  if -1 in mesh:
    known = math.prod(a for a in mesh if a != -1)
    if f.num_devices % known:
      raise ValueError(
          f"--num_devices={f.num_devices} not divisible by the fixed mesh axes {tuple(mesh)}"
      )
    mesh[mesh.index(-1)] = f.num_devices // known
  s = summarize(
      config.model,
      f.seq_len or config.data.seq_len,
      f.batch_size or config.train.batch_size,
      mesh_shape=mesh,
      optimizer=config.train.optimizer,
  )
  s["name"] = config.name
  print(f"{config.name}")
  print(format_table(s))
  if f.json:
    with open(f.json, "w") as fh:
      json.dump(s, fh, indent=2)


if __name__ == "__main__":
  cli.run(main)
