"""Feed-forward block: gelu (GPT/BERT: wi -> gelu -> wo) or swiglu (Llama: silu(wi_0) * wi_1
-> wo). Both keep their own mlp_dim; swiglu has three matrices instead of two."""

from flax import linen as nn
import jax.numpy as jnp

from model import parametrization
from model.config import ModelConfig
from model.linear import Linear


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD, deterministic: bool = True):
    cfg = self.cfg
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    dense = lambda feats, axes, name, std=parametrization.hidden_init_std(cfg): Linear(
        (feats,), axes, use_bias=cfg.use_bias, init_std=std, dtype=dt, param_dtype=pdt, name=name
    )
    if cfg.mlp == "gelu":
      h_BxLxF = nn.gelu(dense(cfg.mlp_dim, ("embed", "mlp"), "wi")(x_BxLxD), approximate=True)
    else:
      gate = dense(cfg.mlp_dim, ("embed", "mlp"), "wi_0")(x_BxLxD)
      up = dense(cfg.mlp_dim, ("embed", "mlp"), "wi_1")(x_BxLxD)
      h_BxLxF = nn.silu(gate) * up
    h_BxLxF = nn.with_logical_constraint(h_BxLxF, ("batch", "length", "mlp"))
    h_BxLxF = nn.Dropout(cfg.dropout)(h_BxLxF, deterministic=deterministic)
    # Residual-branch output: GPT-2's 1/sqrt(2 * num_layers) init scaling.
    return dense(cfg.d_model, ("mlp", "embed"), "wo", parametrization.residual_out_init_std(cfg))(
        h_BxLxF
    )
