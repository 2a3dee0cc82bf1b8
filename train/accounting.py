"""Training accounting: memory per device and optimizer-state sizes, plus the summary CLI.

What a *run* costs in memory depends on the optimizer, the mesh and the remat policy, which are
training choices, so it lives here; what the *model* is (parameter counts, FLOPs per token) is
model/summary.py's. Everything goes through jax.eval_shape, so the 175B preset takes seconds.

    python -m train.accounting --config configs/gpt3.py:size=175B [--json OUT]
        [--batch_size B] [--seq_len L] [--num_devices D]

(`python -m model.summary` with the same flags runs this CLI.)
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Sequence

from model.config import ModelConfig
from model.summary import as_model_config, flops_per_token_forward, flops_per_token_train
from model.summary import param_counts, param_shapes

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


def _activation_elems_per_token_layer(
    cfg: ModelConfig, seq_len: int, remat: str, tensor: int
) -> tuple[float, float]:
  """(compute-dtype elements, float32 elements) kept per token per layer for the backward pass.

  none: every matmul/nonlinearity input; dots_saveable: only matmul outputs (incl. the score
  matrix); dots_with_no_batch_dims_saveable: projection/MLP outputs, not the scores; full:
  the layer input only. Head/mlp-sized pieces are divided by the tensor axis."""
  d, n, k, h, m = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  n_mlp = 3 if cfg.mlp == "swiglu" else 2
  qkv, attn = (n + 2 * k) * h / tensor, n * h / tensor
  scores = n * seq_len / tensor
  if remat == "none":
    return 6 * d + qkv + attn + n_mlp * m / tensor, 2 * scores
  if remat == "dots_saveable":
    return 2 * d + qkv + attn + (n_mlp - 1) * m / tensor, scores
  if remat == "dots_with_no_batch_dims_saveable":
    return 2 * d + qkv + (n_mlp - 1) * m / tensor, 0.0
  if remat == "full":
    return float(d), 0.0
  raise ValueError(
      f"remat {remat!r}: choose none|full|dots_saveable|" "dots_with_no_batch_dims_saveable"
  )


def memory_per_device(
    cfg,
    *,
    batch_size: int,
    seq_len: int,
    mesh_shape: Sequence[int] = (1, 1, 1),
    remat: str | None = None,
    optimizer: str = "adamw",
) -> dict[str, float]:
  """Estimated bytes per device while training, for a (data, fsdp, tensor) mesh.

  params/grads: param_dtype, sharded over fsdp x tensor (replicated over data).
  optimizer: float32 state (see _optimizer_state_elems), sharded like the params.
  activations: per-device batch (batch / (data * fsdp)) x seq_len tokens x num_layers x the
  per-layer count for `remat` (default cfg.remat), plus one layer recomputed in full when
  rematerialising, plus float32 logits and their gradient (vocab sharded over tensor).
  An estimate: it ignores XLA's temporaries and fusion, typically within ~30%.
  """
  cfg = as_model_config(cfg)
  remat = cfg.remat if remat is None else remat
  if len(mesh_shape) != 3 or any(int(a) < 1 for a in mesh_shape):
    raise ValueError(
        f"mesh_shape must be 3 positive ints (data, fsdp, tensor), got "
        f"{tuple(mesh_shape)}; resolve -1 first"
    )
  data, fsdp, tensor = (int(a) for a in mesh_shape)
  shapes = list(param_shapes(cfg).values())
  total = sum(math.prod(s) for s in shapes)
  shards = fsdp * tensor
  pbytes, abytes = _BYTES[cfg.param_dtype], _BYTES[cfg.dtype]
  tokens = batch_size / (data * fsdp) * seq_len
  dense, f32 = _activation_elems_per_token_layer(cfg, seq_len, remat, tensor)
  acts = tokens * cfg.num_layers * (dense * abytes + f32 * 4)
  if remat != "none":  # one layer's full activations are live again during its backward
    d_full, f_full = _activation_elems_per_token_layer(cfg, seq_len, "none", tensor)
    acts += tokens * (d_full * abytes + f_full * 4)
  logits = tokens * cfg.vocab_size / tensor * 4 * 2
  out = {
      "params_bytes": total * pbytes / shards,
      "grads_bytes": total * pbytes / shards,
      "optimizer_bytes": _optimizer_state_elems(shapes, optimizer) * 4 / shards,
      "activations_bytes": acts + logits,
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
      f"{'non-embedding (no token/pos/type tables)':<40}{s['params_non_embedding']:>18,}",
      f"train FLOPs/token (seq {s['seq_len']}): {s['flops_per_token_train']:.4g}",
      f"train FLOPs/step (batch {s['batch_size']}): {s['flops_per_step_train']:.4g}",
      f"memory/device, mesh {tuple(s['mesh_shape'])}, remat {s['remat']}, {s['optimizer']}: "
      + ", ".join(f"{k.removesuffix('_bytes')} {gib(v)}" for k, v in mem.items()),
  ]
  return "\n".join(lines)


def _main(argv):
  from absl import flags

  del argv
  f = flags.FLAGS
  config = f.config
  mesh = [int(a) for a in config.mesh.shape]
  if mesh.count(-1) > 1:
    raise ValueError(f"mesh.shape {tuple(mesh)}: at most one -1")
  if -1 in mesh:
    known = math.prod(a for a in mesh if a != -1)
    if f.num_devices % known:
      raise ValueError(
          f"--num_devices={f.num_devices} not divisible by the fixed mesh axes " f"{tuple(mesh)}"
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


def _define_flags() -> None:
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "preset file[:arg]", lock_config=False)
  flags.DEFINE_string("json", None, "write the summary as JSON here")
  flags.DEFINE_integer("batch_size", 0, "global batch (default: config.train.batch_size)")
  flags.DEFINE_integer("seq_len", 0, "sequence length (default: config.data.seq_len)")
  flags.DEFINE_integer("num_devices", 1, "devices to fill a -1 in config.mesh.shape")
  flags.mark_flags_as_required(["config"])


def main(argv: Sequence[str] | None = None) -> None:
  """The summary CLI (also behind `python -m model.summary`)."""
  from absl import app

  from train import cli

  _define_flags()
  app.run(
      cli.guarded(_main),
      argv=list(sys.argv if argv is None else argv),
      flags_parser=cli.parse_absl_flags,
  )


if __name__ == "__main__":
  main()
