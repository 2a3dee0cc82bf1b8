"""Attention math as a pure function, separate from parameters so faster kernels can be
swapped in by name (`impl`) without touching the modules.

Shapes: B batch, T query length, S key length, N query heads, K kv heads (N % K == 0),
H head dim, G = N // K query heads per kv head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# A large finite negative instead of -inf: a fully masked row (padding) then gives a uniform
# softmax rather than NaNs.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_mask(
    *,
    causal: bool,
    q_len: int,
    kv_len: int,
    q_offset=0,
    q_segment_ids_BxT=None,
    kv_segment_ids_BxS=None,
):
  """Boolean mask [B or 1, T, S], True where query t may attend to key s.

  Query t sits at absolute index `q_offset + t` (q_offset > 0 while decoding with a cache).
  Segment ids: 0 is padding (attends to nothing, is attended by nothing); otherwise a query
  attends only to keys of the same segment.
  """
  mask_1xTxS = jnp.ones((1, q_len, kv_len), dtype=bool)
  if causal:
    q_idx = jnp.arange(q_len)[:, None] + q_offset
    kv_idx = jnp.arange(kv_len)[None, :]
    mask_1xTxS = (kv_idx <= q_idx)[None]
  if q_segment_ids_BxT is not None or kv_segment_ids_BxS is not None:
    if q_segment_ids_BxT is None or kv_segment_ids_BxS is None:
      raise ValueError("pass both q_segment_ids and kv_segment_ids, or neither")
    same_BxTxS = q_segment_ids_BxT[:, :, None] == kv_segment_ids_BxS[:, None, :]
    same_BxTxS &= (kv_segment_ids_BxS != 0)[:, None, :]
    mask_1xTxS = mask_1xTxS & same_BxTxS
  return mask_1xTxS


def _xla_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_BxTxS, scale):
  b, t, n, h = q_BxTxNxH.shape
  k = k_BxSxKxH.shape[2]
  q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, k, n // k, h)
  logits_BxKxGxTxS = (
      jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH, k_BxSxKxH, preferred_element_type=jnp.float32)
      * scale
  )
  if mask_BxTxS is not None:
    logits_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], logits_BxKxGxTxS, _MASK_VALUE)
  probs = jax.nn.softmax(logits_BxKxGxTxS, axis=-1).astype(v_BxSxKxH.dtype)
  out_BxTxKxGxH = jnp.einsum("bkgts,bskh->btkgh", probs, v_BxSxKxH)
  return out_BxTxKxGxH.reshape(b, t, n, h)


def _cudnn_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_BxTxS, scale):
  """jax.nn.dot_product_attention's cuDNN flash kernel (GPU, bf16/fp16 only)."""
  mask = None if mask_BxTxS is None else mask_BxTxS[:, None]  # B,1,T,S
  return jax.nn.dot_product_attention(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask=mask, scale=scale, implementation="cudnn"
  )


