"""A trained run, loaded for evaluation: `load_run(workdir)` -> `Run` (config, params on a
mesh, tokenizer, model). The eval tools use this, not the trainer, to load parameters: only the
params are read (no optimizer state), straight into the shardings of the mesh they run on.
"""

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from train import checkpoint as ckpt_lib
from train import mesh as mesh_lib
from train import state as state_lib
from train.data import tokenizer as tok_lib


@dataclasses.dataclass
class Run:
  """A trained run, ready for evaluation: see eval/perplexity, generate, zeroshot, hf."""

  config: ml_collections.ConfigDict
  params: Any  # fp32, sharded on `mesh`
  tokenizer: Any
  mesh: jax.sharding.Mesh
  model: Any  # Transformer(decode=False)
  step: int
  workdir: str


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
  if mesh is None:
    try:
      mesh = mesh_lib.make_mesh(config)
    except ValueError:
      config.mesh.shape = (-1, 1, 1)
      config.mesh.dcn_shape = (1, 1, 1)
      mesh = mesh_lib.make_mesh(config)
  model = state_lib.make_model(config)
  boxed = state_lib.abstract_variables(config, model, mesh)
  shardings = mesh_lib.param_shardings(boxed["params"], mesh, mesh_lib.axis_rules(config))
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nn.unbox(boxed["params"]),
      shardings,
  )
  params, got = ckpt_lib.restore_params(workdir, abstract, step)
  return Run(
      config, params, tok_lib.load(config.data.tokenizer), mesh, model, got, os.fspath(workdir)
  )
