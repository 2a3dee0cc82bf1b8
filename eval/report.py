"""Scaling report for a ladder directory: fits, compute-optimal allocation, saturation verdicts.

    python -m eval.report --workdir DIR [--loss-col val_loss] [--n-col params_total]
        [--flops-col flops] [--bootstrap 100] [--bootstrap-by point|size|run]
        [--huber-delta 1e-3] [--min-n X] [--max-n X] [--min-c X] [--max-c X] [--budget 1e15 ...]

Reads DIR/results.csv (one row per trained point: name, params_total, params_non_embedding,
tokens, flops, train_loss, val_loss, val_bpb, wall_s, optionally budget, scheme, size and the
noise/convention columns val_loss_se, seed, unique_tokens, flops_6nd) and, when present, the
training curves DIR/points/*/metrics.jsonl (loss and learning rate per logged step).
`analyze` computes a `ScalingAnalysis` (every fit, interval, verdict and what the data cannot
support); `render_markdown`, `analysis_facts` and `render_plots` turn it into report.md,
report.json and DIR/report/*.png|svg. Any table with those columns works, not only ladders
made here. Library functions raise (ValueError, FileNotFoundError); `main` prints one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import pathlib
import warnings

import numpy as np
import pandas as pd
from eval import lr_transfer

from eval import fit as fitlib
from eval import plots
from eval import saturation as sat
from train import cli
from train import paths

LOSS_KEYS = ("loss_mean", "train_loss", "loss")  # loss_mean: the trainer's logging-window mean
TOKEN_KEYS = ("tokens_seen", "train/tokens")  # cumulative (the trainer's `tokens` is per step)
LR_KEYS = ("lr", "learning_rate")
SENSITIVITY_DELTAS = (1e-4, 1e-3, 1e-2, 1e-1)
# Interval ratios hi/lo beyond which a parameter counts as not identified by the data.
SCALE_SPAN = 100.0  # E, A, B: two orders of magnitude
EXPONENT_SPAN = 10.0  # alpha, beta
EXPONENT_BOUNDS = (0.02, 2.5)


# ----------------------------------------------------------------------------- inputs


def read_results(
    workdir: pathlib.Path,
    n_col: str,
    loss_col: str,
    flops_col: str = "flops",
    drop_invalid: bool = True,
) -> pd.DataFrame:
  """DIR/results.csv with the columns the fits need; rows with a missing or non-positive
  value (a diverged point) are dropped with a warning, or raise with drop_invalid=False."""
  path = paths.path(workdir) / "results.csv"
  if not path.exists():
    raise FileNotFoundError(
        f"{path} not found: run a ladder into {workdir} first (python -m eval.ladder)"
    )
  df = pd.read_csv(io.StringIO(path.read_text()))
  need = [n_col, "tokens", flops_col, loss_col]
  missing = [c for c in need if c not in df.columns]
  if missing:
    raise ValueError(f"{path}: missing column(s) {missing}; columns are {list(df.columns)}")
  if "name" in df.columns:
    df = df.drop_duplicates("name", keep="last")
  vals = df[need].apply(pd.to_numeric, errors="coerce")
  bad = ~(np.isfinite(vals) & (vals > 0)).all(axis=1)
  if bad.any():
    where = ", ".join(c for c in need if (~(np.isfinite(vals[c]) & (vals[c] > 0))).any())
    if not drop_invalid:
      raise ValueError(
          f"{path}: {int(bad.sum())} row(s) with missing or non-positive values in "
          f"{where}; fix or remove them"
      )
    warnings.warn(f"dropping {int(bad.sum())} row(s) with missing or non-positive {where}")
  df = fitlib.average_seeds(df[~bad].reset_index(drop=True), loss_col)
  df = fitlib.best_lr_rows(df, loss_col)
  df[need] = df[need].astype(float)
  if df.empty:
    raise ValueError(f"{path}: no rows with positive {need}")
  return df


def _curve_point(rec):
  """(x, loss, lr) of one metrics.jsonl record, or None."""
  if rec.get("kind", "train") != "train":
    return None
  loss = next((_num(rec[k]) for k in LOSS_KEYS if k in rec and np.isfinite(_num(rec[k]))), None)
  x = next((_num(rec[k]) for k in TOKEN_KEYS if k in rec), _num(rec.get("step", np.nan)))
  lr = next((_num(rec[k]) for k in LR_KEYS if k in rec), np.nan)
  if loss is None or not np.isfinite(x) or x <= 0:
    return None
  return x, loss, lr


def read_curves(workdir: pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Training curves from DIR/points/<name>/metrics.jsonl: (tokens or steps, loss, lr) per
  logged step (lr NaN where not logged)."""
  curves = {}
  for path in sorted(paths.path(workdir).glob("points/*/metrics.jsonl")):
    by_x = {}
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
      try:
        point = _curve_point(json.loads(line))
      except (json.JSONDecodeError, AttributeError):
        continue
      if point is not None:
        by_x[point[0]] = point[1:]  # a resumed run repeats steps: keep the latest
    if len(by_x) >= 2:
      xs = np.array(sorted(by_x))
      curves[path.parent.name] = (xs, *np.array([by_x[x] for x in xs]).T)
  return curves


def stitch_wsd_curves(curves: dict, df: pd.DataFrame) -> dict:
  """A WSD cooldown's log starts at its branch step: prepend its size's constant-LR run
  (points/<size>_constant) so each curve covers the whole run. Constant runs are dropped."""
  if "size" not in df.columns or "name" not in df.columns:
    return curves
  out = {k: v for k, v in curves.items() if not k.endswith("_constant")}
  for name, size in zip(df["name"], df["size"]):
    const = curves.get(f"{size}_constant")
    if name in out and const is not None:
      keep = const[0] < out[name][0].min()
      out[name] = tuple(np.r_[c[keep], v] for c, v in zip(const, out[name]))
  return out


def read_head_spectra(workdir: pathlib.Path, df: pd.DataFrame) -> dict:
  """LM-head spectrum of every results row whose point directory holds checkpoints."""
  out = {}
  if "name" not in df.columns:
    return out
  for name in df["name"]:
    pdir = paths.path(workdir) / "points" / str(name)
    if (pdir / "checkpoints").is_dir():
      try:
        out[str(name)] = sat.head_spectrum_of_run(str(pdir))
      except Exception as e:  # pylint: disable=broad-except  (a report must not die on one run)
        warnings.warn(f"{pdir}: LM-head spectrum skipped ({type(e).__name__}: {e})")
  return out


def _num(v) -> float:
  try:
    return float(v)
  except (TypeError, ValueError):
    return float("nan")


def find_true_floor_bpb(workdir: pathlib.Path, seq_len: int | None = None) -> float | None:
  """The floor (bits/byte) a model fed the synthetic corpus can reach, from a prepared
  manifest under DIR (up to two levels down, e.g. DIR/data/prepared-*/): the reachable floor
  for `seq_len` (packed windows lose context at document starts and window edges;
  train/data/synthetic.py), else the latest one recorded, else the corpus's entropy rate (not
  reachable under packing: a lower bound)."""
  root = paths.path(workdir)
  manifests = [p for d in ("", "*/", "*/*/") for p in root.glob(f"{d}manifest.json")]
  for path in manifests[:50]:
    try:
      m = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
      continue
    syn = m.get("synthetic") if isinstance(m, dict) else None
    if not isinstance(syn, dict):
      continue
    by_len = syn.get("reachable_floor_by_seq_len") or {}
    if seq_len is not None and str(int(seq_len)) in by_len:
      return float(by_len[str(int(seq_len))])
    for key in ("reachable_floor_bits_per_byte", "entropy_rate_bits_per_byte"):
      if key in syn:
        return float(syn[key])
  return None


