"""Schedules, the weight-decay mask and the optimiser chain (no model compilation)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from configs import default
from train import optim
from train import spec


def _train_cfg(**kw):
  c = base.base_config()
  c.train.update(dict(steps=1000, warmup_steps=100, learning_rate=1.0, min_lr_ratio=0.1))
  c.train.update(kw)
  return spec.resolve(c).train


def _lrs(t):
  f = optim.make_schedule(t)
  return np.array([float(f(s)) for s in range(t.steps + 1)])


def test_warmup_is_linear_from_zero():
  lr = _lrs(_train_cfg(schedule="cosine"))
  np.testing.assert_allclose(lr[:101], np.linspace(0, 1, 101), atol=1e-6)


def test_cosine_decays_to_floor_with_cosine_midpoint():
  lr = _lrs(_train_cfg(schedule="cosine"))
  assert np.all(np.diff(lr[100:]) <= 1e-7)
  assert lr[1000] == pytest.approx(0.1, abs=1e-6)
  # halfway through the decay: floor + (peak - floor) * (1 + cos(pi/2)) / 2
  assert lr[550] == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-6)


def test_linear_and_constant():
  lr = _lrs(_train_cfg(schedule="linear"))
  assert lr[550] == pytest.approx(0.55, abs=1e-6) and lr[1000] == pytest.approx(0.1, abs=1e-6)
  lr = _lrs(_train_cfg(schedule="constant"))
  assert np.all(lr[100:] == 1.0)


@pytest.mark.parametrize("cooldown,mid", [("linear", 0.5), ("1-sqrt", 1 - math.sqrt(0.5))])
def test_wsd_is_flat_then_cools_down(cooldown, mid):
  lr = _lrs(_train_cfg(schedule="wsd", decay_fraction=0.2, cooldown=cooldown))
  assert np.all(lr[100:801] == 1.0)  # stable until the last 20%
  assert np.all(np.diff(lr[800:]) < 0)
  assert lr[900] == pytest.approx(0.1 + 0.9 * mid, abs=1e-5)
  assert lr[1000] == pytest.approx(0.1, abs=1e-6)


def test_1sqrt_cools_faster_early_than_linear():
  lin = _lrs(_train_cfg(schedule="wsd", cooldown="linear"))
  sq = _lrs(_train_cfg(schedule="wsd", cooldown="1-sqrt"))
  assert np.all(sq[801:1000] < lin[801:1000])


@pytest.mark.parametrize("field,value", [("schedule", "cosinee"), ("cooldown", "exp")])
def test_unknown_schedule_names_the_field(field, value):
  with pytest.raises(ValueError, match=f"train.{field}: unknown value '{value}'"):
    _train_cfg(**dict({"schedule": "wsd"}, **{field: value}))


def _abstract_params(**model):
  from train import mesh as mesh_lib, state

  c = default.get_config("size=tiny")
  c.model.update(model)
  s = spec.resolve(c)
  m = mesh_lib.make_mesh(s, devices=jax.devices()[:1])
  return state.abstract_variables(s, state.make_model(s.model), m)["params"]


def test_decay_mask_on_the_real_model():
  mask = optim.decay_mask(_abstract_params(tie_embeddings=False, pos_encoding="learned"))
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
  decayed = {k for k, v in flat.items() if v}
  assert decayed, flat
  for k, v in flat.items():
    if "kernel" in k:
      assert v, k  # attention/MLP matrices and the untied head decay
    else:
      assert not v, k  # biases, norm scales, embedding tables do not
  assert any("unembed" in k for k in decayed)
  assert any("embedding" in k for k in flat)
  with_emb = optim.decay_mask(_abstract_params(), decay_embeddings=True)
  assert all(
      v
      for p, v in jax.tree_util.tree_leaves_with_path(with_emb)
      if "embedding" in jax.tree_util.keystr(p)
  )


def test_weight_decay_only_touches_masked_params():
  params = {
      "dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))},
      "embed": {"embedding": jnp.ones((3, 2))},
  }
  t = _train_cfg(
      optimizer="adamw",
      schedule="constant",
      warmup_steps=0,
      learning_rate=0.1,
      weight_decay=0.5,
      grad_clip=0.0,
  )
  tx, _ = optim.make_optimizer(t, params)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["dense"]["kernel"], 1 - 0.1 * 0.5)
  np.testing.assert_array_equal(new["dense"]["bias"], 1.0)
  np.testing.assert_array_equal(new["embed"]["embedding"], 1.0)


@pytest.mark.parametrize("name,lr", [("adamw", 0.05), ("adafactor", 0.05), ("lion", 0.01)])
def test_each_optimizer_minimises_a_quadratic(name, lr):
  """Lion (b2 0.99) takes sign steps of size lr: its rate is several times AdamW's lower."""
  params = {"w": {"kernel": jnp.full((4, 4), 3.0)}}
  t = _train_cfg(
      optimizer=name,
      schedule="constant",
      warmup_steps=0,
      learning_rate=lr,
      steps=100,
      weight_decay=0.0,
  )
  tx, _ = optim.make_optimizer(t, params)
  loss = lambda p: jnp.sum(jnp.square(p["w"]["kernel"] - 1.0))
  opt = tx.init(params)
  start = float(loss(params))
  for _ in range(60 if name != "lion" else 300):
    updates, opt = tx.update(jax.grad(loss)(params), opt, params)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < 0.1 * start


