"""LayerNorm and RMSNorm over the last (embed) dim, computed in float32 for stability."""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


class Norm(nn.Module):
  """`kind`: layernorm (mean/var, scale + optional bias) or rmsnorm (RMS, scale only)."""

  kind: str = "layernorm"
  eps: float = 1e-5
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxLxD):
    d = x_BxLxD.shape[-1]
    x = x_BxLxD.astype(jnp.float32)
    if self.kind == "layernorm":
      x = x - jnp.mean(x, axis=-1, keepdims=True)
    elif self.kind != "rmsnorm":
      raise ValueError(f"norm kind {self.kind!r}: choose layernorm|rmsnorm")
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    scale = self.param(
        "scale",
        nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        (d,),
        self.param_dtype,
    )
    x = x * jnp.asarray(scale, jnp.float32)
    if self.kind == "layernorm" and self.use_bias:
      bias = self.param(
          "bias",
          nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
          (d,),
          self.param_dtype,
      )
      x = x + jnp.asarray(bias, jnp.float32)
    return x.astype(self.dtype)
