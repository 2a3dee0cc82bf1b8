"""Scaling ladders: a base training config plus a `ladder` section that eval/ladder.py expands
into points (one config + one workdir each).

    python -m eval.ladder --config configs/ladder.py:cpu --workdir runs/ladder_cpu

Names (the arg):
  cpu           3 FLOP budgets (3e10, 1e11, 3e11) x 6-7 sizes on `embedded`, IsoFLOP: each size
                trained (cosine to its own D) to exactly its budget, sizes on both sides of
                each budget's loss-optimal size, so approach 2 and approach 3 both fit.
  cpu_wsd       5 sizes x 3 token budgets on `embedded`, WSD scheme (one constant-LR run per
                size, cooldowns branched from its checkpoints). Under 30 min on 2 CPU cores.
  cpu_grid      cpu_wsd's sizes and budgets as independent cosine runs (the expensive way).
  cpu_isoflop   3 FLOP budgets x 5 sizes, D = C / flops_per_token (IsoFLOP, approach 2).
  cpu_synthetic the `cpu_wsd` ladder on the synthetic Markov corpus (known entropy floor).
  moe           MoE vs dense at equal active parameters: 3 sizes x 2 budgets, WSD, every
                feed-forward top-1 of 4 SwiGLU experts of width mlp_dim (router aside, a
                token uses the parameters of the dense twin)
  moe_dense     the dense twin: the same sizes, budgets and data with a SwiGLU of mlp_dim
  cpu_epochs    data-constrained: 3 small sizes x 0.5..16 epochs of a fixed 10240-token
                subset of `embedded` (independent cosine runs, each repeated run with a
                fresh-data twin), for `eval.fit constrained`.
  tiny          2 sizes x 2 budgets, a few steps each, WSD: for tests.
  tiny_grid, tiny_isoflop, tiny_epochs: tiny versions of the other schemes, for tests.
  cpu_recipe    the `cpu` budgets with every size and hyperparameter from `ladder.recipe`
                (muP, widths 32..128, 1-sqrt WSD cooldowns), 2 seeds per point.
  cpu_lr_sweep  widths 32, 64, 128 (2 layers, 2 heads) x learning rates 2^-11..2^-5 x sp, mup,
                300 steps each (the `lr_sweep` scheme).
  tiny_recipe, tiny_lr_sweep: tiny versions of those two, for tests.
  tiny_moe: a tiny MoE ladder, for tests.

ladder fields:
  scheme          wsd | grid | isoflop | lr_sweep | epochs
  sizes           tuple of (name, d_model, num_layers, num_heads); mlp_dim = mlp_ratio*d_model,
                  head_dim = d_model // num_heads
  steps           token budgets as optimizer steps (wsd, grid); tokens = steps*batch*seq_len
  flop_budgets    FLOP budgets (isoflop); a size whose steps fall outside
                  [min_steps, max_steps] is skipped for that budget
  unique_tokens   epochs: the subset size (data.max_unique_tokens of every point; a multiple
                  of seq_len and at least one batch)
  epochs          epochs: repetition counts of that subset, tokens = epochs * unique_tokens
  decay_fraction  wsd: fraction of each budget spent cooling down
  cooldown        wsd cooldown shape: linear | 1-sqrt
  parallel        --executor local: worker processes (points are split by size)
  resources       --executor ray: what one point asks of a node, e.g. {"CPU": 1},
                  {"GPU": 1}, {"TPU": 4} or {"TPU": 4, "TPU-v6e-8-head": 1} (CPU and GPU
                  map to num_cpus / num_gpus, any other key to a custom Ray resource)
  retries         --executor ray: restarts of a point whose worker dies (it resumes from its
                  checkpoints)
  tasks           zero-shot task specs (KIND:PATH, as `eval.zeroshot --task`) scored on every
                  finished point: their `task/metric` columns join results.csv
  task_limit      first N items of each task (0: all)
  schedule_timeout_s  --executor ray: how long to wait for a node that offers `resources`
                  (an autoscaler may be adding one) before stopping with an error
  seeds           each point is trained with this many seeds (config.seed + i); the rows of
                  seed i > 0 are named <point>_seed<seed>, all carry `seed` and `point`, and
                  eval.report / eval.fit average a point's seeds before fitting
  lr_exponents    lr_sweep: the learning-rate grid 2^k (every size x budget x k)
  parametrizations  lr_sweep: the parametrizations swept (empty: the recipe's, else the
                  model's); mup/completep use model.base_width (base_depth) when set, else the
                  recipe's base, else the smallest size
  recipe          every size and hyperparameter derived from the width (eval/ladder.py
                  `recipe_shape`, `recipe_hparams`); off while recipe.parametrization is "":
    parametrization  sp | mup | completep
    widths         d_model of each size (empty: those of `sizes`)
    aspect_ratio   num_layers = max(1, round(d_model / aspect_ratio))
    head_dim       num_heads = d_model / head_dim (d_model must be a multiple)
    base_width     the width base_lr / eps were tuned at (required); CompleteP's base depth
                   is that width's depth
    base_lr, eps, b2  the tuned base; mup/completep keep them global and scale each parameter
                   group (model/parametrization.py); sp scales the learning rate as
                   base_lr * (base_width / d_model)^sp_lr_exponent and keeps eps and b2
    sp_lr_exponent  sp only (1: Adam's 1/fan_in rule for hidden matrices, for all parameters)
    warmup_fraction  warmup = max(1, round(fraction x steps)) of each run (wsd: of the
                   smallest budget, since its branches share the warmup)
    cooldown       1-sqrt | linear: every run is WSD with this cooldown over the last
                   decay_fraction of its steps
"""

