"""The jitted step on one device: gradient accumulation, MLM masking, losses, config errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from model.config import ModelConfig
from model.transformer import Transformer
from train import build
from train import inputs
from train import mesh as mesh_lib
from train import optim
from train import step as step_lib
from train import spec

B, L = 8, 32


def _config(**train):
  c = default.get_config("size=tiny")
  c.mesh.shape = (1, 1, 1)
  c.train.update(dict(warmup_steps=0, schedule="constant"))
  c.train.update(train)
  return c


def _batch(seed=0, pad_rows=0):
  rng = np.random.default_rng(seed)
  start = rng.integers(0, 200, (B, 1))
  x = ((start + 3 * np.arange(L + 1)[None]) % 250).astype(np.int32)
  seg = np.ones((B, L), np.int32)
  seg[:, 20:] = 2
  pos = np.concatenate([np.arange(20), np.arange(L - 20)])[None].repeat(B, 0).astype(np.int32)
  w = np.ones((B, L), np.float32)
  if pad_rows:
    seg[-pad_rows:] = 0
    w[-pad_rows:] = 0
  return {
      "inputs": x[:, :-1],
      "targets": x[:, 1:],
      "segment_ids": seg,
      "positions": pos,
      "weights": w,
  }


def _one_device_build(c, **kw):
  return build.build(spec.resolve(c), mesh=mesh_lib.make_mesh(c, devices=jax.devices()[:1]), **kw)


@pytest.fixture(scope="module")
def full():
  """The plain (one microbatch) step, compiled once for the tests that share it."""
  return _one_device_build(_config(microbatches=1))


def test_gradient_accumulation_equals_full_batch(full):
  accum = _one_device_build(_config(microbatches=4))
  init = jax.device_get(full.init_state())
  local = _batch(pad_rows=1)  # uneven token counts per microbatch: the mean is still exact
  results = []
  for b in (full, accum):
    state = jax.device_put(init, b.state_shardings)
    state, m = b.train_step(state, inputs.to_global(local, b.train_step.batch_sharding, B))
    results.append((jax.device_get(state.params), jax.device_get(m)))
  (p1, m1), (p4, m4) = results
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
  np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-5)
  assert m4["tokens"] == m1["tokens"] == (B - 1) * L
  # Adam divides by sqrt(v): parameters whose gradient is ~0 move by noise, so compare them
  # loosely here and the gradients themselves tightly below.
  for a, b in zip(jax.tree_util.tree_leaves(p4), jax.tree_util.tree_leaves(p1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  opts = step_lib.StepOptions.from_spec(spec.resolve(_config()))
  loss_fn = step_lib.make_loss_fn(full.model, opts)
  batch = {k: jnp.asarray(v) for k, v in local.items()}

  @functools.partial(jax.jit, static_argnums=1)
  def grads(params, m):
    g, stats = step_lib.accumulate_gradients(loss_fn, params, batch, jax.random.key(0), m)
    return jax.tree_util.tree_map(lambda x: x / stats["weight_sum"], g)

  g1, g4 = grads(init.params, 1), grads(init.params, 4)
  for a, b in zip(jax.tree_util.tree_leaves(g4), jax.tree_util.tree_leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  # and the step really moved the parameters
  assert any(
      not np.allclose(a, b)
      for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(init.params))
  )


def test_nonfinite_batch_leaves_state_unchanged_then_training_continues(full):
  b = full
  state = b.init_state()
  init = jax.device_get(state)
  bad = _batch()
  bad["weights"] = np.full_like(bad["weights"], np.nan)
  state, m = b.train_step(state, inputs.to_global(bad, b.train_step.batch_sharding, B))
  after = jax.device_get(state)
  assert int(m["skipped"]) == 1 and int(after.skipped) == 1 and int(after.nonfinite_streak) == 1
  assert int(after.step) == 1
  for x, y in zip(
      jax.tree_util.tree_leaves((after.params, after.opt_state)),
      jax.tree_util.tree_leaves((init.params, init.opt_state)),
  ):
    np.testing.assert_array_equal(x, y)
  state, m = b.train_step(state, inputs.to_global(_batch(), b.train_step.batch_sharding, B))
  assert int(m["skipped"]) == 0 and int(m["nonfinite_streak"]) == 0
  assert int(m["skipped_total"]) == 1 and np.isfinite(float(m["loss"]))


def test_mlm_corruption_statistics():
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 250, (64, 128)), jnp.int32)
  seg = jnp.ones_like(tokens).at[:, 100:].set(0)
  out = step_lib.mlm_corrupt(
      jax.random.key(0),
      {"inputs": tokens, "segment_ids": seg},
      mask_id=259,
      vocab_size=260,
      probability=0.15,
  )
  chosen = np.asarray(out["weights"]) > 0
  assert not chosen[:, 100:].any()  # never on padding
  assert abs(chosen[:, :100].mean() - 0.15) < 0.01
  masked = np.asarray(out["inputs"]) == 259
  assert not (masked & ~chosen).any()
  assert abs(masked[chosen].mean() - 0.8) < 0.03
  np.testing.assert_array_equal(out["targets"], tokens)
  unchosen_same = np.asarray(out["inputs"])[~chosen] == np.asarray(tokens)[~chosen]
  assert unchosen_same.all()


def test_mlm_objective_trains_an_encoder():
  c = _config(objective="mlm", learning_rate=3e-3)
  c.model.update(attention_mask="bidirectional", mlm_head=True)
  b = _one_device_build(c, mask_id=259)
  state = b.init_state()
  losses = []
  for i in range(6):
    state, m = b.train_step(state, inputs.to_global(_batch(0), b.train_step.batch_sharding, B))
    losses.append(float(m["loss"]))
    assert 0.05 * B * L < float(m["tokens"]) < 0.3 * B * L  # only masked positions count
  assert losses[-1] < losses[0]


def test_token_losses_and_z_loss():
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 5)), jnp.float32)
  targets = jnp.asarray([[0, 1, 2], [3, 4, 0]])
  w = jnp.asarray([[1, 1, 0], [1, 1, 1]], jnp.float32)
  out = step_lib.token_losses(logits, targets, w, z_loss=1e-2)
  lz = np.log(np.exp(np.asarray(logits)).sum(-1))
  ce = lz - np.take_along_axis(np.asarray(logits), np.asarray(targets)[..., None], -1)[..., 0]
  np.testing.assert_allclose(out["ce_sum"], (ce * w).sum(), rtol=1e-5)
  np.testing.assert_allclose(out["z_sum"], 1e-2 * (lz**2 * w).sum(), rtol=1e-5)
  assert float(out["weight_sum"]) == 5


def test_label_smoothing_is_the_smoothed_cross_entropy():
  """ce_sum stays the plain loss; ce_sum + smooth_sum is optax's cross-entropy against
  (1 - eps) one-hot + eps uniform targets, weighted."""
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(2, 3, 7)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 7, (2, 3)))
  w = jnp.asarray([[1, 0, 1], [1, 1, 1]], jnp.float32)
  plain = step_lib.token_losses(logits, targets, w, z_loss=0.0)
  out = step_lib.token_losses(logits, targets, w, z_loss=0.0, label_smoothing=0.1)
  labels = optax.smooth_labels(jax.nn.one_hot(targets, 7), 0.1)
  want = (optax.softmax_cross_entropy(logits, labels) * w).sum()
  np.testing.assert_allclose(out["ce_sum"] + out["smooth_sum"], want, rtol=1e-5)
  np.testing.assert_array_equal(out["ce_sum"], plain["ce_sum"])
  assert float(plain["smooth_sum"]) == 0.0


@pytest.mark.parametrize(
    "override,message",
    [
        ({"train.optimizer": "sgdx"}, "train.optimizer: unknown value 'sgdx'"),
        ({"train.objective": "causal"}, "train.objective: unknown value 'causal'"),
        ({"train.microbatches": 3}, "train.microbatches: 3 does not divide"),
        ({"train.label_smoothing": 1.0}, r"train.label_smoothing: must lie in \[0, 1\)"),
        ({"mesh.shape": (2, 1, 1)}, r"mesh.shape=\(2, 1, 1\) uses 2 devices but 1 are available"),
        ({"data.seq_len": 64}, r"data.seq_len: 64 is longer than the learned position table"),
    ],
)
def test_bad_config_values_give_clear_errors(override, message):
  c = _config()
  ((key, value),) = override.items()
  section, field = key.split(".")
  c[section][field] = value
  with pytest.raises(ValueError, match=message):
    build.build(
        spec.resolve(c),
        mesh=None if section == "mesh" else mesh_lib.make_mesh(c, devices=jax.devices()[:1]),
    )


def test_logged_lr_is_the_rate_the_optimizer_used_after_skipped_steps():
  """A skipped (non-finite) update leaves the optimizer's schedule count behind the step
  counter; the logged lr must follow the optimizer, not the step."""
  b = _one_device_build(_config(schedule="linear", warmup_steps=4, steps=40))
  sched = optim.make_schedule(b.spec.train)
  state = b.init_state()
  bad = _batch()
  bad["weights"] = np.full_like(bad["weights"], np.nan)
  for batch in (bad, bad, _batch(), _batch()):
    before = jax.device_get(state)
    state, m = b.train_step(state, inputs.to_global(batch, b.train_step.batch_sharding, B))
    used = float(sched(int(before.step) - int(before.skipped)))
    assert float(m["lr"]) == pytest.approx(used)
  # The last step was step 3 with two updates skipped: the optimizer's count was 1.
  assert int(jax.device_get(state).skipped) == 2
  assert float(m["lr"]) == pytest.approx(float(sched(1)))
  assert float(m["lr"]) != pytest.approx(float(sched(3)))


def test_untied_bf16_head_returns_float32_accumulated_logits():
  """The untied head accumulates in float32 like the tied one (no bf16 rounding of logits)."""
  cfg = ModelConfig.from_config(
      dict(_config().model.to_dict(), tie_embeddings=False, dtype="bfloat16")
  )
  model = Transformer(cfg)
  tokens = jnp.asarray(_batch()["inputs"])
  params = model.init(jax.random.key(0), tokens)["params"]
  logits = model.apply({"params": params}, tokens)
  hidden = model.apply({"params": params}, tokens, method=Transformer.hidden)
  kernel = jnp.asarray(
      params["unembed"]["kernel"].unbox()
      if hasattr(params["unembed"]["kernel"], "unbox")
      else params["unembed"]["kernel"],
      jnp.bfloat16,
  )
  want = jnp.einsum(
      "bld,dv->blv", hidden.astype(jnp.bfloat16), kernel, preferred_element_type=jnp.float32
  )
  assert logits.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(want))
  rounded = np.asarray(want.astype(jnp.bfloat16).astype(jnp.float32))
  assert not np.array_equal(np.asarray(logits), rounded)
