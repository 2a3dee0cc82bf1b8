"""The synthetic Markov source: its closed-form entropy rate matches what samples show."""

import math

import numpy as np
import pytest

from train.data import sources
from train.data import synthetic


def test_stationary_distribution_is_a_fixed_point():
  src = synthetic.MarkovSource(synthetic.MarkovSpec(order=2, vocab=5, alpha=0.5, seed=3))
  v, n = 5, 25
  nxt = np.zeros(n)
  for ctx in range(n):
    for x in range(v):
      nxt[(ctx * v) % n + x] += src.pi[ctx] * src.P[ctx, x]
  np.testing.assert_allclose(nxt, src.pi, atol=1e-12)
  assert abs(src.pi.sum() - 1) < 1e-12


@pytest.mark.parametrize("order,vocab,alpha", [(1, 4, 1.0), (2, 8, 0.3), (3, 3, 0.2)])
def test_entropy_rate_matches_samples(order, vocab, alpha):
  src = synthetic.MarkovSource(synthetic.MarkovSpec(order=order, vocab=vocab, alpha=alpha, seed=0))
  h = src.entropy_rate()
  # Uniform transitions would give log(vocab); Dirichlet rows are strictly below it.
  assert 0 < h < math.log(vocab)
  seqs = src.sample(200, 1000, np.random.default_rng(1))
  nll = np.concatenate([src.log_prob_per_symbol(s) for s in seqs])
  se = nll.std() / math.sqrt(len(nll))
  assert abs(nll.mean() - h) < 5 * se + 1e-3, (nll.mean(), h, se)
  # A model-free plug-in estimate from counts agrees too (bias ~ #params / 2N).
  n_ctx = vocab**order
  ctx = np.zeros((seqs.shape[0], seqs.shape[1] - order), np.int64)
  for j in range(order):
    ctx = ctx * vocab + seqs[:, j:seqs.shape[1] - order + j]
  counts = np.bincount((ctx * vocab + seqs[:, order:]).ravel(), minlength=n_ctx * vocab)
  counts = counts.reshape(n_ctx, vocab).astype(float)
  p_joint = counts / counts.sum()
  p_cond = counts / np.maximum(counts.sum(1, keepdims=True), 1)
  plug_in = -(p_joint[counts > 0] * np.log(p_cond[counts > 0])).sum()
  assert abs(plug_in - h) < 0.01 + n_ctx * vocab / (2 * counts.sum())


def test_source_documents_and_floor():
  src = sources.open_source("synthetic:markov:order=1,vocab=6,docs=10,doc_len=50,seed=2")
  docs = list(src.documents())
  assert len(docs) == 10 and all(len(d.text()) == 50 for d in docs)
  assert set("".join(d.text() for d in docs)) <= set("abcdef")
  assert [d.text() for d in src.documents()] == [d.text() for d in docs]  # deterministic
  floor = src.info["synthetic"]
  assert floor["entropy_rate_bits_per_byte"] == pytest.approx(
      floor["entropy_rate_nats_per_symbol"] / math.log(2))


@pytest.mark.parametrize("arg,match", [("vocab=100", "vocab"), ("colour=3", "colour"),
                                       ("order=0", "order")])
def test_bad_options(arg, match):
  with pytest.raises(ValueError, match=match):
    sources.open_source(f"synthetic:markov:{arg}")
