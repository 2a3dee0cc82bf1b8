"""Decoding for sequence-to-sequence runs: greedy and beam search, batched and jitted.

Encoder-decoder: the source is encoded once ([B, S] -> memory [B, S, D]) and a first
decoding call with no target tokens stores every decoder layer's cross-attention keys/values
in the cache (model/attention.py); each step then feeds one token, appends its self-attention
keys/values to the cache and reads the stored cross-attention ones. Sources of different
lengths are right-padded with segment id 0, which the cross-attention mask hides. Every
hypothesis starts from BOS at position 0.

Decoder-only runs trained on "source <sep> target" rows (train/data/parallel.py, the
separator is EOS): the prompt BOS + source is left-padded (segment 0 on padding, positions
counted per row) and run through the KV cache once, all but its last token; the separator is
then the first token fed to the same step loop, at each row's own position.

Beam search follows fairseq: at each step the 2K best continuations of the K live hypotheses
are ranked; those that end in EOS among the first K ranks are finished with score
log p / length^length_penalty (length counts EOS); the K best that do not end in EOS stay
alive. A sentence is done when K hypotheses have finished; at `max_len` the live ones finish
too. With K = 1 this is exactly greedy search (tested). The cache is filled for the B
sentences once and repeated for their K hypotheses; each step reorders the self-attention
entries with the surviving hypotheses, while the cross-attention entries, equal for all
hypotheses of a sentence, stay where they are.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from model.config import ModelConfig
from model.transformer import Transformer
from model.transformer import init_cache
from train import run as run_lib

NEG_INF = -1e9  # finite: top_k and argsort stay well defined on dead hypotheses
ARCHS = ("encoder_decoder", "decoder")


def right_pad(sources: Sequence[Sequence[int]], pad_id: int, width: int = 0):
  """[B, S] tokens and segment ids (1 on tokens, 0 on padding) for a list of sources; S is
  the longest source, or `width` if that is more."""
  if not sources:
    raise ValueError("no sources to decode")
  for i, s in enumerate(sources):
    if len(s) == 0:
      raise ValueError(f"source {i} is empty; decoding needs at least one source token")
  width = max(width, max(len(s) for s in sources))
  tokens = np.full((len(sources), width), pad_id, np.int32)
  seg = np.zeros((len(sources), width), np.int32)
  for r, s in enumerate(sources):
    tokens[r, : len(s)], seg[r, : len(s)] = s, 1
  return tokens, seg


def left_pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int, width: int = 0):
  """[B, P] tokens, segment ids and per-row positions (0 at each row's first token) of
  left-padded prompts; P is the longest prompt, or `width` if that is more."""
  tokens, seg = right_pad(prompts, pad_id, width)
  lengths = seg.sum(1)
  for r, n in enumerate(lengths):
    tokens[r], seg[r] = np.roll(tokens[r], tokens.shape[1] - n), np.roll(seg[r], -n)
  positions = np.maximum(np.cumsum(seg, axis=1) - 1, 0).astype(np.int32)
  return tokens, seg, positions


def _repeat_rows(tree, k: int, batch_axis: int):
  """Each batch row of every cache array K times in a row (cache_index has no batch axis)."""
  return jax.tree.map(
      lambda x: x if x.ndim <= batch_axis else jnp.repeat(x, k, axis=batch_axis), tree
  )


def _gather_beams(tree, flat_idx_N, batch_axis: int):
  """Reorders the batch rows of the self-attention cache. The cross-attention entries are
  equal for the K hypotheses of a sentence and hypotheses never change sentence, so they are
  left as they are."""

  def take(path, x):
    name = getattr(path[-1], "key", "")
    if x.ndim <= batch_axis or str(name).startswith("cross_"):
      return x
    return jnp.take(x, flat_idx_N, axis=batch_axis)

  return jax.tree_util.tree_map_with_path(take, tree)


class Seq2SeqDecoder:
  """Jitted greedy/beam decoding for one model (encoder-decoder, or decoder-only trained on
  "source <sep> target") and its params; compiled functions are cached per (batch, source
  width, beam, max_len, length penalty).

  `decode` takes sources as token lists that end with the separator (EOS): the encoder reads
  them whole; a decoder-only model reads BOS + source as its prompt."""

  def __init__(self, model_cfg, params: Any, *, bos_id: int, eos_id: int, pad_id: int = 0):

    self.cfg = ModelConfig.from_config(model_cfg)
    if self.cfg.arch not in ARCHS:
      raise ValueError(
          f"seq2seq decoding needs model.arch=encoder_decoder or a causal decoder, not "
          f"{self.cfg.arch!r}"
      )
    if self.cfg.arch == "decoder" and not self.cfg.causal:
      raise ValueError("decoder-only seq2seq decoding needs model.attention_mask=causal")
    self.model = Transformer(self.cfg)
    self.step_model = Transformer(self.cfg, decode=True)
    self.params, self.bos, self.eos, self.pad = params, int(bos_id), int(eos_id), int(pad_id)
    self.batch_axis = 1 if self.cfg.scan_layers else 0
    self._compiled = {}

  @property
  def is_decoder_only(self) -> bool:
    return self.cfg.arch == "decoder"

  def max_len_for(self, requested: int, prompt_len: int = 0) -> int:
    """Target tokens a hypothesis may have (EOS included); a learned table caps it (after a
    decoder-only model's prompt of `prompt_len` tokens, the separator included)."""
    if requested < 1:
      raise ValueError(f"max_len must be >= 1, got {requested}")
    if self.cfg.pos_encoding == "learned":
      return min(requested, self.cfg.max_seq_len - max(prompt_len - 1, 0))
    return requested

  def _check_sources(self, sources) -> None:
    """A learned position table must hold every source (decoder-only: BOS + source)."""
    longest = max(map(len, sources)) + (1 if self.is_decoder_only else 0)
    if self.cfg.pos_encoding == "learned" and longest > self.cfg.max_seq_len:
      what = "BOS + source" if self.is_decoder_only else "a source"
      raise ValueError(
          f"{what} has {longest} tokens, more than the position table "
          f"(model.max_seq_len={self.cfg.max_seq_len}); shorten it"
      )

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
    ctx, start, offset, max_len = self._context(sources, width, max_len)
    greedy = beam == 1 if greedy is None else greedy
    key = (ctx[0].shape, greedy, beam, max_len, float(length_penalty))
    if key not in self._compiled:
      fn = (
          self._greedy if greedy else functools.partial(self._beam, beam=beam, alpha=length_penalty)
      )
      self._compiled[key] = jax.jit(functools.partial(fn, max_len=max_len))
    seqs, scores = self._compiled[key](self.params, *map(jnp.asarray, (*ctx, start, offset)))
    rows = [row[: row.index(self.eos)] if self.eos in row else row for row in seqs.tolist()]
    return {"tokens": rows, "scores": np.asarray(scores)}

  def _context(self, sources, width: int, max_len: int):
    """(context tokens, segment ids, positions), first tokens [B], their positions [B] and
    the capped max_len: the right-padded sources and BOS at 0 (encoder-decoder), or the
    left-padded prompts BOS + source without its last token (the separator, fed first at
    each row's own position; decoder-only)."""
    right_pad(sources, self.pad)  # checks for empty sources
    self._check_sources(sources)
    if self.is_decoder_only:
      ctx = left_pad_prompts([[self.bos] + list(s[:-1]) for s in sources], self.pad, width)
      start = np.asarray([s[-1] for s in sources], np.int32)
      offset = ctx[1].sum(1).astype(np.int32)
      return ctx, start, offset, self.max_len_for(max_len, int(offset.max()) + 1)
    tokens, seg = right_pad(sources, self.pad, width)
    start = np.full(len(sources), self.bos, np.int32)
    offset = np.zeros(len(sources), np.int32)
    return (tokens, seg, np.zeros_like(seg)), start, offset, self.max_len_for(max_len)

  # ---- pieces traced inside jit

  def _prefill(self, params, ctx_BxP, seg_BxP, pos_BxP, *, max_len):
    """The cache for B rows before the first step: an encoder-decoder's cross-attention
    keys/values (a call with the memory and no target tokens), or a decoder-only model's
    prompt."""
    b = ctx_BxP.shape[0]
    if self.is_decoder_only:
      cache = init_cache(self.cfg, b, ctx_BxP.shape[1] + max_len)
      tokens, kwargs = ctx_BxP, dict(positions_BxL=pos_BxP, segment_ids_BxL=seg_BxP)
    else:
      memory = self.model.apply(
          {"params": params}, ctx_BxP, src_segment_ids_BxS=seg_BxP, method=Transformer.encode
      )
      cache = init_cache(self.cfg, b, max_len)
      tokens = jnp.zeros((b, 0), jnp.int32)
      kwargs = dict(
          positions_BxL=jnp.zeros((b, 0), jnp.int32),
          memory_BxSxD=memory,
          src_segment_ids_BxS=seg_BxP,
      )
    _, variables = self.step_model.apply(
        {"params": params, "cache": cache}, tokens, mutable=["cache"], **kwargs
    )
    return variables["cache"]

  def _step(self, params, cache, tok_N, pos_N):
    """Log-probs [N, V] of the next token after `tok_N` at positions pos_N, and the new
    cache."""
    logits, variables = self.step_model.apply(
        {"params": params, "cache": cache},
        tok_N[:, None],
        positions_BxL=pos_N[:, None],
        mutable=["cache"],
    )
    return jax.nn.log_softmax(logits[:, -1].astype(jnp.float32)), variables["cache"]

  def _greedy(self, params, ctx_BxP, seg_BxP, pos_BxP, start_B, offset_B, *, max_len):

    b = ctx_BxP.shape[0]
    cache = self._prefill(params, ctx_BxP, seg_BxP, pos_BxP, max_len=max_len)
    out = jnp.full((b, max_len + 1), self.pad, jnp.int32).at[:, 0].set(start_B)

    def cond(state):
      i, _, _, done, _ = state
      return (i < max_len) & ~jnp.all(done)

    def body(state):
      i, out, cache, done, score = state
      logp_BxV, cache = self._step(params, cache, out[:, i], offset_B + i)
      tok = jnp.argmax(logp_BxV, axis=-1).astype(jnp.int32)
      tok = jnp.where(done, self.pad, tok)
      score = score + jnp.where(done, 0.0, jnp.take_along_axis(logp_BxV, tok[:, None], 1)[:, 0])
      return i + 1, out.at[:, i + 1].set(tok), cache, done | (tok == self.eos), score

    state = (0, out, cache, jnp.zeros(b, bool), jnp.zeros(b))
    _, out, _, _, score = jax.lax.while_loop(cond, body, state)
    return out[:, 1:], score

  def _beam(self, params, ctx_BxP, seg_BxP, pos_BxP, start_B, offset_B, *, beam, alpha, max_len):

    b, k = ctx_BxP.shape[0], beam
    cache = self._prefill(params, ctx_BxP, seg_BxP, pos_BxP, max_len=max_len)
    cache = _repeat_rows(cache, k, self.batch_axis)
    offset_N = jnp.repeat(offset_B, k)
    seqs = jnp.full((b, k, max_len + 1), self.pad, jnp.int32).at[:, :, 0].set(start_B[:, None])
    alive_lp = jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (k - 1)), (b, 1))
    fin = (jnp.full_like(seqs, self.pad), jnp.full((b, k), NEG_INF), jnp.zeros((b, k), bool))
    state = (0, seqs, alive_lp, cache, fin)

    def cond(state):
      i, fin_flag = state[0], state[4][2]
      return (i < max_len) & ~jnp.all(fin_flag.sum(-1) >= k)

    def body(state):
      i, seqs, alive_lp, cache, fin = state
      logp_NxV, cache = self._step(params, cache, seqs[:, :, i].reshape(-1), offset_N + i)
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
      cache = _gather_beams(cache, flat, self.batch_axis)
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
  kept = jnp.take_along_axis(flags, order, axis=1)
  return (
      jnp.take_along_axis(seqs, order[:, :, None], axis=1),
      jnp.where(kept, jnp.take_along_axis(scores, order, axis=1), NEG_INF),
      kept,
  )


