"""Llama-style decoders: RoPE, RMSNorm, SwiGLU, grouped-query attention, untied output, no
biases. `tiny` trains on the CPU with the byte tokenizer; `1B` has TinyLlama-1.1B's shapes
(1,100,048,384 params) and `7B` Llama-2-7B's (6,738,415,616; MHA as published).

    --config configs/llama.py:size=tiny|small|1B|7B

With the default byte tokenizer (260 ids) the 32000-row vocabularies (small, 1B, 7B) are
padding past row 260 (allowed, with one logged note); for the published vocabulary train a
BPE to this size
(`python -m train.data.tokenizer train --vocab-size 32000 --out tok.json`) and pass
`--config.data.tokenizer=tok.json`.
"""

from configs import base
from configs import preset_args

# size: dict of model overrides + (seq_len, batch_size, learning_rate)
SIZES = {
    "tiny": (
        dict(
            vocab_size=260,
            d_model=256,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
            head_dim=64,
            mlp_dim=688,
        ),
        256,
        16,
        1e-3,
    ),
    "small": (
        dict(
            vocab_size=32000,
            d_model=768,
            num_layers=12,
            num_heads=12,
            num_kv_heads=4,
            head_dim=64,
            mlp_dim=2048,
        ),
        2048,
        256,
        6e-4,
    ),
    "1B": (
        dict(
            vocab_size=32000,
            d_model=2048,
            num_layers=22,
            num_heads=32,
            num_kv_heads=4,
            head_dim=64,
            mlp_dim=5632,
        ),
        2048,
        512,
        4e-4,
    ),
    "7B": (
        dict(
            vocab_size=32000,
            d_model=4096,
            num_layers=32,
            num_heads=32,
            num_kv_heads=32,
            head_dim=128,
            mlp_dim=11008,
        ),
        4096,
        1024,
        3e-4,
    ),
}


def get_config(arg: str = ""):
  args = preset_args.parse(arg, {"size": "tiny"}, "llama")
  return llama_config("llama", args["size"], SIZES, rope_theta=10_000.0, mlp="swiglu")


def llama_config(family: str, size: str, sizes: dict, **model):
  """A Llama-block decoder (RoPE, RMSNorm, GQA, untied output, no biases, AdamW b2 0.95) of
  `sizes[size]` = (model overrides, seq_len, batch_size, learning_rate); `model` adds the
  family's own fields (configs/mixtral.py: the MoE feed-forward)."""
  shape, seq_len, batch, lr = preset_args.pick_size(sizes, size, family)
  tiny = size == "tiny"
  c = base.base_config()
  c.name = f"{family}-{size}"
  c.model = base.model_config(
      max_seq_len=seq_len,
      pos_encoding="rope",
      norm="rmsnorm",
      norm_position="pre",
      norm_eps=1e-5,
      use_bias=False,
      tie_embeddings=False,
      dropout=0.0,
      dtype="float32" if tiny else "bfloat16",
      param_dtype="float32",
      remat="none" if tiny else "full",
      **model,
      **shape,
  )
  c.data.seq_len = seq_len
  c.train.batch_size = batch
  c.train.learning_rate = lr
  c.train.warmup_steps = 100 if tiny else 2000
  c.train.steps = 1000 if tiny else 100_000
  c.train.b2 = 0.95
  c.train.weight_decay = 0.1
  return c
