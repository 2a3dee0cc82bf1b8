"""Scaling report for a ladder directory: fits, compute-optimal allocation, saturation verdicts.

    python -m eval.report --workdir DIR [--loss-col val_loss] [--n-col params_total]
        [--bootstrap 100] [--budget 1e15 ...] [--true-floor-bpb X]

Reads DIR/results.csv (one row per trained point: name, params_total, params_non_embedding,
tokens, flops, train_loss, val_loss, val_bpb, wall_s, optionally budget) and, when present,
the training curves DIR/points/*/metrics.jsonl. Writes DIR/report/*.png|svg, report.md and
report.json. Any table with those columns works, not only ladders made here.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import warnings

import numpy as np
import pandas as pd

from eval import fit as fitlib
from eval import plots
from eval import saturation as sat

LOSS_KEYS = ("loss_mean", "train_loss", "loss")   # loss_mean: the trainer's logging-window mean
TOKEN_KEYS = ("tokens_seen", "train/tokens")      # cumulative (the trainer's `tokens` is per step)


def read_results(workdir: pathlib.Path, n_col: str, loss_col: str) -> pd.DataFrame:
  path = workdir / "results.csv"
  if not path.exists():
    raise SystemExit(f"{path} not found: run a ladder into {workdir} first (python -m eval.ladder)")
  df = pd.read_csv(path)
  need = [n_col, "tokens", "flops", loss_col]
  missing = [c for c in need if c not in df.columns]
  if missing:
    raise SystemExit(f"{path}: missing column(s) {missing}; columns are {list(df.columns)}")
  if "name" in df.columns:
    df = df.drop_duplicates("name", keep="last")
  ok = np.isfinite(df[need].apply(pd.to_numeric, errors="coerce")).all(axis=1) & (df[need] > 0).all(axis=1)
  if (~ok).any():
    warnings.warn(f"dropping {int((~ok).sum())} row(s) with missing or non-positive values")
  return df[ok].reset_index(drop=True)


def read_curves(workdir: pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Training curves from DIR/points/<name>/metrics.jsonl (loss vs tokens, else vs step)."""
  curves = {}
  for path in sorted(workdir.glob("points/*/metrics.jsonl")):
    by_step = {}
    for line in path.read_text().splitlines():
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue
      if rec.get("kind", "train") != "train":
        continue
      loss = next((_num(rec[k]) for k in LOSS_KEYS if k in rec and np.isfinite(_num(rec[k]))), None)
      x = next((_num(rec[k]) for k in TOKEN_KEYS if k in rec), _num(rec.get("step", np.nan)))
      if loss is not None and np.isfinite(x) and x > 0:
        by_step[x] = loss  # a resumed run repeats steps: keep the latest
    if len(by_step) >= 2:
      xs = np.array(sorted(by_step))
      curves[path.parent.name] = (xs, np.array([by_step[x] for x in xs]))
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
      t, l = out[name]
      keep = const[0] < t.min()
      out[name] = (np.r_[const[0][keep], t], np.r_[const[1][keep], l])
  return out


def read_head_spectra(workdir: pathlib.Path, df: pd.DataFrame) -> dict:
  """LM-head spectrum of every results row whose point directory holds checkpoints."""
  out = {}
  if "name" not in df.columns:
    return out
  for name in df["name"]:
    pdir = workdir / "points" / str(name)
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


def find_true_floor_bpb(workdir: pathlib.Path) -> float | None:
  """The synthetic corpus's entropy rate (bits/byte) from a prepared manifest under DIR."""
  for path in list(workdir.glob("**/manifest.json"))[:50]:
    try:
      m = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
      continue
    syn = m.get("synthetic") if isinstance(m, dict) else None
    if isinstance(syn, dict) and "entropy_rate_bits_per_byte" in syn:
      return float(syn["entropy_rate_bits_per_byte"])
  return None


def _fmt_int(v, interval=None, fmt="{:.4g}"):
  s = fmt.format(v)
  if interval:
    s += " [" + ", ".join(fmt.format(x) for x in interval) + "]"
  return s


class Report:
  """Collects markdown lines and JSON facts while the analysis runs."""

  def __init__(self):
    self.lines: list[str] = []
    self.facts: dict = {}

  def add(self, *lines):
    self.lines.extend(lines)