# ----------------------------------------------------------------------------- conventions


def _median_ratio(df, num, den_cols, k=1.0):
  den = k * np.prod([df[c].to_numpy(float) for c in den_cols], axis=0)
  return float(np.median(df[num].to_numpy(float) / den))


def conventions(df: pd.DataFrame, n_col: str, flops_col: str, loss_col: str) -> list[tuple]:
  """(item, what this table does) for the choices that change a fitted law (Li et al. 2025,
  "(Mis)fitting scaling laws"): how N is counted, the FLOP formula, the schedule per token
  budget, the tokenizer, repetition, seeds and noise."""
  n_what = {
      "params_total": "all parameters (embeddings included)",
      "params_non_embedding": "parameters without embeddings",
  }.get(n_col, f"column `{n_col}` (whether embeddings count is not recorded)")
  k = _median_ratio(df, flops_col, [n_col, "tokens"])
  if flops_col == "flops_6nd":
    c_what = "6ND (`flops_6nd`)"
  else:
    c_what = f"`{flops_col}`" + (
        " (counted per token by model.summary, attention included)"
        if "flops_per_token" in df.columns
        else ""
    )
  c_what += f"; median C / (N D) = {k:.3g}"
  if flops_col != "flops_6nd" and "flops_6nd" in df.columns:
    c_what += f" (counted / 6ND = {_median_ratio(df, flops_col, ['flops_6nd']):.3f})"
  schemes = sorted(set(df["scheme"].astype(str))) if "scheme" in df.columns else []
  sched = {
      "wsd": "WSD: one constant-LR run per size, a cooldown branched for each token budget "
      "(each D ends its own schedule)",
      "grid": "independent runs, the schedule set to each run's D",
      "isoflop": "independent runs, the schedule set to each run's D",
      "lr_sweep": "independent runs per grid learning rate, the schedule set to each run's D",
  }
  s_what = (
      "; ".join(sched.get(s, s) for s in schemes)
      if schemes
      else "not recorded: check that each run's LR schedule ends at its own D"
  )
  tokenizer = (
      f"`{df['tokenizer'].iloc[0]}`"
      if "tokenizer" in df.columns
      else "not recorded in results.csv (byte-level unless the ladder config says otherwise)"
  )
  items = {
      "N (parameters)": n_what,
      "FLOP formula": c_what,
      "Schedule per D": s_what,
      "Tokenizer": tokenizer,
      "Loss": f"`{loss_col}`",
  }
  if "unique_tokens" in df.columns:
    ep = df["tokens"].to_numpy(float) / pd.to_numeric(df["unique_tokens"], errors="coerce")
    items["Data repetition"] = f"up to {np.nanmax(ep):.2f} epochs (tokens / unique_tokens)"
  if "seeds" in df.columns:
    sd = np.nanmedian(pd.to_numeric(df["seed_loss_sd"], errors="coerce"))
    lo, hi = int(df["seeds"].min()), int(df["seeds"].max())
    count = f"{lo}" if lo == hi else f"{lo}-{hi}"
    items["Seeds"] = (
        f"{count} per point, averaged before fitting (median s.d. across seeds {sd:.2g})"
    )
  elif "seed" in df.columns:
    items["Seeds"] = f"{df['seed'].nunique()} distinct"
  if "lr_choices" in df.columns:
    items["Learning rate"] = (
        f"lr_sweep: each size and budget at the best of its {int(df['lr_choices'].max())} "
        "grid learning rates (and parametrizations); see Learning-rate transfer"
    )
  if "val_loss_se" in df.columns:
    se = pd.to_numeric(df["val_loss_se"], errors="coerce")
    items["Evaluation noise"] = f"median s.e. of the loss {np.nanmedian(se):.2g} (`val_loss_se`)"
  return list(items.items())


def not_identified(name: str, value: float, interval) -> str | None:
  """Why the data do not pin `name` down (its interval reaches a bound or spans orders of
  magnitude), or None. Without an interval only a point estimate at a bound is flagged."""
  lo, hi = interval if interval else (value, value)
  if not np.all(np.isfinite([value, lo, hi])):
    return "not finite"
  if name in ("E", "A", "B"):
    if lo <= 0 or value <= 1e-3 * max(hi, value, 1e-12):
      return "at its lower bound (0)"
    if hi / lo > SCALE_SPAN:
      return f"interval spans {np.log10(hi / lo):.1f} orders of magnitude"
  if name in ("alpha", "beta"):
    if lo < EXPONENT_BOUNDS[0] or hi > EXPONENT_BOUNDS[1]:
      return f"interval reaches a bound ({EXPONENT_BOUNDS[0]} or {EXPONENT_BOUNDS[1]})"
    if hi / lo > EXPONENT_SPAN:
      return f"interval spans {np.log10(hi / lo):.1f} orders of magnitude"
  return None


# What each derived result needs from approach 3.
NEEDS = dict(
    allocation=("A", "B", "alpha", "beta"),
    headroom=("E",),
    extrapolated_loss=("E", "A", "B", "alpha", "beta"),
)


def withheld_reason(unidentified: dict, what: str) -> str | None:
  bad = [k for k in NEEDS[what] if unidentified.get(k)]
  return f"withheld: depends on {', '.join(bad)}, which the data do not identify" if bad else None


# ----------------------------------------------------------------------------- analysis


@dataclasses.dataclass
class ReportOptions:
  """What `analyze` does; the CLI flags of eval.report."""

  loss_col: str = "val_loss"
  n_col: str = "params_total"
  flops_col: str = "flops"
  bootstrap: int = 100
  bootstrap_by: str = "point"
  budgets: list | None = None
  true_floor_bpb: float | None = None
  grid: str = "full"
  huber_delta: float = fitlib.HUBER_DELTA
  min_n: float | None = None
  max_n: float | None = None
  min_c: float | None = None
  max_c: float | None = None
  head_spectrum: bool = False
  seed: int = 0


