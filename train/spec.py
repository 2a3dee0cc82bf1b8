"""The config, resolved once: `resolve(config) -> RunSpec`, frozen and validated.

The ConfigDict is the surface (config files, `--config.a.b=value` flags, the JSON stored with
every checkpoint). Everything below the entry points reads a `RunSpec`: typed, immutable
sections whose values were checked once, by `validate`, with messages that name the field and
the fix. The dataclasses here are also the schema: `configs/base.py` builds its defaults from
them, so each field is declared in exactly one place (the model's in `model/config.py`).

Imports no JAX: configs and planners validate cheaply.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from typing import Any, Mapping

from model.config import ModelConfig

# Logical axis names used by the model, mapped to the mesh axes `data`, `fsdp`, `tensor`.
# Rules are applied in order and a mesh axis is used at most once per array, so an
# activation (batch, length, embed) shards batch over (data, fsdp) and leaves embed alone,
# while a parameter (vocab, embed) shards embed over fsdp (FSDP) and vocab over tensor.
DEFAULT_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
)
# Expert parallelism (model/moe_parallel.py): a fourth mesh axis `expert`, e.g.
# mesh.shape=(2, 1, 1, 4), holds E/4 experts per device and also splits the batch (every
# device routes its own tokens; all-to-all carries them to their experts and back).
EXPERT_PARALLEL_AXIS_RULES = (
    (("batch", ("data", "fsdp", "expert")),)
    + tuple(r for r in DEFAULT_AXIS_RULES if r[0] != "batch")
    + (("expert", "expert"),)
)
MESH_AXES = ("data", "fsdp", "tensor")
# The optional fourth mesh axis (a fourth mesh.shape entry).
EXPERT_AXIS = "expert"
OBJECTIVES = ("next_token", "mlm")
TRANSFER_GUARDS = ("disallow", "log", "allow")
OPTIMIZERS = ("adamw", "adafactor", "lion", "muon")
SCHEDULES = ("cosine", "linear", "constant", "wsd")
COOLDOWNS = ("linear", "1-sqrt")
# (b1, b2) when train.b1 / b2 are left unset: each optimizer's published defaults (AdamW as
# in GPT-3 / Llama; Lion as in Chen et al. 2023, whose LR is 3-10x lower than AdamW's).
# Muon: b1 is its momentum (0.95 as in Jordan's Muon), b2 its AdamW branch's second moment.
DEFAULT_BETAS = {
    "adamw": (0.9, 0.95),
    "lion": (0.9, 0.99),
    "adafactor": (None, None),
    "muon": (0.95, 0.95),
}


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Corpus, tokenizer and sequence length (read by train/data/)."""

  source: str = "embedded"  # see train/data/sources.py for the registry
  tokenizer: str = "byte"  # byte | path to tokenizer.json / SentencePiece model
  seq_len: int = 256
  prepared_dir: str = ""  # where prepared shards live; empty: a cache under the workdir
  val_fraction: float = 0.01  # fraction of documents (by content hash) held out per domain
  num_workers: int = 0
  max_unique_tokens: int = 0  # > 0: train on this many tokens of the train split, repeated
  # for as many epochs as train.steps needs (a multiple of seq_len; 0: the whole split)


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """Optimisation and the step (read by train/)."""

  steps: int = 1000
  batch_size: int = 16  # global batch, in sequences
  microbatches: int = 1  # gradient accumulation (lax.scan inside the step)
  objective: str = "next_token"  # next_token | mlm
  mlm_probability: float = 0.15
  optimizer: str = "adamw"  # adamw | adafactor | lion | muon
  learning_rate: float = 1e-3
  b1: float | None = None  # None: the optimizer's default (adamw 0.9/0.95, lion 0.9/0.99)
  b2: float | None = None
  eps: float = 1e-8
  weight_decay: float = 0.1
  decay_embeddings: bool = False
  schedule: str = "cosine"  # cosine | linear | constant | wsd
  warmup_steps: int = 100
  min_lr_ratio: float = 0.1
  decay_fraction: float = 0.2  # wsd: fraction of steps spent cooling down
  cooldown: str = "linear"  # wsd cooldown shape: linear | 1-sqrt
  grad_clip: float = 1.0
  z_loss: float = 0.0
  label_smoothing: float = 0.0  # eps of the smoothed target (0.1 for translation)
  moe_load_balance_loss: float = 0.01  # coefficient of the Switch/GShard balance loss (moe)
  moe_router_z_loss: float = 0.001  # coefficient of the router z-loss (moe)
  max_nonfinite_steps: int = 10  # consecutive skipped updates before stopping
  log_every: int = 20
  transfer_guard: str = "disallow"  # jax.transfer_guard around the step: disallow | log | allow


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """Periodic held-out evaluation."""

  every: int = 250
  batches: int = 8  # 0: off; -1: the whole validation split


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
  """Orbax checkpointing policy."""

  every: int = 250
  keep: int = 3
  keep_every: int = 0  # also keep every M-th step (0: off)
  async_save: bool = True
  preemption_poll_every: int = 10  # multi-process: steps between cross-process stop checks


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  """Device mesh and logical-to-mesh axis rules (resolved to tuples once, here)."""

  shape: tuple = (-1, 1, 1)  # (data, fsdp, tensor[, expert]) within a slice; one may be -1
  dcn_shape: tuple = (1, 1, 1)  # across slices (multi-slice TPU)
  axis_rules: tuple = DEFAULT_AXIS_RULES


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
  """Multi-host initialisation."""

  enabled: bool = False  # also switched on by the environment (Cloud TPU, SLURM)
  coordinator_address: str = ""
  num_processes: int = 0
  process_id: int = -1


