"""BERT (Devlin et al. 2019): bidirectional post-norm encoder with embedding LayerNorm,
token-type embeddings, a pooler and the tied masked-LM head. Published sizes: 110M / 340M
(HF BertModel without the MLM head: 109,482,240 / 335,141,888).

    --config configs/bert.py:size=base|large

With the default byte tokenizer (260 ids) the vocabulary rows past 260 are padding (allowed,
with one logged note); for the published vocabulary train a BPE to this size
(`python -m train.data.tokenizer train --vocab-size 30522 --out tok.json`) and pass
`--config.data.tokenizer=tok.json`.
"""

from configs import base
from configs import preset_args

# size: (num_layers, d_model, num_heads)
SIZES = {"base": (12, 768, 12), "large": (24, 1024, 16)}


def get_config(arg: str = ""):
  args = preset_args.parse(arg, {"size": "base"}, "bert")
  layers, d, heads = preset_args.pick_size(SIZES, args["size"], "bert")
  c = base.base_config()
  c.name = f"bert-{args['size']}"
  c.model = base.model_config(
      vocab_size=30522,
      d_model=d,
      num_layers=layers,
      num_heads=heads,
      num_kv_heads=heads,
      head_dim=d // heads,
      mlp_dim=4 * d,
      max_seq_len=512,
      pos_encoding="learned",
      attention_mask="bidirectional",
      mlp="gelu",
      norm="layernorm",
      norm_position="post",
      norm_eps=1e-12,
      use_bias=True,
      tie_embeddings=True,
      dropout=0.1,
      mlm_head=True,
      embed_norm=True,
      type_vocab_size=2,
      pooler=True,
      dtype="bfloat16",
      param_dtype="float32",
  )
  c.data.seq_len = 512
  c.train.objective = "mlm"
  c.train.mlm_probability = 0.15
  c.train.batch_size = 256
  c.train.learning_rate = 1e-4
  c.train.b2 = 0.999
  c.train.eps = 1e-6
  c.train.weight_decay = 0.01
  c.train.schedule = "linear"
  c.train.warmup_steps = 10_000
  c.train.steps = 1_000_000
  return c