def _blocked_causal_attention(
    q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, scale, block, q_segment_ids_BxT=None, kv_segment_ids_BxS=None
):
  """Causal self-attention that never computes the masked upper-triangular key blocks.

  The T queries are cut into blocks of `block` rows; query block i attends to the key prefix
  [0, (i + 1) * block) only, with one ordinary (exact, two-pass) softmax over that prefix.
  The score work is (n + 1) / (2n) of the full T x T matrix for n blocks, forward and
  backward (autodiff of the slices), and XLA sees plain batched matmuls. Needs T == S and
  T % block == 0 (the caller checks).
  """
  b, t, n, h = q_BxTxNxH.shape
  k = k_BxSxKxH.shape[2]
  q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, k, n // k, h)
  outs = []
  for i in range(t // block):
    lo, hi = i * block, (i + 1) * block
    q_blk = q_BxTxKxGxH[:, lo:hi]
    logits_BxKxGxCxP = (
        jnp.einsum(
            "bckgh,bpkh->bkgcp", q_blk, k_BxSxKxH[:, :hi], preferred_element_type=jnp.float32
        )
        * scale
    )
    mask_CxP = jnp.arange(hi)[None, :] <= (lo + jnp.arange(block))[:, None]
    mask_1xCxP = mask_CxP[None]
    if q_segment_ids_BxT is not None:
      q_seg, kv_seg = q_segment_ids_BxT[:, lo:hi], kv_segment_ids_BxS[:, :hi]
      mask_1xCxP = (
          mask_1xCxP & (q_seg[:, :, None] == kv_seg[:, None, :]) & (kv_seg != 0)[:, None, :]
      )
    logits_BxKxGxCxP = jnp.where(mask_1xCxP[:, None, None], logits_BxKxGxCxP, _MASK_VALUE)
    probs = jax.nn.softmax(logits_BxKxGxCxP, axis=-1).astype(v_BxSxKxH.dtype)
    outs.append(jnp.einsum("bkgcp,bpkh->bckgh", probs, v_BxSxKxH[:, :hi]))
  return jnp.concatenate(outs, axis=1).reshape(b, t, n, h)


MAX_BLOCKS = 16  # more blocks skip little more work but grow the graph (compile time)


def blocked_block_size(seq_len: int) -> int | None:
  """Query block for "blocked" attention, or None where blocking does not pay (short or
  indivisible sequences): the smallest of 64, 128, 256, ... that divides T into 2 to
  MAX_BLOCKS blocks. 64-row blocks beat 32 and 128 on the CPU for T = 256 and 512."""
  block = 64
  while block * 2 <= seq_len:
    if seq_len % block == 0 and seq_len // block <= MAX_BLOCKS:
      return block
    block *= 2
  return None


_IMPLS = {"xla": _xla_attention, "cudnn": _cudnn_attention}
IMPLS = ("xla", "cudnn", "blocked", "auto")


def target_platform() -> str:
  """Platform the code is being traced for: the mesh in context (jax.set_mesh; e.g. a TPU
  topology that train/plan.py compiles for from a CPU host), else the default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  platform = getattr(device, "platform", None)
  return platform or jax.default_backend()


def resolve_impl(impl: str, *, causal: bool, q_len: int, kv_len: int, q_offset=0) -> str:
  """The implementation actually used for `impl` on this call.

  "auto": "blocked" on the CPU backend for causal self-attention it applies to, else "xla"
  (on GPU/TPU pick "cudnn" or a kernel explicitly; XLA's fused attention is fine there).
  "blocked" falls back to "xla" where it does not apply (not causal, decoding with a cache
  offset, T != S, or no block size divides T) -- same math, just without the skipped blocks.
  """
  if impl == "auto":
    impl = "blocked" if target_platform() == "cpu" else "xla"
  if impl == "blocked":
    static_zero = isinstance(q_offset, int) and q_offset == 0
    if not (causal and static_zero and q_len == kv_len and blocked_block_size(q_len)):
      return "xla"
  return impl


def dot_product_attention(
    q_BxTxNxH,
    k_BxSxKxH,
    v_BxSxKxH,
    *,
    causal: bool,
    q_segment_ids_BxT=None,
    kv_segment_ids_BxS=None,
    q_offset=0,
    impl: str = "xla",
    scale: float | None = None,
):
  """softmax(q k^T * scale + mask) v with grouped kv heads; returns [B, T, N, H].

  `scale`: None is 1/sqrt(H); muP passes its 1/H rule (model/parametrization.py).

  `causal`: query at absolute index q_offset + t sees keys s <= q_offset + t.
  `impl`: "xla" (einsum + float32 softmax; any backend), "cudnn" (jax.nn.dot_product_attention,
  implementation="cudnn"), "blocked" (causal self-attention skipping the masked key blocks;
  fastest on CPU) or "auto" (see `resolve_impl`). All take the same mask semantics (see
  `attention_mask`).
  """
  if impl not in IMPLS:
    raise ValueError(f"attention impl {impl!r} unknown; choose one of {sorted(IMPLS)}")
  n, k = q_BxTxNxH.shape[2], k_BxSxKxH.shape[2]
  if n % k:
    raise ValueError(f"query heads {n} not divisible by kv heads {k}")
  if scale is None:
    scale = 1.0 / float(q_BxTxNxH.shape[-1]) ** 0.5
  t, s = q_BxTxNxH.shape[1], k_BxSxKxH.shape[1]
  impl = resolve_impl(impl, causal=causal, q_len=t, kv_len=s, q_offset=q_offset)
  if impl == "blocked":
    if (q_segment_ids_BxT is None) != (kv_segment_ids_BxS is None):
      raise ValueError("pass both q_segment_ids and kv_segment_ids, or neither")
    return _blocked_causal_attention(
        q_BxTxNxH,
        k_BxSxKxH,
        v_BxSxKxH,
        scale,
        blocked_block_size(t),
        q_segment_ids_BxT,
        kv_segment_ids_BxS,
    )
  if impl == "cudnn" and causal and isinstance(q_offset, int) and q_offset == 0 and t == s:
    # cuDNN's own causal masking (flash attention skips the masked tiles); only segments,
    # if any, go in as an explicit mask.
    mask = None
    if q_segment_ids_BxT is not None:
      mask = attention_mask(
          causal=False,
          q_len=t,
          kv_len=s,
          q_segment_ids_BxT=q_segment_ids_BxT,
          kv_segment_ids_BxS=kv_segment_ids_BxS,
      )[:, None]
    return jax.nn.dot_product_attention(
        q_BxTxNxH,
        k_BxSxKxH,
        v_BxSxKxH,
        mask=mask,
        scale=scale,
        is_causal=True,
        implementation="cudnn",
    )
  need_mask = causal or q_segment_ids_BxT is not None
  mask = None
  if need_mask:
    mask = attention_mask(
        causal=causal,
        q_len=q_BxTxNxH.shape[1],
        kv_len=k_BxSxKxH.shape[1],
        q_offset=q_offset,
        q_segment_ids_BxT=q_segment_ids_BxT,
        kv_segment_ids_BxS=kv_segment_ids_BxS,
    )
  return _IMPLS[impl](q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, scale)
