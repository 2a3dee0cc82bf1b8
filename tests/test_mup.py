"""muP / CompleteP parametrizations and Muon: identity at the base shape, the per-group rules
on the real model, config errors, and Muon's per-layer orthogonalization."""

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs import default
from eval import ladder
from eval import lr_transfer
from model import parametrization as par
from model.config import ModelConfig
from model.transformer import Transformer
from train import build
from train import inputs
from train import mesh as mesh_lib
from train import optim
from train import spec
from train import state

B, L = 8, 32
BASE = dict(parametrization="sp")
AT_BASE = {  # tiny's own width/depth as the base: every multiplier is 1
    "mup": dict(parametrization="mup", base_width=32),
    "completep-0.5": dict(
        parametrization="completep", base_width=32, base_depth=2, completep_alpha=0.5
    ),
}


def _config(optimizer="adamw", **model):
  c = default.get_config("size=tiny")
  c.mesh.shape = (1, 1, 1)
  c.train.update(optimizer=optimizer, warmup_steps=2, schedule="cosine", steps=40)
  c.model.update(model)
  return c


def _batch(seed):
  rng = np.random.default_rng(seed)
  start = rng.integers(0, 200, (B, 1))
  x = ((start + rng.integers(1, 5, (B, 1)) * np.arange(L + 1)[None]) % 250).astype(np.int32)
  return {
      "inputs": x[:, :-1],
      "targets": x[:, 1:],
      "segment_ids": np.ones((B, L), np.int32),
      "positions": np.broadcast_to(np.arange(L), (B, L)).astype(np.int32),
      "weights": np.ones((B, L), np.float32),
  }


def _losses(c, steps=4):
  b = build.build(spec.resolve(c), mesh=mesh_lib.make_mesh(c, devices=jax.devices()[:1]))
  state, out = b.init_state(), []
  for i in range(steps):
    state, m = b.train_step(state, inputs.to_global(_batch(i), b.train_step.batch_sharding, B))
    out.append(float(m["loss"]))
  return np.array(out)


@pytest.fixture(scope="module")
def sp_losses():
  return _losses(_config(**BASE))


@pytest.mark.parametrize("name", sorted(AT_BASE))
def test_at_the_base_shape_every_parametrization_reproduces_sp_bitwise(name, sp_losses):
  """Multipliers of exactly 1 leave the arithmetic unchanged: same init, same forward, and
  per-group Adam/decay identical per parameter to the single AdamW."""
  np.testing.assert_array_equal(_losses(_config(**AT_BASE[name])), sp_losses)
  assert sp_losses[-1] < sp_losses[0]


def _model(**kw):
  base = dict(
      vocab_size=64,
      d_model=128,
      num_layers=4,
      num_heads=2,
      num_kv_heads=2,
      head_dim=64,
      mlp_dim=512,
      max_seq_len=16,
      tie_embeddings=False,
  )
  return ModelConfig.from_config({**base, **kw})


def test_group_rules_follow_the_table():
  cfg = _model(parametrization="completep", base_width=32, base_depth=1, completep_alpha=0.5)
  m_d, m_l, a = 4.0, 4.0, 0.5
  rules = par.group_rules(cfg)
  assert rules["hidden"] == par.GroupRule(m_l ** (a - 1) / m_d, m_l**-a / m_d, m_d)
  assert rules["block_vector"] == par.GroupRule(m_l ** (a - 1), m_l**-a / m_d, 1.0)
  for g in ("embedding", "vector", "unembed"):
    assert rules[g] == par.GroupRule(1.0, 1 / m_d, 1.0)
  assert par.residual_multiplier(cfg) == m_l**-a
  assert par.logit_multiplier(cfg) == 1 / m_d
  # muP's 1/head_dim: head_dim 64 from a base of 16 (fixed head count) scales by 1/2 more
  assert par.attention_scale(cfg) == pytest.approx(1 / 64**0.5 * (16 / 64) ** 0.5)
  mup = _model(parametrization="mup", base_width=32)
  assert par.residual_multiplier(mup) == 1.0 and par.depth_multiplier(mup) == 1.0
  muon = par.group_rules(cfg, muon=True)
  assert muon["hidden"] == par.GroupRule(m_l ** (a - 1), 1.0, 1.0)


