"""Seq2seq decoding: the cached step-by-step decoder (self-attention keys/values appended per
step, cross-attention keys/values computed once per source) equals the full forward pass,
beam search with one beam equals greedy, batching changes nothing, bad sources fail clearly;
decoder-only models decode "BOS source <sep>" prompts the same way; on a sharded mesh the
eval.generate and eval.translate CLIs decode as one device does."""

import functools
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eval.generate import Generator

from eval.seq2seq import Seq2SeqDecoder
from eval.seq2seq import right_pad
from model.config import ModelConfig
from model.transformer import Transformer
from model.transformer import init_cache

BOS, EOS, PAD = 1, 2, 0
CFG = ModelConfig(
    arch="encoder_decoder",
    vocab_size=24,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
    max_seq_len=16,
    pos_encoding="learned",
    attention_impl="xla",
    init_std=0.3,
)
SOURCES = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 3]]


@pytest.fixture(scope="module")
def decoder():
  params = Transformer(CFG).init(jax.random.PRNGKey(3), jnp.ones((1, 4), jnp.int32))["params"]
  return Seq2SeqDecoder(CFG, params, bos_id=BOS, eos_id=EOS, pad_id=PAD)


def test_cached_greedy_equals_full_forward(decoder):
  out = decoder.decode(SOURCES, beam=1, max_len=7)
  for src, toks, score in zip(SOURCES, out["tokens"], out["scores"]):
    full = toks + [EOS] if len(toks) < 7 else toks
    inputs = jnp.asarray([[BOS] + full[:-1]], jnp.int32)
    logits = decoder.model.apply(
        {"params": decoder.params}, inputs, src_tokens_BxS=jnp.asarray([src], jnp.int32)
    )
    logp = np.asarray(jax.nn.log_softmax(logits[0]))
    assert np.argmax(logp, -1).tolist() == full  # each cached step picked the full-pass argmax
    np.testing.assert_allclose(score, logp[np.arange(len(full)), full].sum(), rtol=1e-4)


def test_beam_one_equals_greedy_and_batching_changes_nothing(decoder):
  greedy = decoder.decode(SOURCES, beam=1, max_len=7)["tokens"]
  assert decoder.decode(SOURCES, beam=1, max_len=7, greedy=False)["tokens"] == greedy
  beam = decoder.decode(SOURCES, beam=4, max_len=7, length_penalty=1.0)
  alone = [decoder.decode([s], beam=4, max_len=7, length_penalty=1.0) for s in SOURCES[:2]]
  assert [a["tokens"][0] for a in alone] == beam["tokens"][:2]
  np.testing.assert_allclose([a["scores"][0] for a in alone], beam["scores"][:2], rtol=1e-4)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_beam_score_is_the_model_score_of_its_output(decoder, scan_layers):
  """Holds only if every step reorders the KV cache with its hypotheses (stacked layers keep
  the batch on axis 1, unrolled ones on axis 0)."""
  if not scan_layers:
    cfg = CFG.replace(scan_layers=False)
    params = Transformer(cfg).init(jax.random.PRNGKey(3), jnp.ones((1, 4), jnp.int32))["params"]
    decoder = Seq2SeqDecoder(cfg, params, bos_id=BOS, eos_id=EOS, pad_id=PAD)
  out = decoder.decode(SOURCES, beam=3, max_len=7, length_penalty=0.5)
  for src, toks, score in zip(SOURCES, out["tokens"], out["scores"]):
    full = toks + [EOS] if len(toks) < 7 else toks
    logits = decoder.model.apply(
        {"params": decoder.params},
        jnp.asarray([[BOS] + full[:-1]], jnp.int32),
        src_tokens_BxS=jnp.asarray([src], jnp.int32),
    )
    logp = np.asarray(jax.nn.log_softmax(logits[0]))[np.arange(len(full)), full].sum()
    np.testing.assert_allclose(score, logp / len(full) ** 0.5, rtol=1e-4)


def _step_logits(cfg, params, cache, tokens_BxL):
  """Feeds tokens one at a time through the cache (no memory passed); [B, L, V] logits."""

  @jax.jit
  def step(params, cache, tok_Bx1, i):
    logits, variables = Transformer(cfg, decode=True).apply(
        {"params": params, "cache": cache},
        tok_Bx1,
        positions_BxL=jnp.full(tok_Bx1.shape, i, jnp.int32),
        mutable=["cache"],
    )
    return logits[:, 0], variables["cache"]

  out = []
  for i in range(tokens_BxL.shape[1]):
    logits, cache = step(params, cache, tokens_BxL[:, i : i + 1], i)
    out.append(logits)
  return jnp.stack(out, 1)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_cross_attention_keys_values_are_computed_once_and_reused(scan_layers):
  cfg = CFG.replace(scan_layers=scan_layers)
  params = Transformer(cfg).init(jax.random.PRNGKey(4), jnp.ones((1, 4), jnp.int32))["params"]
  dec = Seq2SeqDecoder(cfg, params, bos_id=BOS, eos_id=EOS, pad_id=PAD)
  src, seg = (jnp.asarray(a) for a in right_pad(SOURCES, PAD))
  prefill = jax.jit(functools.partial(dec._prefill, max_len=6))  # pylint: disable=protected-access
  cache = prefill(params, src, seg, jnp.zeros_like(seg))
  names = {str(p[-1].key) for p, _ in jax.tree_util.tree_flatten_with_path(cache)[0]}
  assert {"cross_key", "cross_value", "cross_segment"} <= names
  tgt = jnp.asarray([[BOS, 5, 9, 4, 7, 3]] * len(SOURCES), jnp.int32)
  forward = jax.jit(
      lambda p: Transformer(cfg).apply(
          {"params": p}, tgt, src_tokens_BxS=src, src_segment_ids_BxS=seg
      )
  )
  full = forward(params)
  cached = _step_logits(cfg, params, cache, tgt)
  np.testing.assert_allclose(cached, full, atol=1e-5, rtol=1e-5)

  # The steps read the stored keys/values: without the cross-attention key/value weights
  # they still give the same logits (a step that re-projected the memory would not).
  def drop_cross_kv(path, x):
    keys = [str(getattr(p, "key", "")) for p in path]
    return jnp.zeros_like(x) if "cross_attn" in keys and {"key", "value"} & set(keys) else x

  no_kv = jax.tree_util.tree_map_with_path(drop_cross_kv, params)
  assert not np.allclose(forward(no_kv), full)
  np.testing.assert_allclose(_step_logits(cfg, no_kv, cache, tgt), cached, atol=1e-6)


