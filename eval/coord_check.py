"""Coordinate check: do activation sizes stay width- (and depth-) independent in training?

    python -m eval.coord_check --config configs/default.py:size=tiny --widths 64,128,256,512 \
        [--depths 2,4,8] [--parametrization sp|mup|completep] [--steps 10] [--lr 1e-2] \
        [--base-width 32] --json OUT.json [--plot OUT.png]

Each width (at the config's depth) and each depth (at the first width) trains `--steps`
steps on one fixed synthetic batch (arithmetic token sequences modulo the vocabulary, so no
corpus is needed) at one fixed, fairly large learning rate with a constant schedule, no
clipping and no weight decay, from `--seeds` initialisations whose records are averaged.
The batch is small (1 x 16 tokens by default) on purpose: muP's width-independence is the
limit of width >> tokens per update (Adam's update of a matrix has rank <= tokens); with 256
tokens the widths 64..256 still show an O(sqrt(tokens / width)) drift, with 16 they do not.
Before every update and after the last one, mean |x| is recorded (model/transformer.py
`record_size`) for the embedding output, each layer's attention and MLP outputs (before
CompleteP's branch multiplier) and residual stream, and the logits. Depth slopes use only the
layer averages, the last residual stream, the embeddings and the logits.

Width scaling keeps the head count and the d_model : mlp_dim ratio, so head_dim grows with
width. Under mup/completep the base is --base-width, else `model.base_width` (`base_depth`)
when set, else the first width (depth). The JSON holds every record and, at the last step,
the log-log slope of each quantity against width (and depth) under `slopes`, their largest
magnitude under `max_abs_slope`, and the slopes at every step under `slopes_by_step`. A
working muP gives slopes near 0; under sp the logits (and hidden outputs at a large LR) grow
with width.
"""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from model.config import ModelConfig
from model.transformer import RECORDED
from model.transformer import Transformer
from train import cli
from train import optim

# Quantities averaged over layers (or taken at the last layer) so they exist at every depth.
LAYER_MEANS = ("attn_out", "mlp_out")
LAST_LAYER = ("residual",)


def model_at(
    cfg: ModelConfig,
    *,
    width: int | None = None,
    depth: int | None = None,
    parametrization: str | None = None,
    base_width: int = 0,
    base_depth: int = 0,
) -> ModelConfig:
  """`cfg` at another width (head count and mlp ratio kept) and depth, with a base set."""
  par = parametrization or cfg.parametrization
  changes = dict(
      parametrization=par,
      base_width=cfg.base_width or base_width,
      base_depth=cfg.base_depth or base_depth,
  )
  if width is not None:
    if width % cfg.num_heads:
      raise ValueError(
          f"--widths: {width} is not a multiple of model.num_heads="
          f"{cfg.num_heads} (widths keep the head count)"
      )
    changes.update(
        d_model=width,
        head_dim=width // cfg.num_heads,
        mlp_dim=max(1, round(width * cfg.mlp_dim / cfg.d_model)),
    )
  if depth is not None:
    changes["num_layers"] = depth
  return cfg.replace(**changes)


def synthetic_batch(vocab: int, batch: int, seq_len: int, seed: int = 0):
  """(inputs, targets) of arithmetic sequences mod vocab (a learnable task)."""
  rng = np.random.default_rng(seed)
  start = rng.integers(0, vocab, (batch, 1))
  stride = rng.integers(1, 8, (batch, 1))
  x = ((start + stride * np.arange(seq_len + 1)[None]) % vocab).astype(np.int32)
  return x[:, :-1], x[:, 1:]


