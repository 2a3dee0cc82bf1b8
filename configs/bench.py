"""The CPU speed peers: the same GPT-2-style models as ../shared/bench/torch_gpt.py.

    python -m train.bench --config configs/bench.py:S      # or :M, :tiny (tests)

Pre-LN, learned positions, GELU(tanh) MLP 4x, tied embeddings, biases, LayerNorm eps 1e-5,
AdamW (betas 0.9/0.95, eps 1e-8, wd 0.1 on all matrices incl. embeddings, lr 3e-4),
global-norm clipping 1.0, fp32 everywhere. Random tokens (train.bench makes the batches).
"""

from configs import base

SIZES = {
    # vocab, d_model, layers, heads, seq, batch
    "S": (256, 256, 4, 4, 256, 16),
    "M": (8192, 512, 8, 8, 512, 8),
    "tiny": (64, 32, 2, 2, 32, 4),
}


def get_config(arg: str = "S"):
  size = (arg or "S").strip()
  if size.startswith("size="):
    size = size[len("size=") :]
  if size not in SIZES:
    raise ValueError(
        f"configs/bench.py: unknown size {size!r}; choose one of "
        f"{'|'.join(SIZES)} (e.g. configs/bench.py:S)"
    )
  vocab, d, layers, heads, seq, batch = SIZES[size]
  c = base.gpt_config(
      f"bench_{size}", vocab, d, layers, heads, seq, norm_eps=1e-5, dtype="float32", init_std=0.02
  )
  c.train.update(
      dict(
          batch_size=batch,
          learning_rate=3e-4,
          b1=0.9,
          b2=0.95,
          eps=1e-8,
          weight_decay=0.1,
          decay_embeddings=True,
          schedule="constant",
          warmup_steps=0,
          grad_clip=1.0,
          z_loss=0.0,
          steps=20,
      )
  )
  c.eval.batches = 0
  return c
