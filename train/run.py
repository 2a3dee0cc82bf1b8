"""A trained run, loaded for evaluation: `load_run(workdir)` -> `Run` (config, params on a
mesh, tokenizer, model). The eval tools use this, not the trainer, to load parameters: only the
params are read (no optimizer state), straight into the shardings of the mesh they run on.
"""

import contextlib
import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from train import checkpoint as ckpt_lib
from train import mesh as mesh_lib
from train import spec as spec_lib
from train import state as state_lib
from train.data import tokenizer as tok_lib


@dataclasses.dataclass
class Run:
  """A trained run, ready for evaluation: see eval/perplexity, generate, zeroshot, hf."""

  config: ml_collections.ConfigDict  # as stored with the checkpoint
  spec: spec_lib.RunSpec  # the same, resolved (mesh: the one the params were loaded onto)
  params: Any  # fp32, sharded on `mesh`
  tokenizer: Any
  mesh: jax.sharding.Mesh
  model: Any  # Transformer(decode=False)
  step: int
  workdir: str

  @contextlib.contextmanager
  def context(self):
    """The run's mesh and logical-axis rules, entered once around an eval tool's work so that
    what it jits traces with the model's sharding constraints (see mesh_lib.mesh_context)."""
    with mesh_lib.mesh_context(self.mesh, self.spec.mesh.axis_rules):
      yield


def config_from_workdir(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config stored with the run's latest checkpoint."""
  return ml_collections.ConfigDict(ckpt_lib.read_config(workdir))


def load_run(
    workdir: str, *, step: int | None = None, mesh: jax.sharding.Mesh | None = None
) -> Run:
  """Config + params + tokenizer + mesh of a run (params only; no optimizer state).

  The mesh defaults to the run's own `config.mesh`, or pure data parallel over the devices
  present if that layout does not fit them.
  """
  config = config_from_workdir(workdir)
  spec = spec_lib.resolve(config)
  if mesh is None:
    try:
      mesh = mesh_lib.make_mesh(spec)
    except ValueError:
      data_parallel = dataclasses.replace(spec.mesh, shape=(-1, 1, 1), dcn_shape=(1, 1, 1))
      spec = spec.replace(mesh=data_parallel)
      mesh = mesh_lib.make_mesh(spec)
  model = state_lib.make_model(spec.model)
  boxed = state_lib.abstract_variables(spec, model, mesh)
  shardings = mesh_lib.param_shardings(boxed["params"], mesh, spec.mesh.axis_rules)
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nn.unbox(boxed["params"]),
      shardings,
  )
  params, got = ckpt_lib.restore_params(workdir, abstract, step)
  tokenizer = tok_lib.load(spec.data.tokenizer)
  return Run(config, spec, params, tokenizer, mesh, model, got, os.fspath(workdir))
