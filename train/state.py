"""The train state and its sharded creation.

The state is a plain pytree (no functions inside) so that Orbax saves and restores it as is:
step, fp32 master params, optimizer state, the base RNG key and the non-finite counters.

Creation never materialises an unsharded copy: `jax.eval_shape(model.init)` gives the boxed
abstract params with logical axis names; the spec's `mesh.axis_rules` turn them into
NamedShardings; optimizer-state leaves take the sharding of the parameter they mirror; then
`jax.jit(init, out_shardings=...)` builds every array directly in its shards.
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from model.config import ModelConfig
from model.transformer import Transformer
from train import mesh as mesh_lib
from train import optim
from train.spec import RunSpec


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. `rng` is raw uint32 key data (checkpoint-friendly);
  each step derives its keys with `fold_in(rng, step)`, so the key never needs updating."""

  step: jax.Array  # int32 scalar: updates attempted so far (batches consumed)
  params: Any  # fp32 master weights (unboxed)
  opt_state: Any
  rng: jax.Array  # uint32[2]
  skipped: jax.Array  # int32: updates skipped for a non-finite loss/grad, in total
  nonfinite_streak: jax.Array  # int32: consecutive skipped updates up to now


def make_model(model: ModelConfig, decode: bool = False) -> nn.Module:
  """The Flax module for a (validated) model config."""
  return Transformer(model, decode=decode)


def _dummy_inputs(spec: RunSpec, mesh: Mesh) -> jax.ShapeDtypeStruct:
  batch = mesh_lib.data_parallel_size(mesh, spec.mesh.axis_rules)
  return jnp.zeros((batch, spec.data.seq_len), jnp.int32)


def abstract_variables(spec: RunSpec, model: nn.Module, mesh: Mesh) -> Any:
  """Boxed (nn.Partitioned) ShapeDtypeStructs of the model's variables; nothing allocated."""
  rules = spec.mesh.axis_rules

  def init(rng):
    tokens = _dummy_inputs(spec, mesh)
    return model.init({"params": rng, "dropout": rng}, tokens)

  with mesh_lib.mesh_context(mesh, rules):
    # The key is made inside eval_shape: nothing concrete runs on the mesh's devices (which
    # may be a compile-only TPU topology, see train/plan.py).
    return jax.eval_shape(lambda: init(jax.random.key(0)))


def _mirror_shardings(tree: Any, params: Any, param_shardings: Any, mesh: Mesh) -> Any:
  """Shardings for optimizer-state leaves: the sharding of the parameter whose path is a
  suffix of the leaf's path and whose shape matches (Adam's mu/nu, Lion's momentum);
  everything else (counts, Adafactor's factored rows/cols) is replicated."""
  by_path = {}
  for (path, p), s in zip(
      jax.tree_util.tree_flatten_with_path(params)[0], jax.tree_util.tree_leaves(param_shardings)
  ):
    by_path[optim.path_names(path)] = (tuple(p.shape), s)
  repl = mesh_lib.replicated(mesh)

  def pick(path, leaf):
    names = optim.path_names(path)
    for i in range(len(names)):
      hit = by_path.get(names[i:])
      if hit is not None and hit[0] == tuple(np.shape(leaf)):
        return hit[1]
    return repl

  return jax.tree_util.tree_map_with_path(pick, tree)


def state_shardings(
    rules: mesh_lib.Rules, mesh: Mesh, abstract_boxed: Any, tx: optax.GradientTransformation
) -> tuple[TrainState, TrainState]:
  """(abstract unboxed TrainState, NamedSharding TrainState) for this model/optimizer/mesh."""
  boxed_params = abstract_boxed["params"]
  p_shard = mesh_lib.param_shardings(boxed_params, mesh, rules)
  params = nn.unbox(boxed_params)
  opt_state = jax.eval_shape(tx.init, params)
  repl = mesh_lib.replicated(mesh)
  abstract = TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32),
      params=params,
      opt_state=opt_state,
      rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
      skipped=jax.ShapeDtypeStruct((), jnp.int32),
      nonfinite_streak=jax.ShapeDtypeStruct((), jnp.int32),
  )
  shardings = TrainState(
      step=repl,
      params=p_shard,
      opt_state=_mirror_shardings(opt_state, params, p_shard, mesh),
      rng=repl,
      skipped=repl,
      nonfinite_streak=repl,
  )
  return abstract, shardings


def init_state(
    spec: RunSpec,
    model: nn.Module,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    shardings: TrainState,
) -> TrainState:
  """A fresh state, created directly in its shards by one jitted init."""
  rules = spec.mesh.axis_rules

  def init():
    key = jax.random.key(spec.seed)
    init_key, base_key = jax.random.split(key)
    tokens = _dummy_inputs(spec, mesh)
    variables = model.init({"params": init_key, "dropout": init_key}, tokens)
    params = nn.unbox(variables["params"])
    return fresh_state(params, tx, jax.random.key_data(base_key))

  with mesh_lib.mesh_context(mesh, rules):
    return jax.jit(init, out_shardings=shardings)()


def fresh_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """Step 0 around given params (also used by init_from: loaded params, new optimizer)."""
  zero = jnp.zeros((), jnp.int32)
  return TrainState(
      step=zero,
      params=params,
      opt_state=tx.init(params),
      rng=rng,
      skipped=zero,
      nonfinite_streak=zero,
  )


def state_from_params(
    params: Any, seed: int, tx: optax.GradientTransformation, shardings: TrainState
) -> TrainState:
  """Wraps already-sharded params (e.g. from another run) in a fresh state, on device."""

  def build(p):
    base_key = jax.random.split(jax.random.key(seed))[1]
    return fresh_state(p, tx, jax.random.key_data(base_key))

  return jax.jit(build, in_shardings=(shardings.params,), out_shardings=shardings)(params)


def count_params(params: Any) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params)))
