"""Encoder-decoder decoding: the cached step-by-step decoder equals the full forward pass,
beam search with one beam equals greedy, batching changes nothing, bad sources fail clearly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eval.generate import Generator

from eval.seq2seq import Seq2SeqDecoder
from model.config import ModelConfig
from model.transformer import Transformer

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
  with pytest.raises(ValueError, match="arch=encoder_decoder"):
    Seq2SeqDecoder(CFG.replace(arch="decoder"), None, bos_id=BOS, eos_id=EOS)
