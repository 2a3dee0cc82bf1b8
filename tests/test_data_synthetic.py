"""The synthetic Markov source: its closed-form entropy rate matches what samples show."""

import itertools
import math

import numpy as np
import pytest

from train.data import pipeline
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
    ctx = ctx * vocab + seqs[:, j : seqs.shape[1] - order + j]
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
      floor["entropy_rate_nats_per_symbol"] / math.log(2)
  )


@pytest.mark.parametrize(
    "arg,match", [("vocab=100", "vocab"), ("colour=3", "colour"), ("order=0", "order")]
)
def test_bad_options(arg, match):
  with pytest.raises(ValueError, match=match):
    sources.open_source(f"synthetic:markov:{arg}")


class _LayoutOnly:
  """A split store of `docs` equal-length documents: enough for Packer's window layout."""

  def __init__(self, docs, doc_len):
    self.lengths = np.full(docs, doc_len, np.int64)


def _exact_packed_floor_bpb(src, seq_len) -> float:
  """Brute force: over one period of the packed stream (layout from the real Packer) and
  every possible document, the joint law of (what the model sees, target); the Bayes-optimal
  loss is its conditional entropy. Observations: BOS or not, and the piece's inputs so far
  (positions follow from their count)."""

  n, k, v = src.spec.doc_len, src.spec.order, src.spec.vocab
  unit = n + 1
  period = math.lcm(unit, seq_len)
  packer = pipeline.Packer(
      _LayoutOnly(period // unit, n),
      np.arange(period // unit),
      seq_len,
      type("Tok", (), dict(bos_id=-1, eos_id=-2, pad_id=-3))(),
  )
  docs = []
  for x in itertools.product(range(v), repeat=n):
    ctx = 0
    for sym in x[:k]:
      ctx = ctx * v + sym
    prob = src.pi[ctx]
    for sym in x[k:]:
      prob *= src.P[ctx, sym]
      ctx = (ctx * v) % v**k + sym
    docs.append((x, prob))
  joint, symbols = {}, 0
  for _, _, _, o0, o1 in packer._pieces(np.arange(period // seq_len)):
    for o in range(o0, o1):
      symbols += o < n
      for x, prob in docs:
        ext = ("BOS",) + x + ("EOS",)  # ext[j + 1] is the document's ext[j]
        obs = (o0 == 0, ext[o0 : o + 1])
        row = joint.setdefault(obs, {})
        row[ext[o + 1]] = row.get(ext[o + 1], 0.0) + prob
  nats = 0.0
  for row in joint.values():
    total = sum(row.values())
    nats -= sum(p * math.log(p / total) for p in row.values() if p > 0)
  return nats / symbols / math.log(2)


@pytest.mark.parametrize(
    "order,vocab,doc_len,seq_len", [(1, 2, 3, 3), (2, 3, 4, 3), (1, 3, 4, 7), (2, 2, 5, 4)]
)
def test_reachable_floor_matches_exact_enumeration(order, vocab, doc_len, seq_len):
  src = synthetic.MarkovSource(
      synthetic.MarkovSpec(order=order, vocab=vocab, doc_len=doc_len, alpha=0.7, seed=4)
  )
  got = src.reachable_floor(seq_len)["reachable_floor_bits_per_byte"]
  assert got == pytest.approx(_exact_packed_floor_bpb(src, seq_len), rel=1e-9)
  assert got > src.entropy_rate() / math.log(2)


def test_reachable_floor_approaches_the_entropy_rate_for_long_windows():
  src = synthetic.MarkovSource(synthetic.MarkovSpec())
  rate = src.floor()["entropy_rate_bits_per_byte"]
  floors = [src.reachable_floor(n)["reachable_floor_bits_per_byte"] for n in (32, 128, 1024)]
  assert floors[0] > floors[1] > floors[2] > rate
  assert floors[1] / rate - 1 > 0.003  # packing costs more than rounding error at seq 128
