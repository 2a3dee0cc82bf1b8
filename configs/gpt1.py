"""GPT-1 (Radford et al. 2018), ~117M: post-norm decoder (no final norm), learned positions,
GELU, tied embeddings, 40478-token BPE vocabulary, context 512.

    --config configs/gpt1.py

With the default byte tokenizer (260 ids) the vocabulary rows past 260 are padding (allowed,
with one logged note); for the published vocabulary train a BPE to this size
(`python -m train.data.tokenizer train --vocab-size 40478 --out tok.json`) and pass
`--config.data.tokenizer=tok.json`.
"""

from configs import base
from configs import preset_args


def get_config(arg: str = ""):
  args = preset_args.parse(arg, {"size": "117M"}, "gpt1")
  preset_args.pick_size({"117M": None}, args["size"], "gpt1")
  c = base.gpt_config("gpt1-117M", 40478, 768, 12, 12, 512, norm_position="post", dropout=0.1)
  c.train.update(
      batch_size=64, learning_rate=2.5e-4, warmup_steps=2000, steps=100_000, weight_decay=0.01
  )
  return c
