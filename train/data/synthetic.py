"""A synthetic language with a known entropy rate: a random order-k Markov source.

`synthetic:markov[:k=v,...]` (keys: order, vocab, docs, doc_len, alpha, seed) generates
documents over `vocab` symbols written as single ASCII characters ('a', 'b', ...), so with
the byte tokenizer one symbol is one token and one byte. Each context (the previous `order`
symbols) has its own next-symbol distribution drawn from Dirichlet(alpha) (all entries > 0,
so the chain is irreducible and aperiodic and has one stationary distribution). Documents
start from the stationary distribution over contexts, so every position is stationary.

Closed form (nats): entropy rate h = sum_s pi(s) H(P(.|s)), pi the stationary distribution over
contexts. Because one symbol is one byte, the floor in bits per byte is h / ln 2 for ANY
lossless tokenizer: the eval harness compares its irreducible-loss estimate against
`floor()["entropy_rate_bits_per_byte"]` (also stored in the prepared manifest).

The entropy rate is not reachable by a model fed packed windows (train/data/pipeline.py):
the first `order` symbols of a piece lack their context (document starts, and pieces
continued across a window cut, whose context sits in the previous window), and the EOS target
costs loss where the model cannot know the remaining length (a continued piece: no BOS, so
its offset in the document is unknown). `reachable_floor(seq_len)` is the expected loss of the
Bayes-optimal predictor that sees exactly what the model sees (the piece's inputs, BOS or
not, positions within the piece), averaged over the targets of the packed stream, in bits per
byte of the scored bytes (EOS: 0 bytes). With the byte tokenizer every document has
doc_len + 1 targets, so the cut pattern repeats every lcm(doc_len + 1, seq_len) targets
whatever the document order; the floor is that period's average. Per target, with c the
symbols of the document visible before it (c < order: only a block's marginal is known):
  symbol:   H(X_{c+1} | X_1..X_c) (stationary blocks; = h for c >= order)
            - log(1 - q(p)) in a continued piece at piece position p
  EOS:      0 after BOS (the position tells the length), -log q(p) in a continued piece
where q(p) = P(EOS at p | no EOS before p) over the continued pieces of the period (the
optimal hazard: the content of a stationary chain carries no information about the offset).
"""

from __future__ import annotations

import dataclasses
import math
import string

import numpy as np

ALPHABET = string.ascii_lowercase + string.ascii_uppercase + string.digits


@dataclasses.dataclass(frozen=True)
class MarkovSpec:
  order: int = 2
  vocab: int = 8
  docs: int = 2000
  doc_len: int = 512
  alpha: float = 0.3
  seed: int = 0

  @classmethod
  def parse(cls, arg: str) -> "MarkovSpec":
    """ "order=2,vocab=16" -> MarkovSpec; unknown keys are an error naming them."""
    kw = {}
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    for item in filter(None, arg.split(",")):
      k, sep, v = item.partition("=")
      if not sep or k not in fields:
        raise ValueError(
            f"synthetic:markov option {item!r}: expected k=v with k in {sorted(fields)}"
        )
      kw[k] = float(v) if k == "alpha" else int(v)
    spec = cls(**kw)
    if not 2 <= spec.vocab <= len(ALPHABET):
      raise ValueError(f"synthetic:markov vocab={spec.vocab} must be in [2, {len(ALPHABET)}]")
    if spec.order < 1 or spec.vocab**spec.order > 2**16:
      raise ValueError(
          f"synthetic:markov order={spec.order} with vocab={spec.vocab} gives "
          f"{spec.vocab**spec.order} contexts; need order >= 1 and <= 65536 contexts"
      )
    if spec.docs < 1 or spec.doc_len < spec.order:
      raise ValueError(f"synthetic:markov needs docs >= 1 and doc_len >= order, got {spec}")
    return spec


