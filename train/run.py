"""A trained run, loaded for evaluation: `load_run(workdir)` -> `Run` (config, params on a
mesh, tokenizer, model). The eval tools use this, not the trainer, to load parameters: only the
params are read (no optimizer state), straight into the shardings of the mesh they run on.
`load_run(workdir, average_last=N)` gives the elementwise mean of the last N saved checkpoints'
params instead (checkpoint averaging, as translation papers evaluate).
"""

import contextlib
import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
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
  averaged_steps: tuple[int, ...] = ()  # the checkpoints averaged into params (average_last)

  def describe_checkpoint(self) -> str:
    """'checkpoint step S', or which checkpoints were averaged."""
    if len(self.averaged_steps) > 1:
      steps = ", ".join(map(str, self.averaged_steps))
      return f"average of the last {len(self.averaged_steps)} checkpoints (steps {steps})"
    return f"checkpoint step {self.step}"

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
    workdir: str,
    *,
    step: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    average_last: int = 0,
) -> Run:
  """Config + params + tokenizer + mesh of a run (params only; no optimizer state).

  The mesh defaults to the run's own `config.mesh`, or pure data parallel over the devices
  present if that layout does not fit them. average_last=N > 0: the params are the fp32
  elementwise mean of the last N saved checkpoints (up to `step` if given), read one at a time.
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
  averaged = ()
  if average_last:
    averaged = steps_to_average(workdir, average_last, step)
    params, got = average_params(workdir, abstract, averaged), averaged[-1]
  else:
    params, got = ckpt_lib.restore_params(workdir, abstract, step)
  tokenizer = tok_lib.load(spec.data.tokenizer)
  return Run(config, spec, params, tokenizer, mesh, model, got, os.fspath(workdir), averaged)


def steps_to_average(workdir: str, n: int, step: int | None = None) -> tuple[int, ...]:
  """The last n saved steps (those up to `step` if given); one-line errors if there are fewer."""
  if n < 1:
    raise ValueError(f"--average-last must be >= 1, got {n}")
  saved = [s for s in ckpt_lib.saved_steps(workdir) if step is None or s <= step]
  if len(saved) < n:
    upto = f" up to step {step}" if step is not None else ""
    raise ValueError(
        f"cannot average the last {n} checkpoints: {workdir} holds {len(saved)}{upto} "
        f"(steps {saved}); train with checkpoint.keep >= {n} and a checkpoint.every that "
        f"saves at least {n} times, or average fewer"
    )
  return tuple(saved[-n:])


def average_params(workdir: str, abstract_params: Any, steps: tuple[int, ...]) -> Any:
  """The elementwise mean (in fp32, cast back to each param's dtype) of the params saved at
  `steps`; one checkpoint is held beside the running sum at a time."""
  total = None
  for s in steps:
    params, _ = ckpt_lib.restore_params(workdir, abstract_params, s)
    params = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    total = params if total is None else jax.tree.map(jnp.add, total, params)
  return jax.tree.map(lambda t, a: (t / len(steps)).astype(a.dtype), total, abstract_params)
