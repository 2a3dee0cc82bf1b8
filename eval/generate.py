"""Text generation with a KV cache: one jitted prefill, then a `lax.while_loop` of one-token
decode steps; greedy, temperature, top-k and top-p sampling; stop tokens; batches of prompts of
different lengths.

Prompts of different lengths are left-padded into one [B, P] block. Padding slots get
segment id 0, so the model's segment mask hides them from every query (they also sit in the
cache with segment 0), and each row's positions count from its own first token
(slot - pad_B), so RoPE, learned and sinusoidal encodings see the same positions as an
unpadded forward pass. Every row's last prompt token is then in slot P - 1 and all rows decode
in lockstep at slot P + step.

Past the model's `max_seq_len`: a learned position table has no row for position
max_seq_len, so the context becomes a sliding window of the last max_seq_len tokens (a longer
prompt keeps its last max_seq_len tokens). Every token's position changes when the window
moves, so cached keys are stale: each step past the table re-runs the window through the
model (no cache), which gives exactly the logits of a fresh forward pass over the window.
RoPE, sinusoidal and no position encoding have no table: decoding simply continues with the
cache at positions the model was not trained on.

    python -m eval.generate --workdir runs/default --prompt "ROMEO:" --num-samples 2 \
        --max-new-tokens 200 --temperature 0.8 --top-k 40 --seed 1
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from model.config import ModelConfig
from model.transformer import init_cache
from model.transformer import Transformer
from train import cli
from train import run as run_lib

# ----------------------------------------------------------------------------- sampling


def filter_logits(logits_BxV, *, top_k: int = 0, top_p: float = 1.0):
  """Sets logits outside the top-k set and outside the top-p nucleus to -inf.

  top_k <= 0 and top_p >= 1 disable the filters. The nucleus is the smallest set of most
  likely tokens whose probability reaches top_p (the most likely token is always kept);
  tokens tied with the last one kept stay in.
  """
  logits_BxV = logits_BxV.astype(jnp.float32)
  neg_inf = jnp.array(-jnp.inf, jnp.float32)
  if top_k > 0:
    k = min(int(top_k), logits_BxV.shape[-1])
    kth_Bx1 = jax.lax.top_k(logits_BxV, k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, neg_inf, logits_BxV)
  if top_p < 1.0:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    keep_BxV = mass_before_BxV < top_p
    keep_BxV = keep_BxV.at[:, 0].set(True)
    cutoff_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, neg_inf, logits_BxV)
  return logits_BxV


def sample_tokens(logits_BxV, rng, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """Next tokens [B] int32. temperature == 0 is greedy (argmax); otherwise sample from
  softmax(filter(logits / temperature)). The nucleus is taken from the tempered distribution
  (as Hugging Face does), so top_p bounds the mass of what is actually sampled."""
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
  if temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  tempered_BxV = logits_BxV.astype(jnp.float32) / temperature
  tempered_BxV = filter_logits(tempered_BxV, top_k=top_k, top_p=top_p)
  return jax.random.categorical(rng, tempered_BxV, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 64
  temperature: float = 1.0  # 0: greedy
  top_k: int = 0  # 0: off
  top_p: float = 1.0  # 1: off
  stop_ids: tuple[int, ...] = ()  # a row stops after emitting one of these (it is kept)

  def validate(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")


# ----------------------------------------------------------------------------- batching


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int):
  """[B, P] tokens, segment ids (0 on padding) and per-row positions, plus pad counts [B]."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token (e.g. BOS)")
  width = max(len(p) for p in prompts)
  b = len(prompts)
  tokens = np.full((b, width), pad_id, np.int32)
  seg = np.zeros((b, width), np.int32)
  pads = np.array([width - len(p) for p in prompts], np.int32)
  for r, p in enumerate(prompts):
    tokens[r, pads[r] :] = p
    seg[r, pads[r] :] = 1
  positions = np.maximum(np.arange(width)[None, :] - pads[:, None], 0).astype(np.int32)
  return tokens, seg, positions, pads


# ----------------------------------------------------------------------------- decoding