@dataclasses.dataclass
class ScalingAnalysis:
  """Every number of a scaling report, computed once; rendering only formats it."""

  workdir: pathlib.Path
  opts: ReportOptions
  df: pd.DataFrame
  N: np.ndarray
  D: np.ndarray
  C: np.ndarray
  L: np.ndarray
  labels: np.ndarray  # FLOP budget per row (budget column, else snapped C)
  labels_given: bool
  k: float  # C / (N D) of the table: the allocation's FLOP convention
  conventions: list = dataclasses.field(default_factory=list)
  notes: dict = dataclasses.field(default_factory=dict)  # section -> why not fitted
  law: fitlib.ChinchillaFit | None = None
  samples: np.ndarray | None = None
  intervals: dict = dataclasses.field(default_factory=dict)
  unidentified: dict = dataclasses.field(default_factory=dict)
  frontier: fitlib.PowerLawFit | None = None
  fsamples: np.ndarray | None = None
  frontier_intervals: dict = dataclasses.field(default_factory=dict)
  size_law: fitlib.PowerLawFit | None = None
  iso: fitlib.IsoFlopFit | None = None
  iso_warnings: list = dataclasses.field(default_factory=list)
  floor_bpb: float | None = None
  fitted_E_bpb: float | None = None
  allocation: list = dataclasses.field(default_factory=list)
  withheld: dict = dataclasses.field(default_factory=dict)  # result -> reason
  sensitivity: list = dataclasses.field(default_factory=list)
  backtest: dict = dataclasses.field(default_factory=dict)
  prediction_checks: list = dataclasses.field(default_factory=list)  # DIR/prediction.json
  saturation: dict = dataclasses.field(default_factory=dict)
  curves: dict = dataclasses.field(default_factory=dict)
  spectra: dict = dataclasses.field(default_factory=dict)
  cost: dict = dataclasses.field(default_factory=dict)  # estimates; empty: none recorded


def _load(workdir, opts: ReportOptions) -> ScalingAnalysis:
  df = read_results(workdir, opts.n_col, opts.loss_col, opts.flops_col)
  N, C = (df[c].to_numpy(float) for c in (opts.n_col, opts.flops_col))
  df = df[fitlib.fit_range_mask(N, C, opts)].reset_index(drop=True)
  cols = (opts.n_col, "tokens", opts.flops_col, opts.loss_col)
  N, D, C, L = (df[c].to_numpy(float) for c in cols)
  labels, given = fitlib.snap_budgets(C), False
  if "budget" in df.columns:
    b = pd.to_numeric(df["budget"], errors="coerce").to_numpy(float)
    if np.all(np.isfinite(b) & (b > 0)):
      labels, given = b, True
  k = float(np.median(C / (N * D)))
  conv = conventions(df, opts.n_col, opts.flops_col, opts.loss_col)
  return ScalingAnalysis(paths.path(workdir), opts, df, N, D, C, L, labels, given, k, conv)


def _clusters(a: ScalingAnalysis):
  return fitlib.cluster_labels(a.df, a.opts.bootstrap_by, a.opts.n_col)


def _fit_approach3(a: ScalingAnalysis) -> None:
  N, D, L = a.N, a.D, a.L
  if len(L) < 8 or len(np.unique(N)) < 3 or len(np.unique(D)) < 2:
    a.notes["chinchilla"] = (
        f"needs >= 8 runs with >= 3 sizes and >= 2 token counts (have "
        f"{len(L)} runs, {len(np.unique(N))} sizes, {len(np.unique(D))} "
        "token counts)"
    )
    return
  a.law = fitlib.fit_chinchilla(N, D, L, grid=a.opts.grid, delta=a.opts.huber_delta)
  budget = _extrapolation_budget(a)
  if a.opts.bootstrap:
    a.samples = fitlib.bootstrap_chinchilla(
        N, D, L, a.law, a.opts.bootstrap, seed=a.opts.seed, clusters=_clusters(a)
    )
    if len(a.samples):
      a.intervals = fitlib.chinchilla_intervals(a.samples, budget=budget, flops_per_param_token=a.k)
  why = {k: not_identified(k, getattr(a.law, k), a.intervals.get(k)) for k in fitlib.PARAMS}
  a.unidentified = _given(why)
  a.withheld.update(_given({what: withheld_reason(a.unidentified, what) for what in NEEDS}))


def _given(reasons: dict) -> dict:
  """The entries of `reasons` that hold a reason (not None)."""
  return {k: why for k, why in reasons.items() if why}


def _extrapolation_budget(a: ScalingAnalysis) -> float:
  return 10 * float(a.C.max())


def _fit_frontier(a: ScalingAnalysis) -> None:
  try:
    a.frontier = fitlib.fit_frontier(a.C, a.L, delta=a.opts.huber_delta)
    if a.opts.bootstrap:
      a.fsamples = fitlib.bootstrap_power_law(
          a.C, a.L, a.opts.bootstrap, frontier=True, delta=a.opts.huber_delta
      )
      if len(a.fsamples):
        a.frontier_intervals = {
            k: fitlib.percentile_interval(a.fsamples[:, j])
            for j, k in enumerate(["E", "A", "gamma"])
        }
    f, fiv = a.frontier, a.frontier_intervals
    named = (("E", "E", f.E), ("A", "A", f.A), ("gamma", "alpha", f.alpha))
    bad = _given({k: not_identified(name, v, fiv.get(k)) for k, name, v in named})
    if bad:
      a.withheld["frontier_loss"] = (
          "withheld: the frontier's "
          + ", ".join(f"{k} ({v})" for k, v in bad.items())
          + " is not identified"
      )
  except (ValueError, RuntimeError) as e:
    a.notes["frontier"] = str(e)


def _fit_size_law(a: ScalingAnalysis) -> None:
  per_size = pd.DataFrame(dict(N=a.N, L=a.L)).sort_values("L").drop_duplicates("N")
  try:
    a.size_law = fitlib.fit_power_law(per_size.N, per_size.L, delta=a.opts.huber_delta)
  except (ValueError, RuntimeError) as e:
    a.notes["size_law"] = str(e)


def _fit_isoflop(a: ScalingAnalysis) -> None:
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      a.iso = fitlib.fit_isoflop(
          a.N,
          a.C,
          a.L,
          budgets=a.labels if a.labels_given else None,
          D=a.D,
          n_boot=a.opts.bootstrap,
          seed=a.opts.seed,
      )
    a.iso_warnings = [str(w.message) for w in caught]
  except ValueError as e:
    a.notes["isoflop"] = (
        f"{e}. Approach 2 needs runs sharing a FLOP budget with sizes on both "
        "sides of its optimum: use an IsoFLOP ladder"
    )


def _entropy_floor(a: ScalingAnalysis) -> None:
  seq_lens = a.df["seq_len"].unique() if "seq_len" in a.df.columns else []
  a.floor_bpb = a.opts.true_floor_bpb
  if a.floor_bpb is None:
    a.floor_bpb = find_true_floor_bpb(a.workdir, int(seq_lens[0]) if len(seq_lens) == 1 else None)
  if a.floor_bpb is None or "val_bpb" not in a.df.columns or len(a.df) < 6:
    return
  bpb = a.df["val_bpb"].to_numpy(float)
  try:
    if a.law is not None:
      a.fitted_E_bpb = fitlib.fit_chinchilla(a.N, a.D, bpb, grid="quick").E
    else:
      per_size = pd.DataFrame(dict(N=a.N, L=bpb)).sort_values("L").drop_duplicates("N")
      a.fitted_E_bpb = fitlib.fit_power_law(per_size.N, per_size.L).E
  except (ValueError, RuntimeError) as e:
    a.notes["fitted_E_bpb"] = str(e)


def _allocation(a: ScalingAnalysis) -> None:
  top = float(a.C.max())
  for c in a.opts.budgets or [top, 10 * top, 100 * top]:
    row = dict(budget=float(c))
    if a.law is not None:
      row["approach3"] = fitlib.chinchilla_optimal_with_intervals(a.law, c, a.samples, a.k)
    if a.iso is not None:
      n, d = a.iso.optimal(c)
      row["approach2"] = dict(N=float(n), D=float(d))
    if a.frontier is not None:
      row["frontier"] = fitlib.power_prediction(a.frontier, c, a.fsamples)
    a.allocation.append(row)


