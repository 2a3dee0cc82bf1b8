"""The device mesh and the mapping from the model's logical axes onto it.

The mesh has three axes, ("data", "fsdp", "tensor"). `config.mesh.shape` is the layout
inside one slice (chips joined by the fast ICI links) and `config.mesh.dcn_shape` the layout
across slices (joined by the slower data-centre network); the final mesh is their
elementwise product, e.g. shape (1, 16, 1) x dcn_shape (2, 1, 1) is data=2 across two v5e-16
slices and FSDP=16 inside each. Device order comes from `mesh_utils`, so that neighbours on
the TPU torus are neighbours in the mesh.

The model only names logical axes (batch, embed, heads, ...); `config.mesh.axis_rules` maps
them onto mesh axes. Linen's rules need mesh axes of type `AxisType.Auto` (jax >= 0.9 makes
`Explicit` axes by default), so the mesh is built with `Auto` axes here.

Every misfit (a shape that does not cover the devices, an axis the model cannot split) is a
`ValueError` naming the numbers and the fix, raised before anything is compiled.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from train import spec as spec_lib

AXES = spec_lib.MESH_AXES
# Optional fourth mesh axis for expert parallelism (model/moe_parallel.py): present when
# mesh.shape has a fourth entry, e.g. (2, 1, 1, 4) is data=2 x expert=4.
EXPERT = spec_lib.EXPERT_AXIS
Rules = tuple[tuple[str, Any], ...]


# --------------------------------------------------------------------------- shapes


def _mesh_section(cfg: Any) -> Any:
  """Accepts the full config or its `mesh` section."""
  if isinstance(cfg, Mapping):
    return cfg.get("mesh", cfg)
  return getattr(cfg, "mesh", cfg)


def _get(section: Any, key: str, default: Any) -> Any:
  if isinstance(section, Mapping):
    return section.get(key, default)
  return getattr(section, key, default)


def _as_shape(value: Any, field: str) -> tuple[int, ...]:
  shape = tuple(int(v) for v in value)
  if len(shape) not in (len(AXES), len(AXES) + 1):
    raise ValueError(
        f"{field}={shape} has {len(shape)} entries; it needs one per mesh axis {AXES} "
        f"(and optionally a fourth, {EXPERT!r}), e.g. {field}=(-1, 1, 1)."
    )
  if shape.count(-1) > 1:
    raise ValueError(
        f"{field}={shape} has {shape.count(-1)} entries equal to -1; at most one axis can "
        "fill the remaining devices. Give the others explicit sizes."
    )
  bad = [v for v in shape if v != -1 and v < 1]
  if bad:
    raise ValueError(
        f"{field}={shape}: sizes must be >= 1 (or -1 for one axis that fills the rest); "
        f"got {bad[0]}."
    )
  return shape


def fill_shape(
    shape: Sequence[int], num_devices: int, field: str = "mesh.shape"
) -> tuple[int, ...]:
  """Resolves one -1 entry so that the product is `num_devices`; checks the product.

  Raises ValueError naming the shape and the device count when they do not agree.
  """
  shape = _as_shape(shape, field)
  known = math.prod(v for v in shape if v != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(
          f"{field}={shape}: the fixed axes use {known} devices, which does not divide the "
          f"{num_devices} devices available, so -1 cannot fill the rest. Choose sizes whose "
          f"product divides {num_devices}."
      )
    return tuple(num_devices // known if v == -1 else v for v in shape)
  if known != num_devices:
    raise ValueError(
        f"{field}={shape} uses {known} devices but {num_devices} are available; make the "
        f"product equal {num_devices} or put -1 on one axis to fill the rest."
    )
  return shape


def _num_slices(devices: Sequence[Any]) -> int:
  return len({getattr(d, "slice_index", 0) for d in devices})


def resolve_shapes(
    mesh_cfg: Any, num_devices: int, num_slices: int = 1
) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Returns (ici_shape, dcn_shape) with -1 entries filled.

  `dcn_shape` may hold one -1, filled with `num_slices` (the number of slices, or of
  processes when the DCN split is across hosts, e.g. GPU nodes). `shape` may hold one -1,
  filled with the devices per slice.
  """
  section = _mesh_section(mesh_cfg)
  dcn = _as_shape(_get(section, "dcn_shape", (1, 1, 1)), "mesh.dcn_shape")
  if -1 in dcn:
    dcn = fill_shape(dcn, num_slices, "mesh.dcn_shape")
  slices = math.prod(dcn)
  if num_devices % slices:
    raise ValueError(
        f"mesh.dcn_shape={dcn} asks for {slices} slices but {num_devices} devices cannot be "
        f"split evenly into {slices} slices."
    )
  ici = fill_shape(_get(section, "shape", (-1, 1, 1)), num_devices // slices, "mesh.shape")
  if len(ici) != len(dcn):  # an expert axis in one of them: the other has expert=1
    ici, dcn = ici + (1,) * (len(dcn) - len(ici)), dcn + (1,) * (len(ici) - len(dcn))
  return ici, dcn


def make_mesh(mesh_cfg: Any, devices: Sequence[Any] | None = None) -> Mesh:
  """Builds the ("data", "fsdp", "tensor") mesh with `AxisType.Auto` axes.

  Args:
    mesh_cfg: `config.mesh` (or the whole config) with `shape`, `dcn_shape`.
    devices: defaults to `jax.devices()`; pass a TPU topology's compile-only devices to
      plan for hardware that is not attached (see train/plan.py).
  """
  devices = list(jax.devices() if devices is None else devices)
  slices = _num_slices(devices)
  ici, dcn = resolve_shapes(mesh_cfg, len(devices), slices)
  if slices > 1 and math.prod(dcn) == 1:
    raise ValueError(
        f"The {len(devices)} devices come from {slices} TPU slices but mesh.dcn_shape={dcn} "
        f"puts them all in one; set mesh.dcn_shape=({slices}, 1, 1) (data parallel across "
        "slices) or (-1, 1, 1)."
    )
  if math.prod(dcn) > 1:
    device_array = _hybrid_device_array(ici, dcn, devices)
  else:
    device_array = _device_array(ici, devices)
  names = AXES + ((EXPERT,) if len(ici) > len(AXES) else ())
  return Mesh(device_array, names, axis_types=(AxisType.Auto,) * len(names))


def _device_array(shape: tuple[int, ...], devices: list[Any]) -> np.ndarray:
  """ICI-aware order on TPU; plain order where mesh_utils has no layout (CPU, odd shapes)."""
  try:
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):
    if devices[0].platform == "tpu":
      raise
    return np.asarray(devices, dtype=object).reshape(shape)