def _chinchilla_section(rep, N, D, L, args, floor_note):
  if len(L) < 8 or len(np.unique(N)) < 3 or len(np.unique(D)) < 2:
    rep.add("Chinchilla (approach 3): not fitted: needs >= 8 runs with >= 3 sizes and >= 2 token "
            f"counts (have {len(L)} runs, {len(np.unique(N))} sizes, {len(np.unique(D))} token counts).", "")
    return None, None
  law = fitlib.fit_chinchilla(N, D, L, grid=args.grid)
  samples = fitlib.bootstrap_chinchilla(N, D, L, law, args.bootstrap, seed=0) if args.bootstrap else None
  iv = fitlib.chinchilla_intervals(samples) if samples is not None and len(samples) else {}
  rep.facts["chinchilla"] = dict(law.to_dict(), intervals=iv)
  rep.add("### Chinchilla approach 3: L(N, D) = E + A/N^alpha + B/D^beta", "",
          f"Huber (delta 1e-3) on log residuals summed over {law.n_points} runs, L-BFGS-B from "
          f"{law.n_starts} starts ({law.n_converged} converged). Brackets: "
          f"{int(fitlib.INTERVAL_LEVEL * 100)}% bootstrap intervals over runs"
          + (f" ({len(samples)} resamples)." if samples is not None else " (none: --bootstrap 0)."), "",
          "| parameter | value |", "|---|---|")
  for k in ("E", "A", "B", "alpha", "beta", "a", "b"):
    rep.add(f"| {k} | {_fmt_int(getattr(law, k), iv.get(k))} |")
  rep.add("", f"Compute-optimal scaling: N_opt ~ C^{law.a:.3f}, D_opt ~ C^{law.b:.3f} "
          f"({'parameters' if law.a > law.b else 'tokens'} should grow faster with compute)."
          + floor_note(law.E, iv.get("E")), "")
  return law, samples


def _isoflop_section(rep, df, N, L, args):
  budgets = None
  if "budget" in df.columns:
    b = pd.to_numeric(df["budget"], errors="coerce").to_numpy(float)
    budgets = b if np.all(np.isfinite(b) & (b > 0)) else None
  C = df["flops"].to_numpy(float)
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      iso = fitlib.fit_isoflop(N, C, L, budgets=budgets, D=df["tokens"].to_numpy(float),
                               n_boot=args.bootstrap)
  except ValueError as e:
    reason = str(e).split(";")[0] if len(str(e)) > 300 else str(e)
    rep.add(f"IsoFLOP (approach 2): not fitted ({reason}). Runs sharing a FLOP budget need >= 3 "
            "sizes each: use an IsoFLOP ladder.", "")
    return None, None
  labels = budgets if budgets is not None else fitlib.snap_budgets(C)
  rep.facts["isoflop"] = iso.to_dict()
  rep.add("### IsoFLOP approach 2: parabola in log N per budget", "",
          "| budget C | N* | D* | loss at N* | minimum inside sampled sizes |", "|---|---|---|---|---|")
  for c, n, d, l, r in zip(iso.budgets, iso.n_opt, iso.d_opt, iso.loss_opt, iso.in_range):
    rep.add(f"| {c:.3g} | {n:.3g} | {d:.3g} | {l:.4f} | {'yes' if r else 'NO (extrapolated)'} |")
  rep.add("", f"N*(C) ~ C^{_fmt_int(iso.a, iso.a_interval, '{:.3f}')}, "
          f"D*(C) ~ C^{_fmt_int(iso.b, iso.b_interval, '{:.3f}')}.")
  for d in iso.dropped:
    rep.add(f"- budget {d['budget']:.3g} dropped: {d['reason']}")
  for w in caught:
    rep.add(f"- warning: {w.message}")
  rep.add("")
  return iso, labels


