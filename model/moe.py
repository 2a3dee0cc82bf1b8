"""Sparse mixture-of-experts feed-forward (`model.mlp = moe`): a float32 router picks the top-k
of `num_experts` SwiGLU experts for each token, and optional shared experts see every token.

Routing is softmax-then-top-k with the k weights renormalised to sum to 1 when k > 1; a top-1
token keeps its expert's probability as the weight (Switch Transformer), since renormalised it
would be the constant 1 and the router would learn from the auxiliary losses only. Dropless: the
token-expert assignments are sorted by expert and the three expert matmuls are grouped
matmuls (`jax.lax.ragged_dot`) over the sorted rows, so no token is ever dropped for lack of
capacity; the outputs are scattered back and summed with the routing weights.

The router's auxiliary terms are sown into the `AUX` collection (only when the caller makes it
mutable, never during init); train/step.py reads them with `aux_losses`:
  load_balance  Switch/GShard: E * sum_e f_e P_e, f_e the fraction of the T*k assignments that
                go to expert e, P_e the mean router probability of e (1 when uniform).
  router_z      ST-MoE: mean over tokens of logsumexp(router logits)^2.
  expert_load   f_e per expert (sums to 1), logged per layer.
  dropped       assignments not processed (0: the layer is dropless; counted, not assumed).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from model import moe_parallel
from model import parametrization
from model.config import ModelConfig
from model.linear import Linear
from model.mlp import Mlp

AUX = "moe_aux"
AUX_KEYS = ("load_balance", "router_z", "expert_load", "dropped")


def route(logits_TxE: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(expert ids [T, k], weights [T, k] float32, probabilities [T, E] float32) from float32
  router logits: softmax over all experts, then the k largest; their weights renormalised to
  sum to 1 when k > 1, the probability itself when k = 1 (so the loss reaches the router)."""
  probs_TxE = jax.nn.softmax(logits_TxE.astype(jnp.float32), axis=-1)
  top_w_TxK, top_idx_TxK = jax.lax.top_k(probs_TxE, k)
  if k > 1:
    top_w_TxK = top_w_TxK / jnp.sum(top_w_TxK, axis=-1, keepdims=True)
  return top_idx_TxK, top_w_TxK, probs_TxE


def expert_fraction(idx_TxK: jax.Array, num_experts: int) -> jax.Array:
  """f_e: fraction of the T*k token-expert assignments routed to each expert [E]."""
  counts_E = jnp.bincount(idx_TxK.reshape(-1), length=num_experts)
  return counts_E.astype(jnp.float32) / idx_TxK.size


def load_balance_loss(idx_TxK: jax.Array, probs_TxE: jax.Array) -> jax.Array:
  """Switch/GShard auxiliary loss E * sum_e f_e * P_e (1 for perfectly uniform routing)."""
  num_experts = probs_TxE.shape[-1]
  f_E = expert_fraction(idx_TxK, num_experts)
  p_E = jnp.mean(probs_TxE, axis=0)
  return num_experts * jnp.sum(f_E * p_E)


def router_z_loss(logits_TxE: jax.Array) -> jax.Array:
  """ST-MoE router z-loss: mean_t logsumexp(logits_t)^2, keeps router logits small."""
  return jnp.mean(jnp.square(jax.nn.logsumexp(logits_TxE.astype(jnp.float32), axis=-1)))


def sort_by_expert(idx_TxK: jax.Array, num_experts: int) -> tuple[jax.Array, jax.Array]:
  """(order [T*k]: assignment ids sorted by expert, group sizes [E]). Assignment a is token
  a // k's (a % k)-th choice."""
  flat_A = idx_TxK.reshape(-1)
  order_A = jnp.argsort(flat_A, stable=True)
  return order_A, jnp.bincount(flat_A, length=num_experts).astype(jnp.int32)


def swiglu_experts(
    x_SxD: jax.Array, group_sizes_E: jax.Array, wi_0_ExDxF, wi_1_ExDxF, wo_ExFxD
) -> jax.Array:
  """Rows of x sorted by expert (group_sizes_E[e] consecutive rows for expert e) through
  their expert's SwiGLU: silu(x W0_e) * (x W1_e) W2_e, as three grouped matmuls."""
  gate_SxF = jax.lax.ragged_dot(x_SxD, wi_0_ExDxF, group_sizes_E)
  up_SxF = jax.lax.ragged_dot(x_SxD, wi_1_ExDxF, group_sizes_E)
  return jax.lax.ragged_dot(nn.silu(gate_SxF) * up_SxF, wo_ExFxD, group_sizes_E)


def combine(y_AxD: jax.Array, order_A: jax.Array, weights_TxK: jax.Array) -> jax.Array:
  """Scatters the expert-sorted outputs back to assignment order and sums each token's k
  outputs with its routing weights -> [T, D]."""
  t, k = weights_TxK.shape
  unsorted_AxD = jnp.zeros_like(y_AxD).at[order_A].set(y_AxD)
  y_TxKxD = unsorted_AxD.reshape(t, k, -1)
  return jnp.einsum("tkd,tk->td", y_TxKxD, weights_TxK.astype(y_AxD.dtype))


