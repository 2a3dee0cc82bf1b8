"""The jitted train step: loss, gradient accumulation, the update, non-finite skipping.

`make_train_step` is the pure function (state, batch) -> (state, metrics);
`build_train_step` wraps it in `jax.jit` with in/out shardings and a donated state, without
running it, so train/bench.py can time it and train/plan.py can compile it for a TPU topology
it does not have. Everything the step needs arrives through the spec (as `StepOptions`), the
model, the optimizer and the mesh; nothing is read from globals.
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from model import moe
from train import losses
from train import mesh as mesh_lib
from train.data.pipeline import BATCH_KEYS
from train.spec import RunSpec
from train.state import TrainState

Batch = dict[str, jax.Array]
# Encoder-decoder batches also carry the source (train/data/parallel.py), same width.
SOURCE_KEYS = ("src_tokens", "src_segment_ids", "src_positions")


def batch_keys(model_cfg) -> tuple[str, ...]:
  """The keys of one batch for this model (a ModelConfig or the config's model section)."""
  return BATCH_KEYS + (SOURCE_KEYS if model_cfg.arch == "encoder_decoder" else ())


def mlm_corrupt(
    rng: jax.Array, batch: Batch, *, mask_id: int, vocab_size: int, probability: float
) -> Batch:
  """BERT masking drawn inside the step: choose `probability` of the real tokens; of those
  80% become `mask_id`, 10% a random token, 10% stay; the loss counts only the chosen ones.

  The original tokens are `batch["inputs"]`; `segment_ids == 0` marks padding.
  """
  tokens_BxL = batch["inputs"]
  real_BxL = batch["segment_ids"] > 0 if "segment_ids" in batch else jnp.ones_like(tokens_BxL, bool)
  k_pick, k_how, k_rand = jax.random.split(rng, 3)
  chosen_BxL = jax.random.bernoulli(k_pick, probability, tokens_BxL.shape) & real_BxL
  how_BxL = jax.random.uniform(k_how, tokens_BxL.shape)
  random_BxL = jax.random.randint(k_rand, tokens_BxL.shape, 0, vocab_size, tokens_BxL.dtype)
  corrupted = jnp.where(
      how_BxL < 0.8,
      jnp.asarray(mask_id, tokens_BxL.dtype),
      jnp.where(how_BxL < 0.9, random_BxL, tokens_BxL),
  )
  out = dict(batch)
  out["inputs"] = jnp.where(chosen_BxL, corrupted, tokens_BxL)
  out["targets"] = tokens_BxL
  out["weights"] = chosen_BxL.astype(jnp.float32)
  return out


def token_losses(
    logits_BxLxV: jax.Array,
    targets_BxL: jax.Array,
    weights_BxL: jax.Array,
    z_loss: float,
    label_smoothing: float = 0.0,
) -> dict[str, jax.Array]:
  """Weighted *sums* (not means) so microbatches add up exactly to the full batch.

  z-loss (PaLM) penalises log Z^2 to keep the softmax normaliser near 1 in low precision.
  Label smoothing eps trains against (1 - eps) one-hot + eps uniform; that cross-entropy is
  the plain one plus eps * (target logit - mean logit), kept apart in `smooth_sum` so the
  logged loss stays the plain cross-entropy that evaluation reports.
  """
  w = weights_BxL.astype(jnp.float32)
  ce_sum = jnp.sum(losses.token_nll(logits_BxLxV, targets_BxL) * w)
  z_sum = jnp.zeros((), jnp.float32)
  smooth_sum = jnp.zeros((), jnp.float32)
  if z_loss:
    log_z_BxL = jax.nn.logsumexp(logits_BxLxV.astype(jnp.float32), axis=-1)
    z_sum = jnp.sum(jnp.square(log_z_BxL) * w) * z_loss
  if label_smoothing:
    logits_BxLxV = logits_BxLxV.astype(jnp.float32)
    target_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
    gap_BxL = target_BxL - jnp.mean(logits_BxLxV, axis=-1)
    smooth_sum = jnp.sum(gap_BxL * w) * label_smoothing
  return {"ce_sum": ce_sum, "z_sum": z_sum, "smooth_sum": smooth_sum, "weight_sum": jnp.sum(w)}


def apply_model(
    model: nn.Module,
    params: Any,
    batch: Batch,
    *,
    rng: jax.Array | None,
    deterministic: bool,
    mutable: Any = False,
) -> jax.Array:
  """logits_BxLxV for a batch dict (positions/segment_ids passed when present); with
  `mutable` collections (e.g. the MoE auxiliary losses), (logits, those collections)."""
  kwargs = {}
  if "positions" in batch:
    kwargs["positions_BxL"] = batch["positions"]
  if "segment_ids" in batch:
    kwargs["segment_ids_BxL"] = batch["segment_ids"]
  for k in SOURCE_KEYS:
    if k in batch:
      kwargs[f"{k}_BxS"] = batch[k]
  rngs = {"dropout": rng} if (rng is not None and not deterministic) else None
  return model.apply(
      {"params": params},
      batch["inputs"],
      deterministic=deterministic,
      rngs=rngs,
      mutable=mutable,
      **kwargs,
  )


def cast_params(params: Any, dtype: Any) -> Any:
  """fp32 master weights -> compute dtype (grads flow back to fp32 through the cast)."""
  dtype = jnp.dtype(dtype)
  return jax.tree_util.tree_map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params
  )


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """What the step needs, taken once from the spec and the tokenizer (hashable, jit-static)."""

  objective: str = "next_token"
  microbatches: int = 1
  z_loss: float = 0.0
  label_smoothing: float = 0.0
  mlm_probability: float = 0.15
  mask_id: int = 0
  vocab_size: int = 0
  compute_dtype: str = "float32"
  param_dtype: str = "float32"
  dropout: bool = False
  moe: bool = False  # model.mlp == "moe": add the router's auxiliary losses
  moe_load_balance_loss: float = 0.0
  moe_router_z_loss: float = 0.0

  @classmethod
  def from_spec(
      cls, spec: RunSpec, mask_id: int | None = None, token_vocab_size: int | None = None
  ) -> "StepOptions":
    """`token_vocab_size`: the tokenizer's; MLM's random replacements stay below it (a model
    vocabulary padded past the tokenizer's has rows no text uses)."""
    t, m = spec.train, spec.model
    if t.objective == "mlm" and mask_id is None:
      raise ValueError("train.objective=mlm needs a tokenizer with a mask token (mask_id).")
    return cls(
        objective=t.objective,
        microbatches=t.microbatches,
        z_loss=t.z_loss,
        label_smoothing=t.label_smoothing,
        mlm_probability=t.mlm_probability,
        mask_id=mask_id or 0,
        vocab_size=min(m.vocab_size, token_vocab_size or m.vocab_size),
        compute_dtype=m.dtype,
        param_dtype=m.param_dtype,
        dropout=m.dropout > 0,
        moe=m.mlp == "moe",
        moe_load_balance_loss=t.moe_load_balance_loss,
        moe_router_z_loss=t.moe_router_z_loss,
    )