class Generator:
  """Jitted prefill + decode for one model and its params. Compiled functions are cached per
  (batch, prompt width, sampling config) so repeated calls of the same shape reuse them."""

  def __init__(self, model_cfg, params: Any, *, pad_id: int = 0):
    self.cfg = ModelConfig.from_config(model_cfg)
    if self.cfg.arch == "encoder_decoder":
      raise ValueError(
          "an encoder-decoder generates from a source: use eval.translate or eval.summarize "
          "(eval/seq2seq.py)"
      )
    if not self.cfg.causal:
      raise ValueError("generation needs a causal decoder (model.attention_mask=causal)")
    self.model = Transformer(self.cfg, decode=True)
    self.window_model = Transformer(self.cfg)
    self.params = params
    self.pad_id = int(pad_id)
    self._compiled = {}

  @property
  def slides(self) -> bool:
    """Whether the context slides past max_seq_len (a learned table has no later rows)."""
    return self.cfg.pos_encoding == "learned"

  def context_note(self, prompt_len: int, max_new_tokens: int) -> str | None:
    """One line saying what happens when a prompt plus its continuation outgrows
    model.max_seq_len; None when it fits."""
    longest, table = prompt_len + max_new_tokens - 1, self.cfg.max_seq_len
    if longest <= table:
      return None
    head = (
        f"prompt ({prompt_len} tokens) + {max_new_tokens} new tokens go past "
        f"model.max_seq_len={table}"
    )
    if self.slides:
      return f"{head}: learned positions, so the context slides (the last {table} tokens)"
    return (
        f"{head}: {self.cfg.pos_encoding} positions continue past the longest sequence "
        "the model was built for"
    )

  def _apply(self, params, cache, tokens_BxT, positions_BxT, seg_BxT):
    logits_BxTxV, mutated = self.model.apply(
        {"params": params, "cache": cache},
        tokens_BxT,
        positions_BxL=positions_BxT,
        segment_ids_BxL=seg_BxT,
        mutable=["cache"],
    )
    return logits_BxTxV, mutated["cache"]

  def _window_logits(self, params, all_BxW, pads_B, end):
    """Next-token logits [B, V] from a fresh forward pass (no cache) over slots
    [end - max_seq_len, end): positions restart at 0 at the window's first real token, and
    left padding still inside the window keeps segment 0."""
    width = self.cfg.max_seq_len
    start = end - width
    window_BxL = jax.lax.dynamic_slice_in_dim(all_BxW, start, width, axis=1)
    slot_BxL = start + jnp.arange(width)[None, :]
    seg_BxL = (slot_BxL >= pads_B[:, None]).astype(jnp.int32)
    pos_BxL = jnp.maximum(slot_BxL - jnp.maximum(pads_B, start)[:, None], 0)
    logits_BxLxV = self.window_model.apply(
        {"params": params}, window_BxL, positions_BxL=pos_BxL, segment_ids_BxL=seg_BxL
    )
    return logits_BxLxV[:, -1]

  def _run(
      self,
      params,
      tokens_BxP,
      seg_BxP,
      positions_BxP,
      pads_B,
      rng,
      *,
      sc: SamplingConfig,
      stream: Callable | None,
      return_logits: bool,
  ):
    b, p = tokens_BxP.shape
    n = sc.max_new_tokens
    table = self.cfg.max_seq_len
    cache = init_cache(self.cfg, b, min(p + n, table) if self.slides else p + n)
    logits_BxPxV, cache = self._apply(params, cache, tokens_BxP, positions_BxP, seg_BxP)
    stop_S = jnp.asarray(sc.stop_ids if sc.stop_ids else (-1,), jnp.int32)
    v = logits_BxPxV.shape[-1]

    def emit(state, logits_BxV):
      """Samples from logits_BxV and records the token at out[:, step]."""
      step, cache, _, done_B, out_BxN, logits_out, rng = state
      rng, key = jax.random.split(rng)
      tok_B = sample_tokens(
          logits_BxV, key, temperature=sc.temperature, top_k=sc.top_k, top_p=sc.top_p
      )
      tok_B = jnp.where(done_B, self.pad_id, tok_B)
      out_BxN = out_BxN.at[:, step].set(tok_B)
      if return_logits:
        logits_out = logits_out.at[:, step].set(logits_BxV)
      if stream is not None:
        io_callback(stream, None, step, tok_B, done_B, ordered=True)
      done_B = done_B | jnp.isin(tok_B, stop_S)
      return (step + 1, cache, tok_B, done_B, out_BxN, logits_out, rng)

    out_BxN = jnp.full((b, n), self.pad_id, jnp.int32)
    logits_out = jnp.zeros((b, n, v) if return_logits else (1, 1, 1), jnp.float32)
    state = (
        jnp.int32(0),
        cache,
        jnp.zeros((b,), jnp.int32),
        jnp.zeros((b,), bool),
        out_BxN,
        logits_out,
        rng,
    )
    state = emit(state, logits_BxPxV[:, -1])

    def more(state):
      step, _, _, done_B, *_ = state
      return (step < n) & ~jnp.all(done_B)

    def in_table(state):  # the token to feed (slot p + step - 1) has a position row
      if not self.slides:
        return more(state)
      return more(state) & (p + state[0] - 1 < table)

    def cached_step(state):
      step, cache, tok_B, *rest = state
      slot = p + step - 1  # the cache slot of tok_B
      pos_Bx1 = (slot - pads_B)[:, None]
      logits_Bx1xV, cache = self._apply(
          params, cache, tok_B[:, None], pos_Bx1, jnp.ones_like(pos_Bx1)
      )
      return emit((step, cache, tok_B, *rest), logits_Bx1xV[:, 0])

    def window_step(state):
      step, out_BxN = state[0], state[4]
      all_BxW = jnp.concatenate([tokens_BxP, out_BxN], axis=1)
      return emit(state, self._window_logits(params, all_BxW, pads_B, p + step))

    state = jax.lax.while_loop(in_table, cached_step, state)
    if self.slides and p + n - 1 > table:
      state = jax.lax.while_loop(more, window_step, state)
    _, _, _, done_B, out_BxN, logits_out, _ = state
    return out_BxN, done_B, logits_out

  def generate(
      self,
      prompts: Sequence[Sequence[int]],
      sampling: SamplingConfig,
      seed: int = 0,
      stream: Callable | None = None,
      return_logits: bool = False,
  ):
    """Continues each prompt (token ids). Returns a dict with `tokens` (list of lists: the
    new tokens of each row, cut after its first stop token), `stopped` [B] bool and, with
    return_logits, `logits` [B, max_new_tokens, V] (the logits each token was drawn from).

    `stream(step, tokens_B, done_B)` is called on the host as each step's tokens are drawn.
    With learned positions a prompt longer than max_seq_len keeps its last max_seq_len tokens.
    """
    sampling = dataclasses.replace(sampling, stop_ids=tuple(int(t) for t in sampling.stop_ids))
    sampling.validate()
    if self.slides:
      prompts = [list(q)[-self.cfg.max_seq_len :] for q in prompts]
    tokens, seg, positions, pads = left_pad(prompts, self.pad_id)
    b, p = tokens.shape
    key = (b, p, sampling, stream, return_logits)
    if key not in self._compiled:
      self._compiled[key] = jax.jit(
          functools.partial(self._run, sc=sampling, stream=stream, return_logits=return_logits)
      )
    out_BxN, done_B, logits = self._compiled[key](
        self.params, tokens, seg, positions, pads, jax.random.key(seed)
    )
    out_BxN, done_B = np.asarray(out_BxN), np.asarray(done_B)
    rows = []
    for row in out_BxN.tolist():  # each cut after its first stop token
      end = next((i + 1 for i, t in enumerate(row) if t in sampling.stop_ids), len(row))
      rows.append(row[:end])
    out = dict(tokens=rows, stopped=done_B)
    if return_logits:
      out["logits"] = np.asarray(logits)
    return out