def _allocation_section(rep, law, samples, iso, frontier, fsamples, budgets):
  rep.add("## Compute-optimal allocation", "",
          "| budget C | N_opt (approach 3) | D_opt (approach 3) | loss (approach 3) | tokens/param "
          "| N* (approach 2) | D* (approach 2) | frontier L*(C) |", "|---|---|---|---|---|---|---|---|")
  preds = []
  for c in budgets:
    row = dict(budget=c)
    cells = [f"{c:.3g}"]
    if law is not None:
      p = fitlib.chinchilla_optimal_with_intervals(law, c, samples)
      row["approach3"] = p
      cells += [_fmt_int(p["N"], p.get("N_interval"), "{:.3g}"),
                _fmt_int(p["D"], p.get("D_interval"), "{:.3g}"),
                _fmt_int(p["loss"], p.get("loss_interval"), "{:.4f}"), f"{p['tokens_per_param']:.1f}"]
    else:
      cells += ["-"] * 4
    if iso is not None:
      n, d = iso.optimal(c)
      row["approach2"] = dict(N=float(n), D=float(d))
      cells += [f"{n:.3g}", f"{d:.3g}"]
    else:
      cells += ["-", "-"]
    if frontier is not None:
      p = fitlib.power_prediction(frontier, c, fsamples)
      row["frontier"] = p
      cells.append(_fmt_int(p["loss"], p.get("loss_interval"), "{:.4f}"))
    else:
      cells.append("-")
    preds.append(row)
    rep.add("| " + " | ".join(cells) + " |")
  rep.facts["allocation"] = preds
  rep.add("", "Budgets above the largest run are extrapolations; trust them only as far as the "
          "leave-one-rung-out errors below allow.", "")
  return preds


def _saturation_section(rep, N, D, L, law, samples, E_for_headroom, curves, spectra=None):
  rep.add("## Saturation", "")
  per_size = pd.DataFrame(dict(N=N, D=D, L=L)).sort_values("L").drop_duplicates("N").sort_values("N")
  rr = sat.rung_returns(per_size.N, per_size.L)
  # With a (N, D) law the floor at each rung is E + B/D^beta: the rung's finite token budget is
  # then not mistaken for saturation in N.
  floor = (law.E + law.B * per_size.D.to_numpy() ** -law.beta) if law is not None else E_for_headroom
  ex = sat.local_exponents(per_size.N, per_size.L, floor)
  trend = sat.exponent_trend(ex["exponent"])
  hr = sat.headroom(per_size.L.to_numpy(), E_for_headroom)
  facts = dict(rung_returns=[dict(x_lo=float(a), x_hi=float(b), per_doubling=float(c))
                             for a, b, c in zip(rr["x_lo"], rr["x_hi"], rr["per_doubling"])],
               local_exponents=[float(x) for x in ex["exponent"]], exponent_trend=trend,
               headroom=[float(x) for x in hr])
  if law is not None:
    big = per_size.iloc[-1]
    dr = sat.doubling_returns(law, big.N, big.D, samples)
    facts["doubling_returns"] = dr
    rep.add(f"- At the largest size (N = {big.N:.3g}, D = {big.D:.3g}) the fitted law says doubling N "
            f"lowers the loss by {_fmt_int(dr['per_doubling_N'], dr.get('per_doubling_N_interval'))} "
            f"and doubling D by {_fmt_int(dr['per_doubling_D'], dr.get('per_doubling_D_interval'))}: "
            f"{'parameters' if dr['per_doubling_N'] > dr['per_doubling_D'] else 'tokens'} are the better buy.")
  rep.add("- Loss drop per doubling of N between rungs (best run per size): "
          + ", ".join(f"{v:.4f}" for v in rr["per_doubling"]) + ".",
          ("- Local exponents -dlog(L-F)/dlog N (F = E + B/D^beta at each rung's D): " if law is not None
           else f"- Local exponents -dlog(L-E)/dlog N (E = {E_for_headroom:.4g}): ")
          + ", ".join(f"{v:.3f}" for v in ex["exponent"]) + f". {trend['verdict']}.",
          f"- Headroom (L-E)/L at the largest size: {hr[-1] * 100:.1f}% of the loss is still "
          "reducible by scale" + (" (close to the floor: scaling is nearly exhausted)." if hr[-1] < 0.05 else "."))
  fitter = None
  if law is not None and law.endpoints is not None:  # restart from the pooled fit's minima
    fitter = sat.chinchilla_fitter(starts=np.r_[fitlib.distinct_endpoints(law.endpoints, 8),
                                                fitlib.grid_starts(fitlib.COARSE_GRID, 2)[::9]])
  loo = sat.leave_one_rung_out(N, D, L, fitter)
  facts["leave_one_rung_out"] = loo
  ok = [r for r in loo if "mean_rel_error" in r]
  if ok:
    rep.add("- Leave-one-rung-out (fit without a size, predict it): " + ", ".join(
        f"N={r['rung']:.3g}: {r['mean_rel_error'] * 100:+.2f}%" for r in ok) + ". The largest "
        "size's error is the honest extrapolation error.")
  tb = sat.trend_break(N, L, (law.E + law.B * D ** -law.beta) if law is not None else E_for_headroom)
  facts["trend_break"] = tb
  rep.add(f"- Trend-break test: {tb['verdict']}.")
  if spectra:
    facts["head_spectrum"] = spectra
    rep.add("", "LM-head spectra (latest checkpoint of each point; tied embedding or unembed):", "")
    for name, spec in sorted(spectra.items()):
      rep.add(f"- {name} (d_model {spec['d_model']}, step {spec['step']}): {sat.head_verdict(spec)}")
  if curves:
    facts["plateau"] = {}
    for name, (t, l) in sorted(curves.items()):
      facts["plateau"][name] = sat.plateau(t, l)
    n_plat = sum(p["plateau"] for p in facts["plateau"].values())
    n_rise = sum(p["late_rise"] for p in facts["plateau"].values())
    n_imp = sum(p.get("improving", False) for p in facts["plateau"].values())
    rep.add("", f"Training curves (slope of loss vs log2 tokens over the last 20% of each run): "
            f"{n_imp} of {len(curves)} still improving, {n_plat} have plateaued, {n_rise} rise late, "
            f"the rest are inconclusive.", "")
    for name, p in facts["plateau"].items():
      rep.add(f"- {name}: {p['verdict']}")
  rep.add("")
  rep.facts["saturation"] = facts
  return per_size, rr, ex, hr, loo