def _refit(a: ScalingAnalysis, mask, delta):
  return fitlib.fit_chinchilla(
      a.N[mask], a.D[mask], a.L[mask], starts=fitlib.refit_starts(a.law), delta=delta
  )


def _sensitivity(a: ScalingAnalysis) -> None:
  """Approach 3 refitted with each Huber delta, without the smallest size and without the
  largest budget: a conclusion that moves more than its interval here is fragile."""
  if a.law is None:
    return
  everything = np.ones(len(a.L), bool)
  variants = [(f"Huber delta {d:g}", everything, d) for d in SENSITIVITY_DELTAS]
  variants.append(("without the smallest size", a.N > a.N.min(), a.opts.huber_delta))
  variants.append(("without the largest budget", a.labels < a.labels.max(), a.opts.huber_delta))
  budget = _extrapolation_budget(a)
  for name, mask, delta in variants:
    row = dict(variant=name, n_points=int(mask.sum()))
    try:
      f = a.law if (mask.all() and delta == a.opts.huber_delta) else _refit(a, mask, delta)
      row.update({k: getattr(f, k) for k in ("E", "alpha", "beta", "a")})
      row.update(loss_opt=float(f.optimal(budget, a.k)[2]), budget=budget)
    except (ValueError, RuntimeError) as e:
      row["error"] = str(e)
    a.sensitivity.append(row)


def holdout_mask(C, labels, labels_given: bool, fraction: float = 0.2) -> np.ndarray:
  """The rows to predict in a backtest: the largest FLOP budget when budgets are given
  (IsoFLOP tables), else the largest-compute `fraction` of the rows (at least one)."""
  if labels_given:
    return labels == labels.max()
  n = max(1, int(round(fraction * len(C))))
  return C >= np.sort(C)[-n]


def prediction_interval(
    law, params, resid, n, d, se=0.0, *, level=0.95, seed=0, rng=None, draws=200
) -> dict:
  """The law's loss at (n, d) and a prediction interval for one new run there: bootstrap
  parameter rows (None: the fit alone) times resampled log residuals of the fit, plus the
  run's own evaluation noise `se` (a new run scatters like the fitted ones did)."""
  rng = rng or np.random.default_rng(seed)
  params = law.params[None] if params is None or not len(params) else params
  with np.errstate(all="ignore"):
    mean = params[:, 0] + params[:, 1] * n ** -params[:, 3] + params[:, 2] * d ** -params[:, 4]
  sample = np.repeat(mean, draws // len(mean) + 1)[: max(draws, len(mean))]
  sample = sample * np.exp(rng.choice(resid, len(sample))) + rng.normal(0, se, len(sample))
  lo, hi = fitlib.percentile_interval(sample, level)
  return dict(loss=float(law.loss(n, d)), interval=[lo, hi], level=level)


def backtest(
    N, D, L, test, *, n_boot=50, delta=fitlib.HUBER_DELTA, seed=0, level=0.95, k=6.0, loss_se=None
) -> dict:
  """Fit approach 3 on the rows not in `test` (the smaller budgets), predict the held-out
  rows with prediction intervals (bootstrap parameter draws times resampled log residuals of
  the fit, plus each held-out row's own evaluation noise when `loss_se` gives it), and say
  for each whether the truth fell inside."""
  train = ~test
  if train.sum() < 8 or len(np.unique(N[train])) < 3 or len(np.unique(D[train])) < 2:
    return dict(
        note=f"not run: the {int(train.sum())} rows below the held-out budget cannot "
        "support an approach-3 fit (needs >= 8 runs, >= 3 sizes, >= 2 token counts)"
    )
  law = fitlib.fit_chinchilla(N[train], D[train], L[train], grid="quick", delta=delta)
  resid = np.log(L[train]) - np.log(law.loss(N[train], D[train]))
  rng = np.random.default_rng(seed)
  params = (
      fitlib.bootstrap_chinchilla(N[train], D[train], L[train], law, n_boot, seed=seed)
      if n_boot
      else law.params[None]
  )
  rows = []
  se = np.zeros(len(L)) if loss_se is None else np.nan_to_num(np.asarray(loss_se, float))
  for n, d, l, e in zip(N[test], D[test], L[test], se[test]):
    p = prediction_interval(law, params, resid, n, d, e, level=level, rng=rng)
    lo, hi = p["interval"]
    rows.append(
        dict(
            N=float(n),
            D=float(d),
            C=float(k * n * d),
            loss=float(l),
            predicted=p["loss"],
            rel_error=(p["loss"] - l) / l,
            interval=[lo, hi],
            inside=bool(lo <= l <= hi),
        )
    )
  errs = np.array([r["rel_error"] for r in rows])
  return dict(
      rows=rows,
      n_train=int(train.sum()),
      level=level,
      n_boot=int(n_boot),
      mean_abs_rel_error=float(np.mean(np.abs(errs))),
      n_inside=int(sum(r["inside"] for r in rows)),
      law=law.to_dict(),
  )


def _backtest(a: ScalingAnalysis) -> None:
  test = holdout_mask(a.C, a.labels, a.labels_given)
  se = (
      pd.to_numeric(a.df["val_loss_se"], errors="coerce").to_numpy(float)
      if "val_loss_se" in a.df.columns and a.opts.loss_col == "val_loss"
      else None
  )
  a.backtest = backtest(
      a.N,
      a.D,
      a.L,
      test,
      n_boot=min(a.opts.bootstrap, 50),
      delta=a.opts.huber_delta,
      seed=a.opts.seed,
      k=a.k,
      loss_se=se,
  )
  a.backtest["held_out"] = (
      "the largest FLOP budget" if a.labels_given else f"the {int(test.sum())} largest-compute rows"
  )


def read_prediction_checks(workdir: pathlib.Path) -> list:
  """The entries `python -m eval.ladder --predict-budget C` wrote to DIR/prediction.json."""
  path = pathlib.Path(workdir) / "prediction.json"
  if not path.exists():
    return []
  try:
    return list(json.loads(path.read_text())["checks"])
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path} is not a prediction file ({e}); delete it and rerun") from None


def _trend_clusters(a: ScalingAnalysis):
  col = next((c for c in ("run", "size") if c in a.df.columns), None)
  return a.df[col].astype(str).to_numpy() if col else None


def _saturation(a: ScalingAnalysis) -> None:
  N, D, L, law = a.N, a.D, a.L, a.law
  per_size = (
      pd.DataFrame(dict(N=N, D=D, L=L)).sort_values("L").drop_duplicates("N").sort_values("N")
  )
  E = law.E if law is not None else (a.frontier.E if a.frontier is not None else 0.0)
  floor = (law.E + law.B * per_size.D.to_numpy() ** -law.beta) if law is not None else E
  rr = sat.rung_returns(per_size.N, per_size.L)
  ex = sat.local_exponents(per_size.N, per_size.L, floor)
  s = dict(
      per_size=per_size,
      rr=rr,
      ex=ex,
      E=E,
      headroom=sat.headroom(per_size.L.to_numpy(), E),
      exponent_trend=sat.exponent_trend(ex["exponent"]),
  )
  if law is not None:
    big = per_size.iloc[-1]
    s["doubling_returns"] = sat.doubling_returns(law, big.N, big.D, a.samples)
    fitter = sat.chinchilla_fitter(starts=fitlib.refit_starts(law))
    s["leave_one_rung_out"] = sat.leave_one_rung_out(N, D, L, fitter)
    s["trend_break"] = sat.trend_break_test(N, D, L, clusters=_trend_clusters(a))
  else:
    s["leave_one_rung_out"] = sat.leave_one_rung_out(N, D, L)
    s["trend_break"] = sat.trend_break(N, L, E, clusters=_trend_clusters(a))
  s["plateau"] = {
      name: sat.plateau(t, l, lr=lr if np.isfinite(lr).any() else None)
      for name, (t, l, lr) in sorted(a.curves.items())
  }
  a.saturation = s