@dataclasses.dataclass(frozen=True)
class CostSpec:
  """Inputs of the cost and energy estimates (train/cost.py)."""

  # None: the chip's dated list price / typical board power in train/hardware.py (unknown on a
  # CPU: set the watts of the CPU share the run uses, e.g. TDP x used cores / cores).
  usd_per_chip_hour: float | None = None
  watts_per_chip: float | None = None
  # Power usage effectiveness: Google's fleet-wide trailing-twelve-month PUE for 2023
  # (google.com/about/datacenters/efficiency); the industry average is about 1.58 (Uptime
  # Institute global survey 2023).
  pue: float = 1.1
  # World-average electricity carbon intensity in 2023, 480 g CO2e/kWh (Ember, Global
  # Electricity Review 2024); set the grid the run really draws from.
  grid_kgco2_per_kwh: float = 0.48


SECTIONS = dict(
    model=ModelConfig,
    data=DataSpec,
    train=TrainSpec,
    eval=EvalSpec,
    checkpoint=CheckpointSpec,
    mesh=MeshSpec,
    distributed=DistributedSpec,
    cost=CostSpec,
)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """A whole run, resolved. `config` is the plain dict it came from (stored with checkpoints,
  and where sections for other tools, e.g. `ladder`, stay)."""

  name: str
  seed: int
  init_from: str
  model: ModelConfig
  data: DataSpec
  train: TrainSpec
  eval: EvalSpec
  checkpoint: CheckpointSpec
  mesh: MeshSpec
  distributed: DistributedSpec
  cost: CostSpec
  config: dict = dataclasses.field(compare=False, repr=False)

  @property
  def tokens_per_step(self) -> int:
    return self.train.batch_size * self.data.seq_len

  def replace(self, **sections) -> "RunSpec":
    """A copy with whole sections replaced (validated again)."""
    out = dataclasses.replace(self, **sections)
    validate(out)
    return out


# ------------------------------------------------------------------ resolve


def _coerce(value: Any, annotation: Any, field: str) -> Any:
  """`value` as the field's type; a wrong type is an error naming the field."""
  kind = typing.get_origin(annotation) or annotation
  optional = kind in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation)
  if optional:
    if value is None:
      return None
    annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
  want = {"int": int, "float": float, "str": str, "bool": bool, "tuple": tuple}.get(
      annotation if isinstance(annotation, str) else annotation.__name__, annotation
  )
  ok = {
      int: isinstance(value, numbers.Integral) and not isinstance(value, bool),
      float: isinstance(value, numbers.Real) and not isinstance(value, bool),
      bool: isinstance(value, bool),
      str: isinstance(value, str),
      tuple: isinstance(value, (tuple, list)),
  }.get(want, True)
  if not ok:
    raise ValueError(
        f"{field}={value!r} should be {want.__name__}; set --config.{field}=<{want.__name__}>"
    )
  if want is tuple:
    return tuple(tuple(v) if isinstance(v, list) else v for v in value)
  return want(value) if want in (int, float, str, bool) else value


def _section(cls, values: Mapping, name: str):
  hints = typing.get_type_hints(cls)
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ValueError(
        f"{name}: unknown key(s) {unknown}; valid keys are {sorted(fields)} (see train/spec.py)"
    )
  return cls(**{k: _coerce(v, hints[k], f"{name}.{k}") for k, v in values.items()})


