"""Position encodings that need no parameters: sinusoidal (added to the embeddings) and
rotary (applied to queries and keys). Both take explicit integer positions so packed documents
and cached decoding use the right offsets. The learned table lives in embeddings.py."""

import jax.numpy as jnp


def sinusoidal(positions_BxL, d_model: int, max_timescale: float = 10_000.0):
  """[B, L, D] float32: sin on the first D/2 dims, cos on the rest (Vaswani et al. 2017)."""
  half = d_model // 2
  inv_freq = max_timescale ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles_BxLxF = positions_BxL.astype(jnp.float32)[..., None] * inv_freq
  return jnp.concatenate([jnp.sin(angles_BxLxF), jnp.cos(angles_BxLxF)], axis=-1)


def apply_rope(x_BxLxNxH, positions_BxL, theta: float = 10_000.0):
  """Rotary embedding, rotate-half layout (GPT-NeoX / HF Llama): dims i and i + H/2 form a
  pair rotated by angle pos * theta^(-2i/H). Computed in float32, returned in x's dtype.
  q.k then depends on positions only through their difference."""
  h = x_BxLxNxH.shape[-1]
  half = h // 2
  inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / h)
  angles_BxLx1xF = (positions_BxL.astype(jnp.float32)[..., None] * inv_freq)[:, :, None, :]
  sin, cos = jnp.sin(angles_BxLx1xF), jnp.cos(angles_BxLx1xF)
  x = x_BxLxNxH.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxNxH.dtype)