COST_COLUMNS = ("chip_hours", "kwh", "usd", "kgco2e")


def _cost_totals(df: pd.DataFrame, rows: np.ndarray) -> dict:
  """Sums of the cost columns over `rows`; None for a quantity unknown for any of them."""
  out = {}
  for col in COST_COLUMNS:
    v = pd.to_numeric(df[col], errors="coerce").to_numpy(float)[rows] if col in df else None
    out[col] = float(v.sum()) if v is not None and np.isfinite(v).all() else None
  return out


def _cost(a: ScalingAnalysis) -> None:
  """The study's estimated cost from results.csv's cost columns (eval.ladder records each
  run's train/cost.py estimate), per FLOP budget, and per FLOP: the rate that prices the
  allocation table's budgets on the same hardware at the same utilisation."""
  if "chip_hours" not in a.df:
    return
  known = np.isfinite(pd.to_numeric(a.df["chip_hours"], errors="coerce").to_numpy(float))
  if not known.any():
    return
  totals = _cost_totals(a.df, known)
  flops = float(a.C[known].sum())
  a.cost = dict(
      totals,
      runs=int(known.sum()),
      flops=flops,
      per_flop={k: v / flops for k, v in totals.items() if v is not None},
      per_budget=[
          dict(_cost_totals(a.df, known & (a.labels == c)), budget=float(c))
          for c in np.unique(a.labels[known])
      ],
  )


def budget_cost(a: ScalingAnalysis, budget: float) -> dict:
  """A FLOP budget priced at the study's cost per FLOP (empty when no cost was recorded)."""
  return {k: rate * budget for k, rate in a.cost.get("per_flop", {}).items()}


def describe_cost(c: dict) -> str:
  """'1.2 chip-hours, $3.40, 0.5 kWh, 0.24 kg CO2e' with unknown quantities named as such."""
  parts = [f"{c['chip_hours']:.3g} chip-hours"]
  parts.append("USD unknown" if c.get("usd") is None else f"${c['usd']:,.4g}")
  if c.get("kwh") is None:
    parts.append("energy unknown")
  else:
    parts += [f"{c['kwh']:.3g} kWh", f"{c['kgco2e']:.3g} kg CO2e"]
  return ", ".join(parts)


def analyze(workdir, opts: ReportOptions | None = None, **kw) -> ScalingAnalysis:
  """Every fit and verdict of the report for DIR/results.csv (keyword arguments set
  ReportOptions fields)."""
  opts = dataclasses.replace(opts or ReportOptions(), **kw)
  a = _load(workdir, opts)
  a.curves = stitch_wsd_curves(read_curves(a.workdir), a.df)
  _fit_approach3(a)
  _fit_frontier(a)
  _fit_size_law(a)
  _fit_isoflop(a)
  _entropy_floor(a)
  _allocation(a)
  _sensitivity(a)
  _backtest(a)
  a.prediction_checks = read_prediction_checks(a.workdir)
  _saturation(a)
  _cost(a)
  a.spectra = read_head_spectra(a.workdir, a.df) if opts.head_spectrum else {}
  return a


# ----------------------------------------------------------------------------- markdown


def _fmt_int(v, interval=None, fmt="{:.4g}"):
  s = fmt.format(v)
  if interval:
    s += " [" + ", ".join(fmt.format(x) for x in interval) + "]"
  return s


def _md(*blocks) -> list[str]:
  """Markdown lines: each block (one line, or a list of lines such as a table or a bullet
  list) followed by a blank line."""
  return [line for b in blocks for line in ([b] if isinstance(b, str) else list(b)) + [""]]


def _md_table(header: list[str], rows) -> list[str]:
  """A markdown table: the header, the separator, then one line per row of cells (an empty
  cell written `| |`)."""
  line = lambda cells: "|" + "".join(f" {c} |" if str(c) else " |" for c in cells)
  return [line(header), "|---" * len(header) + "|", *map(line, rows)]


def _yes_no(inside: bool) -> str:
  return "yes" if inside else "**no**"


def _md_header(a: ScalingAnalysis) -> list[str]:
  N, D, C = a.N, a.D, a.C
  support = []
  if a.law is None:
    support.append(f"- Approach 3 not fitted: {a.notes.get('chinchilla')}.")
  elif not a.unidentified:
    support.append(
        "- Every approach-3 parameter is identified"
        + (
            " (no interval reaches a bound or spans orders of magnitude)."
            if a.intervals
            else " (point estimates only: run with --bootstrap to check)."
        )
    )
  support += [f"- **{name} is not identified**: {why}." for name, why in a.unidentified.items()]
  support += [f"- {k.replace('_', ' ').capitalize()} {why}." for k, why in a.withheld.items()]
  cost = [f"This study cost {describe_cost(a.cost)} (est.; see Cost below)."] if a.cost else []
  return _md(
      f"# Scaling report: {a.workdir}",
      f"{len(a.df)} runs, {len(np.unique(N))} sizes ({a.opts.n_col} {N.min():.3g} .. "
      f"{N.max():.3g}), tokens {D.min():.3g} .. {D.max():.3g}, compute {C.min():.3g} .. "
      f"{C.max():.3g} FLOPs. Loss column: `{a.opts.loss_col}`.",
      *cost,
      "## Conventions",
      [f"- [x] **{item}**: {what}" for item, what in a.conventions],
      "## What the data support",
      support,
  )


def _md_approach3(a: ScalingAnalysis) -> list[str]:
  law, iv, why = a.law, a.intervals, a.unidentified
  if law is None:
    return _md(f"Chinchilla (approach 3): not fitted: {a.notes.get('chinchilla')}.")
  n_boot = len(a.samples) if a.samples is not None else 0
  rows = [
      [k, _fmt_int(getattr(law, k), iv.get(k)), "**no**: " + why[k] if why.get(k) else "yes"]
      for k in ("E", "A", "B", "alpha", "beta", "a", "b")
  ]
  return _md(
      "### Chinchilla approach 3: L(N, D) = E + A/N^alpha + B/D^beta",
      f"Huber (delta {law.huber_delta:g}) on log residuals summed over {law.n_points} runs, "
      f"L-BFGS-B on the rescaled objective from {law.n_starts} starts: {law.n_at_optimum} of "
      f"the {law.n_final} run to convergence reached the optimum (objective within "
      f"{fitlib.OPTIMUM_RTOL:g} relative), gradient norm {law.grad_norm:.1e}"
      + (
          ""
          if law.verified
          else " (**not verified**: fewer than 2 starts agree or the gradient is not small)"
      )
      + f". Brackets: {int(fitlib.INTERVAL_LEVEL * 100)}% bootstrap intervals"
      + (
          f" ({n_boot} resamples by {a.opts.bootstrap_by})."
          if n_boot
          else " (none: --bootstrap 0)."
      ),
      _md_table(["parameter", "value", "identified"], rows),
      f"Compute-optimal scaling: N_opt ~ C^{law.a:.3f}, D_opt ~ C^{law.b:.3f} "
      f"({'parameters' if law.a > law.b else 'tokens'} should grow faster with compute)."
      + _floor_note(a),
  )


