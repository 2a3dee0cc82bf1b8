"""Generation: KV-cached decoding reproduces the full forward pass, sampling filters do what
they say, stop tokens and seeds behave."""

import dataclasses
import io

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eval import generate as gen
from model.config import ModelConfig
from model.transformer import Transformer
from model.transformer import init_cache

PE = ["rope", "learned", "sinusoidal"]


def _model(pos_encoding, max_seq_len=40, **kw):
  # init_std 0.3: logits of order 1-10, so near-ties do not make the checks vacuous.
  cfg = ModelConfig(
      vocab_size=50,
      d_model=32,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=8,
      mlp_dim=64,
      max_seq_len=max_seq_len,
      pos_encoding=pos_encoding,
      init_std=0.3,
      **kw,
  )
  params = nn.unbox(
      Transformer(cfg).init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"]
  )
  return cfg, params


def _full_logits(cfg, params, tokens):
  return np.asarray(Transformer(cfg).apply({"params": params}, jnp.asarray([tokens]))[0])


@pytest.mark.parametrize("pos_encoding", PE)
def test_cached_decoding_matches_full_forward_every_position(pos_encoding):
  """Left-padded batch of prompts of different lengths, greedy: the logits each new token was
  drawn from equal the unpadded full forward pass at that position, and feeding the whole
  sequence through the cache one token at a time reproduces every position's logits."""
  cfg, params = _model(pos_encoding)
  g = gen.Generator(cfg, params, pad_id=0)
  prompts = [[1, 2, 3, 4, 5, 6], [7, 8], [9]]
  n = 8
  out = g.generate(
      prompts, gen.SamplingConfig(max_new_tokens=n, temperature=0.0), return_logits=True
  )
  for r, p in enumerate(prompts):
    assert len(out["tokens"][r]) == n
    full = _full_logits(cfg, params, p + out["tokens"][r])
    np.testing.assert_allclose(out["logits"][r], full[len(p) - 1 : len(p) - 1 + n], atol=1e-4)
    assert out["tokens"][r] == np.argmax(full[len(p) - 1 : len(p) - 1 + n], -1).tolist()

  # Every position, prompt included: prefill 3 tokens, then one token per call.
  tokens = np.array([[5, 9, 3, 17, 2, 41, 8, 8, 30]], np.int32)
  full = _full_logits(cfg, params, tokens[0])
  step = jax.jit(g._apply)
  cache = init_cache(g.cfg, 1, tokens.shape[1])
  got = []
  for lo, hi in [(0, 3)] + [(i, i + 1) for i in range(3, tokens.shape[1])]:
    pos = jnp.arange(lo, hi)[None]
    logits, cache = step(params, cache, jnp.asarray(tokens[:, lo:hi]), pos, jnp.ones_like(pos))
    got.append(np.asarray(logits[0]))
  np.testing.assert_allclose(np.concatenate(got), full, atol=1e-4)


def test_filter_logits_top_k_and_top_p():
  logits = jnp.log(jnp.array([[0.1, 0.5, 0.3, 0.1]]))
  finite = lambda x: np.isfinite(np.asarray(x))[0].tolist()
  assert finite(gen.filter_logits(logits, top_k=2)) == [False, True, True, False]
  assert finite(gen.filter_logits(logits, top_k=1)) == [False, True, False, False]
  # Nucleus: smallest set whose mass reaches p (0.5 -> {1}; 0.75 -> {1, 2}; 0.85 -> ties kept).
  assert finite(gen.filter_logits(logits, top_p=0.5)) == [False, True, False, False]
  assert finite(gen.filter_logits(logits, top_p=0.75)) == [False, True, True, False]
  assert finite(gen.filter_logits(logits, top_p=0.85)) == [True, True, True, True]
  assert finite(gen.filter_logits(logits)) == [True] * 4
  kept = np.asarray(gen.filter_logits(logits, top_k=3, top_p=0.5))
  np.testing.assert_allclose(kept[0, 1], np.log(0.5), rtol=1e-6)  # kept logits unchanged


