"""`ModelConfig`: the validated, immutable model section of a config.

Imports no JAX so configs, the CLI and the planners can validate shapes cheaply. The fields (with
their defaults) are the schema: `configs.base.model_config()` is built from them; `from_config` rejects unknown or bad values
with a message that names the field and says how to fix it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

# decoder: one causal stack (GPT, Llama); encoder: one bidirectional stack (BERT; the same as
# attention_mask=bidirectional); encoder_decoder: a bidirectional encoder over a source and a
# causal decoder whose blocks also cross-attend to the encoder output (Vaswani et al. 2017).
ARCHS = ("decoder", "encoder", "encoder_decoder")
POS_ENCODINGS = ("learned", "sinusoidal", "rope", "none")
ATTENTION_MASKS = ("causal", "bidirectional")
# Implementations understood by model/attention_ops.py. Add new ones in both places.
ATTENTION_IMPLS = ("xla", "cudnn", "blocked", "auto")
MLPS = ("gelu", "swiglu", "moe")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
# Activation checkpointing policies (see model/transformer.py REMAT_POLICIES).
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
DTYPES = ("float32", "bfloat16", "float16")
# How init, multipliers and per-group optimizer settings scale with width/depth
# (model/parametrization.py holds the rules).
PARAMETRIZATIONS = ("sp", "mup", "completep")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shapes and architecture choices of a transformer LM (defaults: configs/base.py)."""

  vocab_size: int = 260  # byte tokenizer: 256 bytes + BOS/EOS/PAD/MASK
  d_model: int = 256
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 4  # == num_heads: MHA; 1: MQA; in between: GQA
  head_dim: int = 64  # need not equal d_model // num_heads
  mlp_dim: int = 1024
  max_seq_len: int = 256  # size of the learned position table; RoPE/sinusoidal ignore it
  pos_encoding: str = "learned"  # learned | sinusoidal | rope | none
  rope_theta: float = 10_000.0
  attention_mask: str = "causal"  # causal (decoder) | bidirectional (encoder)
  attention_impl: str = "auto"  # xla | cudnn | blocked | auto; see model/attention_ops.py
  mlp: str = "gelu"  # gelu | swiglu | moe (sparse SwiGLU experts, model/moe.py)
  norm: str = "layernorm"  # layernorm | rmsnorm
  norm_position: str = "pre"  # pre | post
  norm_eps: float = 1e-5
  use_bias: bool = True
  tie_embeddings: bool = True
  dropout: float = 0.0
  mlm_head: bool = False  # BERT-style transform + tied decoder head for masked LM
  embed_norm: bool = False  # LayerNorm right after the embeddings (BERT)
  type_vocab_size: int = 0  # token-type (segment A/B) embeddings (BERT: 2)
  pooler: bool = False  # BERT pooler (dense + tanh on the first token)
  scan_layers: bool = True
  scan_unroll: int = (
      -1
  )  # layers per scan-loop iteration: -1 auto (all on CPU if <= 8 layers, else 1), 0 all (no loop), k >= 1; see model/transformer.py
  remat: str = "none"  # none | full | dots_saveable | ...
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"  # master weights
  init_std: float = 0.02
  parametrization: str = "sp"  # sp | mup | completep; see model/parametrization.py
  base_width: int = 0  # mup/completep: d_model the hyperparameters were tuned at
  base_depth: int = 0  # completep: num_layers the hyperparameters were tuned at
  base_head_dim: int = (
      0  # mup attention 1/head_dim rule: the base's head_dim (0: head_dim * base_width / d_model, i.e. fixed head count)
  )
  completep_alpha: float = 1.0  # completep residual branches scaled by depth^-alpha, (0, 1]
  # Sparse mixture-of-experts (mlp="moe", model/moe.py): SwiGLU experts.
  num_experts: int = 8  # routed experts per MoE layer
  experts_per_token: int = 2  # top-k experts each token is sent to
  expert_mlp_dim: int = 0  # hidden width of one expert (0: mlp_dim)
  num_shared_experts: int = 0  # dense experts every token also passes through
  moe_every: int = 1  # every k-th layer is MoE (the last of each k), the rest dense SwiGLU
  arch: str = "decoder"  # decoder | encoder | encoder_decoder (see ARCHS)
  num_decoder_layers: int = 0  # encoder_decoder: decoder depth (0: num_layers, as the encoder)
  share_embeddings: bool = True  # encoder_decoder: one token table for source and target

  @property
  def causal(self) -> bool:
    """Whether the (decoder's) self-attention is causal; an encoder's never is."""
    return self.arch != "encoder" and self.attention_mask == "causal"

  @property
  def decoder_layers(self) -> int:
    return self.num_decoder_layers or self.num_layers

  @classmethod
  def from_config(cls, cfg: Any) -> "ModelConfig":
    """Builds and validates from a ConfigDict (the `model` section or a whole config), a dict,
    or a ModelConfig. Raises ValueError naming the field and the fix."""
    if isinstance(cfg, ModelConfig):
      values = dataclasses.asdict(cfg)
    else:
      if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
      if not isinstance(cfg, Mapping):
        raise TypeError(f"ModelConfig.from_config expects a ConfigDict or dict, got {type(cfg)}")
      if "model" in cfg and isinstance(cfg["model"], Mapping):
        cfg = cfg["model"]
      values = dict(cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise ValueError(
          f"model: unknown key(s) {unknown}; valid keys are {sorted(names)} "
          "(see configs/base.py model_config)"
      )
    out = cls(**values)
    out.validate()
    return out

  def replace(self, **changes) -> "ModelConfig":
    out = dataclasses.replace(self, **changes)
    out.validate()
    return out

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def validate(self) -> None:
    def fail(field, msg):
      raise ValueError(f"model.{field}: {msg}")

    shapes = "vocab_size d_model num_layers num_heads num_kv_heads head_dim mlp_dim max_seq_len"
    positive = "must be a positive integer, got {v!r}; set --config.model.{f}=<int > 0>"
    self._check_ints(fail, 1, shapes.split(), positive)
    enums = dict(
        pos_encoding=POS_ENCODINGS,
        attention_mask=ATTENTION_MASKS,
        attention_impl=ATTENTION_IMPLS,
        mlp=MLPS,
        norm=NORMS,
        norm_position=NORM_POSITIONS,
        remat=REMAT_POLICIES,
        dtype=DTYPES,
        param_dtype=DTYPES,
        parametrization=PARAMETRIZATIONS,
        arch=ARCHS,
    )
    for f, valid in enums.items():
      v = getattr(self, f)
      if v not in valid:
        fail(f, f"unknown value {v!r}; choose one of {'|'.join(valid)}")
    if self.num_heads % self.num_kv_heads:
      fail(
          "num_kv_heads",
          f"num_heads={self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads}; "
          f"use a divisor of num_heads (num_heads for MHA, 1 for MQA), e.g. "
          f"{[k for k in range(1, self.num_heads + 1) if self.num_heads % k == 0]}",
      )
    if self.pos_encoding == "rope" and self.head_dim % 2:
      fail(
          "head_dim",
          f"rope rotates pairs of dimensions and needs an even head_dim, got "
          f"{self.head_dim}; use an even head_dim or another pos_encoding",
      )
    if self.pos_encoding == "sinusoidal" and self.d_model % 2:
      fail("d_model", f"sinusoidal positions need an even d_model, got {self.d_model}")
    if not 0.0 <= self.dropout < 1.0:
      fail("dropout", f"must be in [0, 1), got {self.dropout}")
    self._check_ints(
        fail,
        -1,
        ["scan_unroll"],
        "must be an integer >= -1 (-1 auto, 0 fully unrolled, k layers per loop iteration), "
        "got {v!r}",
    )
    if self.type_vocab_size < 0:
      fail("type_vocab_size", f"must be >= 0 (0 disables token types), got {self.type_vocab_size}")
    for f in ("norm_eps", "init_std", "rope_theta"):
      if not getattr(self, f) > 0:
        fail(f, f"must be > 0, got {getattr(self, f)}")
    self._validate_parametrization(fail)
    self._validate_moe(fail)
    self._validate_arch(fail)
    if self.mlm_head and self.causal:
      fail(
          "mlm_head",
          "a masked-LM head needs attention_mask='bidirectional' (an encoder); "
          "set model.attention_mask=bidirectional or model.mlm_head=False",
      )

  def _check_ints(self, fail, low: int, fields: list[str], problem: str) -> None:
    """Each of `fields` must be an int (not a bool) >= low; else `problem`, formatted with
    the field `f`, its value `v` and `low`."""
    for f in fields:
      v = getattr(self, f)
      if isinstance(v, bool) or not isinstance(v, int) or v < low:
        fail(f, problem.format(f=f, v=v, low=low))

  def _validate_arch(self, fail) -> None:
    """encoder_decoder: a causal decoder over a plain token sequence (no BERT heads)."""
    self._check_ints(
        fail, 0, ["num_decoder_layers"], "must be an integer >= 0 (0: num_layers), got {v!r}"
    )
    if self.arch != "encoder_decoder":
      return
    if self.attention_mask != "causal":
      fail(
          "attention_mask",
          "arch=encoder_decoder has a bidirectional encoder and a causal decoder by "
          "construction; leave model.attention_mask=causal",
      )
    for f in ("mlm_head", "pooler", "type_vocab_size"):
      if getattr(self, f):
        fail(f, f"arch=encoder_decoder has no BERT {f}; set model.{f} to its default")

  def _validate_parametrization(self, fail) -> None:
    """muP needs the width its hyperparameters were tuned at; CompleteP also the depth and a
    residual exponent alpha in (0, 1] (1: CompleteP, 0.5: the sqrt-depth variant)."""
    bases = ["base_width", "base_depth", "base_head_dim"]
    self._check_ints(fail, 0, bases, "must be an integer >= 0 (0: unset), got {v!r}")
    if self.parametrization == "sp":
      return
    if self.base_width == 0:
      fail(
          "base_width",
          f"parametrization={self.parametrization} scales hyperparameters from "
          f"a tuned base model; set --config.model.base_width=<d_model of that base> (e.g. "
          f"{self.d_model} to keep this model's own settings)",
      )
    if self.parametrization == "completep":
      if self.base_depth == 0:
        fail(
            "base_depth",
            "parametrization=completep scales with depth from a tuned base; set "
            f"--config.model.base_depth=<num_layers of that base> (e.g. {self.num_layers})",
        )
      alpha = self.completep_alpha
      if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        fail(
            "completep_alpha",
            f"must lie in (0, 1] (1: CompleteP, 0.5: 1/sqrt(depth) "
            f"residual branches), got {alpha!r}",
        )

  @property
  def moe_mlp_dim(self) -> int:
    """Hidden width of one expert (`expert_mlp_dim`, or `mlp_dim` when 0)."""
    return self.expert_mlp_dim or self.mlp_dim

  def is_moe_layer(self, layer: int) -> bool:
    """Layer `layer` (0-based) has an MoE feed-forward: every `moe_every`-th layer, the
    last of each group, when mlp=moe (the others are dense SwiGLU with mlp_dim)."""
    return self.mlp == "moe" and (layer + 1) % self.moe_every == 0

  def _validate_moe(self, fail) -> None:
    """Expert counts are positive, top-k fits the experts, moe_every divides the depth."""
    problem = "must be an integer >= {low}, got {v!r}; set --config.model.{f}=<int>"
    self._check_ints(fail, 1, ["num_experts", "experts_per_token", "moe_every"], problem)
    self._check_ints(fail, 0, ["expert_mlp_dim", "num_shared_experts"], problem)
    if self.mlp != "moe":
      return
    if self.experts_per_token > self.num_experts:
      fail(
          "experts_per_token",
          f"top-{self.experts_per_token} routing needs at least that many experts but "
          f"num_experts={self.num_experts}; use experts_per_token <= {self.num_experts}",
      )
    if self.num_layers % self.moe_every:
      fail(
          "moe_every",
          f"num_layers={self.num_layers} is not a multiple of moe_every={self.moe_every}; "
          "use a divisor of num_layers",
      )
