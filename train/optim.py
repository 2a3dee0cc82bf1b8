"""Optimisers and learning-rate schedules, built from the validated `TrainSpec` (train/spec.py).

One function per concern: `make_schedule` (warmup then cosine / linear / constant / WSD),
`decay_mask` (which parameters get weight decay), `make_optimizer` (the Optax chain with
global-norm clipping). The step only sees the resulting `optax.GradientTransformation`.

Under `model.parametrization` mup/completep the optimizer is one Optax transform per
parameter group (`optax.multi_transform`), each with the group's learning-rate, epsilon and
weight-decay multipliers from model/parametrization.py; the model itself is not forked.
`optimizer=muon` orthogonalizes the hidden matrices' updates (optax.contrib.scale_by_muon,
per layer of a scanned stack) and leaves embeddings, the LM head and vectors to AdamW;
`param_table` says which parameter gets what.
"""

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax.core import meta

from model import parametrization as par
from model.config import ModelConfig
from train.spec import TrainSpec, betas

# Embedding tables (token, position, token type) are `embedding` leaves (nn.Embed's name).
# An untied output head (`unembed/kernel`) is a matrix.
_EMBED_LEAVES = ("embedding",)
# Parameters that never get weight decay: biases (leaves ending in "bias"), norm scales.
_NO_DECAY_LEAVES = ("scale",)
_NORM_MARKER = "norm"


def make_schedule(train: TrainSpec) -> Callable[[jax.Array], jax.Array]:
  """Learning rate as a function of the step: linear warmup from 0, then the named shape.

  cosine/linear decay from the peak to `min_lr_ratio * peak` at `steps`; constant holds the
  peak; wsd (warmup-stable-decay) holds the peak and cools down over the last
  `decay_fraction * steps` steps, linearly or with the 1-sqrt shape of Hägele et al. (2024).
  """
  name = train.schedule
  peak, steps, warmup = train.learning_rate, train.steps, train.warmup_steps
  floor = peak * train.min_lr_ratio
  rest = max(steps - warmup, 1)
  if name == "cosine":
    after = optax.cosine_decay_schedule(peak, rest, alpha=train.min_lr_ratio)
  elif name == "linear":
    after = optax.linear_schedule(peak, floor, rest)
  elif name == "constant":
    after = optax.constant_schedule(peak)
  else:
    after = _wsd_after_warmup(train, peak, floor, steps, warmup)
  if warmup == 0:
    return after
  ramp = optax.linear_schedule(0.0, peak, warmup)
  return optax.join_schedules([ramp, after], [warmup])


def _wsd_after_warmup(train, peak, floor, steps, warmup):
  """The stable + cooldown part of WSD, as a function of steps since warmup ended."""
  cooldown = train.cooldown
  decay_steps = max(int(round(train.decay_fraction * steps)), 1)
  stable = max(steps - warmup - decay_steps, 0)

  def schedule(count):
    t = jnp.clip((count - stable) / decay_steps, 0.0, 1.0)
    if cooldown == "linear":
      frac = 1.0 - t
    else:
      frac = 1.0 - jnp.sqrt(t)
    return floor + (peak - floor) * frac

  return schedule


def path_names(path) -> tuple[str, ...]:
  """A pytree key path as plain names, e.g. ('params', 'layers', 'attn', 'query', 'kernel')."""
  names = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
  return tuple(names)


def decay_mask(params: Any, decay_embeddings: bool = False) -> Any:
  """A tree of bools, True where weight decay applies.

  No decay on biases and normalisation scales (also when `scan_layers` stacks them into 2-D
  arrays, hence names rather than ndim), nor on embedding tables unless `decay_embeddings`.
  Matrices (attention, MLP, an untied output head) are decayed. Works on boxed
  (`nn.Partitioned`) or plain trees; returns a plain tree shaped like the unboxed params.
  """

  def leaf_decays(path, _):
    names = [n.lower() for n in path_names(path)]
    leaf = names[-1] if names else ""
    if leaf in _NO_DECAY_LEAVES or leaf.endswith("bias") or any(_NORM_MARKER in n for n in names):
      return False
    if leaf in _EMBED_LEAVES:
      return bool(decay_embeddings)
    return True

  return jax.tree_util.tree_map_with_path(leaf_decays, meta.unbox(params))


