"""How a model's init, forward multipliers and per-group optimizer settings scale with its
width and depth: standard (sp), muP (width) and CompleteP (width and depth).

A model is described relative to a tuned base: m_d = d_model / base_width and, for CompleteP,
m_L = num_layers / base_depth, with residual exponent alpha (`completep_alpha`, 1 or 0.5).
At m_d = m_L = 1 every multiplier below is exactly 1, so mup/completep reproduce the sp run.
sigma = init_std, eta = train.learning_rate, eps = train.eps, lam = train.weight_decay
(AdamW's decoupled decay, multiplied by the group's learning rate).

| group        | init std       | Adam LR            | Adam eps         | decay   |
|--------------|----------------|--------------------|------------------|---------|
| embedding    | sigma          | eta                | eps/m_d          | lam     |
| hidden       | sigma/vm_d (1) | eta/m_d * m_L^(a-1)| eps/m_d * m_L^-a | lam*m_d |
| block_vector | 1 / 0          | eta * m_L^(a-1)    | eps/m_d * m_L^-a | none    |
| head_matrix  | sigma/vm_d     | eta/m_d            | eps/m_d          | lam*m_d |
| vector       | 1 / 0          | eta                | eps/m_d          | none    |
| unembed      | sigma          | eta                | eps/m_d          | lam     |
embedding: token/position/type tables; hidden: attention and MLP matrices in the blocks;
block_vector: norms and biases in the blocks; head_matrix: mlm_dense, pooler_dense; vector:
final/embed/mlm norms and head biases; unembed: the untied output head. vm_d = sqrt(m_d);
lam = weight decay, applied only where train/optim.py `decay_mask` allows. A tied table is
both the embedding and, through the logit multiplier, the readout (muP's shared readout:
as a readout its effective init is sigma/m_d and its effective Adam LR eta/m_d, Table 3's
output-layer rules); its one Adam update serves both roles.

Forward: embedding output x 1 (muP's tunable alpha_input, width-independent, left at 1);
logits x 1/m_d (alpha_output / m_d); attention scores x 1/sqrt(h) * sqrt(h_base / h), i.e.
muP's 1/head_dim rule anchored at the base's head_dim h_base (`base_head_dim`); CompleteP
residual branches x m_L^-a (x + m_L^-a f(x)). (1) the residual-branch output projections
keep GPT-2's extra 1/sqrt(2 L) init factor, with L = num_layers under sp/mup and L =
base_depth under CompleteP (whose depth scaling is the branch multiplier instead).
The m_L factors are 1 under sp and mup. Muon (train.optimizer=muon) replaces Adam on the
hidden and head matrices; under mup/completep its orthogonalized updates are scaled by
sqrt(fan_out / fan_in) and its learning rate keeps only the depth factor m_L^(a-1).

Sources: muP, Yang et al. 2022 (Tensor Programs V, arXiv 2203.03466) Table 3, as tabulated
with its code lines by EleutherAI's nanoGPT-mup (master branch README); CompleteP, Dey et
al. 2025 (arXiv 2505.01618) Table 1 and nanoGPT-mup's completep branch (depth LR m_L^(a-1),
hidden decay lambda * m_d so that lr x decay stays width-independent); Adam eps scaled like
each group's gradient (Theta(1/m_d) for every group under muP, m_L^-a inside residual
branches): Everett et al. 2024 (arXiv 2407.05872) and arXiv 2512.22382.
"""

from __future__ import annotations

import dataclasses
import math

from model.config import ModelConfig

GROUPS = ("embedding", "hidden", "block_vector", "head_matrix", "vector", "unembed")
# Groups whose matrices Muon orthogonalizes (all other parameters stay with AdamW).
MATRIX_GROUPS = ("hidden", "head_matrix")
_EMBED_LEAVES = ("embedding",)
_BLOCK_MODULES = ("layers",)
_HEAD_MATRIX_MODULES = ("mlm_dense", "pooler_dense")


@dataclasses.dataclass(frozen=True)
class GroupRule:
  """Multipliers of the optimizer's base learning rate, epsilon and weight decay."""

  lr: float = 1.0
  eps: float = 1.0
  weight_decay: float = 1.0


def width_multiplier(cfg: ModelConfig) -> float:
  """m_d = d_model / base_width (1 under sp)."""
  return 1.0 if cfg.parametrization == "sp" else cfg.d_model / cfg.base_width


def depth_multiplier(cfg: ModelConfig) -> float:
  """m_L = num_layers / base_depth (1 unless completep)."""
  return cfg.num_layers / cfg.base_depth if cfg.parametrization == "completep" else 1.0