# ----------------------------------------------------------------------------- CLI


class TextStreamer:
  """Host callback that prints each row's new text as soon as it decodes to whole characters
  (a byte tokenizer may split a UTF-8 character over several steps)."""

  def __init__(self, tokenizer, num_rows: int, out=sys.stdout, stop_ids=()):
    self.tok, self.out, self.stop_ids = tokenizer, out, set(stop_ids)
    self.ids = [[] for _ in range(num_rows)]
    self.shown = [0] * num_rows

  def __call__(self, step, tokens_B, done_B):
    del step
    for r, (t, done) in enumerate(zip(np.asarray(tokens_B).tolist(), np.asarray(done_B))):
      if done or t in self.stop_ids:
        continue
      self.ids[r].append(int(t))
    if len(self.ids) == 1:  # one sample: stream characters
      self._flush(0)

  def _flush(self, r):
    text = self.tok.decode(self.ids[r])
    if text.endswith("\ufffd"):  # an incomplete character: wait for its other bytes
      return
    self.out.write(text[self.shown[r] :])
    self.out.flush()
    self.shown[r] = len(text)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True, help="a training run directory")
  ap.add_argument("--prompt", required=True)
  ap.add_argument("--num-samples", type=int, default=1)
  ap.add_argument("--max-new-tokens", type=int, default=128)
  ap.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
  ap.add_argument("--top-k", type=int, default=0, help="0: off")
  ap.add_argument("--top-p", type=float, default=1.0, help="1: off")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--no-stop", action="store_true", help="do not stop at the EOS token")
  ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  args = ap.parse_args(argv)
  if args.num_samples < 1:
    raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")

  run = run_lib.load_run(args.workdir, step=args.step)
  tok = run.tokenizer
  prompt_ids = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(args.prompt)
  stop = () if args.no_stop else (tok.eos_id,)
  sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, stop)
  gen = Generator(run.spec.model, run.params, pad_id=tok.pad_id)
  note = gen.context_note(len(prompt_ids), args.max_new_tokens)
  if note:
    print(f"note: {note}", file=sys.stderr)
  n = args.num_samples
  streamer = TextStreamer(tok, n, stop_ids=stop) if n == 1 else None
  if n == 1:
    sys.stdout.write(args.prompt)
  with run.context():
    out = gen.generate([prompt_ids] * n, sampling, seed=args.seed, stream=streamer)
  if n == 1:
    streamer._flush(0)
    sys.stdout.write("\n")
  else:
    for r, row in enumerate(out["tokens"]):
      row = [t for t in row if t not in stop]
      print(f"--- sample {r} ---\n{args.prompt}{tok.decode(row)}")
  return 0


if __name__ == "__main__":
  cli.run(main)
