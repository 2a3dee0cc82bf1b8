"""What the model is: parameter counts and training FLOPs per token, without allocating
weights (everything goes through jax.eval_shape, so the 175B preset takes seconds).

The single source of these numbers: the trainer's MFU, the ladder's FLOP budgets and the
reports call this module. Memory per device and optimizer state depend on training choices
(mesh, optimizer, remat) and live in train/accounting.py, whose CLI this module also runs:

    python -m model.summary --config configs/gpt3.py:size=175B [--json OUT]
        [--batch_size B] [--seq_len L] [--num_devices D]
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from model.config import ModelConfig
from model.transformer import Transformer

# Excluded from "non_embedding": lookup tables, whose cost is not a matmul per token.
# (The untied output layer `unembed` is a matmul and stays in non_embedding.)
EMBEDDING_PARAMS = (
    "embed/embedding",
    "src_embed/embedding",
    "pos_embed/embedding",
    "type_embed/embedding",
)


def as_model_config(cfg) -> ModelConfig:
  """A ModelConfig from either itself or the config's `model` section."""
  return cfg if isinstance(cfg, ModelConfig) else ModelConfig.from_config(cfg)


def param_shapes(cfg) -> dict[str, tuple[int, ...]]:
  """{'embed/embedding': (V, D), 'layers/block/attn/query/kernel': (L, D, N, H), ...}."""
  cfg = as_model_config(cfg)
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  variables = jax.eval_shape(lambda t: Transformer(cfg).init(jax.random.PRNGKey(0), t), tokens)
  flat = jax.tree_util.tree_flatten_with_path(nn.unbox(variables["params"]))[0]
  return {"/".join(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def _module_key(name: str) -> str:
  """'layers/block_3/attn/query/kernel' -> 'layers/attn/query' (summed over layers)."""
  parts = [p for p in name.split("/")[:-1] if not p.startswith("block")]
  return "/".join(parts) or name


# Stacked expert weights of an MoE layer (model/moe.py): [..., E, D, F] / [..., E, F, D].
EXPERT_PARAMS = ("mlp/wi_0", "mlp/wi_1", "mlp/wo")


def _inactive_expert_fraction(cfg: ModelConfig) -> float:
  """Share of the routed experts' weights a token does not use: 1 - k/E (0 unless moe)."""
  return 1.0 - cfg.experts_per_token / cfg.num_experts if cfg.mlp == "moe" else 0.0


def param_counts(cfg) -> dict[str, Any]:
  """total; active (what one token uses: total minus the routed experts it is not sent to,
  = total for dense models); non_embedding (total minus the token, position and token-type
  tables; the untied output layer counts as non-embedding); per_module {module path: count}
  summed over layers."""
  cfg = as_model_config(cfg)
  shapes = param_shapes(cfg)
  per_module: dict[str, int] = {}
  total = 0
  for name, shape in shapes.items():
    n = math.prod(shape)
    total += n
    key = _module_key(name)
    per_module[key] = per_module.get(key, 0) + n
  emb = sum(math.prod(shapes[k]) for k in EMBEDDING_PARAMS if k in shapes)
  experts = sum(math.prod(v) for k, v in shapes.items() if k.endswith(EXPERT_PARAMS))
  active = total - round(experts * _inactive_expert_fraction(cfg))
  return {
      "total": total,
      "active": active,
      "non_embedding": total - emb,
      "per_module": per_module,
  }


def flops_per_token_forward(cfg, seq_len: int) -> dict[str, float]:
  """Forward matmul FLOPs per token, by part (2 FLOPs per multiply-add).

  With d = d_model, N/K = query/kv heads, H = head_dim, m = mlp_dim, V = vocab, L = seq_len,
  n_layers layers:
    qkv       = 2 d H (N + 2K)            (GQA: K kv heads)
    attn_out  = 2 N H d
    scores    = 2 * 2 N H L * c           (q k^T and probs @ v; c = 1/2 causal: each token
                                           sees on average half of the L keys; 1 bidirectional)
    mlp       = 2 d m * (2 gelu | 3 swiglu)
    per layer = qkv + attn_out + scores + mlp, times n_layers
    head      = 2 d V (unembedding, tied or not) + 2 d d (MLM transform if mlm_head)
  Embedding lookups, norms, biases, softmax, nonlinearities and the BERT pooler (one token
  per sequence) are not counted.
  mlp=moe counts the parameters a token uses: in each MoE layer (every moe_every-th) the router
  2 d E, its k routed experts 2 d F * 3 * k and the shared experts 2 d F * 3 * S (F =
  expert_mlp_dim, S = num_shared_experts); the other layers are dense SwiGLU (2 d m * 3).
  Encoder-decoder: per target token with one source token beside it (rows of seq_len each):
  the encoder's layers (bidirectional scores) plus the decoder's (causal), whose blocks add
    cross     = 2 d H (N + 2K) + 2 N H d + 2 * 2 N H L   (projections and scores over the source)
  """
  cfg = as_model_config(cfg)
  if cfg.arch == "encoder_decoder":
    return _encoder_decoder_flops(cfg, seq_len)
  d, n, k, h, m, v = (
      cfg.d_model,
      cfg.num_heads,
      cfg.num_kv_heads,
      cfg.head_dim,
      cfg.mlp_dim,
      cfg.vocab_size,
  )
  causal_factor = 0.5 if cfg.causal else 1.0
  parts = {
      "qkv": 2.0 * d * h * (n + 2 * k),
      "attn_out": 2.0 * n * h * d,
      "scores": 4.0 * n * h * seq_len * causal_factor,
      "mlp": 2.0 * d * m * (3 if cfg.mlp == "swiglu" else 2),
  }
  parts = {key: val * cfg.num_layers for key, val in parts.items()}
  if cfg.mlp == "moe":
    parts["mlp"] = _moe_mlp_flops(cfg)
  parts["head"] = 2.0 * d * v + (2.0 * d * d if cfg.mlm_head else 0.0)
  return parts


def _moe_mlp_flops(cfg: ModelConfig) -> float:
  """Forward feed-forward FLOPs per token of an MoE stack, all layers (router included)."""
  d, f = cfg.d_model, cfg.moe_mlp_dim
  n_moe = cfg.num_layers // cfg.moe_every
  per_moe = 2.0 * d * cfg.num_experts + 6.0 * d * f * (
      cfg.experts_per_token + cfg.num_shared_experts
  )
  return n_moe * per_moe + (cfg.num_layers - n_moe) * 6.0 * d * cfg.mlp_dim


def _encoder_decoder_flops(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
  enc = flops_per_token_forward(cfg.replace(arch="encoder"), seq_len)
  dec = flops_per_token_forward(cfg.replace(arch="decoder", num_layers=cfg.decoder_layers), seq_len)
  d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  cross = 2.0 * d * h * (n + 2 * k) + 2.0 * n * h * d + 4.0 * n * h * seq_len
  parts = {f"encoder_{key}": val for key, val in enc.items() if key != "head"}
  parts.update({key: val for key, val in dec.items()})
  parts["cross"] = cross * cfg.decoder_layers
  return parts


def flops_per_token_train(cfg, seq_len: int) -> float:
  """Training FLOPs per token = 3 x forward matmul FLOPs (backward costs twice the forward:
  gradients w.r.t. activations and w.r.t. weights). See flops_per_token_forward for the parts."""
  return 3.0 * sum(flops_per_token_forward(cfg, seq_len).values())


if __name__ == "__main__":
  # The summary CLI moved with the memory accounting to train/; this name keeps working.
  # model/ imports nothing of train/ at the top: the alias loads it only when run.
  from train import accounting, cli

  cli.run(accounting.main)
