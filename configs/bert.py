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
  c = base.gpt_config(
      f"bert-{args['size']}",
      30522,
      d,
      layers,
      heads,
      512,
      attention_mask="bidirectional",
      norm_position="post",
      norm_eps=1e-12,
      dropout=0.1,
      mlm_head=True,
      embed_norm=True,
      type_vocab_size=2,
      pooler=True,
  )
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