def _hybrid_device_array(
    ici: tuple[int, ...], dcn: tuple[int, ...], devices: list[Any]
) -> np.ndarray:
  """Slices (TPU) or processes (GPU/CPU hosts) are the DCN granules."""
  by_process = not hasattr(devices[0], "slice_index")
  granules = len({d.process_index for d in devices}) if by_process else _num_slices(devices)
  if granules != math.prod(dcn):
    what = "processes" if by_process else "TPU slices"
    raise ValueError(
        f"mesh.dcn_shape={dcn} needs {math.prod(dcn)} {what} but the devices come from "
        f"{granules}. Set mesh.dcn_shape to the number of {what} (e.g. ({granules}, 1, 1)) "
        "or to (1, 1, 1) for a single slice."
    )
  try:
    return mesh_utils.create_hybrid_device_mesh(
        ici, dcn, devices, process_is_granule=by_process, allow_split_physical_axes=True
    )
  except (ValueError, NotImplementedError, AssertionError):
    if devices[0].platform == "tpu":
      raise
    # CPU/GPU: granules in process order, devices of a granule in id order.
    key = lambda d: (d.process_index, d.id)
    arr = np.asarray(sorted(devices, key=key), dtype=object).reshape(dcn + ici)
    # (d0, d1, d2, i0, i1, i2) -> (d0, i0, d1, i1, d2, i2) -> product shape.
    n = len(ici)
    arr = arr.transpose([a for pair in zip(range(n), range(n, 2 * n)) for a in pair])
    return arr.reshape(tuple(a * b for a, b in zip(dcn, ici)))


# --------------------------------------------------------------------------- rules


def _mesh_axes(target: Any) -> tuple[str, ...]:
  if target is None:
    return ()
  return tuple(target) if isinstance(target, tuple) else (target,)