def make_report(workdir, *, loss_col="val_loss", n_col="params_total", bootstrap=100, budgets=None,
                true_floor_bpb=None, grid="full", out_dir=None,
                head_spectrum=False) -> pathlib.Path:
  """Run every analysis on DIR/results.csv and write the report; returns the report.md path."""
  workdir = pathlib.Path(workdir)
  out = pathlib.Path(out_dir) if out_dir else workdir / "report"
  out.mkdir(parents=True, exist_ok=True)
  args = argparse.Namespace(bootstrap=bootstrap, grid=grid)
  df = read_results(workdir, n_col, loss_col)
  N, D, C, L = (df[c].to_numpy(float) for c in (n_col, "tokens", "flops", loss_col))
  curves = stitch_wsd_curves(read_curves(workdir), df)
  floor_bpb = true_floor_bpb if true_floor_bpb is not None else find_true_floor_bpb(workdir)
  rep = Report()
  rep.add(f"# Scaling report: {workdir}", "",
          f"{len(df)} runs, {len(np.unique(N))} sizes ({n_col} {N.min():.3g} .. {N.max():.3g}), "
          f"tokens {D.min():.3g} .. {D.max():.3g}, compute {C.min():.3g} .. {C.max():.3g} FLOPs. "
          f"Loss column: `{loss_col}`.", "", "## Fitted laws", "")
  rep.facts.update(n_runs=len(df), loss_col=loss_col, n_col=n_col)

  def floor_note(E, interval):
    if floor_bpb is None:
      return ""
    if loss_col.endswith("bpb"):
      return (f" True entropy floor of the synthetic corpus: {floor_bpb:.4f} bits/byte; "
              f"fitted E = {_fmt_int(E, interval)}.")
    return ""

  law, samples = _chinchilla_section(rep, N, D, L, args, floor_note)
  frontier = fsamples = None
  try:
    frontier = fitlib.fit_frontier(C, L)
    fsamples = fitlib.bootstrap_power_law(C, L, bootstrap, frontier=True) if bootstrap else None
    fiv = ({k: [float(v) for v in fitlib.percentile_interval(fsamples[:, j])]
            for j, k in enumerate(["E", "A", "gamma"])} if fsamples is not None and len(fsamples) else {})
    rep.facts["frontier"] = dict(frontier.to_dict(), gamma=frontier.alpha, intervals=fiv)
    rep.add("### Compute frontier: L*(C) = E + A C^-gamma (fitted to the Pareto-optimal runs)", "",
            f"E = {_fmt_int(frontier.E, fiv.get('E'))}, A = {_fmt_int(frontier.A, fiv.get('A'))}, "
            f"gamma = {_fmt_int(frontier.alpha, fiv.get('gamma'), '{:.4f}')}.", "")
  except (ValueError, RuntimeError) as e:
    rep.add(f"Compute frontier: not fitted: {e}", "")
  per_size = pd.DataFrame(dict(N=N, L=L)).sort_values("L").drop_duplicates("N")
  try:
    lnf = fitlib.fit_power_law(per_size.N, per_size.L)
    rep.facts["size_law"] = lnf.to_dict()
    rep.add("### L(N) = E + A N^-alpha (best run per size)", "",
            f"E = {lnf.E:.4g}, A = {lnf.A:.4g}, alpha = {lnf.alpha:.4f}.", "")
  except (ValueError, RuntimeError) as e:
    rep.add(f"L(N): not fitted: {e}", "")
  iso, labels = _isoflop_section(rep, df, N, L, args)
  if floor_bpb is not None:
    rep.facts["true_floor_bpb"] = floor_bpb
    note = f"True entropy floor of the synthetic corpus: **{floor_bpb:.4f} bits/byte**."
    if "val_bpb" in df.columns and len(df) >= 6:
      bpb = df["val_bpb"].to_numpy(float)
      try:
        bl = fitlib.fit_chinchilla(N, D, bpb, grid="coarse") if law is not None else None
        e_bpb = bl.E if bl else fitlib.fit_power_law(per_size.N, df.loc[per_size.index, "val_bpb"]).E
        rep.facts["fitted_E_bpb"] = e_bpb
        note += (f" Fitted E on val_bpb: **{e_bpb:.4f} bits/byte** "
                 f"({(e_bpb - floor_bpb) / floor_bpb * 100:+.1f}% from the floor).")
      except (ValueError, RuntimeError) as e:
        note += f" (E on val_bpb not fitted: {e})"
    rep.add("### Entropy floor", "", note, "")
  top = float(C.max())
  budgets = budgets or [top, 10 * top, 100 * top]
  _allocation_section(rep, law, samples, iso, frontier, fsamples, budgets)
  E_sat = law.E if law is not None else (frontier.E if frontier is not None else 0.0)
  spectra = read_head_spectra(workdir, df) if head_spectrum else {}
  per_size_s, rr, ex, hr, loo = _saturation_section(rep, N, D, L, law, samples, E_sat, curves,
                                                    spectra)

  figs = []
  figs += plots.save(plots.loss_vs_compute(C, L, N, frontier, floor=None,
                                           predictions=[dict(p["frontier"], budget=p["budget"]) for p in rep.facts["allocation"]
                                                        if "frontier" in p]), out / "loss_vs_compute")
  if iso is not None:
    figs += plots.save(plots.isoflop_curves(N, L, labels, iso), out / "isoflop")
  if law is not None:
    figs += plots.save(plots.residuals(N, D, L, law), out / "residuals")
  figs += plots.save(plots.saturation_panel(rr, ex, hr, per_size_s.N.to_numpy(), loo), out / "saturation")
  if curves:
    figs += plots.save(plots.training_curves(curves), out / "training_curves")
  rep.add("## Plots", "")
  rep.add(*[f"![{p.stem}]({p.name})" for p in figs if p.suffix == ".png"])
  md = out / "report.md"
  md.write_text("\n".join(rep.lines) + "\n")
  (out / "report.json").write_text(json.dumps(rep.facts, indent=2, default=_jsonable) + "\n")
  return md


def _jsonable(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.bool_):
    return bool(x)
  return str(x)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m eval.report", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--loss-col", default="val_loss")
  p.add_argument("--n-col", default="params_total", help="params_total or params_non_embedding")
  p.add_argument("--bootstrap", type=int, default=100)
  p.add_argument("--budget", type=float, action="append", default=None,
                 help="FLOP budget(s) for the allocation table (default: largest run x1, x10, x100)")
  p.add_argument("--true-floor-bpb", type=float, default=None)
  p.add_argument("--grid", default="full", choices=["full", "coarse"])
  p.add_argument("--out", default=None, help="output folder (default DIR/report)")
  p.add_argument("--no-head-spectrum", action="store_true",
                 help="skip loading each point's checkpoint for the LM-head spectrum")
  a = p.parse_args(argv)
  md = make_report(a.workdir, loss_col=a.loss_col, n_col=a.n_col, bootstrap=a.bootstrap,
                   budgets=a.budget, true_floor_bpb=a.true_floor_bpb, grid=a.grid, out_dir=a.out,
                   head_spectrum=not a.no_head_spectrum)
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main())
