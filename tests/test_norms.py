"""The norms' written-out backward: the same gradients as autodiff, and a compiled train step
whose size grows linearly with depth (autodiff's backward made XLA:CPU recompute the residual
gradient's chain of adds in every later layer, work quadratic in depth)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import bench as bench_cfg
from model import norms
from train import build
from train import mesh as mesh_lib
from train import spec


def _plain(x, eps, center):
  """The textbook formula, differentiated by autodiff."""
  if center:
    x = x - jnp.mean(x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


@pytest.mark.parametrize("center", [True, False], ids=["layernorm", "rmsnorm"])
def test_normalize_matches_autodiff_of_the_formula(center):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(3.0, 2.0, (4, 5, 48)), jnp.float32)
  dy = jnp.asarray(rng.normal(size=(4, 5, 48)), jnp.float32)
  y, vjp = jax.vjp(lambda x: norms.normalize(x, 1e-5, center), x)
  y_ref, vjp_ref = jax.vjp(lambda x: _plain(x, 1e-5, center), x)
  np.testing.assert_array_equal(y, y_ref)  # the forward is the same arithmetic
  np.testing.assert_allclose(vjp(dy)[0], vjp_ref(dy)[0], rtol=1e-5, atol=1e-6)
  # second order (e.g. a gradient penalty) still works through the custom rule's pieces
  hvp = jax.grad(
      lambda x: jnp.sum(jax.grad(lambda x: jnp.sum(norms.normalize(x, 1e-5, center) * dy))(x) ** 2)
  )
  hvp_ref = jax.grad(
      lambda x: jnp.sum(jax.grad(lambda x: jnp.sum(_plain(x, 1e-5, center) * dy))(x) ** 2)
  )
  np.testing.assert_allclose(hvp(x), hvp_ref(x), rtol=1e-4, atol=1e-5)


def _step_adds(num_layers: int) -> int:
  """Elementwise f32 adds in the optimised HLO of the real train step (one CPU device)."""
  config = bench_cfg.get_config("tiny")
  config.model.num_layers = num_layers
  built = build.build(
      spec.resolve(config), mesh=mesh_lib.make_mesh(config, devices=jax.devices()[:1])
  )
  hlo = built.train_step.lower().compile().as_text()
  return len(re.findall(r"= f32\[[^\]]*\]\{[^}]*\} add\(", hlo))


def test_the_compiled_step_grows_linearly_with_depth():
  a2, a4, a8 = (_step_adds(n) for n in (2, 4, 8))
  # Linear growth doubles the increment from 4 to 8 layers; the quadratic chain made it 3.4x.
  assert a8 - a4 <= 2.3 * (a4 - a2), (a2, a4, a8)