def _floor_note(a: ScalingAnalysis) -> str:
  if a.floor_bpb is None or not a.opts.loss_col.endswith("bpb") or a.law is None:
    return ""
  return (
      f" True entropy floor of the synthetic corpus: {a.floor_bpb:.4f} bits/byte; "
      f"fitted E = {_fmt_int(a.law.E, a.intervals.get('E'))}."
  )


def _md_other_fits(a: ScalingAnalysis) -> list[str]:
  f, fiv, s = a.frontier, a.frontier_intervals, a.size_law
  if f is not None:
    lines = _md(
        "### Compute frontier: L*(C) = E + A C^-gamma (fitted to the Pareto-optimal runs)",
        f"E = {_fmt_int(f.E, fiv.get('E'))}, A = {_fmt_int(f.A, fiv.get('A'))}, gamma = "
        f"{_fmt_int(f.alpha, fiv.get('gamma'), '{:.4f}')}."
        + (
            f" Extrapolated frontier losses are {a.withheld['frontier_loss']}."
            if "frontier_loss" in a.withheld
            else ""
        ),
    )
  else:
    lines = _md(f"Compute frontier: not fitted: {a.notes.get('frontier')}")
  if s is not None:
    lines += _md(
        "### L(N) = E + A N^-alpha (best run per size)",
        f"E = {s.E:.4g}, A = {s.A:.4g}, alpha = {s.alpha:.4f}.",
    )
  else:
    lines += _md(f"L(N): not fitted: {a.notes.get('size_law')}")
  return lines + _md_isoflop(a) + _md_entropy(a)


def _md_isoflop(a: ScalingAnalysis) -> list[str]:
  iso = a.iso
  if iso is None:
    return _md(f"IsoFLOP (approach 2): not fitted: {a.notes.get('isoflop')}.")
  rows = [
      [f"{c:.3g}", f"{n:.3g}", f"{s:.3f}", f"{d:.3g}", f"{l:.4f}"]
      for c, n, s, d, l in zip(iso.budgets, iso.n_opt, iso._se(), iso.d_opt, iso.loss_opt)
  ]
  slopes = (
      f"N*(C) ~ C^{_fmt_int(iso.a, iso.a_interval, '{:.3f}')}, "
      f"D*(C) ~ C^{_fmt_int(iso.b, iso.b_interval, '{:.3f}')}."
      + (
          f" Approach 3 says a = {_fmt_int(a.law.a, a.intervals.get('a'), '{:.3f}')}."
          if a.law is not None
          else ""
      )
  )
  return _md(
      f"### IsoFLOP approach 2: parabola in log N per budget (window {iso.window} around "
      "each minimum)",
      _md_table(["budget C", "N*", "s.e. of ln N*", "D*", "loss at N*"], rows),
      [slopes]
      + [f"- budget {d['budget']:.3g} left out: {d['reason']}" for d in iso.dropped]
      + [f"- warning: {w}" for w in a.iso_warnings],
  )


def _md_entropy(a: ScalingAnalysis) -> list[str]:
  if a.floor_bpb is None:
    return []
  note = f"True entropy floor of the synthetic corpus: **{a.floor_bpb:.4f} bits/byte**."
  if a.fitted_E_bpb is not None:
    note += (
        f" Fitted E on val_bpb: **{a.fitted_E_bpb:.4f} bits/byte** "
        f"({(a.fitted_E_bpb - a.floor_bpb) / a.floor_bpb * 100:+.1f}% from the floor)."
    )
  elif "fitted_E_bpb" in a.notes:
    note += f" (E on val_bpb not fitted: {a.notes['fitted_E_bpb']})"
  return _md("### Entropy floor", note)


def _md_sensitivity(a: ScalingAnalysis) -> list[str]:
  if not a.sensitivity:
    return []
  budget = a.sensitivity[0].get("budget", _extrapolation_budget(a))
  rows = [
      [r["variant"], r["n_points"], f"not fitted: {r['error']}", "", "", "", ""]
      if "error" in r
      else [r["variant"], r["n_points"], f"{r['E']:.4g}", f"{r['alpha']:.3f}", f"{r['beta']:.3f}"]
      + [f"{r['a']:.3f}", f"{r['loss_opt']:.4f}"]
      for r in a.sensitivity
  ]
  header = ["variant", "runs", "E", "alpha", "beta", "a"]
  return _md(
      "## Sensitivity of approach 3",
      _md_table(header + [f"loss at the optimum of C = {budget:.3g}"], rows),
      "A conclusion that moves more than its interval across these rows rests "
      "on a modelling choice, not on the data.",
  )


def _md_backtest(a: ScalingAnalysis) -> list[str]:
  bt = a.backtest
  title = "## Backtest: predict the largest budget from the smaller ones"
  if "rows" not in bt:
    return _md(title, f"Backtest {bt.get('note', 'not run')}.")
  rows = [
      [f"{r['N']:.3g}", f"{r['D']:.3g}", f"{r['loss']:.4f}", f"{r['predicted']:.4f}"]
      + ["[{:.4f}, {:.4f}]".format(*r["interval"]), f"{r['rel_error'] * 100:+.2f}%"]
      + [_yes_no(r["inside"])]
      for r in bt["rows"]
  ]
  return _md(
      title,
      f"Approach 3 fitted on {bt['n_train']} runs without {bt['held_out']}, which it then "
      f"predicts ({int(bt['level'] * 100)}% prediction intervals: {bt['n_boot']} bootstrap "
      "refits times resampled residuals).",
      _md_table(["N", "D", "loss", "predicted", "interval", "error", "inside"], rows),
      f"Mean |error| {bt['mean_abs_rel_error'] * 100:.2f}%; the truth fell inside "
      f"{bt['n_inside']} of {len(bt['rows'])} intervals. This is the honest extrapolation "
      "error of this ladder.",
  )