def test_init_std_per_group_on_the_real_model():
  cfg = _model(parametrization="mup", base_width=32)
  params = nn.unbox(
      Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  )
  block = params["layers"]["block"]
  assert np.std(params["embed"]["embedding"]) == pytest.approx(0.02, rel=0.05)
  assert np.std(params["unembed"]["kernel"]) == pytest.approx(0.02, rel=0.05)
  assert np.std(block["mlp"]["wi"]["kernel"]) == pytest.approx(0.02 / 2, rel=0.05)
  assert np.std(block["attn"]["query"]["kernel"]) == pytest.approx(0.02 / 2, rel=0.05)
  assert np.std(block["mlp"]["wo"]["kernel"]) == pytest.approx(0.02 / 2 / 8**0.5, rel=0.05)
  labels = {
      "/".join(optim.path_names(p)): g
      for p, g in jax.tree_util.tree_leaves_with_path(optim.group_labels(params))
  }
  assert labels["embed/embedding"] == "embedding"
  assert labels["unembed/kernel"] == "unembed"
  assert labels["final_norm/scale"] == "vector"
  assert labels["layers/block/attn/out/kernel"] == "hidden"
  assert labels["layers/block/mlp_norm/scale"] == "block_vector"


def test_per_group_learning_rates_reach_the_updates():
  """One Adam step moves each parameter by lr x its group's multiplier (Adam's first step
  is sign(g) up to eps), so the group tables really are applied."""
  cfg = _model(parametrization="mup", base_width=32, num_layers=1, mlp_dim=128)
  params = nn.unbox(
      Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  )
  t = _config().train
  t.update(schedule="constant", warmup_steps=0, learning_rate=0.01, weight_decay=0.0, grad_clip=0.0)
  tx, _ = optim.make_optimizer(t, params, cfg)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(
      updates["layers"]["block"]["mlp"]["wi"]["kernel"], -0.01 / 4, rtol=1e-5
  )
  np.testing.assert_allclose(updates["embed"]["embedding"], -0.01, rtol=1e-5)
  np.testing.assert_allclose(updates["layers"]["block"]["mlp_norm"]["scale"], -0.01, rtol=1e-5)


@pytest.mark.parametrize(
    "model,field",
    [
        (dict(parametrization="mup"), "model.base_width"),
        (dict(parametrization="completep", base_width=32), "model.base_depth"),
        (
            dict(parametrization="completep", base_width=32, base_depth=2, completep_alpha=0.0),
            "model.completep_alpha",
        ),
        (
            dict(parametrization="completep", base_width=32, base_depth=2, completep_alpha=1.5),
            "model.completep_alpha",
        ),
        (dict(parametrization="mupp"), "model.parametrization"),
    ],
)
def test_bad_parametrization_configs_name_the_field(model, field):
  with pytest.raises(ValueError, match=field):
    _model(**model)


def test_optimizer_that_ignores_the_group_rules_is_an_error():
  with pytest.raises(ValueError, match="train.optimizer: adafactor with model.parametrization"):
    spec.resolve(_config(optimizer="adafactor", parametrization="mup", base_width=32))
  c = _config(optimizer="muon")
  c.train.b1 = 1.0
  with pytest.raises(ValueError, match="train.b1: 1.0 is not a moment decay"):
    spec.resolve(c)


def test_cli_reports_a_bad_parametrization_in_one_line(tmp_path):
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "train",
          "--config",
          "configs/default.py:size=tiny",
          "--config.model.parametrization=mup",
          "--workdir",
          str(tmp_path / "run"),
      ],
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert (
      lines[-1].startswith("error: model.base_width") and "Traceback" not in proc.stderr
  ), proc.stderr[-2000:]


# --- the lr_transfer sweep's models against a hand table ---------------------------------