def test_a_step_without_memory_or_cached_memory_fails_clearly(decoder):
  params = decoder.params
  with pytest.raises(ValueError, match="no cached memory: pass memory_BxSxD"):
    Transformer(CFG, decode=True).apply(
        {"params": params, "cache": init_cache(CFG, 1, 4)},
        jnp.ones((1, 1), jnp.int32),
        positions_BxL=jnp.zeros((1, 1), jnp.int32),
        mutable=["cache"],
    )


def test_bad_sources_and_flags(decoder):
  with pytest.raises(ValueError, match="source 1 is empty"):
    decoder.decode([[5], []])
  with pytest.raises(ValueError, match="position table"):
    decoder.decode([list(range(3, 20))])
  with pytest.raises(ValueError, match="--beam"):
    decoder.decode([[5]], beam=0)


def test_decoder_only_generation_points_to_the_seq2seq_tools():

  with pytest.raises(ValueError, match="eval.translate"):
    Generator(CFG, None)
  with pytest.raises(ValueError, match="arch=encoder_decoder or a causal decoder"):
    Seq2SeqDecoder(CFG.replace(arch="encoder"), None, bos_id=BOS, eos_id=EOS)


LM_CFG = CFG.replace(arch="decoder", max_seq_len=24)
LM_SOURCES = [s + [EOS] for s in SOURCES]  # source tokens + the separator


def _lm_logp(params, prompt, continuation):
  """Log-probs of `continuation` after `prompt` from one full (uncached) forward pass."""
  seq = prompt + continuation
  logits = Transformer(LM_CFG).apply({"params": params}, jnp.asarray([seq[:-1]], jnp.int32))
  logp = np.asarray(jax.nn.log_softmax(logits[0]))[len(prompt) - 1 :]
  return logp, logp[np.arange(len(continuation)), continuation]


@pytest.mark.parametrize("beam", [1, 3])
def test_decoder_only_decoding_equals_the_full_forward(beam):
  """Prompt BOS + source + separator, left-padded in a batch: greedy picks the full-pass
  argmax at every step and beam scores are the full-pass scores of their outputs."""
  params = Transformer(LM_CFG).init(jax.random.PRNGKey(5), jnp.ones((1, 4), jnp.int32))
  dec = Seq2SeqDecoder(LM_CFG, params["params"], bos_id=BOS, eos_id=EOS, pad_id=PAD)
  out = dec.decode(LM_SOURCES, beam=beam, max_len=6, length_penalty=0.5, width=8)
  for src, toks, score in zip(LM_SOURCES, out["tokens"], out["scores"]):
    full = toks + [EOS] if len(toks) < 6 else toks
    logp, picked = _lm_logp(params["params"], [BOS] + src, full)
    if beam == 1:
      assert np.argmax(logp, -1).tolist() == full
      np.testing.assert_allclose(score, picked.sum(), rtol=1e-4)
    else:
      np.testing.assert_allclose(score, picked.sum() / len(full) ** 0.5, rtol=1e-4)
  alone = dec.decode(LM_SOURCES[1:2], beam=beam, max_len=6, length_penalty=0.5)
  assert alone["tokens"][0] == out["tokens"][1]


def test_generate_and_translate_on_a_sharded_mesh_match_one_device(tmp_path):
  """8 CPU devices as a 2x2x2 mesh (the batch split 4 ways, params over fsdp and tensor): the
  eval.generate and eval.translate CLIs decode 3 rows, not a multiple of 4, and give the
  tokens of a one-device decode (tests/workers/decode_mesh.py)."""
  repo = pathlib.Path(__file__).resolve().parents[1]
  env = dict(
      os.environ,
      XLA_FLAGS="--xla_force_host_platform_device_count=8",
      JAX_PLATFORMS="cpu",
      PYTHONPATH=str(repo),
  )
  worker = repo / "tests" / "workers" / "decode_mesh.py"
  out = subprocess.run(
      [sys.executable, str(worker), str(tmp_path)],
      cwd=repo,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "OK" in out.stdout
