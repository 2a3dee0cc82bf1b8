"""train/accounting.py's memory estimate for model.mlp=moe: hand counts, and the compiled step.

The compiled checks use the CPU (one device here, eight fake ones in a subprocess:
tests/workers/moe_memory.py) and, with libtpu, a TPU topology's compile-only devices (where
ragged_dot is a grouped matmul; JAX's CPU lowering masks it into a dense [E, rows, ...] product).
"""

import importlib.util

import fake_devices
import jax
import pytest

from configs import base, mixtral
from model import summary
from test_plan import RATIO_RANGE, STATE_TOLERANCE
from train import accounting, plan_compile, planner, topology

D, LAYERS, HEADS, KV, HD, M, V = 32, 2, 4, 2, 8, 64, 256
E, K, F, S = 4, 2, 16, 1
B, L = 8, 16


def tiny_moe(**model):
  """Two layers, the second MoE (moe_every=2): 4 experts of width 16, top-2, one shared."""
  c = mixtral.get_config("size=tiny")
  c.model.update(
      d_model=D,
      num_layers=LAYERS,
      num_heads=HEADS,
      num_kv_heads=KV,
      head_dim=HD,
      mlp_dim=M,
      vocab_size=V,
      num_experts=E,
      experts_per_token=K,
      expert_mlp_dim=F,
      num_shared_experts=S,
      moe_every=2,
      max_seq_len=L,
      remat="none",
  )
  c.model.update(**model)
  c.data.seq_len = L
  c.train.batch_size = B
  c.mesh.shape = (1, 1, 1)
  return c


def hand_params() -> tuple[int, int]:
  """(routed expert weights, everything else) of tiny_moe(), counted by hand."""
  attn = D * HEADS * HD + 2 * D * KV * HD + HEADS * HD * D
  norms = 2 * D
  dense_mlp = 3 * D * M
  router, shared = D * E, 3 * D * S * F
  experts = 3 * E * D * F
  other = 2 * V * D + LAYERS * (attn + norms) + dense_mlp + router + shared + D
  return experts, other


@pytest.mark.parametrize("expert_axis", [1, 4])
def test_moe_memory_matches_a_hand_count(expert_axis):
  c = tiny_moe()
  experts, other = hand_params()
  assert summary.param_counts(c.model)["total"] == experts + other
  mem = accounting.memory_per_device(
      c.model, batch_size=B, seq_len=L, mesh_shape=(1, 1, 1, expert_axis)
  )
  # float32 params, grads and Adam's two moments; the experts split over the expert axis.
  params = other + experts / expert_axis
  assert mem["params_bytes"] == pytest.approx(4 * params)
  assert mem["grads_bytes"] == pytest.approx(4 * params)
  assert mem["optimizer_bytes"] == pytest.approx(8 * params)
  # Activations per token: the dense layer keeps 6D + q/k/v + attention output + 3 mlp_dim
  # and scores twice in float32; the MoE layer the same attention, the k sorted input rows
  # and gate/up/product (each x expert ranks: the exchange's worst-case buffers), the k
  # outputs, the shared SwiGLU, and in float32 the router's input, logits and probabilities.
  att = 6 * D + (HEADS + 2 * KV) * HD + HEADS * HD
  scores_f32 = 2 * HEADS * L
  dense = att + 3 * M
  moe = att + K * (D * expert_axis + 3 * F * expert_axis + D) + 3 * S * F
  moe_f32 = D + 2 * E
  tokens = B * L / expert_axis
  acts = tokens * (4 * (dense + moe) + 4 * (2 * scores_f32 + moe_f32)) + tokens * V * 4 * 2
  assert mem["activations_bytes"] == pytest.approx(acts)


def test_moe_activations_grow_with_k_not_with_the_number_of_experts():
  est = lambda **kw: accounting.memory_per_device(tiny_moe(**kw).model, batch_size=B, seq_len=L)[
      "activations_bytes"
  ]
  assert est(num_experts=64) - est() == pytest.approx(B * L * 4 * 2 * (64 - E))  # f32 logits
  per_k = B * L * 4 * (2 * D + 3 * F)
  assert est(experts_per_token=3) - est() == pytest.approx(per_k)
  # every layer MoE: one more MoE layer's routed and router terms instead of 3 * mlp_dim
  moe_terms = K * (2 * D + 3 * F) + 3 * S * F
  diff = B * L * 4 * (moe_terms - 3 * M + D + 2 * E)
  assert est(moe_every=1) - est() == pytest.approx(diff)


def test_moe_memory_with_remat_keeps_only_router_and_shared_outputs():
  """dots_saveable: ragged_dot is not dot_general, so the experts are recomputed; the router
  logits (float32) and the shared SwiGLU's matmul outputs stay, plus one layer in full."""
  c = tiny_moe(remat="dots_saveable")
  mem = accounting.memory_per_device(c.model, batch_size=B, seq_len=L)
  qkv_o = (HEADS + 2 * KV) * HD + HEADS * HD
  kept_dense = 4 * (2 * D + qkv_o + 2 * M) + 4 * HEADS * L
  kept_moe = 4 * (2 * D + qkv_o + 2 * S * F) + 4 * (HEADS * L + E)
  full_dense = 4 * (6 * D + qkv_o + 3 * M) + 4 * 2 * HEADS * L
  full_moe = 4 * (6 * D + qkv_o + K * (2 * D + 3 * F) + 3 * S * F)
  full_moe += 4 * (2 * HEADS * L + D + 2 * E)
  per_token = kept_dense + kept_moe + max(full_dense, full_moe)
  assert mem["activations_bytes"] == pytest.approx(B * L * (per_token + V * 8))