# Muon's AdamW branch (embeddings, head, vectors) uses this b1 (spec.DEFAULT_BETAS has Muon's).
MUON_ADAM_B1 = 0.9
# Muon's orthogonalized update has unit singular values; scaled by MUON_RMS x
# sqrt(max(fan_in, fan_out)) its RMS matches AdamW's (Liu et al. 2025, arXiv 2502.16982), so
# one train.learning_rate serves both branches. Under mup/completep the scale is
# MUON_RMS x sqrt(base_width) x sqrt(fan_out / fan_in) instead (width-independent spectral
# size, Bernstein et al.'s condition), equal to the former for square matrices at base width.
MUON_RMS = 0.2


def _adafactor(schedule, weight_decay: float, mask) -> optax.GradientTransformation:
  """optax.adafactor's defaults (factored second moments, update clipping at block RMS 1,
  relative step size) with DECOUPLED weight decay scaled by the learning rate, as in AdamW:
  optax.adafactor adds `weight_decay_rate * param` after the learning-rate scaling, so 0.1
  would shrink every matrix by 10% per step whatever the learning rate."""
  parts = [
      optax.scale_by_factored_rms(),
      optax.clip_by_block_rms(1.0),
      optax.scale_by_param_block_rms(),
  ]
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay, mask))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts)


def make_optimizer(
    train: TrainSpec, params: Any, model: ModelConfig | None = None
) -> tuple[optax.GradientTransformation, Callable]:
  """The Optax chain for the (validated) train spec and the schedule it uses.

  `params` (boxed, abstract or real) only supplies the tree for the weight-decay mask and
  the parameter groups. `model` (None means sp) picks the parametrization whose per-group
  multipliers apply.
  """
  name = train.optimizer
  mcfg = model or ModelConfig()
  schedule = make_schedule(train)
  if name == "muon" or mcfg.parametrization != "sp":
    tx = _per_group_optimizer(train, schedule, mcfg)
  else:
    tx = _single_optimizer(name, train, schedule, decay_mask(params, train.decay_embeddings))
  if train.grad_clip and train.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(train.grad_clip), tx)
  return tx, schedule


def _single_optimizer(name, train, schedule, mask) -> optax.GradientTransformation:
  """One optimizer for every parameter (sp), the chain the trainer always used."""
  wd = train.weight_decay
  b1, b2 = betas(train)
  if name == "adamw":
    return optax.adamw(schedule, b1=b1, b2=b2, eps=train.eps, weight_decay=wd, mask=mask)
  if name == "lion":
    return optax.lion(schedule, b1=b1, b2=b2, weight_decay=wd, mask=mask)
  return _adafactor(schedule, wd, mask)


def _scaled(schedule: Callable, mult: float) -> Callable:
  """schedule x mult (the schedule itself when mult is 1, so the arithmetic is unchanged)."""
  return schedule if mult == 1.0 else (lambda count: schedule(count) * mult)


def group_labels(params: Any) -> Any:
  """A tree of model/parametrization.py GROUPS labels, shaped like the unboxed params."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: par.param_group(path_names(path)), meta.unbox(params)
  )


def _per_group_optimizer(train, schedule, mcfg: ModelConfig) -> optax.GradientTransformation:
  """One transform per parameter group with the parametrization's multipliers."""
  name = train.optimizer
  muon = name == "muon"
  rules = par.group_rules(mcfg, muon=muon)
  mask = lambda p: decay_mask(p, train.decay_embeddings)
  b1, b2 = betas(train)
  transforms = {}
  for group, rule in rules.items():
    lr = _scaled(schedule, rule.lr)
    wd = train.weight_decay * rule.weight_decay
    if muon and group in par.MATRIX_GROUPS:
      transforms[group] = _muon_matrices(b1, wd, mask, lr, mcfg)
    elif muon or name == "adamw":
      transforms[group] = optax.adamw(
          lr,
          b1=MUON_ADAM_B1 if muon else b1,
          b2=b2,
          eps=train.eps * rule.eps,
          weight_decay=wd,
          mask=mask,
      )
    else:
      transforms[group] = optax.lion(lr, b1=b1, b2=b2, weight_decay=wd, mask=mask)
  return optax.multi_transform(transforms, group_labels)


def muon_dimension_numbers(updates: Any) -> Any:
  """MuonDimensionNumbers per kernel: leading axes (the scanned `layers` axis) are batch
  axes, so each layer's matrix is orthogonalized on its own; a [D, N, H] query kernel is
  the D x (N*H) matrix and a [N, H, D] attention-out kernel the (N*H) x D one."""

  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: _dimension_numbers(path_names(path), jnp.ndim(leaf)), updates
  )


