"""Expert parallelism for model/moe.py: experts split over the `expert` mesh axis, tokens sent
to the devices holding their experts with `shard_map` + all-to-all, and the outputs sent back.

Every device routes its own tokens (the batch is split over the expert axis too), sorts the
token-expert assignments by expert and sends each expert-rank the rows for its experts. The
exchange uses fixed-size buffers of A = local assignments rows per destination, the worst case
(every local token routed to one rank), so nothing is ever dropped; the price is a receive
buffer of (expert ranks x A) rows. The receiving device runs its E / ranks experts as grouped
matmuls (`jax.lax.ragged_dot`) and a second all-to-all returns the rows to their senders.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from model import moe  # the single-device pieces (sorting, experts, combine)
from flax import linen as nn
from jax.sharding import PartitionSpec as P

EXPERT_AXIS = "expert"


def expert_ranks() -> int:
  """Size of the `expert` axis of the mesh being traced under (1 without one)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or EXPERT_AXIS not in mesh.axis_names:
    return 1
  return int(mesh.shape[EXPERT_AXIS])


def _batch_axes() -> tuple[str, ...]:
  """Mesh axes the logical `batch` axis is split over under the current rules."""
  spec = nn.logical_to_mesh_axes(("batch",))[0]
  if spec is None:
    return ()
  return tuple(spec) if isinstance(spec, tuple) else (spec,)


def expert_parallel_moe(
    x_BxLxD: jax.Array, idx_BxLxK: jax.Array, w_BxLxK: jax.Array, experts: tuple[Any, ...]
) -> tuple[jax.Array, jax.Array]:
  """(output [B, L, D], dropped assignments) with the experts split over the expert axis."""
  batch_axes = _batch_axes()
  if EXPERT_AXIS not in batch_axes:
    raise ValueError(
        f"expert parallelism needs the batch split over the '{EXPERT_AXIS}' mesh axis too; "
        f"map 'batch' to {batch_axes + (EXPERT_AXIS,)} in mesh.axis_rules "
        "(configs.base.EXPERT_PARALLEL_AXIS_RULES)"
    )
  ranks, num_experts = expert_ranks(), experts[0].shape[0]
  if num_experts % ranks:
    raise ValueError(
        f"model.num_experts={num_experts} is not divisible by the {ranks} devices of the "
        f"'{EXPERT_AXIS}' mesh axis; use a multiple of {ranks} experts or a smaller expert axis"
    )
  tokens = P(batch_axes)
  expert_spec = P(EXPERT_AXIS)
  fn = jax.shard_map(
      functools.partial(_local_step, batch_axes=batch_axes),
      in_specs=(tokens, tokens, tokens, (expert_spec,) * 3),
      out_specs=(tokens, P()),
      check_vma=False,
  )
  return fn(x_BxLxD, idx_BxLxK, w_BxLxK, tuple(experts))


def _local_step(x_BxLxD, idx_BxLxK, w_BxLxK, experts, *, batch_axes):
  """One device: route out, compute its experts on what arrives, route back, combine."""

  b, l, d = x_BxLxD.shape
  k = idx_BxLxK.shape[-1]
  ranks = jax.lax.axis_size(EXPERT_AXIS)
  e_local = experts[0].shape[0]
  idx_TxK = idx_BxLxK.reshape(b * l, k)
  order_A, sizes_E = moe.sort_by_expert(idx_TxK, e_local * ranks)
  x_AxD = x_BxLxD.reshape(b * l, d)[order_A // k]
  sizes_RxE = sizes_E.reshape(ranks, e_local)
  send_RxAxD, where_A = _pack(x_AxD, sizes_RxE.sum(axis=1))
  recv_RxAxD = jax.lax.all_to_all(send_RxAxD, EXPERT_AXIS, 0, 0)
  recv_sizes_RxE = jax.lax.all_to_all(sizes_RxE, EXPERT_AXIS, 0, 0)
  y_RxAxD = _run_local_experts(recv_RxAxD, recv_sizes_RxE, experts)
  back_RxAxD = jax.lax.all_to_all(y_RxAxD, EXPERT_AXIS, 0, 0)
  y_AxD = back_RxAxD[where_A[0], where_A[1]]
  y_TxD = moe.combine(y_AxD, order_A, w_BxLxK.reshape(b * l, k))
  dropped = idx_TxK.size - jnp.sum(recv_sizes_RxE)
  dropped = jax.lax.psum(dropped, batch_axes)
  return y_TxD.reshape(b, l, d), dropped.astype(jnp.float32)


def _pack(x_AxD: jax.Array, counts_R: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  """Expert-sorted rows -> a [ranks, A, D] send buffer (rank r's rows first, zeros after),
  and for every sorted row its (rank, slot) in that buffer."""
  a = x_AxD.shape[0]
  offsets_R = jnp.cumsum(counts_R) - counts_R
  slot_RxA = offsets_R[:, None] + jnp.arange(a)[None]
  valid_RxA = jnp.arange(a)[None] < counts_R[:, None]
  send = jnp.where(valid_RxA[..., None], x_AxD[jnp.minimum(slot_RxA, a - 1)], 0)
  rank_A = jnp.searchsorted(jnp.cumsum(counts_R), jnp.arange(a), side="right")
  return send.astype(x_AxD.dtype), (rank_A, jnp.arange(a) - offsets_R[rank_A])


def _run_local_experts(recv_RxAxD, recv_sizes_RxE, experts) -> jax.Array:
  """Received rows (per source: grouped by local expert, then padding) through this device's
  experts; padding rows come back as zeros."""

  ranks, a, d = recv_RxAxD.shape
  ends_RxE = jnp.cumsum(recv_sizes_RxE, axis=1)
  expert_RxA = jnp.sum(jnp.arange(a)[None, :, None] >= ends_RxE[:, None, :], axis=-1)
  order_N = jnp.argsort(expert_RxA.reshape(-1), stable=True)  # padding (id e_local) last
  rows_NxD = recv_RxAxD.reshape(ranks * a, d)[order_N]
  sizes_E = jnp.sum(recv_sizes_RxE, axis=0).astype(jnp.int32)
  y_NxD = moe.swiglu_experts(rows_NxD, sizes_E, *experts)
  return jnp.zeros_like(y_NxD).at[order_N].set(y_NxD).reshape(ranks, a, d)