def dropless_moe(
    x_TxD: jax.Array, idx_TxK: jax.Array, weights_TxK: jax.Array, experts: tuple[Any, ...]
) -> tuple[jax.Array, jax.Array]:
  """(output [T, D], dropped assignments): every token through its k experts, on one device
  (or under automatic sharding). `experts` = (wi_0 [E,D,F], wi_1 [E,D,F], wo [E,F,D])."""
  k = idx_TxK.shape[1]
  order_A, sizes_E = sort_by_expert(idx_TxK, experts[0].shape[0])
  x_AxD = x_TxD[order_A // k]
  y_AxD = swiglu_experts(x_AxD, sizes_E, *experts)
  dropped = idx_TxK.size - jnp.sum(sizes_E)
  return combine(y_AxD, order_A, weights_TxK), dropped


class Moe(nn.Module):
  """The MoE feed-forward of one layer: [B, L, D] -> [B, L, D]. Expert weights are
  [E, D, F] / [E, F, D] with logical axes ('expert', 'embed', 'mlp'), so mesh.axis_rules can
  place experts on an expert-parallel mesh axis."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD, deterministic: bool = True):
    cfg = self.cfg
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    b, l, d = x_BxLxD.shape
    e, f = cfg.num_experts, cfg.moe_mlp_dim
    router = Linear(
        (e,),
        ("embed", None),
        use_bias=False,
        init_std=parametrization.hidden_init_std(cfg),
        dtype=jnp.float32,  # routing decisions in float32 whatever the compute dtype
        param_dtype=pdt,
        name="router",
    )
    logits_TxE = router(x_BxLxD.reshape(b * l, d).astype(jnp.float32))
    idx_TxK, weights_TxK, probs_TxE = route(logits_TxE, cfg.experts_per_token)
    experts = self._expert_weights(d, e, f, pdt)
    experts = tuple(jnp.asarray(w, dt) for w in experts)
    k = cfg.experts_per_token
    y_BxLxD, dropped = dispatch(
        x_BxLxD.astype(dt), idx_TxK.reshape(b, l, k), weights_TxK.reshape(b, l, k), experts
    )
    if cfg.num_shared_experts:
      shared_cfg = cfg.replace(mlp="swiglu", mlp_dim=cfg.num_shared_experts * f, use_bias=False)
      y_BxLxD = y_BxLxD + Mlp(shared_cfg, name="shared")(x_BxLxD, deterministic)
    if self.is_mutable_collection(AUX) and not self.is_initializing():
      self.sow(AUX, "load_balance", load_balance_loss(idx_TxK, probs_TxE))
      self.sow(AUX, "router_z", router_z_loss(logits_TxE))
      self.sow(AUX, "expert_load", expert_fraction(idx_TxK, e))
      self.sow(AUX, "dropped", dropped.astype(jnp.float32))
    return nn.with_logical_constraint(y_BxLxD, ("batch", "length", "embed"))

  def _expert_weights(self, d: int, e: int, f: int, pdt) -> tuple[Any, Any, Any]:
    cfg = self.cfg

    def param(name, shape, axes, std):
      init = nn.with_logical_partitioning(nn.initializers.normal(std), axes)
      return self.param(name, init, shape, pdt)

    hidden, out = parametrization.hidden_init_std(cfg), parametrization.residual_out_init_std(cfg)
    return (
        param("wi_0", (e, d, f), ("expert", "embed", "mlp"), hidden),
        param("wi_1", (e, d, f), ("expert", "embed", "mlp"), hidden),
        param("wo", (e, f, d), ("expert", "mlp", "embed"), out),
    )


def dispatch(x_BxLxD, idx_BxLxK, weights_BxLxK, experts) -> tuple[jax.Array, jax.Array]:
  """Runs the experts: expert-parallel (model/moe_parallel.py) when the current mesh has an
  `expert` axis of size > 1, else `dropless_moe` on the whole token set."""
  if moe_parallel.expert_ranks() > 1:
    return moe_parallel.expert_parallel_moe(x_BxLxD, idx_BxLxK, weights_BxLxK, experts)
  b, l, d = x_BxLxD.shape
  k = idx_BxLxK.shape[-1]
  y_TxD, dropped = dropless_moe(
      x_BxLxD.reshape(b * l, d),
      idx_BxLxK.reshape(b * l, k),
      weights_BxLxK.reshape(b * l, k),
      experts,
  )
  return y_TxD.reshape(b, l, d), dropped


def _layer_order(path) -> tuple:
  """Sort key putting block_2 before block_10 (unrolled layers in depth order)."""
  text = "/".join(str(getattr(p, "key", getattr(p, "idx", ""))) for p in path)
  return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def aux_losses(aux_tree: Any) -> dict[str, jax.Array]:
  """The sown AUX collection of one forward -> {load_balance: mean over MoE layers,
  router_z: mean over MoE layers, expert_load: [MoE layers, E], dropped: total}."""
  found = {key: [] for key in AUX_KEYS}
  leaves = jax.tree_util.tree_flatten_with_path(aux_tree)[0]
  for path, leaf in sorted(leaves, key=lambda pl: _layer_order(pl[0])):
    names = [getattr(p, "key", None) for p in path]
    key = next(n for n in reversed(names) if n in AUX_KEYS)
    # nn.scan stacks a layer axis in front; unrolled layers give one value each.
    rank = 1 if key == "expert_load" else 0
    found[key].append(leaf.reshape((-1,) + leaf.shape[leaf.ndim - rank :]))
  if not found["load_balance"]:
    raise ValueError("no MoE layer sowed its auxiliary losses (is model.mlp=moe?)")
  stacked = {k: jnp.concatenate(v, axis=0) for k, v in found.items()}
  return {
      "load_balance": jnp.mean(stacked["load_balance"]),
      "router_z": jnp.mean(stacked["router_z"]),
      "expert_load": stacked["expert_load"],
      "dropped": jnp.sum(stacked["dropped"]),
  }
