"""Everything a run spec + mesh compile to, without running or allocating anything.

`build(spec, mesh)` returns the model, optimizer, schedule, abstract state, shardings and
the jitted train/eval steps. The trainer, train/bench.py (times the real step) and
train/plan.py (compiles the real step for a TPU topology that is not attached) all start
here, so they exercise the same code.
"""

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh

from train import evaluate as eval_lib
from train import mesh as mesh_lib
from train import optim
from train import state as state_lib
from train import step as step_lib
from train.spec import RunSpec


@dataclasses.dataclass
class Built:
  spec: RunSpec
  mesh: Mesh
  model: nn.Module
  tx: optax.GradientTransformation
  abstract_state: state_lib.TrainState  # ShapeDtypeStructs (unsharded description)
  state_shardings: state_lib.TrainState  # NamedShardings
  train_step: step_lib.CompiledStep  # callable (state, batch) -> (state, metrics)
  eval_step: Callable  # (params, batch, doc_ids, token_bytes, mask_index) -> per-token loss,
  # weights, bytes and doc ids (see train/evaluate.py)

  def sharded_abstract_state(self) -> state_lib.TrainState:
    """ShapeDtypeStructs carrying their shardings (restore targets, `.lower()` inputs)."""
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        self.abstract_state,
        self.state_shardings,
    )

  def init_state(self) -> state_lib.TrainState:
    """A fresh state, created directly in its shards."""
    return state_lib.init_state(self.spec, self.model, self.tx, self.mesh, self.state_shardings)


def build(
    spec: RunSpec,
    mesh: Mesh | None = None,
    *,
    mask_id: int | None = None,
    token_vocab_size: int | None = None,
) -> Built:
  """Checks the spec against the mesh and builds the jitted functions (nothing runs).

  `mesh` defaults to `train.mesh.make_mesh(spec)` over all devices; pass one built from a
  TPU topology's devices to plan. `mask_id` (the tokenizer's) is needed for objective mlm;
  `token_vocab_size` (the tokenizer's) bounds MLM's random replacement tokens.
  """
  mesh = mesh if mesh is not None else mesh_lib.make_mesh(spec)
  rules = spec.mesh.axis_rules
  mesh_lib.check_model_on_mesh(spec.model, mesh, rules, batch_size=spec.train.batch_size)
  step_lib.check_batch(spec, mesh)
  opts = step_lib.StepOptions.from_spec(spec, mask_id, token_vocab_size)
  model = state_lib.make_model(spec.model)
  boxed = state_lib.abstract_variables(spec, model, mesh)
  tx, schedule = optim.make_optimizer(spec.train, boxed["params"], spec.model)
  abstract, shardings = state_lib.state_shardings(rules, mesh, boxed, tx)
  train_step = step_lib.build_train_step(spec, opts, mesh, model, tx, schedule, abstract, shardings)
  eval_step = eval_lib.build_eval_step(
      opts, mesh, rules, model, shardings.params, step_lib.batch_keys(spec.model)
  )
  return Built(spec, mesh, model, tx, abstract, shardings, train_step, eval_step)