ETA, LAM, EPS = 2.0**-8, 0.1, 1e-8  # the sweep point's lr, the default weight decay and eps
# Per width of `eval.lr_transfer --widths 32,128` (base 32, 2 heads, 2 layers, mlp 2 x width):
# model shape, the attention-score scale (muP's 1/head_dim anchored at head_dim 16), the logit
# multiplier, then per kind of parameter (init std, Adam lr, decay per step = lr x weight
# decay, Adam eps). Written out by hand from the muP table, not computed by the code under test.
HAND = {
    32: dict(
        d_model=32,
        head_dim=16,
        mlp_dim=64,
        attention_scale=1 / 4,
        logit_mult=1.0,
        table=(0.02, ETA, 0.0, EPS),
        matrix=(0.02, ETA, ETA * LAM, EPS),
        branch_out=(0.01, ETA, ETA * LAM, EPS),  # 0.02 / sqrt(2 x 2 layers)
        vector=(None, ETA, 0.0, EPS),
    ),
    128: dict(
        d_model=128,
        head_dim=64,
        mlp_dim=256,
        attention_scale=1 / 16,  # sqrt(16) / 64, not sp's 1 / 8
        logit_mult=0.25,
        table=(0.02, ETA, 0.0, EPS / 4),
        matrix=(0.01, ETA / 4, ETA * LAM, EPS / 4),
        branch_out=(0.005, ETA / 4, ETA * LAM, EPS / 4),
        vector=(None, ETA, 0.0, EPS / 4),
    ),
}
KIND = {
    "embed/embedding": "table",  # tied: also the output layer (x logit_mult)
    "pos_embed/embedding": "table",
    "layers/block/attn/query/kernel": "matrix",
    "layers/block/attn/key/kernel": "matrix",
    "layers/block/attn/value/kernel": "matrix",
    "layers/block/mlp/wi/kernel": "matrix",
    "layers/block/attn/out/kernel": "branch_out",
    "layers/block/mlp/wo/kernel": "branch_out",
}
VECTORS = {
    f"layers/block/{m}/{leaf}"
    for m, leaves in [
        ("attn/query", ("bias",)),
        ("attn/key", ("bias",)),
        ("attn/value", ("bias",)),
        ("attn/out", ("bias",)),
        ("mlp/wi", ("bias",)),
        ("mlp/wo", ("bias",)),
        ("attn_norm", ("scale", "bias")),
        ("mlp_norm", ("scale", "bias")),
    ]
    for leaf in leaves
} | {"final_norm/scale", "final_norm/bias"}


@pytest.fixture(scope="module")
def sweep_specs():
  """The resolved mup points of `eval.lr_transfer`'s sweep at widths 32 and 128."""
  c = lr_transfer.ladder_config(default.get_config("size=tiny"), (32, 128), (-8,), ("mup",), 300)
  return {p.config.model.d_model: spec.resolve(p.config) for p in ladder.expand(c)}


