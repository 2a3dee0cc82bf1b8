"""Self-attention with MHA/GQA/MQA (num_kv_heads), a free head_dim, RoPE, segment masks and
an optional KV cache for decoding. The math is in attention_ops.dot_product_attention."""

import jax
import jax.numpy as jnp
from flax import linen as nn

from model import attention_ops
from model import parametrization
from model import positional
from model.config import ModelConfig
from model.linear import Linear


class Attention(nn.Module):
  """`decode=True` keeps keys/values in the 'cache' collection: cached_key/cached_value
  [B, S_max, K, H], cached_segment [B, S_max] and cache_index (next write slot). The first
  (init) call sizes the cache from its input length; later calls append their T tokens and
  attend causally over everything written so far.

  `cross=True` (encoder-decoder): queries from x, keys/values from `memory_BxSxD` (the encoder
  output), no causal mask, no rotary positions; a query of segment i sees the memory positions
  of segment i (0 = padding). With `decode=True` the memory's keys/values are projected once:
  the call that passes `memory_BxSxD` stores them in the cache (cross_key/cross_value
  [B, S, K, H], cross_segment [B, S]) and later calls without it attend to the stored ones,
  so a decoding step does not re-project the whole source in every layer."""

  cfg: ModelConfig
  decode: bool = False
  cross: bool = False

  @nn.compact
  def __call__(
      self,
      x_BxLxD,
      positions_BxL,
      segment_ids_BxL=None,
      deterministic=True,
      memory_BxSxD=None,
      memory_segment_ids_BxS=None,
  ):
    cfg = self.cfg
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    proj = lambda heads, axis, name: Linear(
        (heads, h),
        ("embed", axis, "head_dim"),
        use_bias=cfg.use_bias,
        init_std=parametrization.hidden_init_std(cfg),
        dtype=dt,
        param_dtype=pdt,
        name=name,
    )
    project_kv = lambda y: (proj(k, "kv_heads", "key")(y), proj(k, "kv_heads", "value")(y))
    q_BxLxNxH = proj(n, "heads", "query")(x_BxLxD)
    if self.cross and self.decode:
      k_BxLxKxH, v_BxLxKxH, memory_segment_ids_BxS = self._cached_memory(
          project_kv, memory_BxSxD, memory_segment_ids_BxS
      )
    else:
      k_BxLxKxH, v_BxLxKxH = project_kv(memory_BxSxD if self.cross else x_BxLxD)
    if cfg.pos_encoding == "rope" and not self.cross:
      q_BxLxNxH = positional.apply_rope(q_BxLxNxH, positions_BxL, cfg.rope_theta)
      k_BxLxKxH = positional.apply_rope(k_BxLxKxH, positions_BxL, cfg.rope_theta)
    q_BxLxNxH = nn.with_logical_constraint(q_BxLxNxH, ("batch", "length", "heads", "head_dim"))
    k_BxLxKxH = nn.with_logical_constraint(k_BxLxKxH, ("batch", "length", "kv_heads", "head_dim"))
    v_BxLxKxH = nn.with_logical_constraint(v_BxLxKxH, ("batch", "length", "kv_heads", "head_dim"))

    q_offset = 0
    q_seg, kv_seg = segment_ids_BxL, segment_ids_BxL
    if self.cross:
      q_seg, kv_seg = _cross_segments(segment_ids_BxL, memory_segment_ids_BxS, x_BxLxD, k_BxLxKxH)
    elif self.decode:
      k_BxLxKxH, v_BxLxKxH, kv_seg, q_offset, q_seg = self._update_cache(
          k_BxLxKxH, v_BxLxKxH, segment_ids_BxL
      )

    out_BxLxNxH = attention_ops.dot_product_attention(
        q_BxLxNxH,
        k_BxLxKxH,
        v_BxLxKxH,
        causal=cfg.causal and not self.cross,
        q_segment_ids_BxT=q_seg,
        kv_segment_ids_BxS=kv_seg,
        q_offset=q_offset,
        impl=cfg.attention_impl,
        scale=parametrization.attention_scale(cfg),
    )
    out_BxLxNxH = nn.with_logical_constraint(out_BxLxNxH, ("batch", "length", "heads", "head_dim"))
    out_BxLxNxH = nn.Dropout(cfg.dropout)(out_BxLxNxH, deterministic=deterministic)
    return Linear(
        (cfg.d_model,),
        ("heads", "head_dim", "embed"),
        num_in=2,
        use_bias=cfg.use_bias,
        init_std=parametrization.residual_out_init_std(cfg),
        dtype=dt,
        param_dtype=pdt,
        name="out",
    )(out_BxLxNxH)

  def _cached_memory(self, project_kv, memory_BxSxD, memory_segment_ids_BxS):
    """Cross-attention keys, values and memory segment ids while decoding: projected from
    `memory_BxSxD` and stored when it is given, else read from the cache. The init call only
    sizes the parameters (the cache then holds the self-attention entries alone)."""
    names = ("cross_key", "cross_value", "cross_segment")
    if memory_BxSxD is None:
      if not self.has_variable("cache", "cross_key"):
        raise ValueError(
            "decode=True cross-attention has no cached memory: pass memory_BxSxD (from "
            "Transformer.encode) on the first decoding call"
        )
      return tuple(self.get_variable("cache", name) for name in names)
    k_BxSxKxH, v_BxSxKxH = project_kv(memory_BxSxD)
    if memory_segment_ids_BxS is None:
      memory_segment_ids_BxS = jnp.ones(memory_BxSxD.shape[:2], jnp.int32)
    if not self.is_initializing():
      for name, value in zip(names, (k_BxSxKxH, v_BxSxKxH, memory_segment_ids_BxS)):
        self.put_variable("cache", name, value)
    return k_BxSxKxH, v_BxSxKxH, memory_segment_ids_BxS

  def _update_cache(self, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT):
    """Writes the new keys/values at cache_index; returns the full cache to attend over."""
    b, t = k_BxTxKxH.shape[:2]
    initializing = not self.has_variable("cache", "cached_key")
    ck = self.variable("cache", "cached_key", jnp.zeros, k_BxTxKxH.shape, k_BxTxKxH.dtype)
    cv = self.variable("cache", "cached_value", jnp.zeros, v_BxTxKxH.shape, v_BxTxKxH.dtype)
    cs = self.variable("cache", "cached_segment", jnp.zeros, (b, t), jnp.int32)
    ci = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    if segment_ids_BxT is None:
      segment_ids_BxT = jnp.ones((b, t), jnp.int32)
    if initializing:  # the init call only sizes the cache; attend over the input itself
      return k_BxTxKxH, v_BxTxKxH, segment_ids_BxT, 0, segment_ids_BxT
    idx = ci.value
    ck.value = jax.lax.dynamic_update_slice(
        ck.value, k_BxTxKxH.astype(ck.value.dtype), (0, idx, 0, 0)
    )
    cv.value = jax.lax.dynamic_update_slice(
        cv.value, v_BxTxKxH.astype(cv.value.dtype), (0, idx, 0, 0)
    )
    cs.value = jax.lax.dynamic_update_slice(cs.value, segment_ids_BxT.astype(jnp.int32), (0, idx))
    ci.value = idx + t
    # Slots after idx + t are still zero with segment 0: the segment mask hides them even
    # when the attention is not causal.
    return ck.value, cv.value, cs.value, idx, segment_ids_BxT


def _cross_segments(q_segment_ids_BxT, kv_segment_ids_BxS, x_BxTxD, k_BxSxKxH):
  """Segment ids for cross-attention; a missing side is all ones (one unpadded segment)."""
  if q_segment_ids_BxT is None and kv_segment_ids_BxS is None:
    return None, None
  if q_segment_ids_BxT is None:
    q_segment_ids_BxT = jnp.ones(x_BxTxD.shape[:2], jnp.int32)
  if kv_segment_ids_BxS is None:
    kv_segment_ids_BxS = jnp.ones(k_BxSxKxH.shape[:2], jnp.int32)
  return q_segment_ids_BxT, kv_segment_ids_BxS