def axis_rules(rules: Any) -> tuple:
  """axis_rules as hashable (name, target) tuples; targets must be mesh axes or None."""
  out = []
  for name, target in rules:
    if isinstance(target, list):
      target = tuple(target)
    for axis in target if isinstance(target, tuple) else (target,):
      if axis is not None and axis not in MESH_AXES + (EXPERT_AXIS,):
        raise ValueError(
            f"mesh.axis_rules maps logical axis {name!r} to {axis!r}, which is not a mesh "
            f"axis; use one of {MESH_AXES + (EXPERT_AXIS,)} or None."
        )
    out.append((str(name), target))
  return tuple(out)


def resolve(config: Any) -> RunSpec:
  """ConfigDict (or plain dict) -> validated RunSpec. Raises ValueError naming the field."""
  if isinstance(config, RunSpec):
    return config
  as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  sections = {}
  for name, cls in SECTIONS.items():
    values = dict(as_dict.get(name) or {})
    if cls is ModelConfig:
      sections[name] = ModelConfig.from_config(values)
      continue
    if cls is MeshSpec and values.get("axis_rules") is not None:
      values["axis_rules"] = axis_rules(values["axis_rules"])
    sections[name] = _section(cls, values, name)
  spec = RunSpec(
      name=str(as_dict.get("name", "default")),
      seed=_coerce(as_dict.get("seed", 0), int, "seed"),
      init_from=str(as_dict.get("init_from") or ""),
      config=as_dict,
      **sections,
  )
  validate(spec)
  return spec


def defaults(cls) -> dict:
  """A section's defaults as a plain dict (configs/base.py builds the ConfigDict from it)."""
  return {f.name: f.default for f in dataclasses.fields(cls)}


# ------------------------------------------------------------------ validate


def _fail(field: str, problem: str) -> None:
  raise ValueError(f"{field}: {problem}")


def _positive(section: Any, name: str, *fields: str, allow_zero: bool = False) -> None:
  for f in fields:
    v = getattr(section, f)
    if v < 0 or (v == 0 and not allow_zero):
      bound = ">= 0" if allow_zero else "> 0"
      _fail(f"{name}.{f}", f"must be {bound}, got {v}; set --config.{name}.{f}=<{bound}>")


def validate(spec: RunSpec) -> None:
  """Every check a config needs before anything is built; each message names the field and
  the fix. Checks that need the devices (mesh fit, batch divisibility) or the tokenizer
  (vocabulary size, mask id) run in train/build.py where those exist."""
  spec.model.validate()
  _validate_data(spec)
  _validate_train(spec.train)
  _validate_schedule(spec.train)
  _validate_optimizer(spec.train, spec.model)
  _positive(spec.eval, "eval", "every", allow_zero=True)
  if spec.eval.batches < -1:
    _fail("eval.batches", f"must be >= -1 (-1: all, 0: off), got {spec.eval.batches}")
  _positive(spec.checkpoint, "checkpoint", "every", "keep_every", allow_zero=True)
  _positive(spec.checkpoint, "checkpoint", "keep", "preemption_poll_every")
  _validate_mesh(spec.mesh)
  _validate_cost(spec.cost)


def _validate_data(spec: RunSpec) -> None:
  _positive(spec.data, "data", "seq_len")
  _positive(spec.data, "data", "num_workers", allow_zero=True)
  if not 0.0 <= spec.data.val_fraction <= 1.0:
    _fail(
        "data.val_fraction",
        f"must lie in [0, 1] (1: evaluation only), got {spec.data.val_fraction}",
    )
  seq_len, table = spec.data.seq_len, spec.model.max_seq_len
  if spec.model.pos_encoding == "learned" and seq_len > table:
    # The embedding lookup would otherwise clamp silently and train on wrong positions.
    _fail(
        "data.seq_len",
        f"{seq_len} is longer than the learned position table (model.max_seq_len={table}); "
        f"set --config.model.max_seq_len={seq_len} or shorten data.seq_len.",
    )