import copy

import ml_collections

from configs import base

_CPU_SIZES = (
    ("d32l2", 32, 2, 2),
    ("d48l2", 48, 2, 2),
    ("d64l3", 64, 3, 4),
    ("d96l3", 96, 3, 4),
    ("d128l4", 128, 4, 4),
)
# The default `cpu` ladder: an IsoFLOP design whose every budget brackets its loss-optimal size.
# On `embedded` (bytes, seq 128, batch 16) that optimum is tiny and grows slowly: a pilot found
# the smallest of 9.5k-373k parameters best at 1e11, 3e11 and 1e12 FLOPs, and the smallest of
# 4k-17k best at 3e10, so the sizes go down to 1.8k and the budgets stop at 3e11 (small models
# at 1e12 need 9k+ steps). Steps outside [100, 4000] are skipped, which leaves a diagonal:
# 6 sizes at 3e10 (1.8k-17k params), 7 at 1e11 (2.9k-75k), 6 at 3e11 (6.6k-175k); 19 runs,
# about 20k steps in all.
_CPU_ISO_SIZES = (
    ("d4l1", 4, 1, 2),
    ("d6l1", 6, 1, 2),
    ("d8l1", 8, 1, 2),
    ("d12l1", 12, 1, 2),
    ("d16l1", 16, 1, 2),
    ("d24l1", 24, 1, 2),
    ("d32l2", 32, 2, 2),
    ("d48l2", 48, 2, 2),
    ("d64l3", 64, 3, 4),
)
CPU_FLOP_BUDGETS = (3e10, 1e11, 3e11)
# L(N, D) = E + A/N^alpha + B/D^beta (N = params_total, D = tokens, val_loss in nats) fitted
# (approach 3, eval.report) to this ladder's 19 runs on `embedded`: the optimum the design must
# bracket (tests/test_ladder.py checks that it does).
CPU_DESIGN_LAW = dict(E=0.79071, A=10.203, B=85.747, alpha=0.26355, beta=0.32283)
_TINY_SIZES = (
    ("d16l1", 16, 1, 2),
    ("d32l1", 32, 1, 2),
    ("d48l2", 48, 2, 2),
)


def _recipe(**kw) -> dict:
  """ladder.recipe: off (parametrization "") unless a ladder asks for it."""
  d = dict(
      parametrization="",
      widths=(),
      aspect_ratio=32,
      head_dim=16,
      base_width=0,
      base_lr=3e-3,
      eps=1e-8,
      b2=0.95,
      sp_lr_exponent=1.0,
      warmup_fraction=0.05,
      cooldown="1-sqrt",
  )
  d.update(kw)
  return d


def _ladder(**kw) -> ml_collections.ConfigDict:
  d = dict(
      scheme="wsd",
      sizes=_CPU_SIZES,
      mlp_ratio=4,
      steps=(150, 300, 600),
      flop_budgets=(),
      unique_tokens=0,
      epochs=(),
      min_steps=20,
      max_steps=5000,
      decay_fraction=0.2,
      cooldown="linear",
      parallel=1,
      resources={"CPU": 1},
      retries=3,
      schedule_timeout_s=300.0,
      seeds=1,
      lr_exponents=(),
      parametrizations=(),
      recipe=_recipe(),
      tasks=(),
      task_limit=0,
  )
  d.update(kw)
  return ml_collections.ConfigDict(d)


