"""Lookup tables: tokens, learned positions, token types. `attend` reuses the token table as
the output layer when embeddings are tied."""

from typing import Any, Sequence

import jax.numpy as jnp
from flax import linen as nn


class Embed(nn.Module):
  """table[num, features] with logical `axes`; __call__ looks ids up, attend(x) = x @ table^T."""

  num: int
  features: int
  axes: Sequence[str | None] = ("vocab", "embed")
  init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.embedding = self.param(
        "embedding",
        nn.with_logical_partitioning(nn.initializers.normal(self.init_std), tuple(self.axes)),
        (self.num, self.features),
        self.param_dtype,
    )

  def __call__(self, ids):
    return jnp.take(jnp.asarray(self.embedding, self.dtype), ids, axis=0)

  def attend(self, x_BxLxD):
    """Logits [B, L, num] in float32 against the table (tied output layer)."""
    table = jnp.asarray(self.embedding, self.dtype)
    return jnp.einsum(
        "bld,vd->blv", x_BxLxD.astype(self.dtype), table, preferred_element_type=jnp.float32
    )