def _two_updates(grad_clip, grads):
  params = {"w": {"kernel": jnp.zeros((2,))}}
  t = _train_cfg(
      optimizer="adamw", schedule="constant", warmup_steps=0, grad_clip=grad_clip, weight_decay=0.0
  )
  tx, _ = optim.make_optimizer(t, params)
  opt, out = tx.init(params), []
  for g in grads:
    u, opt = tx.update({"w": {"kernel": jnp.array(g)}}, opt, params)
    out.append(np.asarray(u["w"]["kernel"]))
  return np.stack(out)


def test_global_norm_clipping_happens_before_the_optimizer():
  raw = [[30.0, 40.0], [0.3, 0.4]]  # norms 50 and 0.5
  pre_clipped = [[0.6, 0.8], [0.3, 0.4]]  # what clipping to norm 1 leaves
  clipped = _two_updates(1.0, raw)
  np.testing.assert_allclose(clipped, _two_updates(0.0, pre_clipped), rtol=1e-6)
  assert not np.allclose(clipped[1], _two_updates(0.0, raw)[1], rtol=1e-3)


def test_unknown_optimizer_lists_choices():
  with pytest.raises(
      ValueError, match="train.optimizer: unknown value 'sgdx'; choose one of adamw"
  ):
    _train_cfg(optimizer="sgdx")


@pytest.mark.parametrize("name", spec.OPTIMIZERS)
def test_decoupled_weight_decay_is_scaled_by_the_learning_rate(name):
  """10 zero-gradient steps at lr 0.01 and weight decay 0.1 shrink a matrix by (1 - 1e-3)^10
  for every optimizer (optax.adafactor's own decay ignores the rate: 0.9^10 = 0.349)."""
  params = {"dense": {"kernel": jnp.ones((4, 4))}}
  t = _train_cfg(
      optimizer=name,
      schedule="constant",
      warmup_steps=0,
      learning_rate=0.01,
      weight_decay=0.1,
      grad_clip=0.0,
  )
  tx, _ = optim.make_optimizer(t, params)
  opt = tx.init(params)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  for _ in range(10):
    updates, opt = tx.update(zeros, opt, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params["dense"]["kernel"], (1 - 1e-3) ** 10, rtol=1e-5)


def test_betas_default_per_optimizer_and_config_overrides_them():
  assert spec.betas(_train_cfg(optimizer="adamw")) == (0.9, 0.95)
  assert spec.betas(_train_cfg(optimizer="lion")) == (0.9, 0.99)
  assert spec.betas(_train_cfg(optimizer="lion", b1=0.95, b2=0.98)) == (0.95, 0.98)


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(schedule="cosine", steps=100, warmup_steps=100), "warmup_steps: 100 does not fit"),
        (dict(schedule="linear", steps=50, warmup_steps=80), "never decay"),
        (dict(schedule="constant", steps=50, warmup_steps=51), "does not fit"),
        (dict(schedule="wsd", steps=100, warmup_steps=90, decay_fraction=0.2), "WSD cooldown"),
    ],
)
def test_schedule_that_cannot_fit_is_an_error(kw, message):
  with pytest.raises(ValueError, match=message):
    _train_cfg(**kw)