# ----------------------------------------------------------------------------- from a run

AVERAGE_HELP = (
    "evaluate the mean params of the last N saved checkpoints (0: off); the run must keep "
    "them (checkpoint.keep)"
)
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
  """Decodes every source text with a trained run (train.run.load_run), inside the run's mesh
  context (`Run.context`); the outputs in input order. Sources are encoded as in training
  (tokens + EOS) and batched by length, each batch padded to `batch_size` rows and a multiple
  of WIDTH_BUCKET columns."""
  tok = run.tokenizer
  dec = Seq2SeqDecoder(
      run.config.model, run.params, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id
  )
  ids = []
  for i, text in enumerate(sources):
    if not text.strip():
      raise ValueError(f"source line {i + 1} is empty; decoding needs a source")
    ids.append(tok.encode(text) + [tok.eos_id])
  batch_size = max(1, min(batch_size, len(ids)))
  order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
  out = [""] * len(ids)
  with run.context():
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


def add_run_flags(ap, *, beam: int, max_len: int, max_len_help: str, batch_size: int) -> None:
  """The flags eval.translate and eval.summarize share: the run, its checkpoint, the beam search
  and the scores' JSON (read back by `decode_run`)."""
  ap.add_argument(
      "--workdir",
      required=True,
      help="a run trained on a parallel source (encoder-decoder or decoder-only)",
  )
  ap.add_argument("--beam", type=int, default=beam, help="beam size (1: greedy)")
  ap.add_argument("--length-penalty", type=float, default=1.0, help="score = log p / len^this")
  ap.add_argument("--max-len", type=int, default=max_len, help=max_len_help)
  ap.add_argument("--batch-size", type=int, default=batch_size)
  ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  ap.add_argument("--average-last", type=int, default=0, help=AVERAGE_HELP)
  ap.add_argument("--json", default="", help="write the scores here")


def decode_run(args, sources: Sequence[str]):
  """(run, decoded texts): the run named by `add_run_flags`' flags, decoding `sources`."""
  run = run_lib.load_run(args.workdir, step=args.step, average_last=args.average_last)
  flags = ("beam", "length_penalty", "max_len", "batch_size")
  return run, decode_texts(run, sources, **{k: getattr(args, k) for k in flags})


def write_scores(args, scores: dict, run) -> None:
  """Adds the checkpoint that decoded to `scores` and writes them to --json, if given."""
  scores.update(beam=args.beam, step=run.step, averaged_steps=list(run.averaged_steps))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(scores, f, indent=2)
