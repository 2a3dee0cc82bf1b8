"""The transformer LM: embeddings -> a scanned (or unrolled) stack of blocks -> output head.

Everything is chosen by `ModelConfig`: decoder (GPT, Llama), encoder (BERT) and encoder-decoder
(the original Transformer: a bidirectional stack over the source, read by cross-attention in
every block of the causal stack) are configs of the same module. Params carry logical axis names; the caller maps them to a mesh.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from model import attention_ops
from model import parametrization
from model import positional
from model.attention import Attention
from model.config import ModelConfig
from model.embeddings import Embed
from model.linear import Linear
from model.mlp import Mlp
from model.moe import AUX as MOE_AUX
from model.moe import Moe
from model.norms import Norm

# Activation checkpointing: what the backward pass may keep instead of recomputing.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
ACTIVATION_AXES = ("batch", "length", "embed")
# Collection of the activation sizes (mean |x|) that eval/coord_check.py reads; recorded only
# when a caller makes it mutable (apply(..., mutable=[RECORDED])), else nothing is computed.
RECORDED = "intermediates"


def record_size(module: nn.Module, name: str, x) -> None:
  """Sows mean |x| (a float32 scalar) into RECORDED when that collection is mutable (and not
  while initialising, so `init` returns the same collections as before)."""
  if module.is_mutable_collection(RECORDED) and not module.is_initializing():
    module.sow(RECORDED, name, jnp.mean(jnp.abs(x.astype(jnp.float32))))


def _norm(cfg: ModelConfig, name: str) -> Norm:
  return Norm(
      cfg.norm,
      cfg.norm_eps,
      cfg.use_bias,
      jnp.dtype(cfg.dtype),
      jnp.dtype(cfg.param_dtype),
      name=name,
  )


class Block(nn.Module):
  """One layer. pre: x + r f(norm(x)); post (BERT, GPT-1): norm(x + r f(x)), with r the
  CompleteP branch multiplier (1 unless parametrization=completep). `cross` (the decoder of
  an encoder-decoder) adds cross-attention to `memory_BxSxD` between self-attention and MLP.
  Returns (x, None) so it can be the body of nn.scan."""

  cfg: ModelConfig
  decode: bool = False
  deterministic: bool = True
  use_moe: bool = False  # mixture-of-experts feed-forward (model/moe.py) instead of Mlp
  cross: bool = False

  @nn.compact
  def __call__(
      self, x_BxLxD, positions_BxL, segment_ids_BxL, memory_BxSxD=None, memory_segment_ids_BxS=None
  ):
    cfg = self.cfg
    attn = Attention(cfg, self.decode, name="attn")
    mlp = Moe(cfg, name="mlp") if self.use_moe else Mlp(cfg, name="mlp")
    branch_mult = parametrization.residual_multiplier(cfg)

    def branch(name, y):
      record_size(self, name, y)
      y = nn.Dropout(cfg.dropout)(y, deterministic=self.deterministic)
      return y if branch_mult == 1.0 else y * branch_mult

    def sublayers():
      yield "attn", lambda h: attn(h, positions_BxL, segment_ids_BxL, self.deterministic)
      if self.cross:
        cross = Attention(cfg, self.decode, cross=True, name="cross_attn")
        yield "cross", lambda h: cross(
            h,
            positions_BxL,
            segment_ids_BxL,
            self.deterministic,
            memory_BxSxD,
            memory_segment_ids_BxS,
        )
      yield "mlp", lambda h: mlp(h, self.deterministic)

    for name, f in sublayers():
      if cfg.norm_position == "pre":
        x_BxLxD = x_BxLxD + branch(f"{name}_out", f(_norm(cfg, f"{name}_norm")(x_BxLxD)))
      else:
        x_BxLxD = _norm(cfg, f"{name}_norm")(x_BxLxD + branch(f"{name}_out", f(x_BxLxD)))
    x_BxLxD = nn.with_logical_constraint(x_BxLxD, ACTIVATION_AXES)
    record_size(self, "residual", x_BxLxD)
    return x_BxLxD, None


class BlockGroup(nn.Module):
  """`moe_every` consecutive Blocks, the last with the MoE feed-forward: the scanned unit of
  a stack whose layers are not all alike (model.moe_every > 1)."""

  cfg: ModelConfig
  decode: bool = False
  deterministic: bool = True
  block_cls: Any = None
  cross: bool = False

  @nn.compact
  def __call__(self, x_BxLxD, *args):
    k = self.cfg.moe_every
    for j in range(k):
      block = self.block_cls(
          self.cfg, self.decode, self.deterministic, j == k - 1, self.cross, name=f"sub_{j}"
      )
      x_BxLxD, _ = block(x_BxLxD, *args)
    return x_BxLxD, None


# scan_unroll=-1 unrolls stacks up to this deep on the CPU: XLA:CPU spends ~15% of a small
# model's step on the rolled loop's stacked-residual buffers (zero-filled, then copied slice
# by slice); unrolled, the params keep their stacked layout but the loop disappears.
AUTO_UNROLL_MAX_LAYERS = 8


def scan_unroll(cfg: ModelConfig) -> int:
  """Layers per iteration of the scanned stack (see configs/base.py `scan_unroll`)."""
  if cfg.scan_unroll == -1:
    small = cfg.num_layers <= AUTO_UNROLL_MAX_LAYERS
    return cfg.num_layers if small and attention_ops.target_platform() == "cpu" else 1
  if cfg.scan_unroll == 0:
    return cfg.num_layers
  return min(cfg.scan_unroll, cfg.num_layers)


class LayerStack(nn.Module):
  """num_layers Blocks. scan_layers=True: one nn.scan over stacked params (leading 'layers'
  axis), so compile time does not grow with depth (unless `scan_unroll` unrolls the loop);
  False: block_0..block_{n-1} unrolled. `cross`: decoder blocks of an encoder-decoder, which
  also take the encoder output and its segment ids."""

  cfg: ModelConfig
  decode: bool = False
  cross: bool = False

  @nn.compact
  def __call__(
      self,
      x_BxLxD,
      positions_BxL,
      segment_ids_BxL,
      deterministic=True,
      memory_BxSxD=None,
      memory_segment_ids_BxS=None,
  ):
    cfg = self.cfg
    args = (positions_BxL, segment_ids_BxL)
    if self.cross:
      args += (memory_BxSxD, memory_segment_ids_BxS)
    block_cls = Block
    if cfg.remat != "none":
      block_cls = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      grouped = cfg.mlp == "moe" and cfg.moe_every > 1
      length = cfg.num_layers // cfg.moe_every if grouped else cfg.num_layers
      stack = nn.scan(
          BlockGroup if grouped else block_cls,
          variable_axes={"params": 0, "cache": 0, RECORDED: 0, MOE_AUX: 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast,) * len(args),
          length=length,
          unroll=min(scan_unroll(cfg), length),
          metadata_params={nn.PARTITION_NAME: "layers"},
      )
      extra = (block_cls, self.cross) if grouped else (cfg.mlp == "moe", self.cross)
      x_BxLxD, _ = stack(cfg, self.decode, deterministic, *extra, name="block")(x_BxLxD, *args)
    else:
      for i in range(cfg.num_layers):
        block = block_cls(
            cfg, self.decode, deterministic, cfg.is_moe_layer(i), self.cross, name=f"block_{i}"
        )
        x_BxLxD, _ = block(x_BxLxD, *args)
    return x_BxLxD


class Transformer(nn.Module):
  """Transformer LM. See __call__ for the inputs; `hidden`/`pooled` give the features for
  classification heads (call with `method=Transformer.hidden`)."""

  cfg: ModelConfig
  decode: bool = False

  def setup(self):
    cfg = self.cfg
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.embed = Embed(cfg.vocab_size, cfg.d_model, ("vocab", "embed"), cfg.init_std, dt, pdt)
    if cfg.pos_encoding == "learned":
      self.pos_embed = Embed(cfg.max_seq_len, cfg.d_model, (None, "embed"), cfg.init_std, dt, pdt)
    if cfg.type_vocab_size:
      self.type_embed = Embed(
          cfg.type_vocab_size, cfg.d_model, (None, "embed"), cfg.init_std, dt, pdt
      )
    if cfg.embed_norm:
      self.embed_norm = _norm(cfg, "embed_norm")
    self.embed_dropout = nn.Dropout(cfg.dropout)
    if cfg.arch == "encoder_decoder":
      self._setup_encoder()
      self.layers = LayerStack(cfg.replace(num_layers=cfg.decoder_layers), self.decode, cross=True)
    else:
      self.layers = LayerStack(cfg, self.decode)
    if cfg.norm_position == "pre":
      self.final_norm = _norm(cfg, "final_norm")
    if not cfg.tie_embeddings:
      self.unembed = Linear(
          (cfg.vocab_size,),
          ("embed", "vocab"),
          use_bias=False,
          init_std=cfg.init_std,
          dtype=dt,
          param_dtype=pdt,
          out_dtype=jnp.float32,
      )
    # The heads' d_model x d_model matrices (the "head_matrix" group of model/parametrization.py).
    head_dense = functools.partial(
        Linear,
        (cfg.d_model,),
        (None, "embed"),
        use_bias=cfg.use_bias,
        init_std=parametrization.hidden_init_std(cfg),
        dtype=dt,
        param_dtype=pdt,
    )
    if cfg.mlm_head:
      self.mlm_dense = head_dense()
      self.mlm_norm = _norm(cfg, "mlm_norm")
      self.mlm_bias = self.param(
          "mlm_bias",
          nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
          (cfg.vocab_size,),
          pdt,
      )
    if cfg.pooler:
      self.pooler_dense = head_dense()

  def _setup_encoder(self):
    """The encoder of an encoder-decoder: its own bidirectional stack (never cached) and final
    norm; the token table is shared with the decoder unless share_embeddings=False."""
    cfg = self.cfg
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.encoder = LayerStack(cfg.replace(arch="encoder"), decode=False)
    if cfg.norm_position == "pre":
      self.encoder_norm = _norm(cfg, "encoder_norm")
    if not cfg.share_embeddings:
      self.src_embed = Embed(cfg.vocab_size, cfg.d_model, ("vocab", "embed"), cfg.init_std, dt, pdt)

  def encode(
      self, src_tokens_BxS, *, src_positions_BxS=None, src_segment_ids_BxS=None, deterministic=True
  ):
    """Encoder output [B, S, D] of an encoder-decoder (computed once per source, then passed
    to __call__ as `memory_BxSxD` at every decoding step)."""
    cfg = self.cfg
    if cfg.arch != "encoder_decoder":
      raise ValueError(f"encode() needs model.arch=encoder_decoder, not {cfg.arch!r}")
    if src_tokens_BxS.ndim != 2 or src_tokens_BxS.shape[1] == 0:
      raise ValueError(
          f"empty source: src_tokens_BxS has shape {tuple(src_tokens_BxS.shape)}; an "
          "encoder-decoder needs at least one source token per row"
      )
    if src_positions_BxS is None:
      src_positions_BxS = jnp.broadcast_to(
          jnp.arange(src_tokens_BxS.shape[1]), src_tokens_BxS.shape
      )
    table = self.embed if cfg.share_embeddings else self.src_embed
    x_BxSxD = self._embed(table, src_tokens_BxS, src_positions_BxS, None, deterministic)
    x_BxSxD = self.encoder(x_BxSxD, src_positions_BxS, src_segment_ids_BxS, deterministic)
    if cfg.norm_position == "pre":
      x_BxSxD = self.encoder_norm(x_BxSxD)
    return x_BxSxD

  def hidden(
      self,
      tokens_BxL,
      *,
      positions_BxL=None,
      segment_ids_BxL=None,
      token_types_BxL=None,
      deterministic=True,
      memory_BxSxD=None,
      memory_segment_ids_BxS=None,
  ):
    """Final hidden states [B, L, D] in cfg.dtype (after the final norm for pre-norm).
    memory_*: the encoder output and source segment ids (encoder-decoder only)."""
    cfg = self.cfg
    if positions_BxL is None:
      if self.decode and not self.is_initializing():
        raise ValueError(
            "decode=True needs explicit positions_BxL (absolute positions of the "
            "new tokens, e.g. cache length + arange(T))"
        )
      positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)
    x_BxLxD = self._embed(self.embed, tokens_BxL, positions_BxL, token_types_BxL, deterministic)
    x_BxLxD = self.layers(
        x_BxLxD, positions_BxL, segment_ids_BxL, deterministic, memory_BxSxD, memory_segment_ids_BxS
    )
    if cfg.norm_position == "pre":
      x_BxLxD = self.final_norm(x_BxLxD)
    return x_BxLxD

  def _embed(self, table, tokens_BxL, positions_BxL, token_types_BxL, deterministic):
    """Token + position (+ token type) embeddings, embedding norm and dropout."""
    cfg = self.cfg
    x_BxLxD = table(tokens_BxL)
    if cfg.pos_encoding == "learned":
      x_BxLxD = x_BxLxD + self.pos_embed(positions_BxL)
    elif cfg.pos_encoding == "sinusoidal":
      x_BxLxD = x_BxLxD + positional.sinusoidal(positions_BxL, cfg.d_model).astype(x_BxLxD.dtype)
    if cfg.type_vocab_size:
      if token_types_BxL is None:
        token_types_BxL = jnp.zeros_like(tokens_BxL)
      x_BxLxD = x_BxLxD + self.type_embed(token_types_BxL)
    if cfg.embed_norm:
      x_BxLxD = self.embed_norm(x_BxLxD)
    x_BxLxD = self.embed_dropout(x_BxLxD, deterministic=deterministic)
    x_BxLxD = nn.with_logical_constraint(x_BxLxD, ACTIVATION_AXES)
    record_size(self, "embed_out", x_BxLxD)
    return x_BxLxD

  def logits_from_hidden(self, x_BxLxD):
    """Output layer: MLM head (encoders with mlm_head), tied embedding or untied unembed,
    times muP's output multiplier 1/m_d (1 under sp). Returns float32 [B, L, V]."""
    cfg = self.cfg
    if cfg.mlm_head:
      x_BxLxD = self.mlm_norm(nn.gelu(self.mlm_dense(x_BxLxD), approximate=True))
    if cfg.tie_embeddings:
      logits = self.embed.attend(x_BxLxD)
    else:
      logits = self.unembed(x_BxLxD)  # accumulated in float32, as the tied path
    logit_mult = parametrization.logit_multiplier(cfg)
    if logit_mult != 1.0:
      logits = logits * logit_mult
    if cfg.mlm_head:
      logits = logits + jnp.asarray(self.mlm_bias, jnp.float32)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))

  def pooled(self, tokens_BxL, **kwargs):
    """BERT pooler: tanh(dense(hidden[:, 0])) -> [B, D]. Needs cfg.pooler."""
    if not self.cfg.pooler:
      raise ValueError("model.pooler is False; use hidden(...)[:, 0] or set model.pooler=True")
    return self._pool(self.hidden(tokens_BxL, **kwargs))

  def _pool(self, x_BxLxD):
    return jnp.tanh(self.pooler_dense(x_BxLxD[:, 0]))

  def __call__(
      self,
      tokens_BxL,
      *,
      positions_BxL=None,
      segment_ids_BxL=None,
      token_types_BxL=None,
      deterministic=True,
      src_tokens_BxS=None,
      src_positions_BxS=None,
      src_segment_ids_BxS=None,
      memory_BxSxD=None,
  ):
    """tokens [B, L] int -> logits [B, L, V] float32.

    positions_BxL: default arange(L); packed data passes per-document positions; required
      with decode=True. segment_ids_BxL: 0 = padding, 1..n = documents; attention stays within
      a segment. token_types_BxL: BERT segment A/B ids (type_vocab_size > 0).
    deterministic=False enables dropout (needs rngs={'dropout': key}).
    Encoder-decoder: tokens are the decoder's (target) inputs and src_* the source, whose
    segment i is read by target segment i; `memory_BxSxD` (from `encode`) replaces
    src_tokens_BxS when decoding step by step. With decode=True the call that passes the
    memory also stores every layer's cross-attention keys/values in the cache (tokens_BxL may
    then have no columns: that call only fills the cache); later calls pass neither memory
    nor source and read them back.
    """
    cached_memory = self.decode and src_tokens_BxS is None and not self.is_initializing()
    if self.cfg.arch == "encoder_decoder" and memory_BxSxD is None and not cached_memory:
      if src_tokens_BxS is None:
        if not self.is_initializing():
          raise ValueError("arch=encoder_decoder needs src_tokens_BxS (the source) or memory_BxSxD")
        src_tokens_BxS = tokens_BxL  # init only sizes the parameters
      memory_BxSxD = self.encode(
          src_tokens_BxS,
          src_positions_BxS=src_positions_BxS,
          src_segment_ids_BxS=src_segment_ids_BxS,
          deterministic=deterministic,
      )
    x_BxLxD = self.hidden(
        tokens_BxL,
        positions_BxL=positions_BxL,
        segment_ids_BxL=segment_ids_BxL,
        token_types_BxL=token_types_BxL,
        deterministic=deterministic,
        memory_BxSxD=memory_BxSxD,
        memory_segment_ids_BxS=src_segment_ids_BxS,
    )
    if self.cfg.pooler and self.is_initializing():
      self._pool(x_BxLxD)  # create the pooler's params
    logits = self.logits_from_hidden(x_BxLxD)
    record_size(self, "logits", logits)
    return logits


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int):
  """An empty KV cache for `Transformer(cfg, decode=True)`: zeros shaped by an abstract init
  (no weights are initialised). Holds max_len tokens per row; cache_index starts at 0."""
  dec = Transformer(cfg, decode=True)
  shapes = jax.eval_shape(
      dec.init, jax.random.PRNGKey(0), jnp.zeros((batch_size, max_len), jnp.int32)
  )["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