def _paths(tree):
  return {
      "/".join(n for n in optim.path_names(p) if n != "params"): np.asarray(leaf)
      for p, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def _applied(s, params, grads):
  """The first update the sweep's optimizer chain (clipping included) makes, per path, at
  full learning rate (the schedule's warmup replaced by a constant)."""
  t = dataclasses.replace(s.train, schedule="constant", warmup_steps=0)
  tx, _ = optim.make_optimizer(t, params, s.model)
  updates, _ = tx.update(grads, tx.init(params), params)
  return _paths(updates)


@pytest.mark.parametrize("width", sorted(HAND))
def test_the_sweeps_mup_models_match_the_hand_table(width, sweep_specs):
  """Init std, the learning rate, the decay and the epsilon that the optimizer really applies
  to each parameter of the swept model: lr from the first Adam step on unit gradients (a
  unit step), decay from zero gradients on unit weights, eps from gradients of size EPS
  (the step is lr x EPS / (EPS + eps))."""
  s, want = sweep_specs[width], HAND[width]
  m = s.model
  assert (m.d_model, m.head_dim, m.mlp_dim, m.num_heads) == (
      want["d_model"],
      want["head_dim"],
      want["mlp_dim"],
      2,
  )
  assert m.tie_embeddings and s.train.learning_rate == ETA
  assert par.attention_scale(m) == pytest.approx(want["attention_scale"])
  assert par.logit_multiplier(m) == pytest.approx(want["logit_mult"])
  params = nn.unbox(Transformer(m).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  init = _paths(params)
  assert set(init) == set(KIND) | VECTORS
  zeros = jax.tree.map(jnp.zeros_like, params)
  ones = jax.tree.map(jnp.ones_like, params)
  step = _applied(s, zeros, ones)
  decay = _applied(s, ones, zeros)
  tiny = _applied(s, zeros, jax.tree.map(lambda p: jnp.full_like(p, EPS), params))
  for path, value in init.items():
    std, lr, per_step_decay, eps = want[KIND.get(path, "vector")]
    if std is not None:
      assert np.std(value) == pytest.approx(std, rel=0.1), path
    np.testing.assert_allclose(-step[path], lr, rtol=1e-4, err_msg=path)
    np.testing.assert_allclose(-decay[path], per_step_decay, rtol=1e-4, err_msg=path)
    np.testing.assert_allclose(-tiny[path], lr * EPS / (EPS + eps), rtol=1e-3, err_msg=path)


# --- Muon ---------------------------------------------------------------------------------


def _abstract_params(**model):
  s = spec.resolve(_config(**model))

  m = mesh_lib.make_mesh(s, devices=jax.devices()[:1])
  return state.abstract_variables(s, state.make_model(s.model), m)["params"]


def test_muon_gets_the_block_matrices_and_adamw_the_rest():
  rows = optim.param_table(
      _config(optimizer="muon").train, _abstract_params(tie_embeddings=False), _config().model
  )
  by_path = {r["path"]: r for r in rows}
  muon = {p for p, r in by_path.items() if r["optimizer"] == "muon"}
  assert muon == {
      f"layers/block/{m}/kernel"
      for m in ("attn/query", "attn/key", "attn/value", "attn/out", "mlp/wi", "mlp/wo")
  }
  for p in (
      "embed/embedding",
      "pos_embed/embedding",
      "unembed/kernel",
      "final_norm/scale",
      "layers/block/attn/query/bias",
      "layers/block/mlp_norm/scale",
  ):
    assert by_path[p]["optimizer"] == "adamw", p
  # stacked kernels are orthogonalized per layer as the (fan_in x fan_out) matrix
  assert by_path["layers/block/attn/query/kernel"]["matrix"] == "2x32x32"
  assert by_path["layers/block/attn/out/kernel"]["matrix"] == "2x32x32"
  assert by_path["layers/block/mlp/wo/kernel"]["matrix"] == "2x64x32"
  text = optim.format_param_table(rows)
  assert "layers/block/mlp/wi/kernel" in text and "muon" in text


def test_muon_update_of_a_stacked_kernel_has_unit_singular_values_per_layer():
  """Layers with gradients 1000x apart each get a Newton-Schulz-orthogonalized update:
  singular values ~1 per layer (after the shape scale), not per stacked tensor."""
  g = np.random.default_rng(0).normal(size=(2, 32, 4, 16)).astype(np.float32)
  g[1] *= 1000.0
  params = {"params": {"layers": {"block": {"attn": {"query": {"kernel": jnp.zeros_like(g)}}}}}}
  t = _config(optimizer="muon").train
  t.update(schedule="constant", warmup_steps=0, learning_rate=1.0, weight_decay=0.0, grad_clip=0.0)
  tx, _ = optim.make_optimizer(t, params)
  grads = jax.tree.map(lambda _: jnp.asarray(g), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  u = np.asarray(updates["params"]["layers"]["block"]["attn"]["query"]["kernel"])
  scale = optim.MUON_RMS * np.sqrt(64)
  for layer in range(2):
    sv = np.linalg.svd(-u[layer].reshape(32, 64) / scale, compute_uv=False)
    assert 0.6 < sv.min() and sv.max() < 1.25, sv


def test_muon_trains_the_tiny_model():
  losses = _losses(_config(optimizer="muon"), steps=6)
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
