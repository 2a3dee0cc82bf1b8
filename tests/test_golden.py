"""Golden values of the train step: the tripwire for any change in the numbers it computes.

Five steps of `configs/default.py:size=tiny` on one CPU device, from its seed, on fixed
packed batches (two documents per row). The logged losses and gradient norms must equal the
recorded ones bit for bit: a refactoring that changes them changed the arithmetic. When a
change is meant to alter the numbers (a new initialisation, a fixed bug), rerun with
UNLEASH_PRINT_GOLDEN=1, check the new values make sense, and record them with the reason.
"""

import os

import jax
import numpy as np

from configs import default
from train import build
from train import inputs
from train import mesh as mesh_lib
from train import spec

B, L = 8, 32
# (loss, grad_norm) per step, as float.hex() so the comparison is exact.
# Re-recorded when the norms got their written-out backward (model/norms.py `normalize`): the
# losses kept every bit; the grad norms of the first and third steps moved in their last bits.
GOLDEN = [
    ("0x1.6382200000000p+2", "0x1.c0f21e0000000p-1"),
    ("0x1.6428020000000p+2", "0x1.a93ca40000000p-1"),
    ("0x1.63f1f20000000p+2", "0x1.798a280000000p-1"),
    ("0x1.6300260000000p+2", "0x1.3596260000000p-1"),
    ("0x1.6412320000000p+2", "0x1.2bde2c0000000p-1"),
]


def _batch(step):
  rng = np.random.default_rng([7, step])
  toks = rng.integers(0, 256, (B, L + 1)).astype(np.int32)
  seg = np.where(np.arange(L) < 13, 1, 2).astype(np.int32)[None].repeat(B, 0)
  pos = np.concatenate([np.arange(13), np.arange(L - 13)])[None].repeat(B, 0).astype(np.int32)
  return {
      "inputs": toks[:, :-1],
      "targets": toks[:, 1:],
      "segment_ids": seg,
      "positions": pos,
      "weights": np.ones((B, L), np.float32),
  }


def _run():
  config = default.get_config("size=tiny")
  built = build.build(
      spec.resolve(config), mesh=mesh_lib.make_mesh(config, devices=jax.devices()[:1])
  )
  state = built.init_state()
  out = []
  for step in range(5):
    batch = inputs.to_global(_batch(step), built.train_step.batch_sharding, B)
    state, m = built.train_step(state, batch)
    out.append((float(m["loss"]).hex(), float(m["grad_norm"]).hex()))
  return out


def test_train_step_numbers_are_unchanged():
  got = _run()
  if os.environ.get("UNLEASH_PRINT_GOLDEN"):
    print("GOLDEN =", got)
  assert got == GOLDEN
