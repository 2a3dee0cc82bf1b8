"""`Linear`: a dense layer over several contracting and output dims, with logical axis names.

One module for every projection (QKV, attention output, MLP, heads) so the parameter layout,
dtype policy (fp32 master weights, compute in `dtype`) and partitioning are decided once.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn


class Linear(nn.Module):
  """y[..., *features] = x[..., *in_dims] @ kernel[*in_dims, *features] (+ bias[*features]).

  `num_in`: how many trailing dims of x are contracted. `axes`: logical names for the kernel
  dims (in dims then out dims); the bias takes the out-dim names.
  """

  features: Sequence[int]
  axes: Sequence[str | None]
  num_in: int = 1
  use_bias: bool = True
  init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  out_dtype: Any = None  # accumulate and return in this dtype (e.g. float32 logits)

  @nn.compact
  def __call__(self, x):
    features = tuple(self.features)
    in_shape = x.shape[-self.num_in :]
    if len(self.axes) != self.num_in + len(features):
      raise ValueError(
          f"{self.name}: {len(self.axes)} axis names for a "
          f"{self.num_in + len(features)}-d kernel"
      )
    kernel = self.param(
        "kernel",
        nn.with_logical_partitioning(nn.initializers.normal(self.init_std), tuple(self.axes)),
        in_shape + features,
        self.param_dtype,
    )
    kernel = jnp.asarray(kernel, self.dtype)
    x = jnp.asarray(x, self.dtype)
    contract = (tuple(range(x.ndim - self.num_in, x.ndim)), tuple(range(self.num_in)))
    y = jax.lax.dot_general(x, kernel, (contract, ((), ())), preferred_element_type=self.out_dtype)
    if self.use_bias:
      bias = self.param(
          "bias",
          nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.axes[self.num_in :])),
          features,
          self.param_dtype,
      )
      y = y + jnp.asarray(bias, self.out_dtype or self.dtype)
    return y
