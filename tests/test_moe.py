"""Sparse mixture-of-experts (model/moe.py): equivalences with the dense MLP and a naive loop,
the auxiliary losses by hand, config errors, and a short training run that learns."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from configs import mixtral
from train import metrics as metrics_lib
from train import trainer
from configs import ladder as ladder_cfg
from eval import ladder
from configs import base
from flax import linen as nn

from configs import default
from model import moe
from model import summary
from model.config import ModelConfig
from model.mlp import Mlp
from model.transformer import Transformer, init_cache
from train import build
from train import inputs
from train import mesh as mesh_lib
from train import spec

REPO = pathlib.Path(__file__).resolve().parents[1]
SMALL = dict(
    d_model=16,
    num_layers=2,
    num_heads=2,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=24,
    use_bias=False,
    mlp="moe",
)


def _cfg(**kw) -> ModelConfig:
  return ModelConfig(**{**SMALL, **kw})


def _x(shape=(2, 5, 16), seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_one_expert_top1_equals_the_dense_swiglu_mlp():
  cfg = _cfg(num_experts=1, experts_per_token=1)
  x = _x()
  params = nn.unbox(moe.Moe(cfg).init(jax.random.PRNGKey(0), x)["params"])
  dense = {name: {"kernel": params[name][0]} for name in ("wi_0", "wi_1", "wo")}
  want = Mlp(cfg.replace(mlp="swiglu")).apply({"params": dense}, x)
  got = moe.Moe(cfg).apply({"params": params}, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _naive(params, x_TxD, k, num_shared=0):
  """Per-token loop: softmax router, top-k, weights renormalised when k > 1 (top-1 keeps its
  probability), sum of k expert SwiGLUs."""
  out = []
  swiglu = lambda x, w0, w1, wo: (jax.nn.silu(x @ w0) * (x @ w1)) @ wo
  for x in np.asarray(x_TxD):
    logits = x @ np.asarray(params["router"]["kernel"])
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = np.argsort(-p)[:k]
    w = p[top] / p[top].sum() if k > 1 else p[top]
    y = sum(
        w_i * swiglu(x, params["wi_0"][e], params["wi_1"][e], params["wo"][e])
        for w_i, e in zip(w, top)
    )
    if num_shared:
      s = params["shared"]
      y = y + swiglu(x, s["wi_0"]["kernel"], s["wi_1"]["kernel"], s["wo"]["kernel"])
    out.append(np.asarray(y))
  return np.stack(out)


@pytest.mark.parametrize("experts,k,shared", [(4, 2, 0), (5, 3, 1), (3, 1, 0)])
def test_each_token_gets_the_weighted_sum_of_exactly_its_k_experts(experts, k, shared):
  cfg = _cfg(num_experts=experts, experts_per_token=k, num_shared_experts=shared)
  x = _x((3, 7, 16), seed=experts)
  layer = moe.Moe(cfg)
  # A larger router init so the top-k choice is not a near tie.
  params = nn.unbox(layer.init(jax.random.PRNGKey(1), x)["params"])
  params = jax.tree_util.tree_map(np.asarray, params)
  params["router"]["kernel"] = params["router"]["kernel"] * 50
  got = layer.apply({"params": params}, x)
  want = _naive(params, x.reshape(-1, 16), k, shared).reshape(x.shape)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2])
def test_the_router_learns_from_the_loss_itself(k):
  """The routing weights carry the main loss's gradient to the router at every k. A top-1
  weight renormalised over itself is the constant 1, which would leave the router learning
  from the auxiliary losses alone (Switch Transformer keeps the probability instead)."""
  cfg = _cfg(num_experts=4, experts_per_token=k)
  x = _x((2, 6, 16), seed=3)
  layer = moe.Moe(cfg)
  params = nn.unbox(layer.init(jax.random.PRNGKey(0), x)["params"])
  target = _x((2, 6, 16), seed=4)
  loss = lambda p: jnp.sum((layer.apply({"params": p}, x) - target) ** 2)
  grad_router = jax.grad(loss)(params)["router"]["kernel"]
  assert float(jnp.max(jnp.abs(grad_router))) > 1e-4


def test_load_balance_loss_and_expert_load_by_hand():
  # 4 tokens, 2 experts, top-1: expert 0 gets 3 tokens, expert 1 one.
  probs = jnp.asarray([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
  idx, _, _ = moe.route(jnp.log(probs), 1)
  np.testing.assert_array_equal(idx[:, 0], [0, 0, 0, 1])
  np.testing.assert_allclose(moe.expert_fraction(idx, 2), [0.75, 0.25])
  # E * sum_e f_e P_e = 2 * (0.75 * 0.65 + 0.25 * 0.35)
  np.testing.assert_allclose(moe.load_balance_loss(idx, probs), 1.15, rtol=1e-6)
  # top-2 of 2 experts: every expert gets half the assignments, so the loss is 2 * 0.5 * 1 = 1
  idx2, w2, _ = moe.route(jnp.log(probs), 2)
  np.testing.assert_allclose(moe.load_balance_loss(idx2, probs), 1.0, rtol=1e-6)
  np.testing.assert_allclose(w2.sum(-1), 1.0, rtol=1e-6)
  logits = jnp.asarray([[0.0, 0.0], [1.0, 1.0]])
  want = np.mean([np.log(2.0) ** 2, (1 + np.log(2.0)) ** 2])
  np.testing.assert_allclose(moe.router_z_loss(logits), want, rtol=1e-6)


@pytest.mark.parametrize("scan,every", [(True, 1), (True, 2), (False, 2)])
def test_transformer_sows_per_layer_losses_and_load(scan, every):
  cfg = _cfg(num_layers=4, num_experts=4, experts_per_token=2, scan_layers=scan, moe_every=every)
  model = Transformer(cfg)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 250, (2, 8)), jnp.int32)
  variables = model.init(jax.random.PRNGKey(0), tokens)
  assert set(variables) == {"params"}  # nothing sown while initialising
  _, aux = model.apply(variables, tokens, mutable=[moe.AUX])
  got = moe.aux_losses(aux[moe.AUX])
  assert got["expert_load"].shape == (4 // every, 4)
  np.testing.assert_allclose(got["expert_load"].sum(-1), 1.0, rtol=1e-6)
  assert float(got["dropped"]) == 0.0
  assert float(got["load_balance"]) >= 1.0 - 1e-6  # E sum f P >= 1 for near-uniform P
  assert float(got["router_z"]) > 0


@pytest.mark.parametrize(
    "override,message",
    [
        (dict(num_experts=2, experts_per_token=3), "model.experts_per_token"),
        (dict(num_experts=0), "model.num_experts"),
        (dict(moe_every=3), "model.moe_every"),
        (dict(num_shared_experts=-1), "model.num_shared_experts"),
    ],
)
def test_bad_moe_configs_name_the_field(override, message):
  with pytest.raises(ValueError, match=message) as e:
    _cfg(**override).validate()
  assert "\n" not in str(e.value)


def test_short_cpu_run_learns_and_logs_router_metrics():
  c = default.get_config("size=tiny")
  c.mesh.shape = (1, 1, 1)
  c.model.update(
      d_model=64, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=32, mlp_dim=128, mlp="moe"
  )
  c.model.update(num_experts=4, experts_per_token=2, expert_mlp_dim=64, num_shared_experts=1)
  c.train.update(dict(warmup_steps=0, schedule="constant", learning_rate=3e-3, microbatches=2))
  b = build.build(spec.resolve(c), mesh=mesh_lib.make_mesh(c, devices=jax.devices()[:1]))
  state = b.init_state()
  rng = np.random.default_rng(0)
  start = rng.integers(0, 200, (8, 1))
  x = ((start + 3 * np.arange(33)[None]) % 250).astype(np.int32)
  batch = {
      "inputs": x[:, :-1],
      "targets": x[:, 1:],
      "segment_ids": np.ones((8, 32), np.int32),
      "positions": np.arange(32)[None].repeat(8, 0).astype(np.int32),
      "weights": np.ones((8, 32), np.float32),
  }
  losses = []
  for _ in range(15):
    state, m = b.train_step(state, inputs.to_global(batch, b.train_step.batch_sharding, 8))
    losses.append(float(m["loss"]))
  assert losses[-1] < 0.7 * losses[0], losses
  load = np.asarray(m["moe_expert_load"])
  assert load.shape == (2, 4)
  np.testing.assert_allclose(load.sum(-1), 1.0, rtol=1e-5)
  assert float(m["moe_dropped_tokens"]) == 0.0
  assert float(m["moe_load_balance_loss"]) >= 1.0 - 1e-5
  assert np.isfinite(float(m["moe_router_z_loss"]))


def test_mixtral_8x7b_summary_reports_total_and_active_params(tmp_path):
  out = tmp_path / "summary.json"
  subprocess.run(
      [sys.executable, "-m", "model.summary", "--config", "configs/mixtral.py:size=8x7B"]
      + ["--json", str(out)],
      check=True,
      cwd=REPO,
      capture_output=True,
      env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"},
  )
  s = json.loads(out.read_text())
  assert abs(s["params_total"] / 46.7e9 - 1) < 0.02, s["params_total"]
  assert abs(s["params_active"] / 12.9e9 - 1) < 0.02, s["params_active"]


def test_flops_count_active_parameters_and_the_router():
  dense = _cfg(mlp="swiglu", num_layers=4)
  sparse = dense.replace(mlp="moe", num_experts=8, experts_per_token=2, expert_mlp_dim=12)
  d, f, layers = 16, 12, 4
  mlp_dense = summary.flops_per_token_forward(dense, 32)["mlp"]
  mlp_sparse = summary.flops_per_token_forward(sparse, 32)["mlp"]
  assert mlp_dense == layers * 2 * d * 24 * 3
  assert mlp_sparse == layers * (2 * d * 8 + 2 * (2 * d * f * 3))
  counts = summary.param_counts(sparse)
  experts = layers * 8 * 3 * d * f
  assert counts["total"] - counts["active"] == experts * 6 // 8
  # every other layer MoE, one shared expert: dense layers use mlp_dim, MoE ones k + 1 experts
  mixed = sparse.replace(moe_every=2, num_shared_experts=1)
  want = 2 * (2 * d * 8 + 3 * (2 * d * f * 3)) + 2 * (2 * d * 24 * 3)
  assert summary.flops_per_token_forward(mixed, 32)["mlp"] == want
  assert summary.param_counts(dense)["active"] == summary.param_counts(dense)["total"]


def test_metrics_jsonl_holds_expert_load_aux_losses_and_dropped_tokens(tmp_path):

  c = mixtral.get_config("size=tiny")
  c.model.update(d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16)
  c.model.update(num_experts=4, expert_mlp_dim=32, mlp_dim=64, max_seq_len=32, moe_every=2)
  c.data.seq_len, c.train.batch_size, c.train.steps, c.train.log_every = 32, 4, 4, 2
  c.eval.batches, c.mesh.shape, c.train.warmup_steps = 1, (1, 1, 1), 1
  trainer.train_and_evaluate(c, str(tmp_path))
  rows = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [2, 4]
  for r in rows:
    load = np.asarray(r["moe_expert_load"])
    assert load.shape == (1, 4)  # one MoE layer of the two (moe_every=2), four experts
    np.testing.assert_allclose(load.sum(-1), 1.0, rtol=1e-5)
    assert r["moe_dropped_tokens"] == 0
    assert r["moe_load_balance_loss"] >= 1 - 1e-5 and r["moe_router_z_loss"] > 0


def test_moe_ladder_twins_have_equal_active_params_and_rows_report_both_counts():

  sparse = ladder.expand(ladder_cfg.get_config("moe"))
  dense = ladder.expand(ladder_cfg.get_config("moe_dense"))
  assert [p.name for p in sparse] == [p.name for p in dense] and len(sparse) == 3 * 3
  for s, d in zip(sparse, dense):
    assert (s.config.model.mlp, d.config.model.mlp) == ("moe", "swiglu")
    cs, cd = summary.param_counts(s.config.model), summary.param_counts(d.config.model)
    router = s.config.model.num_layers * s.config.model.d_model * 4
    assert cs["active"] == cd["active"] + router and cd["active"] == cd["total"]
    assert cs["total"] > cs["active"]
  point = next(p for p in ladder.expand(ladder_cfg.get_config("tiny_moe")) if p.record)
  row = ladder.result_row(point, {"val_loss": 3.0}, 1.0, "wsd")
  counts = summary.param_counts(point.config.model)
  assert row["params_active"] == counts["active"] < row["params_total"] == counts["total"]
  assert row["flops_6nd"] == 6 * counts["active"] * row["tokens"]


def test_experts_not_divisible_by_the_expert_axis_name_the_field():

  cfg = _cfg(num_experts=6, experts_per_token=2)
  mesh = {"data": 2, "fsdp": 1, "tensor": 1, "expert": 4}
  with pytest.raises(ValueError, match=r"model.num_experts=6 is not divisible by the expert=4"):
    mesh_lib.check_model_on_mesh(cfg, mesh, base.EXPERT_PARALLEL_AXIS_RULES)
  mesh_lib.check_model_on_mesh(cfg.replace(num_experts=8), mesh, base.EXPERT_PARALLEL_AXIS_RULES)
  with pytest.raises(ValueError, match="must split 'batch' over it too"):
    mesh_lib.check_model_on_mesh(cfg.replace(num_experts=8), mesh, base.DEFAULT_AXIS_RULES)
  with pytest.raises(ValueError, match="mesh.shape=.* has 5 entries"):
    mesh_lib.resolve_shapes({"shape": (1, 1, 1, 1, 1)}, 1)


def test_kv_cache_decoding_matches_the_full_forward():
  cfg = _cfg(num_experts=4, experts_per_token=2, pos_encoding="rope", max_seq_len=16)
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, 250, (2, 4)), jnp.int32)
  params = Transformer(cfg).init(jax.random.PRNGKey(0), tokens)["params"]
  full = Transformer(cfg).apply({"params": params}, tokens)
  cache = init_cache(cfg, 2, 16)
  decoder = Transformer(cfg, decode=True)
  steps = []
  for t in range(4):
    pos = jnp.full((2, 1), t, jnp.int32)
    logits, upd = decoder.apply(
        {"params": params, "cache": cache},
        tokens[:, t : t + 1],
        positions_BxL=pos,
        mutable=["cache"],
    )
    cache = upd["cache"]
    steps.append(logits[:, 0])
  np.testing.assert_allclose(jnp.stack(steps, 1), full, rtol=1e-4, atol=1e-5)
