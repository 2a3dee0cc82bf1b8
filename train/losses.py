"""One cross-entropy for training, evaluation and zero-shot scoring.

`token_nll` works in float32 whatever the logits' dtype, so a bf16 forward pass still gives
log-probabilities accurate to ~1e-6 per token (bf16 logsumexp loses ~1e-2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_nll(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
  """-log p(target) per position: fp32 logsumexp of the logits minus the target's logit."""
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  log_z_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
  target_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  return log_z_BxL - target_BxL