def make_loss_fn(model: nn.Module, opts: StepOptions) -> Callable:
  """loss_fn(params, batch, rng) -> (sum of weighted token losses, stats of sums)."""

  extra = (opts.z_loss, opts.label_smoothing)

  def loss_fn(params, batch, rng):
    k_mask, k_drop = jax.random.split(rng)
    if opts.objective == "mlm":
      batch = mlm_corrupt(
          k_mask,
          batch,
          mask_id=opts.mask_id,
          vocab_size=opts.vocab_size,
          probability=opts.mlm_probability,
      )
    if opts.compute_dtype != opts.param_dtype:
      params = cast_params(params, opts.compute_dtype)
    deterministic = not opts.dropout
    if not opts.moe:
      logits = apply_model(model, params, batch, rng=k_drop, deterministic=deterministic)
      stats = token_losses(logits, batch["targets"], batch["weights"], *extra)
      return stats["ce_sum"] + stats["z_sum"] + stats["smooth_sum"], stats
    logits, aux = apply_model(
        model, params, batch, rng=k_drop, deterministic=deterministic, mutable=[moe.AUX]
    )
    stats = token_losses(logits, batch["targets"], batch["weights"], *extra)
    stats.update(moe_stats(moe.aux_losses(aux[moe.AUX]), stats["weight_sum"]))
    total = stats["ce_sum"] + stats["z_sum"] + stats["smooth_sum"]
    total += opts.moe_load_balance_loss * stats["moe_load_balance_sum"]
    total += opts.moe_router_z_loss * stats["moe_router_z_sum"]
    return total, stats

  return loss_fn