def test_plan_for_an_expert_mesh_uses_the_expert_axis():
  """train.plan's analytic fallback (GPU target) with an expert axis: the estimate for the
  4-axis mesh: data 2 x expert 4, the experts split 4 ways, the batch 8 ways."""
  c = tiny_moe()
  c.mesh.axis_rules = base.EXPERT_PARALLEL_AXIS_RULES
  c.mesh.shape = (-1, 1, 1, 4)
  p = planner.plan(c, topology.parse_topology("h100:8"))
  assert p.method == "analytic" and p.memory.mesh == {
      "data": 2,
      "fsdp": 1,
      "tensor": 1,
      "expert": 4,
  }
  est = accounting.memory_per_device(c.model, batch_size=B, seq_len=L, mesh_shape=(2, 1, 1, 4))
  assert p.total_bytes == int(est["total_bytes"])
  one = accounting.memory_per_device(c.model, batch_size=B, seq_len=L)
  assert est["params_bytes"] < one["params_bytes"]


def compiled_config(**model):
  """tiny_moe() with 64 x 64 tokens, so that activations and state dominate XLA's fixed
  buffers; every layer MoE."""
  c = tiny_moe(moe_every=1, max_seq_len=64, **model)
  c.data.seq_len = 64
  c.train.batch_size = 64
  return c


def estimate_for(c, mesh_sizes):
  return accounting.memory_per_device(
      c.model,
      batch_size=c.train.batch_size,
      seq_len=c.data.seq_len,
      mesh_shape=tuple(mesh_sizes.get(a, 1) for a in ("data", "fsdp", "tensor", "expert")),
  )


def check_against_compiled(memory, est):
  """The state (what the step donates: params + Adam's moments; the arguments also hold the
  batch, not small here) is exact arithmetic; XLA's total within the dense test's range."""
  state = est["params_bytes"] + est["optimizer_bytes"]
  assert abs(memory["alias_bytes"] - state) / state < STATE_TOLERANCE, (memory, est)
  ratio = memory["total_bytes"] / est["total_bytes"]
  assert RATIO_RANGE[0] < ratio < RATIO_RANGE[1], (memory, est)


def test_moe_estimate_against_the_compiled_step_on_one_cpu_device():
  c = compiled_config()
  # compile_step needs only the devices (the topology names TPU targets).
  memory = plan_compile.compile_step(c, None, jax.devices()[:1])
  est = estimate_for(c, memory.mesh)
  check_against_compiled(memory.__dict__, est)


@pytest.fixture(scope="module")
def eight_devices():
  """tests/workers/moe_memory.py: compile_step on expert meshes (2,1,1,4) and (1,2,1,4)."""
  return fake_devices.run_worker("moe_memory.py", devices=8, timeout=600)


@pytest.mark.parametrize("shape", ["(2, 1, 1, 4)", "(1, 2, 1, 4)"])
def test_moe_estimate_against_the_compiled_step_on_an_expert_mesh(eight_devices, shape):
  memory = eight_devices[shape]
  assert memory["mesh"]["expert"] == 4
  check_against_compiled(memory, estimate_for(compiled_config(), memory["mesh"]))


HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None


def tpu_config(mlp: str, experts: int, k: int = 1):
  """128-wide (no TPU lane padding) 2-layer model, 4 x 256 tokens per chip; `swiglu` is the
  dense layer with experts * 128 hidden units."""
  c = mixtral.get_config("size=tiny")
  c.model.update(
      d_model=128,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=32,
      vocab_size=256,
      mlp=mlp,
      mlp_dim=experts * 128 if mlp == "swiglu" else 128,
      num_experts=experts,
      experts_per_token=k,
      expert_mlp_dim=128,
      max_seq_len=256,
      remat="none",
  )
  c.data.seq_len = 256
  c.train.batch_size = 16
  c.mesh.shape = (-1, 1, 1)
  return c


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_LIBTPU, reason='libtpu is not installed (pip install -e ".[tpu]")')
def test_compiled_moe_step_memory_scales_with_k_not_with_the_experts():
  """XLA's bytes beyond the arguments (activations, gradients, temporaries) on v5e:2x2: going
  from 4 to 16 experts adds about the gradients' growth, not the activations of a dense
  layer 16 x 128 wide; a second expert per token adds activations. The estimate stays in the
  dense test's range of XLA's total for all of them."""
  topo = topology.parse_topology("v5e:2x2")
  devices = topology.topology_devices(topo)
  runs = {}
  for name, c in {
      "moe16": tpu_config("moe", 16),
      "moe4": tpu_config("moe", 4),
      "moe16_top2": tpu_config("moe", 16, k=2),
      "dense16": tpu_config("swiglu", 16),
  }.items():
    m = plan_compile.compile_step(c, topo, devices)
    est = plan_compile.analytic_total_bytes(c, m.mesh)
    runs[name] = (m.total_bytes - m.argument_bytes, m.argument_bytes, m.total_bytes / est)
  beyond = {name: r[0] for name, r in runs.items()}
  grads_growth = (runs["moe16"][1] - runs["moe4"][1]) / 3  # arguments: params + 2 moments
  assert beyond["moe16"] - beyond["moe4"] < 2 * grads_growth, runs
  assert beyond["moe16"] < 0.6 * beyond["dense16"], runs
  assert beyond["moe16_top2"] > 1.2 * beyond["moe16"], runs
  assert all(RATIO_RANGE[0] < r[2] < RATIO_RANGE[1] for r in runs.values()), runs
