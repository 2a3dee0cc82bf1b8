"""Decoding for encoder-decoder models: greedy and beam search, batched and jitted.

The source is encoded once ([B, S] -> memory [B, S, D]); the decoder then runs one token per
step with its self-attention keys/values in the KV cache (model/attention.py) and
cross-attends to the memory. Sources of different lengths are right-padded with segment id 0,
which the cross-attention mask hides. Every hypothesis starts from BOS at position 0.

Beam search follows fairseq: at each step the 2K best continuations of the K live hypotheses
are ranked; those that end in EOS among the first K ranks are finished with score
log p / length^length_penalty (length counts EOS); the K best that do not end in EOS stay
alive. A sentence is done when K hypotheses have finished; at `max_len` the live ones finish
too. With K = 1 this is exactly greedy search (tested).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from model.config import ModelConfig
from model.transformer import Transformer
from model.transformer import init_cache

NEG_INF = -1e9  # finite: top_k and argsort stay well defined on dead hypotheses


def right_pad(sources: Sequence[Sequence[int]], pad_id: int, width: int = 0):
  """[B, S] tokens and segment ids (1 on tokens, 0 on padding) for a list of sources; S is
  the longest source, or `width` if that is more."""
  if not sources:
    raise ValueError("no sources to decode")
  for i, s in enumerate(sources):
    if len(s) == 0:
      raise ValueError(f"source {i} is empty; an encoder-decoder needs at least one source token")
  width = max(width, max(len(s) for s in sources))
  tokens = np.full((len(sources), width), pad_id, np.int32)
  seg = np.zeros((len(sources), width), np.int32)
  for r, s in enumerate(sources):
    tokens[r, : len(s)], seg[r, : len(s)] = s, 1
  return tokens, seg


def _gather_beams(tree, flat_idx_N, batch_axis: int):
  """Reorders the batch rows of every cache array (cache_index has no batch axis)."""

  def take(x):
    return x if x.ndim <= batch_axis else jnp.take(x, flat_idx_N, axis=batch_axis)

  return jax.tree.map(take, tree)


class Seq2SeqDecoder:
  """Jitted greedy/beam decoding for one encoder-decoder model and its params; compiled
  functions are cached per (batch, source width, beam, max_len, length penalty)."""

  def __init__(self, model_cfg, params: Any, *, bos_id: int, eos_id: int, pad_id: int = 0):

    self.cfg = ModelConfig.from_config(model_cfg)
    if self.cfg.arch != "encoder_decoder":
      raise ValueError(
          f"seq2seq decoding needs model.arch=encoder_decoder, not {self.cfg.arch!r} "
          "(use eval.generate for decoder-only models)"
      )
    self.model = Transformer(self.cfg)
    self.step_model = Transformer(self.cfg, decode=True)
    self.params, self.bos, self.eos, self.pad = params, int(bos_id), int(eos_id), int(pad_id)
    self._compiled = {}

  def max_len_for(self, requested: int) -> int:
    """Target tokens a hypothesis may have (EOS included); a learned table caps it."""
    if requested < 1:
      raise ValueError(f"max_len must be >= 1, got {requested}")
    if self.cfg.pos_encoding == "learned":
      return min(requested, self.cfg.max_seq_len)
    return requested

  def decode(
      self,
      sources: Sequence[Sequence[int]],
      *,
      beam: int = 1,
      max_len: int = 128,
      length_penalty: float = 1.0,
      greedy: bool | None = None,
      width: int = 0,
  ) -> dict:
    """{'tokens': [row token lists, EOS removed], 'scores': [B] float}. `greedy` (default:
    beam == 1) runs the plain argmax loop; otherwise beam search with `beam` hypotheses.
    Greedy scores are summed log-probabilities (EOS included). `width`: pad the sources to
    at least this many tokens (fewer distinct shapes to compile)."""
    if beam < 1:
      raise ValueError(f"--beam must be >= 1, got {beam}")
    src, seg = right_pad(sources, self.pad, width)
    longest = max(map(len, sources))
    if self.cfg.pos_encoding == "learned" and longest > self.cfg.max_seq_len:
      raise ValueError(
          f"a source has {longest} tokens, more than the position table "
          f"(model.max_seq_len={self.cfg.max_seq_len}); shorten it"
      )
    greedy = beam == 1 if greedy is None else greedy
    max_len = self.max_len_for(max_len)
    key = (src.shape, greedy, beam, max_len, float(length_penalty))
    if key not in self._compiled:
      fn = (
          self._greedy if greedy else functools.partial(self._beam, beam=beam, alpha=length_penalty)
      )
      self._compiled[key] = jax.jit(functools.partial(fn, max_len=max_len))
    seqs, scores = self._compiled[key](self.params, jnp.asarray(src), jnp.asarray(seg))
    rows = []
    for row in np.asarray(seqs).tolist():
      rows.append(row[: row.index(self.eos)] if self.eos in row else row)
    return {"tokens": rows, "scores": np.asarray(scores)}

  # ---- pieces traced inside jit

  def _encode(self, params, src_BxS, seg_BxS):

    return self.model.apply(
        {"params": params}, src_BxS, src_segment_ids_BxS=seg_BxS, method=Transformer.encode
    )

  def _step(self, params, cache, tok_N, i, memory_NxSxD, seg_NxS):
    """Log-probs [N, V] of the next token after `tok_N` at position i, and the new cache."""
    logits, variables = self.step_model.apply(
        {"params": params, "cache": cache},
        tok_N[:, None],
        positions_BxL=jnp.full((tok_N.shape[0], 1), i, jnp.int32),
        memory_BxSxD=memory_NxSxD,
        src_segment_ids_BxS=seg_NxS,
        mutable=["cache"],
    )
    return jax.nn.log_softmax(logits[:, -1].astype(jnp.float32)), variables["cache"]

  def _greedy(self, params, src_BxS, seg_BxS, *, max_len):

    b = src_BxS.shape[0]
    memory = self._encode(params, src_BxS, seg_BxS)
    out = jnp.full((b, max_len + 1), self.pad, jnp.int32).at[:, 0].set(self.bos)

    def cond(state):
      i, _, _, done, _ = state
      return (i < max_len) & ~jnp.all(done)

    def body(state):
      i, out, cache, done, score = state
      logp_BxV, cache = self._step(params, cache, out[:, i], i, memory, seg_BxS)
      tok = jnp.argmax(logp_BxV, axis=-1).astype(jnp.int32)
      tok = jnp.where(done, self.pad, tok)
      score = score + jnp.where(done, 0.0, jnp.take_along_axis(logp_BxV, tok[:, None], 1)[:, 0])
      return i + 1, out.at[:, i + 1].set(tok), cache, done | (tok == self.eos), score

    state = (0, out, init_cache(self.cfg, b, max_len), jnp.zeros(b, bool), jnp.zeros(b))
    _, out, _, _, score = jax.lax.while_loop(cond, body, state)
    return out[:, 1:], score

  def _beam(self, params, src_BxS, seg_BxS, *, beam, alpha, max_len):

    b, k = src_BxS.shape[0], beam
    memory = jnp.repeat(self._encode(params, src_BxS, seg_BxS), k, axis=0)
    seg_N = jnp.repeat(seg_BxS, k, axis=0)
    seqs = jnp.full((b, k, max_len + 1), self.pad, jnp.int32).at[:, :, 0].set(self.bos)
    alive_lp = jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (k - 1)), (b, 1))
    fin = (jnp.full_like(seqs, self.pad), jnp.full((b, k), NEG_INF), jnp.zeros((b, k), bool))
    state = (0, seqs, alive_lp, init_cache(self.cfg, b * k, max_len), fin)

    def cond(state):
      i, fin_flag = state[0], state[4][2]
      return (i < max_len) & ~jnp.all(fin_flag.sum(-1) >= k)

    def body(state):
      i, seqs, alive_lp, cache, fin = state
      logp_NxV, cache = self._step(params, cache, seqs[:, :, i].reshape(-1), i, memory, seg_N)
      v = logp_NxV.shape[-1]
      cand_BxKV = (alive_lp[:, :, None] + logp_NxV.reshape(b, k, v)).reshape(b, k * v)
      top_lp, top_idx = jax.lax.top_k(cand_BxKV, 2 * k)
      origin, tok = top_idx // v, (top_idx % v).astype(jnp.int32)
      cand = jnp.take_along_axis(seqs, origin[:, :, None], axis=1).at[:, :, i + 1].set(tok)
      is_eos = tok == self.eos
      row_done = fin[2].sum(-1) >= k
      new_fin = is_eos[:, :k] & ~row_done[:, None] & (top_lp[:, :k] > NEG_INF / 2)
      fin = _merge_finished(fin, (cand[:, :k], top_lp[:, :k] / (i + 1.0) ** alpha, new_fin), k)
      alive_lp, sel = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_lp), k)
      seqs = jnp.take_along_axis(cand, sel[:, :, None], axis=1)
      flat = (jnp.arange(b)[:, None] * k + jnp.take_along_axis(origin, sel, axis=1)).reshape(-1)
      cache = _gather_beams(cache, flat, 1 if self.cfg.scan_layers else 0)
      return i + 1, seqs, alive_lp, cache, fin

    i, seqs, alive_lp, _, fin = jax.lax.while_loop(cond, body, state)
    # Sentences still open at max_len finish with their live hypotheses.
    open_ = ~(fin[2].sum(-1) >= k)[:, None] & (alive_lp > NEG_INF / 2)
    fin = _merge_finished(fin, (seqs, alive_lp / jnp.maximum(i, 1.0) ** alpha, open_), k)
    best = jnp.argmax(jnp.where(fin[2], fin[1], 2 * NEG_INF), axis=-1)
    out = jnp.take_along_axis(fin[0], best[:, None, None], axis=1)[:, 0, 1:]
    return out, jnp.take_along_axis(fin[1], best[:, None], axis=1)[:, 0]


def _merge_finished(fin, new, k: int):
  """Keeps K finished hypotheses per sentence: the earlier ones first, then the new ones in
  rank order (a sentence stops once K have finished, as in fairseq)."""
  seqs = jnp.concatenate([fin[0], new[0]], axis=1)
  scores = jnp.concatenate([fin[1], new[1]], axis=1)
  flags = jnp.concatenate([fin[2], new[2]], axis=1)
  order = jnp.argsort(~flags, axis=1, stable=True)[:, :k]
  return (
      jnp.take_along_axis(seqs, order[:, :, None], axis=1),
      jnp.where(
          jnp.take_along_axis(flags, order, axis=1),
          jnp.take_along_axis(scores, order, axis=1),
          NEG_INF,
      ),
      jnp.take_along_axis(flags, order, axis=1),
  )


# ----------------------------------------------------------------------------- from a run

WIDTH_BUCKET = 16  # sources are padded to a multiple of this, so few shapes compile


def decode_texts(
    run,
    sources: Sequence[str],
    *,
    beam: int,
    length_penalty: float = 1.0,
    max_len: int = 128,
    batch_size: int = 64,
) -> list[str]:
  """Decodes every source text with a trained run (train.run.load_run); the outputs in input
  order. Sources are encoded as in training (tokens + EOS) and batched by length, each batch
  padded to `batch_size` rows and a multiple of WIDTH_BUCKET columns."""
  tok = run.tokenizer
  dec = Seq2SeqDecoder(
      run.config.model, run.params, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id
  )
  ids = []
  for i, text in enumerate(sources):
    if not text.strip():
      raise ValueError(f"source line {i + 1} is empty; an encoder-decoder needs a source")
    ids.append(tok.encode(text) + [tok.eos_id])
  batch_size = max(1, min(batch_size, len(ids)))
  order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
  out = [""] * len(ids)
  for start in range(0, len(order), batch_size):
    rows = order[start : start + batch_size]
    batch = [ids[i] for i in rows]
    width = -(-max(map(len, batch)) // WIDTH_BUCKET) * WIDTH_BUCKET
    filler = [batch[-1]] * (batch_size - len(batch))  # same shape for every batch
    res = dec.decode(
        batch + filler, beam=beam, max_len=max_len, length_penalty=length_penalty, width=width
    )
    for i, toks in zip(rows, res["tokens"]):
      out[i] = tok.decode(toks)
  return out
