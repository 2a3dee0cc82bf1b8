"""Zero-shot scoring on a 2x2 data x fsdp mesh of 4 CPU devices equals one device, for
tests/test_zeroshot.py.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/workers/zeroshot_mesh.py

Raises (exit code 1) on a mismatch; prints `OK` and the first scores otherwise.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import base
from eval import zeroshot as zs
from model.config import ModelConfig
from model.transformer import Transformer
from train import mesh as mesh_lib
from train import spec


def main() -> None:
  assert jax.device_count() == 4
  config = base.base_config()
  config.model.update(
      d_model=32,
      num_layers=1,
      num_heads=2,
      num_kv_heads=2,
      head_dim=16,
      mlp_dim=64,
      max_seq_len=32,
      init_std=0.3,
  )
  config.data.seq_len = 32
  config.mesh.shape = (2, 2, 1)  # data x fsdp: params sharded over fsdp, batch over both
  mesh, rules = mesh_lib.make_mesh(config), spec.resolve(config).mesh.axis_rules
  model = Transformer(ModelConfig.from_config(config.model))
  boxed = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  params = nn.unbox(boxed)
  sharded = jax.device_put(params, mesh_lib.param_shardings(boxed, mesh, rules))
  assert not sharded["embed"]["embedding"].sharding.is_fully_replicated
  reqs = [([256] + list(b"ctx %d" % i), list(b" cont%d" % (i * 7))) for i in range(10)]
  one = zs.score_requests(
      zs.make_token_logprobs_fn(config.model, params), reqs, window=16, batch_size=4
  )
  multi = zs.score_requests(
      zs.make_token_logprobs_fn(config.model, sharded, mesh, rules), reqs, window=16, batch_size=4
  )
  np.testing.assert_allclose(one[0], multi[0], atol=1e-4)
  assert one[1].tolist() == multi[1].tolist()
  print("OK", one[0][:3])


if __name__ == "__main__":
  main()