def depth_alpha(cfg: ModelConfig) -> float:
  return float(cfg.completep_alpha) if cfg.parametrization == "completep" else 1.0


def hidden_init_std(cfg: ModelConfig) -> float:
  """Init std of matrices with a width-sized fan-in (attention, MLP, head transforms)."""
  return cfg.init_std / math.sqrt(width_multiplier(cfg))


def residual_out_init_std(cfg: ModelConfig) -> float:
  """Init std of the projections that end a residual branch (attention out, MLP wo)."""
  layers = cfg.base_depth if cfg.parametrization == "completep" else cfg.num_layers
  return cfg.init_std / (2 * layers) ** 0.5 / math.sqrt(width_multiplier(cfg))


def residual_multiplier(cfg: ModelConfig) -> float:
  """CompleteP's branch multiplier m_L^-alpha (1 under sp and mup)."""
  return depth_multiplier(cfg) ** -depth_alpha(cfg)


def logit_multiplier(cfg: ModelConfig) -> float:
  """muP's output multiplier 1/m_d on the logits (1 under sp)."""
  return 1.0 / width_multiplier(cfg)


def base_head_dim(cfg: ModelConfig) -> float:
  """The base model's head_dim: `base_head_dim`, else head_dim / m_d (head count fixed)."""
  if cfg.base_head_dim:
    return float(cfg.base_head_dim)
  return cfg.head_dim / width_multiplier(cfg)


def attention_scale(cfg: ModelConfig) -> float:
  """Score scale: sp 1/sqrt(h); muP 1/h up to the constant that makes it 1/sqrt(h) at base."""
  scale = 1.0 / float(cfg.head_dim) ** 0.5
  if cfg.parametrization == "sp":
    return scale
  return scale * math.sqrt(base_head_dim(cfg) / cfg.head_dim)


def param_group(names: tuple[str, ...]) -> str:
  """The GROUPS label of a parameter from its key path names, e.g.
  ('layers', 'block', 'attn', 'query', 'kernel') -> 'hidden'."""
  names = tuple(n for n in names if n != "params")
  leaf = names[-1] if names else ""
  if leaf in _EMBED_LEAVES:
    return "embedding"
  in_block = any(n in _BLOCK_MODULES for n in names)
  is_matrix = leaf == "kernel"
  if in_block:
    return "hidden" if is_matrix else "block_vector"
  if is_matrix and any(n in _HEAD_MATRIX_MODULES for n in names):
    return "head_matrix"
  if is_matrix and "unembed" in names:
    return "unembed"
  return "vector"


def group_rules(cfg: ModelConfig, muon: bool = False) -> dict[str, GroupRule]:
  """Per-group multipliers (see the module table). `muon`: the matrix groups are Muon's,
  whose width scaling is in the update's shape factor, so their LR keeps only m_L^(a-1)."""
  m_d, m_l, a = width_multiplier(cfg), depth_multiplier(cfg), depth_alpha(cfg)
  depth_lr, depth_eps = m_l ** (a - 1.0), m_l**-a
  rules = {
      "embedding": GroupRule(1.0, 1.0 / m_d, 1.0),
      "hidden": GroupRule(depth_lr / m_d, depth_eps / m_d, m_d),
      "block_vector": GroupRule(depth_lr, depth_eps / m_d, 1.0),
      "head_matrix": GroupRule(1.0 / m_d, 1.0 / m_d, m_d),
      "vector": GroupRule(1.0, 1.0 / m_d, 1.0),
      "unembed": GroupRule(1.0, 1.0 / m_d, 1.0),
  }
  if muon:
    rules["hidden"] = GroupRule(depth_lr, 1.0, 1.0)
    rules["head_matrix"] = GroupRule(1.0, 1.0, 1.0)
  return rules


# Kernels whose contraction or output spans two axes (model/attention.py): query/key/value
# are [D, heads, head_dim], the attention output projection [heads, head_dim, D].
_TWO_OUTPUT_AXES = ("query", "key", "value")
_TWO_INPUT_AXES = ("out",)


def kernel_fan_dims(names: tuple[str, ...]) -> tuple[int, int]:
  """(number of input axes, number of output axes) of a kernel named by its key path; any
  leading axes beyond these (the scanned `layers` axis) index separate matrices."""
  module = names[-2] if len(names) >= 2 else ""
  if module in _TWO_OUTPUT_AXES:
    return 1, 2
  if module in _TWO_INPUT_AXES:
    return 2, 1
  return 1, 1