def test_top_p_applies_to_the_tempered_distribution():
  """probs (0.6, 0.3, 0.1) at temperature 0.5 become (0.78, 0.20, 0.02): the 0.7 nucleus of
  the tempered distribution is token 0 alone, while the raw distribution's holds 0 and 1
  (token 1 would then be drawn ~20% of the time)."""
  row = jnp.log(jnp.asarray([0.6, 0.3, 0.1], jnp.float32))[None].repeat(4000, 0)
  draws = np.asarray(gen.sample_tokens(row, jax.random.key(0), temperature=0.5, top_p=0.7))
  assert np.bincount(draws, minlength=3).tolist() == [4000, 0, 0]
  # A nucleus wide enough for two tokens samples them in their tempered ratio (0.8 : 0.2).
  draws = np.asarray(gen.sample_tokens(row, jax.random.key(0), temperature=0.5, top_p=0.9))
  np.testing.assert_allclose(np.bincount(draws, minlength=3) / 4000, [0.8, 0.2, 0.0], atol=0.025)


def test_sampling_edge_cases_and_distribution():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(64, 30)) * 3, jnp.float32)
  greedy = np.asarray(gen.sample_tokens(logits, None, temperature=0.0))
  assert greedy.tolist() == np.argmax(np.asarray(logits), -1).tolist()
  for key in jax.random.split(jax.random.key(0), 3):
    k1 = gen.sample_tokens(logits, key, temperature=1.5, top_k=1)
    tiny_p = gen.sample_tokens(logits, key, temperature=1.5, top_p=1e-6)
    assert np.asarray(k1).tolist() == greedy.tolist()
    assert np.asarray(tiny_p).tolist() == greedy.tolist()
  # Plain temperature sampling follows softmax(logits / T).
  probs = np.array([0.6, 0.3, 0.1])
  row = jnp.log(jnp.asarray(probs, jnp.float32))[None].repeat(20000, 0)
  draws = np.asarray(gen.sample_tokens(row, jax.random.key(1), temperature=1.0))
  np.testing.assert_allclose(np.bincount(draws, minlength=3) / 20000, probs, atol=0.015)
  sharp = np.asarray(gen.sample_tokens(row, jax.random.key(1), temperature=0.5))
  expected = probs**2 / (probs**2).sum()
  np.testing.assert_allclose(np.bincount(sharp, minlength=3) / 20000, expected, atol=0.015)
  with pytest.raises(ValueError, match="temperature"):
    gen.SamplingConfig(temperature=-1.0).validate()
  with pytest.raises(ValueError, match="top_p"):
    gen.SamplingConfig(top_p=0.0).validate()


def test_generator_stop_tokens_seeds_and_top_k_one():
  cfg, params = _model("rope")
  g = gen.Generator(cfg, params, pad_id=0)
  prompts = [[3, 4, 5], [6], [7, 8]]
  greedy = g.generate(prompts, gen.SamplingConfig(max_new_tokens=6, temperature=0.0))
  k1 = g.generate(prompts, gen.SamplingConfig(max_new_tokens=6, temperature=2.0, top_k=1), seed=5)
  assert k1["tokens"] == greedy["tokens"]
  # Stop on row 0's third greedy token (unless an earlier token of that row is the same).
  stop = greedy["tokens"][0][2]
  out = g.generate(prompts, gen.SamplingConfig(max_new_tokens=6, temperature=0.0, stop_ids=(stop,)))
  for r, row in enumerate(greedy["tokens"]):
    cut = row.index(stop) + 1 if stop in row else len(row)
    assert out["tokens"][r] == row[:cut]
    assert bool(out["stopped"][r]) == (stop in row)
  assert len(out["tokens"][0]) <= 3
  # Seeds: reproducible, and different seeds give different samples.
  sc = gen.SamplingConfig(max_new_tokens=12, temperature=1.0)
  a = g.generate([[1]] * 4, sc, seed=0)["tokens"]
  assert a == g.generate([[1]] * 4, sc, seed=0)["tokens"]
  assert a != g.generate([[1]] * 4, sc, seed=1)["tokens"]
  assert len({tuple(r) for r in a}) > 1  # samples in one batch differ


