"""Behaviour of the transformer modules on tiny configs (CPU, float32)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs.base import DEFAULT_AXIS_RULES
from model import attention_ops
from model import positional
from model.config import ModelConfig
from model.transformer import Transformer, init_cache

B, L = 2, 8
TINY = dict(
    vocab_size=50,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=4,
    head_dim=8,
    mlp_dim=64,
    max_seq_len=16,
)


def tiny(**kw):
  return ModelConfig.from_config({**TINY, **kw})


def tokens(seed=0, shape=(B, L), vocab=50):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, vocab)


@functools.cache
def _jitted(cfg):
  """One compiled init and apply per config: eager Flax is slow on a loaded 2-core box."""
  model = Transformer(cfg)
  return (
      jax.jit(model.init),
      jax.jit(model.apply, static_argnames=("deterministic", "method", "mutable")),
  )


def init(cfg, toks=None):
  toks = tokens() if toks is None else toks
  return nn.unbox(_jitted(cfg)[0](jax.random.PRNGKey(1), toks)["params"])


def apply(cfg, params, toks, **kw):
  return _jitted(cfg)[1]({"params": params}, toks, **kw)


@pytest.mark.parametrize("pos", ["learned", "rope", "sinusoidal", "none"])
def test_causal_future_tokens_never_change_past_logits(pos):
  cfg = tiny(pos_encoding=pos, num_kv_heads=2)
  params = init(cfg)
  toks = tokens()
  toks = jnp.tile(toks[:1], (L - 1, 1))
  # Row t has every token after t changed; one batched call checks all cut points.
  changed = jnp.where(jnp.arange(L)[None, :] > jnp.arange(L - 1)[:, None], (toks + 7) % 50, toks)
  base, out = apply(cfg, params, toks), apply(cfg, params, changed)
  for t in range(L - 1):
    np.testing.assert_allclose(out[t, : t + 1], base[t, : t + 1], atol=1e-6)
    assert not np.allclose(out[t, t + 1 :], base[t, t + 1 :], atol=1e-4)


def test_bidirectional_future_tokens_change_past_logits():
  cfg = tiny(attention_mask="bidirectional")
  params = init(cfg)
  toks = tokens()
  out = apply(cfg, params, toks.at[:, -1].set((toks[:, -1] + 1) % 50))
  assert not np.allclose(out[:, 0], apply(cfg, params, toks)[:, 0], atol=1e-5)


@pytest.mark.parametrize("mask", ["causal", "bidirectional"])
def test_segments_isolate_packed_documents(mask):
  cfg = tiny(attention_mask=mask, pos_encoding="rope")
  params = init(cfg)
  doc_a, doc_b = tokens(1, (3,)), tokens(2, (4,))
  pad = lambda x, n: jnp.concatenate([x, jnp.zeros((n,), jnp.int32)])
  # Row 0: a and b packed + 1 pad; rows 1, 2: each document alone, padded (one compile).
  toks = jnp.stack([pad(jnp.concatenate([doc_a, doc_b]), 1), pad(doc_a, 5), pad(doc_b, 4)])
  segs = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]])
  pos = jnp.array([[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 0, 0, 0, 0, 0], [0, 1, 2, 3, 0, 0, 0, 0]])
  out = apply(cfg, params, toks, positions_BxL=pos, segment_ids_BxL=segs)
  np.testing.assert_allclose(out[0, :3], out[1, :3], atol=1e-5)
  np.testing.assert_allclose(out[0, 3:7], out[2, :4], atol=1e-5)
  assert np.all(np.isfinite(out))  # padding rows are fully masked but finite
  if mask == "bidirectional":  # without segments, a would see b
    assert not np.allclose(apply(cfg, params, toks)[0, :3], out[1, :3], atol=1e-4)


def test_gqa_with_repeated_kv_weights_equals_mha():
  gqa = tiny(num_heads=4, num_kv_heads=2)
  mha = dataclasses.replace(gqa, num_kv_heads=4)
  p_gqa = init(gqa)
  p_mha = jax.tree.map(lambda x: x, p_gqa)
  for name in ("key", "value"):
    blk = p_gqa["layers"]["block"]["attn"][name]
    # kv head j serves query heads 2j, 2j+1: repeat along the kv-head axis.
    p_mha["layers"]["block"]["attn"][name] = {
        "kernel": jnp.repeat(blk["kernel"], 2, axis=2),
        "bias": jnp.repeat(blk["bias"], 2, axis=1),
    }
  toks = tokens()
  np.testing.assert_allclose(apply(gqa, p_gqa, toks), apply(mha, p_mha, toks), atol=1e-5)
  mqa = dataclasses.replace(gqa, num_kv_heads=1)
  assert apply(mqa, init(mqa), toks).shape == (B, L, 50)


def test_rope_scores_depend_only_on_relative_position():
  q = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 1, 16))
  k = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, 16))
  score = lambda i, j: jnp.sum(
      positional.apply_rope(q, jnp.array([[i]])) * positional.apply_rope(k, jnp.array([[j]]))
  )
  np.testing.assert_allclose(score(5, 2), score(103, 100), rtol=1e-4)
  np.testing.assert_allclose(score(0, 0), jnp.sum(q * k), rtol=1e-5)
  assert not np.isclose(score(5, 2), score(5, 4), rtol=1e-3)
  # Model level: shifting every position leaves RoPE-only logits unchanged.
  cfg = tiny(pos_encoding="rope")
  params, toks = init(cfg), tokens()
  shifted = jnp.broadcast_to(jnp.arange(L) + 37, (B, L))
  np.testing.assert_allclose(
      apply(cfg, params, toks), apply(cfg, params, toks, positions_BxL=shifted), atol=1e-4
  )


def test_scan_and_unrolled_stacks_agree():
  """Scanned + rematerialised vs unrolled without remat: same function, same gradients."""
  scan = tiny(remat="full", mlp="swiglu", norm="rmsnorm")
  unrolled = dataclasses.replace(scan, scan_layers=False, remat="none")
  p_scan = init(scan)
  p_unrolled = init(unrolled)
  assert set(p_unrolled["layers"]) == {"block_0", "block_1"}
  restacked = dict(p_scan)
  restacked["layers"] = {
      f"block_{i}": jax.tree.map(lambda x: x[i], p_scan["layers"]["block"])
      for i in range(scan.num_layers)
  }
  assert jax.tree.structure(restacked) == jax.tree.structure(p_unrolled)
  toks = tokens()
  np.testing.assert_allclose(apply(scan, p_scan, toks), apply(unrolled, restacked, toks), atol=1e-5)
  loss = lambda p, c: jnp.mean(Transformer(c).apply({"params": p}, toks) ** 2)
  g_scan = jax.jit(jax.grad(loss), static_argnums=1)(p_scan, scan)
  g_unr = jax.jit(jax.grad(loss), static_argnums=1)(restacked, unrolled)
  np.testing.assert_allclose(
      g_scan["layers"]["block"]["mlp"]["wo"]["kernel"][1],
      g_unr["layers"]["block_1"]["mlp"]["wo"]["kernel"],
      atol=1e-5,
  )


def test_tied_and_untied_output_shapes():
  tied, untied = tiny(), tiny(tie_embeddings=False)
  shapes = lambda cfg: jax.eval_shape(Transformer(cfg).init, jax.random.PRNGKey(0), tokens())
  assert "unembed" not in nn.unbox(shapes(tied)["params"])
  v = shapes(untied)
  p = nn.unbox(v["params"])
  assert p["unembed"]["kernel"].shape == (32, 50)
  assert p["embed"]["embedding"].shape == (50, 32)
  logits = jax.eval_shape(Transformer(untied).apply, v, tokens())
  assert logits.shape == (B, L, 50) and logits.dtype == jnp.float32


def test_dtype_policy_bf16_compute_fp32_params():
  cfg = tiny(dtype="bfloat16", param_dtype="float32")
  params = init(cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  toks = tokens()
  logits = apply(cfg, params, toks)
  assert logits.dtype == jnp.float32
  hidden = apply(cfg, params, toks, method=Transformer.hidden)
  assert hidden.dtype == jnp.bfloat16
  ref = apply(tiny(), params, toks)
  np.testing.assert_allclose(logits, ref, atol=0.1)  # same function, bf16 rounding only
  assert not np.array_equal(logits, ref)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        dict(
            pos_encoding="rope",
            mlp="swiglu",
            norm="rmsnorm",
            use_bias=False,
            tie_embeddings=False,
            num_kv_heads=2,
        ),
        dict(
            attention_mask="bidirectional",
            norm_position="post",
            mlm_head=True,
            embed_norm=True,
            type_vocab_size=2,
            pooler=True,
        ),
    ],
)
def test_every_param_has_logical_axis_names(kw):
  cfg = tiny(**kw)
  boxed = jax.eval_shape(Transformer(cfg).init, jax.random.PRNGKey(0), tokens())["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves
  valid = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "layers", None}
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), leaf
    assert len(leaf.names) == leaf.value.ndim
    assert set(leaf.names) <= valid and any(leaf.names)
  names = {tuple(x.names) for x in leaves}
  assert ("layers", "embed", "heads", "head_dim") in names


def test_logical_rules_leave_activation_embed_unsharded():
  """Flax applies rules in order and skips mesh axes already used by an earlier dim."""
  rules = DEFAULT_AXIS_RULES
  act = nn.logical_to_mesh_axes(("batch", "length", "embed"), rules)
  assert tuple(act) == (("data", "fsdp"), None, None)
  param = nn.logical_to_mesh_axes(("vocab", "embed"), rules)
  assert tuple(param) == ("tensor", "fsdp")


@pytest.mark.parametrize("pos,kv", [("rope", 2), ("learned", 4), ("sinusoidal", 1)])
def test_kv_cache_decoding_matches_full_forward(pos, kv):
  cfg = tiny(pos_encoding=pos, num_kv_heads=kv)
  toks = tokens(3, (B, 10))
  params = init(cfg, toks)
  full = apply(cfg, params, toks)
  dec = Transformer(cfg, decode=True)
  cache = init_cache(cfg, B, 12)
  assert cache["layers"]["block"]["attn"]["cached_key"].shape == (2, B, 12, kv, 8)
  prefill = 4
  pos_ = jnp.broadcast_to(jnp.arange(prefill), (B, prefill))
  step = jax.jit(
      lambda c, t, p: dec.apply(
          {"params": params, "cache": c}, t, positions_BxL=p, mutable=["cache"]
      )
  )
  out, upd = step(cache, toks[:, :prefill], pos_)
  np.testing.assert_allclose(out, full[:, :prefill], atol=1e-5)
  cache = upd["cache"]
  for t in range(prefill, 10):
    out, upd = step(cache, toks[:, t : t + 1], jnp.full((B, 1), t))
    cache = upd["cache"]
    np.testing.assert_allclose(out[:, 0], full[:, t], atol=1e-5)
  assert int(jax.tree.leaves(cache["layers"]["block"]["attn"]["cache_index"])[0][0]) == 10


def test_decode_requires_positions():
  cfg = tiny()
  dec = Transformer(cfg, decode=True)
  v = jax.eval_shape(dec.init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
  with pytest.raises(ValueError, match="positions_BxL"):
    jax.eval_shape(lambda v: dec.apply(v, jnp.zeros((1, 1), jnp.int32), mutable=["cache"]), v)


def test_dropout_is_random_only_when_not_deterministic():
  cfg = tiny(dropout=0.5)
  params, toks = init(cfg), tokens()
  a = apply(cfg, params, toks)
  np.testing.assert_array_equal(a, apply(cfg, params, toks))
  d1 = apply(cfg, params, toks, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
  d2 = apply(cfg, params, toks, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)})
  assert not np.allclose(d1, a) and not np.allclose(d1, d2)


def test_bert_style_encoder_hidden_pooled_and_token_types():
  cfg = tiny(
      attention_mask="bidirectional",
      norm_position="post",
      mlm_head=True,
      embed_norm=True,
      type_vocab_size=2,
      pooler=True,
  )
  params, toks = init(cfg), tokens()
  assert {"pooler_dense", "mlm_dense", "mlm_norm", "mlm_bias", "type_embed", "embed_norm"} <= set(
      params
  ) and "final_norm" not in params
  pooled = apply(cfg, params, toks, method=Transformer.pooled)
  assert pooled.shape == (B, 32) and np.all(np.abs(pooled) <= 1)
  types = jnp.ones_like(toks)
  assert not np.allclose(
      apply(cfg, params, toks, token_types_BxL=types),
      apply(cfg, params, toks, token_types_BxL=jnp.zeros_like(toks)),
  )


def test_attention_ops_fully_masked_rows_are_finite_and_impl_checked():
  q = jnp.ones((1, 2, 2, 4))
  kv = jnp.ones((1, 2, 1, 4))
  seg = jnp.array([[0, 1]])
  out = attention_ops.dot_product_attention(
      q, kv, kv, causal=True, q_segment_ids_BxT=seg, kv_segment_ids_BxS=seg
  )
  assert np.all(np.isfinite(out))
  with pytest.raises(ValueError, match="impl"):
    attention_ops.dot_product_attention(q, kv, kv, causal=True, impl="nope")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_attention_matches_xla():
  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(ks[0], (2, 128, 8, 64), jnp.bfloat16)
  k = jax.random.normal(ks[1], (2, 128, 2, 64), jnp.bfloat16)
  v = jax.random.normal(ks[2], (2, 128, 2, 64), jnp.bfloat16)
  seg = jnp.concatenate([jnp.ones((2, 64), jnp.int32), 2 * jnp.ones((2, 64), jnp.int32)], 1)
  kw = dict(causal=True, q_segment_ids_BxT=seg, kv_segment_ids_BxS=seg)
  ref = attention_ops.dot_product_attention(q, k, v, impl="xla", **kw)
  out = attention_ops.dot_product_attention(q, k, v, impl="cudnn", **kw)
  np.testing.assert_allclose(out.astype(jnp.float32), ref.astype(jnp.float32), atol=2e-2)