def _md_prediction_checks(a: ScalingAnalysis) -> list[str]:
  if not a.prediction_checks:
    return []
  header = ["C", "x largest rung", "predicted N*", "predicted D*", "predicted loss*"]
  header += ["trained N, D", "predicted at trained", "achieved", "predicted / achieved - 1"]
  rows = []
  for c in a.prediction_checks:
    p, t, q = c["predicted"], c["trained"], c["predicted_at_trained"]
    rows.append(
        [f"{c['budget']:.3g}", f"{c['budget'] / c['largest_rung_flops']:.1f}"]
        + [_fmt_int(p[k], p.get(f"{k}_interval"), "{:.3g}") for k in ("N", "D")]
        + [_fmt_int(p["loss"], p.get("loss_interval"))]
        + [f"{t['params_total']:.3g}, {t['tokens']:.3g} ({t['size']})"]
        + [_fmt_int(q["loss"], q["interval"]), f"{c['achieved']['val_loss']:.4f}"]
        + [f"{c['rel_error'] * 100:+.2f}%", _yes_no(c["inside"])]
    )
  rungs = ", ".join(str(c["rungs"]) for c in a.prediction_checks)
  notes = [f"Each prediction was fitted on the rungs finished when it was made ({rungs})."]
  if a.unidentified:
    notes.append(
        "Approach 3 leaves " + ", ".join(a.unidentified) + " unidentified on this table, so a "
        "prediction's interval, not its point, is what the check tests."
    )
  return _md(
      "## Prediction check: predict a larger budget, then train it",
      "Approach 3 fitted on the ladder's rungs predicts the compute-optimal N, D and loss at C "
      "(95% bootstrap intervals); the ladder-shaped model nearest that N is trained for C FLOPs "
      "and its loss compared with the law's prediction at the trained N, D (95% prediction "
      "interval: bootstrap refits times resampled residuals plus the evaluation noise).",
      _md_table(header + ["inside"], rows),
      notes,
  )


def _allocation_cells(a: ScalingAnalysis, row: dict) -> list[str]:
  """A row of the allocation table; '-' where a fit is missing, 'withheld' where the data do
  not identify what a number depends on."""
  loss = lambda p, what: (
      "withheld" if what in a.withheld else _fmt_int(p["loss"], p.get("loss_interval"), "{:.4f}")
  )
  p, q, f = row.get("approach3"), row.get("approach2"), row.get("frontier")
  cells = [f"{row['budget']:.3g}"]
  if p is None:
    cells += ["-"] * 4
  elif "allocation" in a.withheld:
    cells += ["withheld", "withheld", loss(p, "extrapolated_loss"), "-"]
  else:
    cells += [_fmt_int(p["N"], p.get("N_interval"), "{:.3g}")]
    cells += [_fmt_int(p["D"], p.get("D_interval"), "{:.3g}"), loss(p, "extrapolated_loss")]
    cells += [f"{p['tokens_per_param']:.1f}"]
  cells += [f"{q['N']:.3g}", f"{q['D']:.3g}"] if q else ["-", "-"]
  cells.append(loss(f, "frontier_loss") if f else "-")
  if a.cost:
    cells.append(describe_cost(budget_cost(a, row["budget"])))
  return cells


def _md_allocation(a: ScalingAnalysis) -> list[str]:
  header = ["budget C", "N_opt (approach 3)", "D_opt (approach 3)", "loss (approach 3)"]
  header += ["tokens/param", "N* (approach 2)", "D* (approach 2)", "frontier L*(C)"]
  header += ["est. cost at this study's rate"] if a.cost else []
  withheld = [
      f"- {what.replace('_', ' ').capitalize()} from approach 3 {a.withheld[what]}."
      for what in ("allocation", "extrapolated_loss")
      if what in a.withheld
  ]
  return _md(
      "## Compute-optimal allocation",
      f"Approach 3 allocates with C = k N D, k = {a.k:.3g}: the ratio C / (N D) of this "
      f"table's FLOP column `{a.opts.flops_col}`, so budgets and runs share one "
      "convention.",
      withheld,
      _md_table(header, [_allocation_cells(a, row) for row in a.allocation]),
      "Budgets above the largest run are extrapolations; trust them only as far "
      "as the backtest above allows.",
  )


def _md_saturation(a: ScalingAnalysis) -> list[str]:
  s = a.saturation
  lines = []
  dr = s.get("doubling_returns")
  if dr:
    lines.append(
        f"- At the largest size (N = {dr['N']:.3g}, D = {dr['D']:.3g}) the fitted law "
        f"says doubling N lowers the loss by "
        f"{_fmt_int(dr['per_doubling_N'], dr.get('per_doubling_N_interval'))} and "
        "doubling D by "
        f"{_fmt_int(dr['per_doubling_D'], dr.get('per_doubling_D_interval'))}"
        f": {'parameters' if dr['per_doubling_N'] > dr['per_doubling_D'] else 'tokens'} "
        "are the better buy."
    )
  lines.append(
      "- Loss drop per doubling of N between rungs (best run per size): "
      + ", ".join(f"{v:.4f}" for v in s["rr"]["per_doubling"])
      + "."
  )
  lines.append(
      (
          "- Local exponents -dlog(L-F)/dlog N (F = E + B/D^beta at each rung's D): "
          if a.law is not None
          else f"- Local exponents -dlog(L-E)/dlog N (E = {s['E']:.4g}): "
      )
      + ", ".join(f"{v:.3f}" for v in s["ex"]["exponent"])
      + f". {s['exponent_trend']['verdict']}."
  )
  hr = s["headroom"][-1]
  if "headroom" in a.withheld:
    lines.append(f"- Headroom (L-E)/L at the largest size: {a.withheld['headroom']}.")
  else:
    lines.append(
        f"- Headroom (L-E)/L at the largest size: {hr * 100:.1f}% of the loss is still "
        "reducible by scale"
        + (" (close to the floor: scaling is nearly exhausted)." if hr < 0.05 else ".")
    )
  lines.append(f"- Trend-break test: {s['trend_break']['verdict']}.")
  return _md("## Saturation", lines + _md_spectra_and_curves(a))


def _md_spectra_and_curves(a: ScalingAnalysis) -> list[str]:
  lines = []
  if a.spectra:
    lines += [""] + _md(
        "LM-head spectra (latest checkpoint of each point; tied embedding or unembed):"
    )
    lines += [
        f"- {name} (d_model {spec['d_model']}, step {spec['step']}): {sat.head_verdict(spec)}"
        for name, spec in sorted(a.spectra.items())
    ]
  plat = a.saturation.get("plateau", {})
  if plat:
    n_plat = sum(p["plateau"] for p in plat.values())
    n_rise = sum(p["late_rise"] for p in plat.values())
    n_imp = sum(p.get("improving", False) for p in plat.values())
    lines += [""] + _md(
        f"Training curves (slope of loss vs log2 tokens over the last 20% of each run's "
        f"stable phase; a WSD cooldown, found from the logged LR, is left out): {n_imp} of "
        f"{len(plat)} still improving, {n_plat} have plateaued, {n_rise} rise late, the rest "
        "are inconclusive."
    )
    lines += [f"- {name}: {p['verdict']}" for name, p in plat.items()]
  return lines


def _md_cost(a: ScalingAnalysis) -> list[str]:
  if not a.cost:
    return []
  fmt = lambda v: "unknown" if v is None else f"{v:.4g}"
  rows = [
      [f"{r['budget']:.3g}"] + [fmt(r[k]) for k in ("chip_hours", "usd", "kwh", "kgco2e")]
      for r in a.cost["per_budget"]
  ]
  return _md(
      "## Cost (estimates)",
      f"This study cost {describe_cost(a.cost)} (est.) over the {a.cost['runs']} runs that "
      "recorded a cost: each run's wall time x chips x the board power, price, PUE and grid "
      "intensity in its `cost` event (train/cost.py); unknown where an input was unknown.",
      _md_table(["budget C", "chip-hours", "USD", "kWh", "kg CO2e"], rows),
  )


