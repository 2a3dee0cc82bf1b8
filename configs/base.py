"""The full config schema with defaults. Every preset starts from `base_config()`.

Sections:
  model       shapes and architecture choices (read by `model/`)
  data        corpus, tokenizer and sequence length (read by `train/data/`)
  train       optimisation and the step (read by `train/`)
  eval        periodic held-out evaluation
  checkpoint  Orbax checkpointing policy
  mesh        device mesh and logical-to-mesh axis rules
  distributed multi-host initialisation
"""

import ml_collections

# Logical axis names used by the model, mapped to the mesh axes `data`, `fsdp`, `tensor`.
# Rules are applied in order and a mesh axis is used at most once per array, so an
# activation (batch, length, embed) shards batch over (data, fsdp) and leaves embed alone,
# while a parameter (vocab, embed) shards embed over fsdp (FSDP) and vocab over tensor.
DEFAULT_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
)


def model_config(**overrides) -> ml_collections.ConfigDict:
  """Model section: a small GPT-2-style decoder unless overridden."""
  m = ml_collections.ConfigDict(
      dict(
          vocab_size=260,  # byte tokenizer: 256 bytes + BOS/EOS/PAD/MASK
          d_model=256,
          num_layers=4,
          num_heads=4,
          num_kv_heads=4,  # == num_heads: MHA; 1: MQA; in between: GQA
          head_dim=64,  # need not equal d_model // num_heads
          mlp_dim=1024,
          max_seq_len=256,  # size of the learned position table; RoPE/sinusoidal ignore it
          pos_encoding="learned",  # learned | sinusoidal | rope | none
          rope_theta=10_000.0,
          attention_mask="causal",  # causal (decoder) | bidirectional (encoder)
          attention_impl="auto",  # xla | cudnn | blocked | auto; see model/attention_ops.py
          mlp="gelu",  # gelu | swiglu
          norm="layernorm",  # layernorm | rmsnorm
          norm_position="pre",  # pre | post
          norm_eps=1e-5,
          use_bias=True,
          tie_embeddings=True,
          dropout=0.0,
          mlm_head=False,  # BERT-style transform + tied decoder head for masked LM
          embed_norm=False,  # LayerNorm right after the embeddings (BERT)
          type_vocab_size=0,  # token-type (segment A/B) embeddings (BERT: 2)
          pooler=False,  # BERT pooler (dense + tanh on the first token)
          scan_layers=True,
          scan_unroll=-1,  # layers per scan-loop iteration: -1 auto (all on CPU if <= 8
          # layers, else 1), 0 all (no loop), k >= 1; see model/transformer.py
          remat="none",  # none | full | dots_saveable | ...
          dtype="float32",  # compute dtype
          param_dtype="float32",  # master weights
          init_std=0.02,
          parametrization="sp",  # sp | mup | completep; see model/parametrization.py
          base_width=0,  # mup/completep: d_model the hyperparameters were tuned at
          base_depth=0,  # completep: num_layers the hyperparameters were tuned at
          base_head_dim=0,  # mup attention 1/head_dim rule: the base's head_dim
          # (0: head_dim * base_width / d_model, i.e. fixed head count)
          completep_alpha=1.0,  # completep residual branches scaled by depth^-alpha, (0, 1]
          arch="decoder",  # decoder | encoder | encoder_decoder (see model/config.py ARCHS)
          num_decoder_layers=0,  # encoder_decoder: decoder depth (0: num_layers)
          share_embeddings=True,  # encoder_decoder: one token table for source and target
      )
  )
  m.update(overrides)
  return m


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "default"
  c.seed = 0
  c.init_from = ""  # a run directory whose parameters start this run (fine-tuning)
  c.model = model_config()
  c.data = ml_collections.ConfigDict(
      dict(
          source="embedded",  # see train/data/sources.py for the registry
          tokenizer="byte",  # byte | path to tokenizer.json / SentencePiece model
          seq_len=256,
          prepared_dir="",  # where prepared shards live; empty: a cache under the workdir
          val_fraction=0.01,  # fraction of documents (by content hash) held out per domain
          num_workers=0,
      )
  )
  c.train = ml_collections.ConfigDict(
      dict(
          steps=1000,
          batch_size=16,  # global batch, in sequences
          microbatches=1,  # gradient accumulation (lax.scan inside the step)
          objective="next_token",  # next_token | mlm
          mlm_probability=0.15,
          optimizer="adamw",  # adamw | adafactor | lion
          learning_rate=1e-3,
          b1=ml_collections.config_dict.placeholder(float),  # unset: the optimizer's default
          b2=ml_collections.config_dict.placeholder(float),  # (adamw 0.9/0.95, lion 0.9/0.99)
          eps=1e-8,
          weight_decay=0.1,
          decay_embeddings=False,
          schedule="cosine",  # cosine | linear | constant | wsd
          warmup_steps=100,
          min_lr_ratio=0.1,
          decay_fraction=0.2,  # wsd: fraction of steps spent cooling down
          cooldown="linear",  # wsd cooldown shape: linear | 1-sqrt
          grad_clip=1.0,
          z_loss=0.0,
          max_nonfinite_steps=10,  # consecutive skipped updates before stopping
          log_every=20,
          transfer_guard="disallow",  # jax.transfer_guard around the step: disallow | log | allow
      )
  )
  c.eval = ml_collections.ConfigDict(
      dict(
          every=250,
          batches=8,
      )
  )
  c.checkpoint = ml_collections.ConfigDict(
      dict(
          every=250,
          keep=3,
          keep_every=0,  # also keep every M-th step (0: off)
          async_save=True,
          preemption_poll_every=10,  # multi-process: steps between cross-process stop checks
      )
  )
  c.mesh = ml_collections.ConfigDict(
      dict(
          shape=(-1, 1, 1),  # (data, fsdp, tensor) within a slice; one entry may be -1
          dcn_shape=(1, 1, 1),  # across slices (multi-slice TPU)
          axis_rules=DEFAULT_AXIS_RULES,
      )
  )
  c.distributed = ml_collections.ConfigDict(
      dict(
          enabled=False,  # also switched on by the environment (Cloud TPU, SLURM)
          coordinator_address="",
          num_processes=0,
          process_id=-1,
      )
  )
  return c
