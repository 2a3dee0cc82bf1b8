"""The tiny default: a byte-level GPT that trains on the CPU in minutes.

    python -m train --config configs/default.py --workdir runs/default
    python -m train --config configs/default.py:size=tiny --workdir /tmp/smoke   # seconds

Sizes: "default" (tuned to train on the embedded corpus in about 5 minutes on a 2-core CPU,
data preparation and compilation included) and "tiny" (d_model 32, 2 layers, seq 32: the
model the tests use).
"""

from configs import base
from configs import preset_args


def _tiny(c):
  c.model.update(
      d_model=32, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=16, mlp_dim=64, max_seq_len=32
  )
  c.data.seq_len = 32
  c.train.update(steps=40, batch_size=8, warmup_steps=1, learning_rate=3e-3, log_every=10)
  c.eval.update(every=20, batches=2)
  c.checkpoint.update(every=20, keep=2)


def _default(c):
  # ~0.8M params, 1200 steps x 4096 tokens (4.9M bytes, 1/3 of an epoch of `embedded`).
  # Measured (2-core box, quiet): ~4 min wall including data preparation and compilation.
  c.model.update(
      d_model=128,
      num_layers=4,
      num_heads=4,
      num_kv_heads=4,
      head_dim=32,
      mlp_dim=512,
      max_seq_len=128,
  )
  c.data.seq_len = 128
  c.train.update(
      steps=1200,
      batch_size=32,
      warmup_steps=60,
      learning_rate=3e-3,
      schedule="cosine",
      min_lr_ratio=0.1,
      log_every=20,
  )
  c.eval.update(every=300, batches=8)
  c.checkpoint.update(every=300, keep=3)


SIZES = {"default": _default, "tiny": _tiny}


def get_config(arg: str = ""):
  args = preset_args.parse(arg, {"size": "default"}, "default")
  c = base.base_config()
  c.name = "default" if args["size"] == "default" else f"default-{args['size']}"
  preset_args.pick_size(SIZES, args["size"], "default")(c)
  return c
