"""The original Transformer (Vaswani et al. 2017): post-norm encoder-decoder with sinusoidal
positions and one token table shared by source, target and output layer.

    --config configs/transformer.py:size=base|big|tiny[,arch=decoder]

base/big: the paper's 65M/213M models (37k shared BPE vocabulary, 6+6 layers). tiny: fairseq's
`transformer_tiny` (4+4 layers, d_model 128, FFN 256, 4 heads), small enough to train on a CPU.
The paper's FFN uses ReLU; here it is GELU (same parameter count). Train the joint BPE on both
sides (`python -m train.data.tokenizer train --vocab-size 37000 ...` over the source and target
files) and pass `--config.data.tokenizer=tok.json` and a parallel source (`pairs:` or
`jsonl:<glob>:<src_field>:<tgt_field>`, see train/data/parallel.py) as data.source.

arch=decoder: the decoder-only counterpart trained on the same pairs as "source <sep> target"
rows with the loss on the target (train/data/parallel.py): one causal stack as deep as both
stacks together (so the parameter counts are close; no cross-attention), rows of 256 tokens
holding source and target; eval.translate / eval.summarize decode it from BOS source <sep>.
"""

from configs import base
from configs import preset_args
from model.config import ModelConfig

# size: (layers per stack, d_model, num_heads, mlp_dim, dropout, vocab_size)
SIZES = {
    "base": (6, 512, 8, 2048, 0.1, 37000),
    "big": (6, 1024, 16, 4096, 0.3, 37000),
    "tiny": (4, 128, 4, 256, 0.1, 10000),
}


def get_config(arg: str = ""):
  args = preset_args.parse(arg, {"size": "base", "arch": "encoder_decoder"}, "transformer")
  if args["arch"] not in ("encoder_decoder", "decoder"):
    raise ValueError(
        f"transformer: arch={args['arch']!r} unknown; use arch=encoder_decoder or arch=decoder"
    )
  decoder_only = args["arch"] == "decoder"
  layers, d, heads, mlp_dim, dropout, vocab = preset_args.pick_size(
      SIZES, args["size"], "transformer"
  )
  c = base.gpt_config(
      f"transformer-{args['size']}" + ("-decoder" if decoder_only else ""),
      vocab,
      d,
      2 * layers if decoder_only else layers,
      heads,
      256,
      arch=args["arch"],
      num_decoder_layers=0 if decoder_only else layers,
      mlp_dim=mlp_dim,
      pos_encoding="sinusoidal",
      norm_position="post",
      share_embeddings=True,
      dropout=dropout,
      dtype="float32",
  )
  c.data.seq_len = 256 if decoder_only else 128  # tokens per row (per source / target row)
  c.data.val_fraction = 0.01
  c.train.batch_size = 64
  c.train.learning_rate = 5e-4
  c.train.b1 = 0.9
  c.train.b2 = 0.98
  c.train.eps = 1e-9
  c.train.weight_decay = 0.0001
  c.train.warmup_steps = 4000
  c.train.steps = 100_000
  ModelConfig.from_config(c.model)
  return c