def render_markdown(a: ScalingAnalysis, figures=()) -> str:
  lines = _md_header(a) + ["## Fitted laws", ""] + _md_approach3(a) + _md_other_fits(a)
  lines += _md_sensitivity(a) + _md_backtest(a) + _md_prediction_checks(a)
  lines += _md_allocation(a) + _md_saturation(a) + _md_cost(a) + _md_lr_transfer(a)
  lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in figures if p.suffix == ".png"]
  return "\n".join(lines) + "\n"


def _md_lr_transfer(a: ScalingAnalysis) -> list[str]:
  """An lr_sweep ladder's best learning rate per width (eval.lr_transfer.best_lr_shift)."""
  if "lr_choices" not in a.df.columns:
    return []
  best = lr_transfer.best_lr_shift(lr_transfer.sweep_rows(a.workdir))
  widths = sorted({w for b in best.values() for w in b["best_lr_exponent"]})
  header = ["best learning rate (2^k)", *(f"width {w}" for w in widths), "spread (grid steps)"]
  rows = [
      [par, *(b["best_lr_exponent"].get(w, "-") for w in widths), b["shift_grid_steps"]]
      for par, b in best.items()
  ]
  return _md(
      "## Learning-rate transfer",
      _md_table(header, rows),
      "A spread of 0-1 grid steps means the best learning rate transfers.",
  )


# ----------------------------------------------------------------------------- JSON, plots


def analysis_facts(a: ScalingAnalysis) -> dict:
  """The JSON form of the analysis (report.json)."""
  facts = dict(
      n_runs=len(a.df),
      loss_col=a.opts.loss_col,
      n_col=a.opts.n_col,
      flops_col=a.opts.flops_col,
      flops_per_param_token=a.k,
      conventions=[dict(item=i, value=v) for i, v in a.conventions],
      not_fitted=a.notes,
      unidentified=a.unidentified,
      withheld=a.withheld,
  )
  law, front, opts = a.law, a.frontier, a.opts  # each fit, when there is one
  optional = dict(
      chinchilla=law and dict(law.to_dict(), intervals=a.intervals, bootstrap_by=opts.bootstrap_by),
      frontier=front and dict(front.to_dict(), gamma=front.alpha, intervals=a.frontier_intervals),
      size_law=a.size_law and a.size_law.to_dict(),
      isoflop=a.iso and a.iso.to_dict(),
      true_floor_bpb=a.floor_bpb,
      fitted_E_bpb=a.fitted_E_bpb,
  )
  facts.update({k: v for k, v in optional.items() if v is not None})
  facts.update(
      allocation=a.allocation,
      sensitivity=a.sensitivity,
      backtest=a.backtest,
      prediction_check=a.prediction_checks,
      saturation=_saturation_facts(a),
  )
  if a.cost:
    facts["cost"] = a.cost
  return facts


def _saturation_facts(a: ScalingAnalysis) -> dict:
  s = a.saturation
  rr = s["rr"]
  out = dict(
      rung_returns=[
          dict(x_lo=float(x), x_hi=float(y), per_doubling=float(z))
          for x, y, z in zip(rr["x_lo"], rr["x_hi"], rr["per_doubling"])
      ],
      local_exponents=[float(x) for x in s["ex"]["exponent"]],
      exponent_trend=s["exponent_trend"],
      headroom=[float(x) for x in s["headroom"]],
      leave_one_rung_out=s["leave_one_rung_out"],
      trend_break=s["trend_break"],
  )
  for k in ("doubling_returns", "plateau"):
    if s.get(k):
      out[k] = s[k]
  if a.spectra:
    out["head_spectrum"] = a.spectra
  return out


def render_plots(a: ScalingAnalysis, out: pathlib.Path) -> list[pathlib.Path]:
  """Figures of the analysis; a figure whose numbers are withheld is marked in its title."""
  preds = [
      dict(r["frontier"], budget=r["budget"])
      for r in a.allocation
      if "frontier" in r and "frontier_loss" not in a.withheld
  ]
  figs = plots.save(
      plots.loss_vs_compute(a.C, a.L, a.N, a.frontier, predictions=preds), out / "loss_vs_compute"
  )
  if a.iso is not None:
    figs += plots.save(plots.isoflop_curves(a.N, a.L, a.labels, a.iso), out / "isoflop")
  if a.law is not None:
    figs += plots.save(plots.residuals(a.N, a.D, a.L, a.law), out / "residuals")
  s = a.saturation
  head = None if "headroom" in a.withheld else s["headroom"]
  figs += plots.save(
      plots.saturation_panel(
          s["rr"],
          s["ex"],
          head,
          s["per_size"].N.to_numpy(),
          a.backtest.get("rows", []),
          head_note=a.withheld.get("headroom"),
      ),
      out / "saturation",
  )
  if a.curves:
    figs += plots.save(plots.training_curves(a.curves), out / "training_curves")
  return figs


def _jsonable(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.bool_):
    return bool(x)
  return str(x)


def make_report(workdir, *, out_dir=None, **kw) -> pathlib.Path:
  """Analyze DIR/results.csv and write report.md, report.json and the plots; returns the
  report.md path. Keyword arguments are ReportOptions fields (loss_col, n_col, bootstrap,
  budgets, true_floor_bpb, grid, head_spectrum, ...)."""
  a = analyze(workdir, **kw)
  out = paths.path(out_dir) if out_dir else a.workdir / "report"
  out.mkdir(parents=True, exist_ok=True)
  figs = render_plots(a, out)
  md = out / "report.md"
  md.write_text(render_markdown(a, figs))
  facts = json.dumps(analysis_facts(a), indent=2, default=_jsonable)
  (out / "report.json").write_text(facts + "\n")
  return md


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m eval.report", description=__doc__.split("\n")[0])
  warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"  # one line each
  p.add_argument("--workdir", required=True)
  p.add_argument("--loss-col", default="val_loss")
  p.add_argument("--n-col", default="params_total", help="params_total or params_non_embedding")
  p.add_argument(
      "--flops-col",
      default="flops",
      help="FLOP column (flops: counted; flops_6nd: 6ND); the allocation uses it too",
  )
  p.add_argument("--bootstrap", type=int, default=100)
  p.add_argument("--bootstrap-by", default="point", choices=["point", "size", "run"])
  p.add_argument("--huber-delta", type=float, default=fitlib.HUBER_DELTA)
  for flag in ("--min-n", "--max-n", "--min-c", "--max-c"):
    p.add_argument(flag, type=float, default=None, help="fit range (inclusive)")
  p.add_argument(
      "--budget",
      dest="budgets",
      type=float,
      action="append",
      default=None,
      help="FLOP budget(s) for the allocation table (default: largest run x1, x10, " "x100)",
  )
  p.add_argument("--true-floor-bpb", type=float, default=None)
  p.add_argument("--grid", default="full", choices=["full", "coarse", "quick"])
  p.add_argument("--out", default=None, help="output folder (default DIR/report)")
  p.add_argument(
      "--no-head-spectrum",
      dest="head_spectrum",
      action="store_false",
      help="skip loading each point's checkpoint for the LM-head spectrum",
  )
  p.add_argument("--seed", type=int, default=0)
  opts = vars(p.parse_args(argv))  # every other flag's dest is a ReportOptions field
  print(make_report(opts.pop("workdir"), out_dir=opts.pop("out"), **opts))
  return 0


if __name__ == "__main__":
  cli.run(main)