def _flatten_records(tree) -> dict[str, float]:
  """The sown intermediates as {quantity: mean |x|}, per layer and aggregated."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    names = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
    name = next(n for n in reversed(names) if not n.isdigit())
    values = np.atleast_1d(np.asarray(leaf, np.float64))
    block = next((n for n in names if n.startswith("block_")), None)
    if block is not None:  # unrolled stack: one scalar per block_i
      out[f"{name}/{block.split('_')[1]}"] = float(values[0])
    elif values.size > 1 or name in LAYER_MEANS + LAST_LAYER:
      out.update({f"{name}/{i}": float(v) for i, v in enumerate(values)})
    else:
      out[name] = float(values[0])
  for name in LAYER_MEANS + LAST_LAYER:
    layers = sorted(
        (k for k in out if k.startswith(name + "/")), key=lambda k: int(k.split("/")[1])
    )
    if layers:
      vals = [out[k] for k in layers]
      out[name] = float(np.mean(vals)) if name in LAYER_MEANS else vals[-1]
  return out


def train_and_record(
    cfg: ModelConfig, train_cfg, batches, seeds: int = 1
) -> list[dict[str, float]]:
  """Records at steps 0..len(batches)-1 (record, then update, on each batch), averaged over
  `seeds` initialisations (one compiled step serves them all)."""
  model = Transformer(cfg)
  init = jax.jit(lambda key: nn.unbox(model.init(key, jnp.asarray(batches[0][0]))["params"]))
  tx, _ = optim.make_optimizer(train_cfg, init(jax.random.key(0)), cfg)

  def loss_fn(p, x, y):
    logits, state = model.apply({"params": p}, x, mutable=[RECORDED])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, state[RECORDED]

  @jax.jit
  def step(p, opt_state, x, y):
    (_, records), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, x, y)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, records

  per_seed = []
  for seed in range(seeds):
    params = init(jax.random.key(seed))
    opt_state, history = tx.init(params), []
    for x, y in batches:
      params, opt_state, records = step(params, opt_state, x, y)
      history.append(_flatten_records(jax.device_get(records)))
    per_seed.append(history)
  return [
      {k: float(np.mean([h[i][k] for h in per_seed])) for k in per_seed[0][i]}
      for i in range(len(batches))
  ]


def log_log_slopes(
    xs: Sequence[int], runs: Sequence[list[dict]], step: int, per_layer: bool = True
) -> dict:
  """Least-squares slope of log mean|x| against log x, per quantity present in every run
  (`per_layer=False`: only the layer averages, the last residual, embeddings and logits)."""
  names = set.intersection(*(set(r[step]) for r in runs))
  if not per_layer:
    names = {n for n in names if "/" not in n}
  logx = np.log(np.asarray(xs, np.float64))
  return {
      n: float(np.polyfit(logx, np.log([r[step][n] for r in runs]), 1)[0]) for n in sorted(names)
  }


def _train_config(config, lr: float, steps: int):
  t = config.train.copy_and_resolve_references()
  t.update(
      learning_rate=lr,
      schedule="constant",
      warmup_steps=0,
      steps=max(steps, 1),
      weight_decay=0.0,
      grad_clip=0.0,
  )
  return t


def coord_check(
    config,
    widths: Sequence[int],
    depths: Sequence[int] = (),
    parametrization: str | None = None,
    steps: int = 10,
    lr: float = 1e-2,
    batch_size: int = 1,
    seq_len: int = 16,
    base_width: int | None = None,
    seeds: int = 8,
) -> dict:
  """Runs the check (see the module docstring); returns the JSON-ready result."""
  if len(widths) < 2 and len(depths) < 2:
    raise ValueError("--widths needs at least two widths to fit a slope (e.g. 64,128,256)")
  base = ModelConfig.from_config(config.model)
  if base.pos_encoding == "learned" and seq_len > base.max_seq_len:
    raise ValueError(
        f"--seq-len={seq_len} exceeds model.max_seq_len={base.max_seq_len} "
        "(the learned position table); use a shorter --seq-len"
    )
  batches = [synthetic_batch(base.vocab_size, batch_size, seq_len)] * (steps + 1)
  train_cfg = _train_config(config, lr, steps)
  if base_width:
    base = base.replace(base_width=base_width)
  bases = dict(
      parametrization=parametrization,
      base_width=widths[0],
      base_depth=depths[0] if depths else base.num_layers,
  )
  out = dict(
      parametrization=parametrization or base.parametrization,
      steps=steps,
      lr=lr,
      widths=list(widths),
      depths=list(depths),
      batch_size=batch_size,
      seq_len=seq_len,
      seeds=seeds,
      records={"width": {}, "depth": {}},
      slopes={},
      slopes_by_step={},
  )
  sweeps = [("width", widths, lambda w: model_at(base, width=w, **bases))]
  if depths:
    sweeps.append(("depth", depths, lambda d: model_at(base, width=widths[0], depth=d, **bases)))
  for axis, values, make in sweeps:
    if len(values) < 2:
      continue
    runs = [train_and_record(make(v), train_cfg, batches, seeds) for v in values]
    out["records"][axis] = {str(v): r for v, r in zip(values, runs)}
    # Layer i of a deeper stack sits at another relative depth: only aggregates compare.
    per_layer = axis == "width"
    out["slopes"][axis] = log_log_slopes(values, runs, steps, per_layer)
    out["slopes_by_step"][axis] = [
        log_log_slopes(values, runs, s, per_layer) for s in range(steps + 1)
    ]
  out["max_abs_slope"] = max(abs(s) for by_q in out["slopes"].values() for s in by_q.values())
  return out


def plot(result: dict, path: str) -> None:
  """mean |x| against width (and depth), one panel per aggregated quantity, a line per step."""
  from eval.plots import plt  # noqa: PLC0415 (matplotlib, Agg, only when plotting)

  names = ("embed_out",) + LAYER_MEANS + LAST_LAYER + ("logits",)
  axes_used = [a for a in ("width", "depth") if result["records"].get(a)]
  fig, axes = plt.subplots(
      len(axes_used), len(names), figsize=(3.2 * len(names), 3 * len(axes_used)), squeeze=False
  )
  for row, axis in enumerate(axes_used):
    runs = result["records"][axis]
    xs = [int(k) for k in runs]
    for col, name in enumerate(names):
      ax = axes[row][col]
      for step in range(result["steps"] + 1):
        ax.plot(
            xs,
            [runs[str(x)][step][name] for x in xs],
            marker="o",
            color=plt.cm.viridis(step / max(result["steps"], 1)),
            label=f"step {step}",
        )
      ax.set(xscale="log", yscale="log", xlabel=axis, title=name)
  axes[0][0].set_ylabel(f"mean |x| ({result['parametrization']})")
  axes[0][-1].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _ints(text: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers")
  if not values or min(values) <= 0:
    raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 64,128,256")
  return values


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m eval.coord_check", description=__doc__.split("\n")[0])
  cli.add_config(p, lock_config=False)
  p.add_argument("--widths", type=_ints, required=True, help="e.g. 64,128,256,512")
  p.add_argument("--depths", type=_ints, default=[], help="e.g. 2,4,8 (at the first width)")
  p.add_argument(
      "--parametrization",
      choices=("sp", "mup", "completep"),
      default=None,
      help="default: the config's model.parametrization",
  )
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--lr", type=float, default=1e-2)
  p.add_argument("--seeds", type=int, default=8, help="initialisations averaged per width")
  p.add_argument("--batch-size", type=int, default=1, help="sequences in the fixed batch")
  p.add_argument("--seq-len", type=int, default=16, help="tokens per sequence")
  p.add_argument(
      "--base-width",
      type=int,
      default=None,
      help="mup base width (default: model.base_width, else the first width)",
  )
  p.add_argument("--json", required=True, help="output JSON path")
  p.add_argument("--plot", default=None, help="optional PNG path")
  return p


def main(argv=None) -> int:
  args = cli.parse_args(_parser(), argv)
  if args.steps < 1:
    raise ValueError(f"--steps={args.steps}: train at least one step")
  result = coord_check(
      args.config,
      args.widths,
      args.depths,
      args.parametrization,
      args.steps,
      args.lr,
      args.batch_size,
      args.seq_len,
      args.base_width,
      args.seeds,
  )
  with open(args.json, "w") as f:
    json.dump(result, f, indent=1)
  if args.plot:
    plot(result, args.plot)
  print(
      json.dumps(
          dict(
              parametrization=result["parametrization"],
              max_abs_slope=round(result["max_abs_slope"], 3),
              slopes={
                  a: {k: round(v, 3) for k, v in s.items() if "/" not in k}
                  for a, s in result["slopes"].items()
              },
          )
      )
  )
  return 0


if __name__ == "__main__":
  cli.run(main)