class MarkovSource:
  """Transition table P[context, next] with context = base-`vocab` number of the last k symbols."""

  def __init__(self, spec: MarkovSpec):
    self.spec = spec
    rng = np.random.default_rng(spec.seed)
    n_ctx = spec.vocab**spec.order
    self.P = rng.dirichlet(np.full(spec.vocab, spec.alpha), size=n_ctx)
    self.P = np.maximum(self.P, 1e-12)
    self.P /= self.P.sum(1, keepdims=True)
    self.pi = self._stationary()

  def _next_ctx(self, ctx, sym):
    return (ctx * self.spec.vocab) % (self.spec.vocab**self.spec.order) + sym

  def _stationary(self) -> np.ndarray:
    """Power iteration on the context chain (each context has `vocab` successors)."""
    v, n_ctx = self.spec.vocab, self.spec.vocab**self.spec.order
    ctx = np.arange(n_ctx)
    succ = self._next_ctx(ctx[:, None], np.arange(v)[None, :])  # [n_ctx, v]
    pi = np.full(n_ctx, 1.0 / n_ctx)
    for _ in range(10_000):
      new = np.bincount(succ.ravel(), weights=(pi[:, None] * self.P).ravel(), minlength=n_ctx)
      if np.abs(new - pi).sum() < 1e-14:
        pi = new
        break
      pi = new
    return pi / pi.sum()

  def entropy_rate(self) -> float:
    """h in nats per symbol."""
    row_h = -(self.P * np.log(self.P)).sum(1)
    return float((self.pi * row_h).sum())

  def block_conditional_entropies(self) -> np.ndarray:
    """[order + 1] nats: H(X_{c+1} | X_1..X_c) of the stationary chain for c = 0..order."""
    v, k = self.spec.vocab, self.spec.order
    blocks = self.pi.reshape((v,) * k)  # context digits, most significant first
    ent = [0.0]
    for m in range(1, k + 1):
      p = blocks.sum(axis=tuple(range(m, k))).ravel()
      p = p[p > 0]
      ent.append(float(-(p * np.log(p)).sum()))
    return np.array([ent[c + 1] - ent[c] for c in range(k)] + [self.entropy_rate()])

  def reachable_floor(self, seq_len: int) -> dict:
    """The packed-stream floor (see module doc) for windows of `seq_len` targets."""
    n, k = self.spec.doc_len, self.spec.order
    unit, seq_len = n + 1, int(seq_len)
    s = np.arange(math.lcm(unit, seq_len), dtype=np.int64)
    o = s % unit  # pair index within the document
    o0 = np.maximum((s // seq_len) * seq_len - (s - o), 0)  # first pair of the piece
    bos = o0 == 0
    c = np.where(bos, o, o - o0 + 1)  # document symbols visible
    p = o - o0  # position within the piece
    is_eos = o == n
    cont_starts = np.arange(0, len(s), seq_len) % unit
    remaining = n - cont_starts[cont_starts != 0]  # piece position of EOS
    at = np.bincount(remaining, minlength=seq_len).astype(np.float64)
    at_or_after = np.cumsum(at[::-1])[::-1]  # pieces still running at each piece position
    hazard = np.divide(at, at_or_after, out=np.zeros(len(at)), where=at_or_after > 0)[:seq_len]
    h_cond = self.block_conditional_entropies()[np.minimum(c, k)]
    with np.errstate(divide="ignore"):
      cont_sym = -np.log1p(-hazard[np.minimum(p, seq_len - 1)])
      cont_eos = -np.log(hazard[np.minimum(p, seq_len - 1)])
    loss = np.where(is_eos, np.where(bos, 0.0, cont_eos), h_cond + np.where(bos, 0.0, cont_sym))
    nats = float(loss.sum())
    symbols = int((~is_eos).sum())
    return {
        "reachable_floor_bits_per_byte": nats / symbols / math.log(2),
        "reachable_floor_nats_per_target": nats / len(s),
        "reachable_floor_seq_len": seq_len,
    }

  def floor(self) -> dict:
    h = self.entropy_rate()
    return {
        "kind": "markov",
        **dataclasses.asdict(self.spec),
        "entropy_rate_nats_per_symbol": h,
        "entropy_rate_bits_per_byte": h / math.log(2),
        "note": "one symbol = one byte; bits/byte floor holds for any lossless tokenizer",
    }

  def sample(self, n_docs: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """[n_docs, length] int symbols; starts drawn from the stationary context distribution."""
    v, k = self.spec.vocab, self.spec.order
    ctx = rng.choice(len(self.pi), size=n_docs, p=self.pi)
    out = np.empty((n_docs, max(length, k)), np.int64)
    for j in range(k):  # the first k symbols are the digits of the starting context
      out[:, j] = (ctx // v ** (k - 1 - j)) % v
    cdf = np.cumsum(self.P, 1)
    cdf[:, -1] = 1.0
    for t in range(k, length):
      u = rng.random(n_docs)
      sym = (u[:, None] > cdf[ctx]).sum(1)
      out[:, t] = sym
      ctx = self._next_ctx(ctx, sym)
    return out[:, :length]

  def log_prob_per_symbol(self, seq: np.ndarray) -> np.ndarray:
    """-log P(x_t | previous k) for t >= k of a 1-D sequence (for empirical checks)."""
    v, k = self.spec.vocab, self.spec.order
    ctx = np.zeros(len(seq) - k, np.int64)
    for j in range(k):
      ctx = ctx * v + seq[j : len(seq) - k + j]
    return -np.log(self.P[ctx, seq[k:]])

  def documents_text(self):
    """Yields (doc_id, text) deterministically; 256 documents per generation block."""
    s = self.spec
    for start in range(0, s.docs, 256):
      n = min(256, s.docs - start)
      rng = np.random.default_rng([s.seed, 1, start])
      syms = self.sample(n, s.doc_len, rng)
      for i in range(n):
        yield f"{start + i:08d}", "".join(ALPHABET[j] for j in syms[i])
