"""The CPU speed paths give the same numbers as the plain ones: "blocked" attention vs "xla"
(forward and gradients, causal + segment masks, GQA), "auto" resolution, and the unrolled
layer scan vs the rolled loop."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import attention_ops as ao
from model.config import ModelConfig
from model.transformer import Transformer, scan_unroll


def _qkv(b=2, t=256, n=4, k=2, h=16, seed=0):
  ks = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(ks[0], (b, t, n, h), jnp.float32)
  kk = jax.random.normal(ks[1], (b, t, k, h), jnp.float32)
  v = jax.random.normal(ks[2], (b, t, k, h), jnp.float32)
  g = jax.random.normal(ks[3], (b, t, n, h), jnp.float32)
  return q, kk, v, g


def _segments(b, t):
  """Row 0: three documents then padding; row 1: one document."""
  seg = np.ones((b, t), np.int32)
  seg[0, 70:150] = 2
  seg[0, 150:230] = 3
  seg[0, 230:] = 0
  return jnp.asarray(seg)


@pytest.mark.parametrize("with_segments", [False, True])
def test_blocked_matches_xla_forward_and_gradients(with_segments):
  q, k, v, g = _qkv()
  seg = _segments(2, 256) if with_segments else None

  def loss(impl):
    def f(q, k, v):
      out = ao.dot_product_attention(
          q, k, v, causal=True, q_segment_ids_BxT=seg, kv_segment_ids_BxS=seg, impl=impl
      )
      return jnp.sum(out * g), out

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))

  assert ao.resolve_impl("blocked", causal=True, q_len=256, kv_len=256) == "blocked"
  (_, out_x), grads_x = loss("xla")(q, k, v)
  (_, out_b), grads_b = loss("blocked")(q, k, v)
  np.testing.assert_allclose(out_b, out_x, rtol=1e-5, atol=1e-5)
  for gb, gx in zip(grads_b, grads_x):
    scale = float(jnp.max(jnp.abs(gx)))
    np.testing.assert_allclose(gb, gx, rtol=1e-4, atol=1e-5 * scale)


def test_blocked_is_really_blocked():
  """The point of the impl: fewer score FLOPs than the full T x T matrix (XLA's count)."""
  q, k, v, _ = _qkv(t=512)
  flops = {}
  for impl in ("xla", "blocked"):
    f = jax.jit(
        lambda q, k, v, impl=impl: ao.dot_product_attention(q, k, v, causal=True, impl=impl)
    )
    flops[impl] = f.lower(q, k, v).compile().cost_analysis()["flops"]
  assert flops["blocked"] < 0.65 * flops["xla"]  # 8 blocks of 64: 36/64 of the scores


def test_resolve_impl_falls_back_where_blocking_does_not_apply():
  assert ao.resolve_impl("blocked", causal=False, q_len=256, kv_len=256) == "xla"
  assert ao.resolve_impl("blocked", causal=True, q_len=1, kv_len=256, q_offset=5) == "xla"
  assert ao.resolve_impl("blocked", causal=True, q_len=100, kv_len=100) == "xla"
  sizes = {t: ao.blocked_block_size(t) for t in (64, 100, 128, 256, 512, 2048, 4096)}
  assert sizes == {64: None, 100: None, 128: 64, 256: 64, 512: 64, 2048: 128, 4096: 256}
  assert ao.resolve_impl("cudnn", causal=True, q_len=256, kv_len=256) == "cudnn"
  expected = "blocked" if jax.default_backend() == "cpu" else "xla"
  assert ao.resolve_impl("auto", causal=True, q_len=256, kv_len=256) == expected
  with pytest.raises(ValueError, match="unknown"):
    ao.dot_product_attention(*_qkv(t=8)[:3], causal=True, impl="flash9")


def test_blocked_fallback_is_exact_for_bidirectional():
  q, k, v, _ = _qkv(t=64)
  a = ao.dot_product_attention(q, k, v, causal=False, impl="blocked")
  b = ao.dot_product_attention(q, k, v, causal=False, impl="xla")
  np.testing.assert_array_equal(a, b)


def _tiny(**kw):
  return ModelConfig(
      vocab_size=50,
      d_model=32,
      num_layers=3,
      num_heads=4,
      num_kv_heads=2,
      head_dim=8,
      mlp_dim=64,
      max_seq_len=128,
      **kw,
  )


def test_model_blocked_and_unrolled_match_reference():
  """Whole model: (blocked attention, unrolled scan) == (xla attention, rolled loop), logits
  and parameter gradients, with packed segments."""
  ref_cfg = _tiny(attention_impl="xla", scan_unroll=1)
  fast_cfg = _tiny(attention_impl="blocked", scan_unroll=0)
  assert scan_unroll(ref_cfg) == 1 and scan_unroll(fast_cfg) == 3
  toks = jax.random.randint(jax.random.key(1), (2, 128), 0, 50)
  seg = jnp.asarray(np.repeat([[1] * 64 + [2] * 64], 2, axis=0), jnp.int32)
  pos = jnp.asarray(np.repeat([list(range(64)) * 2], 2, axis=0), jnp.int32)
  params = Transformer(ref_cfg).init(jax.random.key(0), toks)["params"]

  def loss(cfg):
    def f(p):
      logits = Transformer(cfg).apply({"params": p}, toks, positions_BxL=pos, segment_ids_BxL=seg)
      return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

    return jax.jit(jax.value_and_grad(f, has_aux=True))

  (_, logits_r), g_r = loss(ref_cfg)(params)
  (_, logits_f), g_f = loss(fast_cfg)(params)
  np.testing.assert_allclose(logits_f, logits_r, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_r)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_scan_unroll_auto_and_validation():
  on_cpu = jax.default_backend() == "cpu"
  assert scan_unroll(_tiny()) == (3 if on_cpu else 1)
  deep = dataclasses.replace(_tiny(), num_layers=48)
  assert scan_unroll(deep) == 1  # deep stacks keep the loop: compile time flat in depth
  with pytest.raises(ValueError, match="scan_unroll"):
    _tiny(scan_unroll=-2).validate()
