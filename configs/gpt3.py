"""GPT-3 family (Brown et al. 2020, Table 2.1): GPT-2 architecture, context 2048, vocab 50257.

    --config configs/gpt3.py:size=125M|350M|760M|1.3B|2.7B|6.7B|13B|175B

Batch sizes (0.5M..3.2M tokens, here in sequences) and learning rates are the paper's.
Departures from the table, both because its rows are inconsistent: 1.3B lists 24 heads of
d_head 128 (24*128 != 2048); we keep d_head=128 and use 16 heads. 13B lists d_model 5140 with 40 heads of 128; we use 5120 = 40*128.
GPT-3's alternating locally-banded sparse attention is not modelled (all layers dense).

With the default byte tokenizer (260 ids) the vocabulary rows past 260 are padding (allowed,
with one logged note); for the published vocabulary train a BPE to this size
(`python -m train.data.tokenizer train --vocab-size 50257 --out tok.json`) and pass
`--config.data.tokenizer=tok.json`.
"""

from configs import base
from configs import preset_args

# size: (num_layers, d_model, num_heads, head_dim, batch in sequences of 2048, learning_rate)
SIZES = {
    "125M": (12, 768, 12, 64, 256, 6.0e-4),
    "350M": (24, 1024, 16, 64, 256, 3.0e-4),
    "760M": (24, 1536, 16, 96, 256, 2.5e-4),
    "1.3B": (24, 2048, 16, 128, 512, 2.0e-4),
    "2.7B": (32, 2560, 32, 80, 512, 1.6e-4),
    "6.7B": (32, 4096, 32, 128, 1024, 1.2e-4),
    "13B": (40, 5120, 40, 128, 1024, 1.0e-4),
    "175B": (96, 12288, 96, 128, 1536, 0.6e-4),
}
SEQ_LEN = 2048


def get_config(arg: str = ""):
  args = preset_args.parse(arg, {"size": "125M"}, "gpt3")
  layers, d, heads, head_dim, batch, lr = preset_args.pick_size(SIZES, args["size"], "gpt3")
  c = base.gpt_config(
      f"gpt3-{args['size']}",
      50257,
      d,
      layers,
      heads,
      SEQ_LEN,
      head_dim=head_dim,
      remat="none" if d < 2048 else "full",
  )
  c.train.update(
      batch_size=batch, learning_rate=lr, warmup_steps=375, steps=100_000, b2=0.95, weight_decay=0.1
  )
  return c
