"""Everything a config + mesh compile to, without running or allocating anything.

`build(config, mesh)` returns the model, optimizer, schedule, abstract state, shardings and
the jitted train/eval steps. The trainer, train/bench.py (times the real step) and
train/plan.py (compiles the real step for a TPU topology that is not attached) all start
here, so they exercise the same code.
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh

from train import evaluate as eval_lib
from train import mesh as mesh_lib
from train import optim
from train import state as state_lib
from train import step as step_lib


@dataclasses.dataclass
class Built:
  config: Any
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
    return state_lib.init_state(self.config, self.model, self.tx, self.mesh, self.state_shardings)


def check_sequence_length(config) -> None:
  """A learned position table must cover every position the data can produce (< seq_len);
  the embedding lookup would otherwise clamp silently and train on wrong positions."""
  seq_len, table = int(config.data.seq_len), int(config.model.max_seq_len)
  if config.model.pos_encoding == "learned" and seq_len > table:
    raise ValueError(
        f"config.data.seq_len={seq_len} is longer than the learned position table "
        f"(config.model.max_seq_len={table}); set --config.model.max_seq_len={seq_len} or "
        f"shorten data.seq_len."
    )


def build(
    config,
    mesh: Mesh | None = None,
    *,
    mask_id: int | None = None,
    token_vocab_size: int | None = None,
) -> Built:
  """Validates config against the mesh and builds the jitted functions (nothing runs).

  `mesh` defaults to `train.mesh.make_mesh(config)` over all devices; pass one built from a
  TPU topology's devices to plan. `mask_id` (the tokenizer's) is needed for objective mlm;
  `token_vocab_size` (the tokenizer's) bounds MLM's random replacement tokens.
  """
  mesh = mesh if mesh is not None else mesh_lib.make_mesh(config)
  rules = mesh_lib.axis_rules(config)
  mesh_lib.check_model_on_mesh(config.model, mesh, rules, batch_size=int(config.train.batch_size))
  step_lib.check_batch(config, mesh, rules)
  check_sequence_length(config)
  model = state_lib.make_model(config)
  boxed = state_lib.abstract_variables(config, model, mesh)
  tx, schedule = optim.make_optimizer(config.train, boxed["params"], config.model)
  abstract, shardings = state_lib.state_shardings(config, mesh, boxed, tx)
  train_step = step_lib.build_train_step(
      config,
      mesh,
      model,
      tx,
      schedule,
      abstract,
      shardings,
      mask_id=mask_id,
      token_vocab_size=token_vocab_size,
  )
  eval_step = eval_lib.build_eval_step(config, mesh, model, shardings.params, mask_id=mask_id)
  return Built(config, mesh, model, tx, abstract, shardings, train_step, eval_step)