def moe_stats(aux: dict[str, jax.Array], weight_sum: jax.Array) -> dict[str, jax.Array]:
  """The router's per-batch means as sums weighted by the batch's tokens, so microbatches add
  up like the token losses (the step divides by the total weight)."""
  return {
      "moe_load_balance_sum": aux["load_balance"] * weight_sum,
      "moe_router_z_sum": aux["router_z"] * weight_sum,
      "moe_expert_load_sum": aux["expert_load"] * weight_sum,
      "moe_dropped_tokens": aux["dropped"],
  }


def moe_metrics(stats: dict[str, jax.Array], denom: jax.Array) -> dict[str, jax.Array]:
  """Logged MoE metrics: the auxiliary losses (unscaled by their coefficients), the fraction
  of tokens each expert received per MoE layer [layers, E], and dropped assignments (0)."""
  if "moe_load_balance_sum" not in stats:
    return {}
  return {
      "moe_load_balance_loss": stats["moe_load_balance_sum"] / denom,
      "moe_router_z_loss": stats["moe_router_z_sum"] / denom,
      "moe_expert_load": stats["moe_expert_load_sum"] / denom,
      "moe_dropped_tokens": stats["moe_dropped_tokens"],
  }


def split_microbatches(batch: Batch, m: int) -> Batch:
  """[B, ...] -> [m, B/m, ...] taking rows i*m + k into microbatch k, so every data shard
  holds an equal slice of every microbatch (no resharding between scan iterations)."""

  def split(x):
    b = x.shape[0]
    return jnp.swapaxes(x.reshape((b // m, m) + x.shape[1:]), 0, 1)

  return jax.tree_util.tree_map(split, batch)


def accumulate_gradients(
    loss_fn: Callable,
    params: Any,
    batch: Batch,
    rng: jax.Array,
    microbatches: int,
    mb_sharding: NamedSharding | None = None,
):
  """Sum of grads and stats over microbatches with `lax.scan` (one compiled body)."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if microbatches == 1:
    (_, stats), grads = grad_fn(params, batch, jax.random.fold_in(rng, 0))
    return grads, stats

  mbs = split_microbatches(batch, microbatches)

  def body(carry, xs):
    grads_acc, stats_acc = carry
    i, mb = xs
    if mb_sharding is not None:
      mb = jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, mb_sharding), mb)
    (_, stats), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
    grads_acc = jax.tree_util.tree_map(jnp.add, grads_acc, grads)
    stats_acc = jax.tree_util.tree_map(jnp.add, stats_acc, stats)
    return (grads_acc, stats_acc), None

  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  first_mb = jax.tree_util.tree_map(lambda x: x[0], mbs)
  stats_shape = jax.eval_shape(lambda: loss_fn(params, first_mb, rng)[1])
  zstats = jax.tree_util.tree_map(lambda v: jnp.zeros(v.shape, v.dtype), stats_shape)
  (grads, stats), _ = jax.lax.scan(body, (zeros, zstats), (jnp.arange(microbatches), mbs))
  return grads, stats


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: Callable,
    opts: StepOptions,
    mb_sharding: NamedSharding | None = None,
) -> Callable:
  """The pure step. A non-finite loss or gradient norm leaves params and optimizer state
  unchanged (the step counter still advances: the batch was consumed) and is counted."""
  loss_fn = make_loss_fn(model, opts)

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    grads, stats = accumulate_gradients(
        loss_fn, state.params, batch, rng, opts.microbatches, mb_sharding
    )
    denom = jnp.maximum(stats["weight_sum"], 1.0)
    grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
    loss = stats["ce_sum"] / denom
    grad_norm = optax.tree.norm(grads)
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(stats["z_sum"])
    keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
    skipped = (~finite).astype(jnp.int32)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(new_params, state.params),
        opt_state=keep(new_opt, state.opt_state),
        skipped=state.skipped + skipped,
        nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
    )
    metrics = {
        "loss": loss,
        "z_loss": stats["z_sum"] / denom,
        "grad_norm": grad_norm,
        "param_norm": optax.tree.norm(new_state.params),
        # The optimizer's schedule counts applied updates only (a skipped step keeps the old
        # optimizer state), so the rate used now is the schedule at step - skipped.
        "lr": jnp.asarray(schedule(state.step - state.skipped), jnp.float32),
        "tokens": stats["weight_sum"],
        "skipped": skipped,
        "skipped_total": new_state.skipped,
        "nonfinite_streak": new_state.nonfinite_streak,
        **moe_metrics(stats, denom),
    }
    return new_state, metrics

  return train_step


@dataclasses.dataclass
class CompiledStep:
  """The jitted step and the shardings it was built with (for bench.py / plan.py)."""

  step_fn: Callable  # jitted (state, batch) -> (state, metrics); donates state
  state_shardings: TrainState
  batch_sharding: NamedSharding
  abstract_state: TrainState
  mesh: Mesh
  rules: tuple
  batch_shape: tuple[int, int]  # (global batch, sequence length)
  batch_keys: tuple[str, ...] = BATCH_KEYS

  def __call__(self, state: TrainState, batch: Batch):
    """Runs one step, traced in the caller's mesh context (see mesh_lib.mesh_context)."""
    return self.step_fn(state, batch)

  def abstract_batch(self) -> Batch:
    """ShapeDtypeStructs of one global batch, for `.lower()`."""
    dt = {"weights": jnp.float32}
    return {
        k: jax.ShapeDtypeStruct(
            self.batch_shape, dt.get(k, jnp.int32), sharding=self.batch_sharding
        )
        for k in self.batch_keys
    }

  def lower(self):
    """Lowers (traces) the step for the abstract state and batch: `.compile()` for XLA."""
    state = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        self.abstract_state,
        self.state_shardings,
    )
    with mesh_lib.mesh_context(self.mesh, self.rules):
      return self.step_fn.lower(state, self.abstract_batch())


def check_batch(spec: RunSpec, mesh: Mesh) -> None:
  """Clear errors for a global batch the mesh or the microbatching cannot split."""
  b, m = spec.train.batch_size, spec.train.microbatches
  shards = mesh_lib.data_parallel_size(mesh, spec.mesh.axis_rules)
  if b % shards:
    raise ValueError(
        f"train.batch_size={b} is not divisible by the {shards} data shards of the mesh "
        f"{dict(mesh.shape)} (batch is split over data x fsdp); use a multiple of {shards}."
    )
  if (b // m) % shards:
    raise ValueError(
        f"train.batch_size={b} with train.microbatches={m}: each microbatch ({b}/{m}) must be "
        f"a whole multiple of the {shards} data shards; use a batch that is a multiple of "
        f"{m * shards}."
    )


def build_train_step(
    spec: RunSpec,
    opts: StepOptions,
    mesh: Mesh,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: Callable,
    abstract_state: TrainState,
    state_shardings: TrainState,
) -> CompiledStep:
  """jax.jit of the step with in/out shardings and the state donated; nothing is run."""
  rules = spec.mesh.axis_rules
  batch_sharding = mesh_lib.batch_sharding(mesh, rules)
  mb_sharding = batch_sharding if opts.microbatches > 1 else None
  fn = make_train_step(model, tx, schedule, opts, mb_sharding)
  keys = batch_keys(spec.model)
  batch_shardings = {k: batch_sharding for k in keys}
  jitted = jax.jit(
      fn,
      in_shardings=(state_shardings, batch_shardings),
      out_shardings=(state_shardings, mesh_lib.replicated(mesh)),
      donate_argnums=(0,),
  )
  batch_shape = (spec.train.batch_size, spec.data.seq_len)
  return CompiledStep(
      jitted, state_shardings, batch_sharding, abstract_state, mesh, rules, batch_shape, keys
  )