def _validate_train(t: TrainSpec) -> None:
  _positive(t, "train", "steps", "batch_size", "microbatches", "learning_rate")
  _positive(
      t,
      "train",
      "warmup_steps",
      "weight_decay",
      "eps",
      "grad_clip",
      "z_loss",
      "moe_load_balance_loss",
      "moe_router_z_loss",
      allow_zero=True,
  )
  _positive(t, "train", "log_every", "max_nonfinite_steps", allow_zero=True)
  for field, value, valid in (
      ("objective", t.objective, OBJECTIVES),
      ("optimizer", t.optimizer, OPTIMIZERS),
      ("schedule", t.schedule, SCHEDULES),
      ("cooldown", t.cooldown, COOLDOWNS),
      ("transfer_guard", t.transfer_guard, TRANSFER_GUARDS),
  ):
    if value not in valid:
      _fail(f"train.{field}", f"unknown value {value!r}; choose one of {'|'.join(valid)}")
  if not 0 <= t.label_smoothing < 1:
    _fail("train.label_smoothing", f"must lie in [0, 1), got {t.label_smoothing} (0.1 is usual)")
  if not 0 < t.mlm_probability < 1:
    _fail("train.mlm_probability", f"must lie in (0, 1), got {t.mlm_probability}")
  if t.batch_size % t.microbatches:
    _fail(
        "train.microbatches",
        f"{t.microbatches} does not divide train.batch_size={t.batch_size}; use a divisor",
    )


def betas(t: TrainSpec) -> tuple[float | None, float | None]:
  """(b1, b2) for the configured optimizer: the config's values where set, else its defaults."""
  d1, d2 = DEFAULT_BETAS[t.optimizer]
  return (d1 if t.b1 is None else t.b1), (d2 if t.b2 is None else t.b2)


def _validate_schedule(t: TrainSpec) -> None:
  """Warmup (and a WSD cooldown) must fit inside the run: otherwise the schedule silently
  never reaches its peak or never decays, and the run measures something else."""
  if not 0.0 <= t.decay_fraction <= 1.0:
    _fail("train.decay_fraction", f"must lie in [0, 1], got {t.decay_fraction}")
  fits = t.warmup_steps <= t.steps if t.schedule == "constant" else t.warmup_steps < t.steps
  if not fits:
    _fail(
        "train.warmup_steps",
        f"{t.warmup_steps} does not fit in train.steps={t.steps}: the {t.schedule} schedule "
        f"would never decay; set --config.train.warmup_steps to less than {t.steps} "
        f"(e.g. {max(t.steps // 20, 1)}).",
    )
  if t.schedule == "wsd":
    decay = max(int(round(t.decay_fraction * t.steps)), 1)
    if t.warmup_steps + decay > t.steps:
      _fail(
          "train.warmup_steps",
          f"{t.warmup_steps} + the WSD cooldown of {decay} steps (train.decay_fraction="
          f"{t.decay_fraction} x {t.steps}) exceed train.steps={t.steps}; shorten the warmup "
          "or the decay_fraction.",
      )


def _validate_optimizer(t: TrainSpec, model: ModelConfig) -> None:
  """Combinations that would silently train something else are errors naming the field."""
  if t.optimizer == "adafactor" and model.parametrization != "sp":
    _fail(
        "train.optimizer",
        f"adafactor with model.parametrization={model.parametrization}: Adafactor's relative "
        "step sizes override the per-group learning rates; use adamw, lion or muon, or "
        "model.parametrization=sp.",
    )
  for field, v in zip(("b1", "b2"), betas(t)):
    if v is not None and not 0.0 <= v < 1.0:
      _fail(f"train.{field}", f"{v} is not a moment decay in [0, 1); set --config.train.{field}")


def _validate_cost(c: CostSpec) -> None:
  """No estimate can use a negative or non-finite input, or a PUE below 1."""
  for f in dataclasses.fields(c):
    v = getattr(c, f.name)
    if v is not None and not (math.isfinite(v) and v >= 0):
      _fail(f"cost.{f.name}", f"{v!r} must be a finite number >= 0")
  if c.pue < 1:
    _fail(
        "cost.pue",
        f"{c.pue!r} is below 1: PUE is facility energy / IT energy, so >= 1 (1.0 counts the "
        "chips' energy alone)",
    )


def _validate_mesh(m: MeshSpec) -> None:
  for field in ("shape", "dcn_shape"):
    shape = getattr(m, field)
    if len(shape) not in (len(MESH_AXES), len(MESH_AXES) + 1):
      _fail(
          f"mesh.{field}",
          f"{shape} has {len(shape)} entries; it needs one per mesh axis {MESH_AXES} (and "
          f"optionally a fourth, {EXPERT_AXIS!r}), e.g. (-1, 1, 1).",
      )
    if list(shape).count(-1) > 1:
      _fail(f"mesh.{field}", f"{shape}: at most one axis can be -1 (fill the remaining devices)")
    if any(v != -1 and v < 1 for v in shape):
      _fail(f"mesh.{field}", f"{shape}: sizes must be >= 1 (or -1 for one axis)")
  axis_rules(m.axis_rules)