def _axis_sizes(mesh: Mesh | Mapping[str, int]) -> dict[str, int]:
  return dict(mesh.shape) if isinstance(mesh, Mesh) else dict(mesh)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """Makes `nn.with_logical_constraint` inside the model see the mesh and the rules.

  Entered once around a whole job (train_and_evaluate, `Run.context()` in the eval tools):
  `jax.jit` traces in the context it is first called in, and jit's own per-signature cache
  keeps that program for later calls. Outside any context the model traces without logical
  constraints (same numbers; placement left to XLA).
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


# --------------------------------------------------------------------------- checks


def check_model_on_mesh(
    model_cfg: Any, mesh: Mesh | Mapping[str, int], rules: Rules, *, batch_size: int | None = None
) -> None:
  """Raises ValueError when the model's dimensions cannot be split as the rules ask.

  jit needs every sharded dimension divisible by the product of the mesh axes it is split
  over; this checks the dimensions the model names (heads, kv_heads, mlp, vocab, embed,
  layers) and the global batch before anything is traced, so the error names the config
  field rather than an HLO shape.
  """
  sizes = _axis_sizes(mesh)
  dims = {
      "heads": ("model.num_heads", _get(model_cfg, "num_heads", None)),
      "kv_heads": ("model.num_kv_heads", _get(model_cfg, "num_kv_heads", None)),
      "mlp": ("model.mlp_dim", _get(model_cfg, "mlp_dim", None)),
      "vocab": ("model.vocab_size", _get(model_cfg, "vocab_size", None)),
      "embed": ("model.d_model", _get(model_cfg, "d_model", None)),
      "head_dim": ("model.head_dim", _get(model_cfg, "head_dim", None)),
  }
  if _get(model_cfg, "mlp", None) == "moe":
    dims["expert"] = ("model.num_experts", _get(model_cfg, "num_experts", None))
  if _get(model_cfg, "scan_layers", False):
    dims["layers"] = ("model.num_layers", _get(model_cfg, "num_layers", None))
  if batch_size is not None:
    dims["batch"] = ("train.batch_size", batch_size)
  rule_map = dict(rules)
  problems = []
  expert_parallel = sizes.get(EXPERT, 1) > 1 and _get(model_cfg, "mlp", None) == "moe"
  if expert_parallel and EXPERT not in _mesh_axes(rule_map.get("batch")):
    problems.append(
        f"the {EXPERT}={sizes[EXPERT]} mesh axis exchanges tokens between devices that hold "
        f"different ones, so mesh.axis_rules must split 'batch' over it too; use "
        "configs.base.EXPERT_PARALLEL_AXIS_RULES."
    )
  for logical, (field, value) in dims.items():
    axes = _mesh_axes(rule_map.get(logical))
    split = math.prod(sizes.get(a, 1) for a in axes)
    if value is None or split == 1:
      continue
    value = int(value)
    where = " x ".join(f"{a}={sizes.get(a, 1)}" for a in axes)
    if logical in ("heads", "kv_heads") and split > value:
      problems.append(
          f"{field}={value} is smaller than the {where} mesh split ({split}); use a mesh "
          f"with {'x'.join(axes)} size <= {value}, or map {logical!r} to None in "
          "mesh.axis_rules."
      )
    elif value % split:
      fix = (
          "pad model.vocab_size to a multiple of " f"{split}"
          if logical == "vocab"
          else f"choose sizes so that {split} divides {value}"
      )
      if logical == "batch":
        fix = (
            f"use a global batch that is a multiple of {split} "
            f"(e.g. {max(split, (value // split) * split)})"
        )
      problems.append(
          f"{field}={value} is not divisible by the {where} mesh split ({split}) that "
          f"mesh.axis_rules gives logical axis {logical!r}; {fix}."
      )
  if problems:
    raise ValueError(
        "The model does not fit the mesh " + str(sizes) + ":\n  " + "\n  ".join(problems)
    )


def check_shardings(abstract_tree: Any, shardings: Any) -> None:
  """Checks every leaf's shape divides by its sharding; names the parameter path."""
  problems = []

  def visit(path, leaf, sharding):
    if not isinstance(sharding, NamedSharding):
      return
    sizes = dict(sharding.mesh.shape)
    for dim, entry in zip(leaf.shape, sharding.spec):
      split = math.prod(sizes[a] for a in _mesh_axes(entry))
      if dim % split:
        problems.append(
            f"{jax.tree_util.keystr(path)} shape {tuple(leaf.shape)}: dimension "
            f"{dim} is not divisible by {entry}={split}"
        )

  jax.tree_util.tree_map_with_path(visit, abstract_tree, shardings)
  if problems:
    raise ValueError(
        "Shardings do not divide the arrays:\n  "
        + "\n  ".join(problems)
        + "\nChange mesh.shape or mesh.axis_rules."
    )


# --------------------------------------------------------------------------- shardings


def param_shardings(boxed_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a tree of boxed (nn.LogicalPartitioned) arrays or ShapeDtypeStructs.

  Typical use: `abstract = jax.eval_shape(model.init, ...)`; `param_shardings(abstract,
  mesh, rules)` gives `out_shardings` for `jax.jit(model.init)`. Unboxed leaves are
  replicated. Shapes are checked against the shardings.
  """
  specs = nn.get_partition_spec(boxed_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  check_shardings(nn.unbox(boxed_tree), shardings)
  return shardings


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int = 2) -> NamedSharding:
  """Sharding of a [B, L, ...] input batch: batch over the rules' mesh axes, rest whole."""
  names = ("batch", "length") + (None,) * (ndim - 2)
  spec = nn.logical_to_mesh_axes(names[:ndim], rules)
  return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
  """How many ways the global batch is split (product of the batch axis's mesh axes)."""
  axes = _mesh_axes(dict(rules).get("batch"))
  return math.prod(mesh.shape[a] for a in axes)