def test_learned_positions_slide_past_the_table():
  """A 12-row learned table, prompts of 5, 2 and 15 tokens (the last longer than the table),
  20 new tokens each: every token is drawn from the logits of a fresh forward pass over the
  last 12 tokens of its row (the window), in the cached phase and in the sliding phase."""
  table, n = 12, 20
  cfg, params = _model("learned", max_seq_len=table)
  g = gen.Generator(cfg, params, pad_id=0)
  prompts = [[1, 2, 3, 4, 5], [7, 8], list(range(10, 25))]
  out = g.generate(
      prompts, gen.SamplingConfig(max_new_tokens=n, temperature=0.0), return_logits=True
  )
  forward = lambda rows: np.asarray(Transformer(cfg).apply({"params": params}, jnp.asarray(rows)))
  got, want, windows = [], [], []
  # A window shorter than the table is a prefix of the row's first `table` tokens (causal).
  prefix_logits = forward([(p[-table:] + out["tokens"][r])[:table] for r, p in enumerate(prompts)])
  for r, p in enumerate(prompts):
    seq = p + out["tokens"][r]
    assert len(out["tokens"][r]) == n > table
    for i in range(n):
      window = seq[: len(p) + i][-table:]
      got.append(out["logits"][r, i])
      want.append(prefix_logits[r, len(window) - 1] if len(window) < table else None)
      if len(window) == table:
        windows.append(window)
  assert len(windows) > 2 * n  # most steps slide
  slid = iter(forward(windows)[:, -1])
  want = [next(slid) if w is None else w for w in want]
  np.testing.assert_allclose(np.stack(got), np.stack(want), atol=1e-4)
  assert [t for row in out["tokens"] for t in row] == np.argmax(want, -1).tolist()
  assert "slides" in g.context_note(5, n) and g.context_note(5, table - 4) is None


def test_unbounded_positions_continue_past_max_seq_len():
  """Without a position table (RoPE here) decoding simply continues with the cache: the
  logits equal the full forward pass over the whole sequence, longer than max_seq_len."""
  cfg, params = _model("rope", max_seq_len=8)
  g = gen.Generator(cfg, params, pad_id=0)
  prompts = [[1, 2, 3], [4]]
  n = 12
  out = g.generate(
      prompts, gen.SamplingConfig(max_new_tokens=n, temperature=0.0), return_logits=True
  )
  for r, p in enumerate(prompts):
    full = _full_logits(cfg, params, p + out["tokens"][r])
    np.testing.assert_allclose(out["logits"][r], full[len(p) - 1 : len(p) - 1 + n], atol=1e-4)
  for pe in ["rope", "sinusoidal", "none"]:
    note = gen.Generator(dataclasses.replace(cfg, pos_encoding=pe), None).context_note(3, n)
    assert "max_seq_len=8" in note and pe in note and "continue" in note


def test_learned_positions_streaming():
  cfg, params = _model("learned")
  g = gen.Generator(cfg, params, pad_id=0)
  seen = []
  out = g.generate(
      [[1, 2], [3]],
      gen.SamplingConfig(max_new_tokens=5, temperature=0.0),
      stream=lambda step, tok, done: seen.append((int(step), np.asarray(tok))),
  )
  assert [s for s, _ in seen] == list(range(5))
  assert np.stack([t for _, t in seen], 1).tolist() == out["tokens"]


class _Bytes:

  def decode(self, ids):
    return bytes(ids).decode("utf-8", errors="replace")


def test_text_streamer_waits_for_whole_utf8_characters():
  buf = io.StringIO()
  s = gen.TextStreamer(_Bytes(), 1, out=buf, stop_ids=(255,))
  for step, b in enumerate("hé!".encode()):
    s(step, np.array([b]), np.array([False]))
    if b == 0xC3:  # first byte of 'é': nothing new is shown yet
      assert buf.getvalue() == "h"
  s(9, np.array([255]), np.array([False]))  # a stop token is not printed
  assert buf.getvalue() == "hé!"