def _dimension_numbers(names: tuple[str, ...], ndim: int):
  n_in, n_out = par.kernel_fan_dims(names)
  lead = ndim - n_in - n_out
  return optax.contrib.MuonDimensionNumbers(
      reduction_axis=tuple(range(lead, lead + n_in)),
      output_axis=tuple(range(lead + n_in, lead + n_in + n_out)),
  )


def fans(shape: tuple[int, ...], dim_nums) -> tuple[int, int]:
  """(fan_in, fan_out) of one orthogonalized matrix of a kernel."""
  return (
      math.prod(shape[a] for a in dim_nums.reduction_axis),
      math.prod(shape[a] for a in dim_nums.output_axis),
  )


def muon_update_scale(shape: tuple[int, ...], dim_nums, mcfg: ModelConfig) -> float:
  """Factor on a Muon update (see MUON_RMS)."""
  fan_in, fan_out = fans(shape, dim_nums)
  if mcfg.parametrization == "sp":
    return MUON_RMS * math.sqrt(max(fan_in, fan_out))
  return MUON_RMS * math.sqrt(mcfg.base_width) * math.sqrt(fan_out / fan_in)


def _muon_matrices(momentum, wd, mask, lr, mcfg) -> optax.GradientTransformation:
  """Muon for the matrix groups: Nesterov momentum, Newton-Schulz orthogonalization per
  matrix, the shape scale, decoupled weight decay, learning rate. optax.contrib.muon's own
  AdamW branch takes one unmasked weight decay, hence this chain of its parts."""
  is_dims = lambda x: isinstance(x, optax.contrib.MuonDimensionNumbers)

  def scale_by_shape(updates, params=None):
    del params
    return jax.tree.map(
        lambda u, d: u * muon_update_scale(u.shape, d, mcfg),
        updates,
        muon_dimension_numbers(updates),
        is_leaf=is_dims,
    )

  return optax.chain(
      optax.contrib.scale_by_muon(
          beta=momentum, nesterov=True, weight_dimension_numbers=muon_dimension_numbers
      ),
      optax.stateless(scale_by_shape),
      optax.add_decayed_weights(wd, mask),
      optax.scale_by_learning_rate(lr),
  )


def param_table(train: TrainSpec, params: Any, model: ModelConfig | None = None) -> list[dict]:
  """One row per parameter: path, shape, group, which optimizer updates it, the matrix
  Muon orthogonalizes (layers x fan_in x fan_out) and the group's multipliers. The trainer
  prints `format_param_table` of it at start-up."""
  mcfg = model or ModelConfig()
  muon = train.optimizer == "muon"
  rules = par.group_rules(mcfg, muon=muon)
  rows = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(meta.unbox(params)):
    names = path_names(path)
    group = par.param_group(names)
    row = dict(
        path="/".join(n for n in names if n != "params"),
        shape=tuple(leaf.shape),
        group=group,
        optimizer=train.optimizer,
        matrix="",
        lr_mult=rules[group].lr,
        eps_mult=rules[group].eps,
        wd_mult=rules[group].weight_decay,
    )
    if muon and group in par.MATRIX_GROUPS:
      dims = _dimension_numbers(names, len(leaf.shape))
      fan_in, fan_out = fans(tuple(leaf.shape), dims)
      batch = math.prod(leaf.shape) // (fan_in * fan_out)
      row["matrix"] = f"{batch}x{fan_in}x{fan_out}"
      row["update_scale"] = muon_update_scale(tuple(leaf.shape), dims, mcfg)
    elif muon:
      row["optimizer"] = "adamw"
    rows.append(row)
  return rows


def format_param_table(rows: list[dict]) -> str:
  """`param_table` as aligned text lines."""
  head = ("parameter", "shape", "group", "optimizer", "matrix", "lr x", "eps x", "wd x")
  lines = [
      (
          r["path"],
          "x".join(map(str, r["shape"])),
          r["group"],
          r["optimizer"],
          r["matrix"] or "-",
          f"{r['lr_mult']:.4g}",
          f"{r['eps_mult']:.4g}",
          f"{r['wd_mult']:.4g}",
      )
      for r in rows
  ]
  widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
  return "\n".join(
      "  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *lines]
  )
