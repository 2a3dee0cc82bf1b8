"""Scaling ladders: a base training config plus a `ladder` section that eval/ladder.py expands
into points (one config + one workdir each).

    python -m eval.ladder --config configs/ladder.py:cpu --workdir runs/ladder_cpu

Names (the arg):
  cpu           5 sizes x 3 token budgets on `embedded`, WSD scheme (one constant-LR run per
                size, cooldowns branched from its checkpoints). Under 30 min on 2 CPU cores.
  cpu_grid      the same sizes and budgets as independent cosine runs (the expensive way).
  cpu_isoflop   3 FLOP budgets x 5 sizes, D = C / flops_per_token (IsoFLOP, approach 2).
  cpu_synthetic the `cpu` ladder on the synthetic Markov corpus (known entropy floor).
  cpu_epochs    data-constrained: 3 small sizes x 0.5..16 epochs of a fixed 10240-token
                subset of `embedded` (independent cosine runs, each repeated run with a
                fresh-data twin), for `eval.fit constrained`.
  tiny          2 sizes x 2 budgets, a few steps each, WSD: for tests.
  tiny_grid, tiny_isoflop, tiny_epochs: tiny versions of the other schemes, for tests.

ladder fields:
  scheme          wsd | grid | isoflop | epochs
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
  schedule_timeout_s  --executor ray: how long to wait for a node that offers `resources`
                  (an autoscaler may be adding one) before stopping with an error
"""

import ml_collections

from configs import base

_CPU_SIZES = (
    ("d32l2", 32, 2, 2),
    ("d48l2", 48, 2, 2),
    ("d64l3", 64, 3, 4),
    ("d96l3", 96, 3, 4),
    ("d128l4", 128, 4, 4),
)
_TINY_SIZES = (
    ("d16l1", 16, 1, 2),
    ("d32l1", 32, 1, 2),
    ("d48l2", 48, 2, 2),
)


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
  )
  d.update(kw)
  return ml_collections.ConfigDict(d)


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  name = arg or "cpu"
  c = base.base_config()
  c.name = f"ladder_{name}"
  c.data.seq_len = 128
  c.model.max_seq_len = 128
  c.train.batch_size = 16
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 30
  c.train.min_lr_ratio = 0.0
  c.train.log_every = 10
  c.eval.every = 0  # evaluate once, at the end of each point
  c.eval.batches = 8
  c.checkpoint.every = 100  # killed points resume from here
  c.checkpoint.keep = 2
  if name in ("cpu", "cpu_synthetic"):
    c.ladder = _ladder()
    if name == "cpu_synthetic":
      c.data.source = "synthetic:markov"
  elif name == "cpu_grid":
    c.ladder = _ladder(scheme="grid")
  elif name == "cpu_isoflop":
    c.ladder = _ladder(
        scheme="isoflop", flop_budgets=(3e11, 1e12, 3e12), steps=(), min_steps=50, max_steps=1500
    )
  elif name == "cpu_epochs":
    _epochs_cpu(c)
  elif name.startswith("tiny"):
    c.data.seq_len = 32
    c.model.max_seq_len = 32
    c.train.batch_size = 4
    c.train.warmup_steps = 2
    c.train.log_every = 2
    c.eval.batches = 2
    c.checkpoint.every = 4
    c.checkpoint.async_save = False
    if name == "tiny":
      c.ladder = _ladder(sizes=_TINY_SIZES[:2], steps=(10, 20), decay_fraction=0.2)
    elif name == "tiny_grid":
      c.ladder = _ladder(scheme="grid", sizes=_TINY_SIZES[:2], steps=(6, 12))
    elif name == "tiny_isoflop":
      c.ladder = _ladder(
          scheme="isoflop",
          sizes=_TINY_SIZES,
          steps=(),
          flop_budgets=(2e8, 4e8),
          min_steps=3,
          max_steps=80,
      )
    elif name == "tiny_epochs":
      c.ladder = _ladder(
          scheme="epochs", sizes=_TINY_SIZES[:2], steps=(), unique_tokens=4 * 4 * 32, epochs=(1, 3)
      )
    else:
      raise ValueError(
          f"configs/ladder.py: unknown ladder {name!r}; use cpu, cpu_grid, "
          "cpu_isoflop, cpu_synthetic, cpu_epochs, tiny, tiny_grid, tiny_isoflop or tiny_epochs"
      )
  else:
    raise ValueError(
        f"configs/ladder.py: unknown ladder {name!r}; use cpu, cpu_grid, "
        "cpu_isoflop, cpu_synthetic, cpu_epochs, tiny, tiny_grid, tiny_isoflop or tiny_epochs"
    )
  return c


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
  c.ladder = _ladder(
      scheme="epochs",
      sizes=_TINY_SIZES,
      steps=(),
      unique_tokens=20 * 512,
      epochs=(0.5, 1, 2, 4, 8, 16),
  )
