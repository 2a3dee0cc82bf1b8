"""LayerNorm and RMSNorm over the last (embed) dim, computed in float32 for stability."""

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def normalize(x, eps: float, center: bool):
  """x / rms(x) over the last axis, after subtracting the mean when `center` (LayerNorm).

  The backward is written out (dx = (dy - x_hat mean(dy x_hat) - mean(dy)) / rms) rather than
  left to autodiff: autodiff's version ends in a chain of small broadcast-adds that XLA:CPU
  fuses into, and recomputes in, every later consumer of the residual stream's gradient --
  work that grows with the square of the depth (see docs/performance.md).
  """
  return _normalize_fwd(x, eps, center)[0]


def _normalize_fwd(x, eps, center):
  if center:
    x = x - jnp.mean(x, axis=-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
  x_hat = x * rstd
  return x_hat, (x_hat, rstd)


def _normalize_bwd(eps, center, residuals, dy):
  del eps
  x_hat, rstd = residuals
  dx = dy - x_hat * jnp.mean(dy * x_hat, axis=-1, keepdims=True)
  if center:
    dx = dx - jnp.mean(dy, axis=-1, keepdims=True)
  return (dx * rstd,)


normalize.defvjp(_normalize_fwd, _normalize_bwd)


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
    if self.kind not in ("layernorm", "rmsnorm"):
      raise ValueError(f"norm kind {self.kind!r}: choose layernorm|rmsnorm")
    x = normalize(x_BxLxD.astype(jnp.float32), self.eps, self.kind == "layernorm")
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
