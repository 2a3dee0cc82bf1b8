"""Optimisers and learning-rate schedules, built from `config.train`.

One function per concern: `make_schedule` (warmup then cosine / linear / constant / WSD),
`decay_mask` (which parameters get weight decay), `make_optimizer` (the Optax chain with
global-norm clipping). The step only sees the resulting `optax.GradientTransformation`.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax.core import meta

OPTIMIZERS = ("adamw", "adafactor", "lion")
SCHEDULES = ("cosine", "linear", "constant", "wsd")
COOLDOWNS = ("linear", "1-sqrt")

# Embedding tables (token, position, token type) are `embedding` leaves (nn.Embed's name;
# also GPT-2-style wte/wpe modules). An untied output head (`unembed/kernel`) is a matrix.
_EMBED_LEAVES = ("embedding",)
_EMBED_MODULES = ("wte", "wpe")
# Parameters that never get weight decay: biases (any leaf ending in "bias") and norm scales.
_NO_DECAY_LEAVES = ("scale", "b")
_NORM_MARKERS = ("norm", "ln_")


def make_schedule(train_cfg) -> Callable[[jax.Array], jax.Array]:
  """Learning rate as a function of the step: linear warmup from 0, then the named shape.

  cosine/linear decay from the peak to `min_lr_ratio * peak` at `steps`; constant holds the
  peak; wsd (warmup-stable-decay) holds the peak and cools down over the last
  `decay_fraction * steps` steps, linearly or with the 1-sqrt shape of Hägele et al. (2024).
  """
  name = train_cfg.schedule
  peak = float(train_cfg.learning_rate)
  steps = int(train_cfg.steps)
  warmup = int(train_cfg.warmup_steps)
  floor = peak * float(train_cfg.min_lr_ratio)
  if name not in SCHEDULES:
    raise ValueError(f"config.train.schedule={name!r} is unknown; choose one of {SCHEDULES}.")
  check_schedule_fits(train_cfg)
  rest = max(steps - warmup, 1)
  if name == "cosine":
    after = optax.cosine_decay_schedule(peak, rest, alpha=float(train_cfg.min_lr_ratio))
  elif name == "linear":
    after = optax.linear_schedule(peak, floor, rest)
  elif name == "constant":
    after = optax.constant_schedule(peak)
  else:
    after = _wsd_after_warmup(train_cfg, peak, floor, steps, warmup)
  if warmup == 0:
    return after
  ramp = optax.linear_schedule(0.0, peak, warmup)
  return optax.join_schedules([ramp, after], [warmup])


def check_schedule_fits(train_cfg) -> None:
  """Warmup (and a WSD cooldown) must fit inside the run: otherwise the schedule silently
  never reaches its peak or never decays, and the run measures something else."""
  steps, warmup = int(train_cfg.steps), int(train_cfg.warmup_steps)
  if warmup < 0:
    raise ValueError(f"config.train.warmup_steps={warmup} must be >= 0.")
  fits = warmup <= steps if train_cfg.schedule == "constant" else warmup < steps
  if steps > 0 and not fits:
    raise ValueError(
        f"config.train.warmup_steps={warmup} does not fit in train.steps={steps}: the "
        f"{train_cfg.schedule} schedule would never decay; set --config.train.warmup_steps to "
        f"less than {steps} (e.g. {max(steps // 20, 1)}).")
  if train_cfg.schedule == "wsd":
    decay = max(int(round(float(train_cfg.decay_fraction) * steps)), 1)
    if warmup + decay > steps:
      raise ValueError(
          f"config.train.warmup_steps={warmup} + the WSD cooldown of {decay} steps "
          f"(train.decay_fraction={train_cfg.decay_fraction} x {steps}) exceed train.steps="
          f"{steps}; shorten the warmup or the decay_fraction.")


def _wsd_after_warmup(train_cfg, peak, floor, steps, warmup):
  """The stable + cooldown part of WSD, as a function of steps since warmup ended."""
  cooldown = train_cfg.cooldown
  if cooldown not in COOLDOWNS:
    raise ValueError(f"config.train.cooldown={cooldown!r} is unknown; choose one of {COOLDOWNS}.")
  if not 0.0 <= train_cfg.decay_fraction <= 1.0:
    raise ValueError(
        f"config.train.decay_fraction={train_cfg.decay_fraction} must lie in [0, 1].")
  decay_steps = max(int(round(train_cfg.decay_fraction * steps)), 1)
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
    if (leaf in _NO_DECAY_LEAVES or leaf.endswith("bias")
        or any(m in n for n in names for m in _NORM_MARKERS)):
      return False
    if leaf in _EMBED_LEAVES or any(n in _EMBED_MODULES for n in names):
      return bool(decay_embeddings)
    return True

  return jax.tree_util.tree_map_with_path(leaf_decays, meta.unbox(params))


# (b1, b2) when config.train.b1 / b2 are left unset: each optimizer's published defaults
# (AdamW as in GPT-3 / Llama; Lion as in Chen et al. 2023, whose LR is 3-10x lower than AdamW's).
DEFAULT_BETAS = {"adamw": (0.9, 0.95), "lion": (0.9, 0.99), "adafactor": (None, None)}


def betas(train_cfg) -> tuple[float | None, float | None]:
  """(b1, b2) for the configured optimizer: the config's values where set, else its defaults."""
  d1, d2 = DEFAULT_BETAS[train_cfg.optimizer]
  b1 = train_cfg.b1 if train_cfg.b1 is not None else d1
  b2 = train_cfg.b2 if train_cfg.b2 is not None else d2
  return b1, b2


def _adafactor(schedule, weight_decay: float, mask) -> optax.GradientTransformation:
  """optax.adafactor's defaults (factored second moments, update clipping at block RMS 1,
  relative step size) with DECOUPLED weight decay scaled by the learning rate, as in AdamW:
  optax.adafactor adds `weight_decay_rate * param` after the learning-rate scaling, so 0.1
  would shrink every matrix by 10% per step whatever the learning rate."""
  parts = [optax.scale_by_factored_rms(), optax.clip_by_block_rms(1.0),
           optax.scale_by_param_block_rms()]
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay, mask))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts)


def make_optimizer(train_cfg, params: Any) -> tuple[optax.GradientTransformation, Callable]:
  """The Optax chain for `config.train` and the schedule it uses (for logging the lr).

  `params` (boxed, abstract or real) only supplies the tree for the weight-decay mask.
  """
  name = train_cfg.optimizer
  if name not in OPTIMIZERS:
    raise ValueError(f"config.train.optimizer={name!r} is unknown; choose one of {OPTIMIZERS}.")
  schedule = make_schedule(train_cfg)
  mask = decay_mask(params, train_cfg.decay_embeddings)
  wd = float(train_cfg.weight_decay)
  b1, b2 = betas(train_cfg)
  if name == "adamw":
    tx = optax.adamw(schedule, b1=b1, b2=b2, eps=train_cfg.eps, weight_decay=wd, mask=mask)
  elif name == "lion":
    tx = optax.lion(schedule, b1=b1, b2=b2, weight_decay=wd, mask=mask)
  else:
    tx = _adafactor(schedule, wd, mask)
  if train_cfg.grad_clip and train_cfg.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(float(train_cfg.grad_clip)), tx)
  return tx, schedule
