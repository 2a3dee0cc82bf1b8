"""The full config schema with defaults. Every preset starts from `base_config()`.

The fields, their types and defaults are declared once, in the dataclasses that the config
resolves into (`train/spec.py`; the model's in `model/config.py`); this file turns them into
the ConfigDict that config files edit and `--config.a.b=value` flags override.

Sections:
  model       shapes and architecture choices (model/config.py ModelConfig)
  data        corpus, tokenizer and sequence length (train/spec.py DataSpec)
  train       optimisation and the step (TrainSpec)
  eval        periodic held-out evaluation (EvalSpec)
  checkpoint  Orbax checkpointing policy (CheckpointSpec)
  mesh        device mesh and logical-to-mesh axis rules (MeshSpec)
  distributed multi-host initialisation (DistributedSpec)
  cost        inputs of the cost and energy estimates (CostSpec; train/cost.py)
"""

import ml_collections

from model.config import ModelConfig
from train import spec
from train.spec import DEFAULT_AXIS_RULES  # noqa: F401  (re-exported: configs name it)
from train.spec import EXPERT_PARALLEL_AXIS_RULES  # noqa: F401  (re-exported)


def _section(cls) -> ml_collections.ConfigDict:
  """A section's defaults; a field whose default is None (unset) still only takes floats."""
  values = {
      k: ml_collections.config_dict.placeholder(float) if v is None else v
      for k, v in spec.defaults(cls).items()
  }
  return ml_collections.ConfigDict(values)


def model_config(**overrides) -> ml_collections.ConfigDict:
  """Model section: a small GPT-2-style decoder unless overridden."""
  m = _section(ModelConfig)
  m.update(overrides)
  return m


def gpt_config(
    name: str, vocab_size: int, d_model: int, num_layers: int, num_heads: int, seq_len: int, **model
) -> ml_collections.ConfigDict:
  """A config around a GPT-2-style model (the presets gpt1, gpt2, gpt3, bert, bench and
  transformer): causal MHA with heads of d_model // num_heads, learned positions up to
  `seq_len` (also data.seq_len), a 4x GELU MLP, pre-LayerNorm, biases, tied embeddings, no
  dropout, bf16 compute over fp32 weights; `model` overrides any of it."""
  c = base_config()
  c.name = name
  gpt = dict(
      vocab_size=vocab_size,
      d_model=d_model,
      num_layers=num_layers,
      num_heads=num_heads,
      num_kv_heads=num_heads,
      head_dim=d_model // num_heads,
      mlp_dim=4 * d_model,
      max_seq_len=seq_len,
      pos_encoding="learned",
      attention_mask="causal",
      mlp="gelu",
      norm="layernorm",
      norm_position="pre",
      use_bias=True,
      tie_embeddings=True,
      dropout=0.0,
      dtype="bfloat16",
      param_dtype="float32",
  )
  c.model = model_config(**{**gpt, **model})
  c.data.seq_len = seq_len
  return c


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "default"
  c.seed = 0
  c.init_from = ""  # a run directory whose parameters start this run (fine-tuning)
  c.model = model_config()
  for name, cls in spec.SECTIONS.items():
    if name != "model":
      c[name] = _section(cls)
  return c