_TINY = dict(sizes=_TINY_SIZES[:2], steps=(10, 20), decay_fraction=0.2)
_MOE = dict(sizes=_CPU_SIZES[:3], steps=(150, 300))
# Every ladder by name (the arg): its `ladder` fields over _ladder's defaults.
LADDERS = {
    "cpu": dict(
        scheme="isoflop",
        sizes=_CPU_ISO_SIZES,
        flop_budgets=CPU_FLOP_BUDGETS,
        steps=(),
        min_steps=100,
        max_steps=4000,
    ),
    "cpu_wsd": {},
    "cpu_grid": dict(scheme="grid"),
    "cpu_isoflop": dict(
        scheme="isoflop", flop_budgets=(3e11, 1e12, 3e12), steps=(), min_steps=50, max_steps=1500
    ),
    "cpu_synthetic": {},
    "cpu_epochs": dict(
        scheme="epochs",
        sizes=_TINY_SIZES,
        steps=(),
        unique_tokens=20 * 512,
        epochs=(0.5, 1, 2, 4, 8, 16),
    ),
    "cpu_recipe": dict(
        recipe=_recipe(parametrization="mup", widths=(32, 48, 64, 96, 128), base_width=32),
        seeds=2,
    ),
    "cpu_lr_sweep": dict(
        scheme="lr_sweep",
        sizes=(("w32", 32, 2, 2), ("w64", 64, 2, 2), ("w128", 128, 2, 2)),
        steps=(300,),
        lr_exponents=(-11, -10, -9, -8, -7, -6, -5),
        parametrizations=("sp", "mup"),
    ),
    "moe": _MOE,
    "moe_dense": _MOE,
    "tiny": _TINY,
    "tiny_grid": dict(scheme="grid", sizes=_TINY_SIZES[:2], steps=(6, 12)),
    "tiny_isoflop": dict(
        scheme="isoflop",
        sizes=_TINY_SIZES,
        steps=(),
        flop_budgets=(2e8, 4e8),
        min_steps=3,
        max_steps=80,
    ),
    "tiny_epochs": dict(
        scheme="epochs", sizes=_TINY_SIZES[:2], steps=(), unique_tokens=4 * 4 * 32, epochs=(1, 3)
    ),
    "tiny_recipe": dict(
        sizes=(),
        steps=(10, 20),
        seeds=2,
        recipe=_recipe(
            parametrization="mup", widths=(16, 32), aspect_ratio=16, head_dim=8, base_width=16
        ),
    ),
    "tiny_lr_sweep": dict(
        scheme="lr_sweep",
        sizes=_TINY_SIZES[:2],
        steps=(6,),
        lr_exponents=(-8, -5),
        parametrizations=("sp", "mup"),
    ),
    "tiny_moe": _TINY,
    "tiny_moe_dense": _TINY,
}


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  name = arg or "cpu"
  if name not in LADDERS:
    *names, last = LADDERS
    raise ValueError(
        f"configs/ladder.py: unknown ladder {name!r}; use {', '.join(names)} or {last}"
    )
  c = base.base_config()
  c.name = f"ladder_{name}"
  c.data.seq_len = 128
  c.model.max_seq_len = 128
  c.train.update(batch_size=16, learning_rate=3e-3, warmup_steps=30, min_lr_ratio=0.0, log_every=10)
  c.eval.every = 0  # evaluate once, at the end of each point
  c.eval.batches = 8
  c.checkpoint.every = 100  # killed points resume from here
  c.checkpoint.keep = 2
  if name == "cpu":
    c.train.warmup_steps = 20  # at most 20% of the shortest (100-step) point
  elif name == "cpu_synthetic":
    c.data.source = "synthetic:markov"
  elif name == "cpu_epochs":
    _epochs_cpu(c)
  elif name.startswith("tiny"):
    c.data.seq_len = 32
    c.model.max_seq_len = 32
    c.train.update(batch_size=4, warmup_steps=2, log_every=2)
    c.eval.batches = 2
    c.checkpoint.every = 4
    c.checkpoint.async_save = False
  if "moe" in name:
    _moe_twin(c, sparse=not name.endswith("_dense"))
  c.ladder = _ladder(**copy.deepcopy(LADDERS[name]))
  return c


def _moe_twin(c: ml_collections.ConfigDict, sparse: bool) -> None:
  """SwiGLU feed-forwards without biases (experts have none); `sparse`: each one a top-1 of
  4 experts of the same width."""
  c.model.mlp = "moe" if sparse else "swiglu"
  c.model.update(num_experts=4, experts_per_token=1, expert_mlp_dim=0, use_bias=False)


def _epochs_cpu(c) -> None:
  """cpu_epochs: sequences of 64, batches of 8 (512 tokens a step), a 20-step subset; the
  e <= 1 points and the fresh twins give the single-epoch Chinchilla part, e >= 2 the
  repetition decay."""
  c.data.seq_len = 64
  c.model.max_seq_len = 64
  c.train.batch_size = 8
  c.train.warmup_steps = 2
  c.eval.batches = 16
  c.checkpoint.every = 200
