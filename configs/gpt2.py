"""GPT-2 (Radford et al. 2019): pre-norm decoder, learned positions, GELU, tied embeddings.

    --config configs/gpt2.py:size=124M|355M|774M|1558M

Published parameter counts (HF checkpoints): 124,439,808 / 354,823,168 / 774,030,080 /
1,557,611,200, which these shapes reproduce. Vocabulary 50257 (GPT-2 BPE), context 1024.

With the default byte tokenizer (260 ids) the vocabulary rows past 260 are padding (allowed,
with one logged note); for the published vocabulary train a BPE to this size
(`python -m train.data.tokenizer train --vocab-size 50257 --out tok.json`) and pass
`--config.data.tokenizer=tok.json`.
"""

from configs import base
from configs import preset_args

# size: (num_layers, d_model, num_heads, learning_rate)
SIZES = {
    "124M": (12, 768, 12, 6e-4),
    "355M": (24, 1024, 16, 3e-4),
    "774M": (36, 1280, 20, 2.5e-4),
    "1558M": (48, 1600, 25, 2e-4),
}


def get_config(arg: str = ""):
  args = preset_args.parse(arg, {"size": "124M"}, "gpt2")
  layers, d, heads, lr = preset_args.pick_size(SIZES, args["size"], "gpt2")
  c = base.gpt_config(f"gpt2-{args['size']}", 50257, d, layers, heads, 1024)
  c.train.batch_size = 512  # 0.5M tokens per step
  c.train.learning_rate = lr
  c.train.warmup_steps = 2000
  c.train.steps = 100_000
  return c
