"""ladder.recipe (sizes and hyperparameters from the width), ladder.seeds, the lr_sweep scheme
and eval.lr_transfer on top of it."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from eval import report
from configs import default
from train import trainer

from configs import ladder as ladder_cfg
from eval import fit as fitlib
from eval import ladder
from eval import lr_transfer
from model import parametrization as par
from model.config import ModelConfig


def _recipe_config(scheme="grid", steps=(30, 150), **recipe):
  c = ladder_cfg.get_config("tiny_recipe")
  c.ladder.scheme = scheme
  c.ladder.steps = steps
  c.ladder.seeds = 1
  c.ladder.recipe.update(
      dict(
          widths=(32, 48, 64, 128),
          aspect_ratio=32,
          head_dim=16,
          base_width=32,
          base_lr=0.004,
          eps=1e-8,
          b2=0.98,
          warmup_fraction=0.05,
          **recipe,
      )
  )
  return c


def _by_name(points):
  return {p.name: p for p in points}


# Hand-computed: layers = round(width / 32) half up, heads = width / 16; sp lr = 0.004 * 32 /
# width; warmup = round(0.05 * steps) half up (30 -> 1.5 -> 2, 150 -> 7.5 -> 8).
SHAPES = {32: ("d32l1", 1, 2), 48: ("d48l2", 2, 3), 64: ("d64l2", 2, 4), 128: ("d128l4", 4, 8)}
SP_LR = {32: 0.004, 48: 0.004 * 32 / 48, 64: 0.002, 128: 0.001}
WARMUP = {30: 2, 150: 8}


def test_sp_recipe_values_by_hand():
  pts = _by_name(ladder.expand(_recipe_config(parametrization="sp")))
  assert len(pts) == 8
  for width, (size, layers, heads) in SHAPES.items():
    for steps, warmup in WARMUP.items():
      c = pts[f"{size}_s{steps}"].config
      assert (c.model.d_model, c.model.num_layers, c.model.num_heads) == (width, layers, heads)
      assert c.model.head_dim == 16 and c.model.parametrization == "sp"
      assert c.train.learning_rate == pytest.approx(SP_LR[width], rel=1e-12)
      assert (c.train.eps, c.train.b2, c.train.warmup_steps) == (1e-8, 0.98, warmup)
      assert (c.train.schedule, c.train.cooldown, c.train.decay_fraction) == ("wsd", "1-sqrt", 0.2)


def test_mup_and_completep_recipes_keep_the_base_and_scale_per_group():
  pts = _by_name(ladder.expand(_recipe_config(parametrization="mup")))
  c = pts["d128l4_s150"].config
  assert (c.model.parametrization, c.model.base_width, c.model.base_head_dim) == ("mup", 32, 16)
  assert (c.train.learning_rate, c.train.eps, c.train.b2) == (0.004, 1e-8, 0.98)
  row = ladder.hyperparameter_columns(pts["d128l4_s150"])
  # width multiplier 128 / 32 = 4: hidden matrices get lr / 4 and eps / 4
  assert row["lr_hidden"] == pytest.approx(0.001) and row["eps_hidden"] == pytest.approx(2.5e-9)
  assert (row["lr"], row["warmup_steps"], row["num_heads"], row["cooldown"]) == (
      0.004,
      8,
      8,
      "1-sqrt",
  )
  # head_dim is fixed by the recipe, so muP's attention scale stays 1/sqrt(16) at every width
  assert par.attention_scale(ModelConfig.from_config(c.model)) == pytest.approx(0.25)
  cp = _by_name(ladder.expand(_recipe_config(parametrization="completep")))["d128l4_s30"]
  assert (cp.config.model.base_width, cp.config.model.base_depth) == (32, 1)
  rules = par.group_rules(ModelConfig.from_config(cp.config.model))
  # m_d = 4, m_L = 4 / 1 with alpha 1: hidden lr x 1/4 x 4^0, eps x 1/4 x 1/4
  assert rules["hidden"].lr == pytest.approx(0.25) and rules["hidden"].eps == pytest.approx(1 / 16)


def test_wsd_recipe_shares_the_smallest_budgets_warmup():
  pts = ladder.expand(_recipe_config(scheme="wsd", parametrization="mup"))
  assert {p.config.train.warmup_steps for p in pts} == {WARMUP[30]}
  cool = [p for p in pts if p.kind == "cooldown"]
  assert {p.config.train.cooldown for p in cool} == {"1-sqrt"}
  assert {p.config.train.schedule for p in pts} == {"constant", "wsd"}


def test_without_a_recipe_the_ladder_is_unchanged():
  a = ladder.expand(ladder_cfg.get_config("tiny"))
  c = ladder_cfg.get_config("tiny")
  c.ladder.recipe.parametrization = ""
  assert [p.name for p in a] == ["d16l1_constant", "d16l1_s10", "d16l1_s20"] + [
      "d32l1_constant",
      "d32l1_s10",
      "d32l1_s20",
  ]
  assert all(p.config.train.learning_rate == 3e-3 and p.config.seed == 0 for p in a)
  assert all(p.config.train.cooldown == "linear" for p in a)


@pytest.mark.parametrize(
    "overrides,field",
    [
        (dict(recipe=dict(base_width=0)), "ladder.recipe.base_width"),
        (dict(recipe=dict(parametrization="mupp")), "ladder.recipe.parametrization"),
        (dict(recipe=dict(head_dim=12)), "ladder.recipe.head_dim"),
        (dict(recipe=dict(cooldown="cosine")), "ladder.recipe.cooldown"),
        (dict(recipe=dict(b2=1.0)), "ladder.recipe.b2"),
        (dict(seeds=0), "ladder.seeds"),
        (
            dict(
                model=dict(parametrization="mup"),
                recipe=dict(parametrization=""),
                ladder=dict(sizes=(("d16l1", 16, 1, 2),)),
            ),
            "base_width",
        ),
        (
            dict(
                model=dict(completep_alpha=1.5),
                recipe=dict(parametrization="completep"),
            ),
            "model.completep_alpha",
        ),
        (dict(train=dict(optimizer="adafactor")), "train.optimizer: adafactor"),
        (dict(train=dict(optimizer="muon", b1=1.0)), "train.b1: 1.0"),
    ],
)
def test_bad_recipe_and_ladder_settings_name_the_field_before_training(overrides, field):
  c = ladder_cfg.get_config("tiny_recipe")
  c.ladder.recipe.update(overrides.pop("recipe", {}))
  c.ladder.seeds = overrides.pop("seeds", 1)
  for section, values in overrides.items():
    c[section].update(values)
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    ladder.expand(c)


def test_ladder_cli_reports_a_recipe_without_base_width_in_one_line(tmp_path):
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "eval.ladder",
          "--config",
          "configs/ladder.py:tiny_recipe",
          "--config.ladder.recipe.base_width=0",
          "--workdir",
          str(tmp_path),
      ],
      capture_output=True,
      text=True,
      timeout=300,
  )
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert lines[-1].startswith("error: ladder.recipe.base_width=0"), proc.stderr[-2000:]


# ----------------------------------------------------------------------------- seeds


def test_seed_replicas_branch_from_their_own_constant_run():
  c = ladder_cfg.get_config("tiny_recipe")
  c.seed = 7
  pts = ladder.expand(c)
  assert len(pts) == 12 and [p.config.seed for p in pts] == [7] * 6 + [8] * 6
  by = _by_name(pts)
  assert by["d32l2_s20_seed8"].branch_from == "d32l2_constant_seed8"
  assert by["d32l2_s20"].branch_from == "d32l2_constant"
  assert by["d32l2_s20_seed8"].meta["point"] == by["d32l2_s20"].meta["point"] == "d32l2_s20"


def _seed_table(rng):
  """A Chinchilla-like grid, 3 seeds per point with noise that differs by seed."""
  rows = []
  for N in (1e5, 3e5, 1e6, 3e6):
    for D in (1e7, 3e7, 1e8):
      loss = 1.7 + 400 / N**0.34 + 410 / D**0.28
      for seed in range(3):
        rows.append(
            dict(
                name=f"n{N:g}_d{D:g}" + (f"_seed{seed}" if seed else ""),
                point=f"n{N:g}_d{D:g}",
                seed=seed,
                params_total=N,
                tokens=D,
                flops=6 * N * D,
                val_loss=loss * (1 + 0.01 * rng.standard_normal()),
                val_loss_se=0.01,
            )
        )
  return pd.DataFrame(rows)


def test_fit_averages_a_points_seeds(tmp_path):
  df = _seed_table(np.random.default_rng(0))
  avg = fitlib.average_seeds(df)
  assert len(df) == 36 and len(avg) == 12 and set(avg["seeds"]) == {3}
  first = df[df["point"] == df["point"][0]]
  assert avg["val_loss"][0] == pytest.approx(first["val_loss"].mean())
  assert avg["seed_loss_sd"][0] == pytest.approx(first["val_loss"].std(ddof=1))
  assert avg["val_loss_se"][0] == pytest.approx(0.01 / math.sqrt(3))
  path = tmp_path / "results.csv"
  df.to_csv(path, index=False)
  table = fitlib.load_table(str(path), ["params_total", "tokens", "val_loss"], loss_col="val_loss")
  pd.testing.assert_frame_equal(table[["point", "val_loss"]], avg[["point", "val_loss"]])
  law = fitlib.fit_chinchilla(
      *(table[c].to_numpy(float) for c in ("params_total", "tokens", "val_loss")), grid="coarse"
  )
  assert law.alpha == pytest.approx(0.34, abs=0.1) and law.beta == pytest.approx(0.28, abs=0.1)
  one = df.drop(columns="point")  # without `point` the rows stay separate
  assert len(fitlib.average_seeds(one)) == 36


@pytest.mark.slow
def test_seeds_train_distinct_rows_that_the_report_averages(tmp_path):

  c = ladder_cfg.get_config("tiny_recipe")
  c.ladder.update(scheme="grid", steps=(4,))
  c.ladder.recipe.widths = (16,)
  rows = ladder.run_ladder(c, tmp_path)
  assert [r["name"] for r in rows] == ["d16l1_s4", "d16l1_s4_seed1"]
  assert [r["seed"] for r in rows] == [0, 1] and {r["point"] for r in rows} == {"d16l1_s4"}
  assert rows[0]["val_loss"] != rows[1]["val_loss"]  # another init and data order
  with open(tmp_path / "results.csv", newline="") as f:
    table = list(csv.DictReader(f))
  for col in ("lr", "warmup_steps", "cooldown", "b2", "eps", "num_heads", "parametrization"):
    assert all(r[col] != "" for r in table), col
  assert table[0]["cooldown"] == "1-sqrt" and table[0]["parametrization"] == "mup"
  df = report.read_results(tmp_path, "params_total", "val_loss")
  assert len(df) == 1 and df["seeds"][0] == 2
  assert df["val_loss"][0] == pytest.approx((rows[0]["val_loss"] + rows[1]["val_loss"]) / 2)


# ----------------------------------------------------------------------------- lr_sweep


def test_lr_sweep_scheme_expands_the_grid():
  c = ladder_cfg.get_config("tiny_lr_sweep")
  pts = ladder.expand(c)
  assert len(pts) == 2 * 2 * 2  # sizes x parametrizations x learning rates
  by = _by_name(pts)
  p = by["d32l1_mup_s6_lr2^-5"]
  assert p.config.train.learning_rate == 2.0**-5 and p.meta["lr_exponent"] == -5
  assert (p.config.model.parametrization, p.config.model.base_width) == ("mup", 16)
  assert by["d32l1_sp_s6_lr2^-8"].config.model.parametrization == "sp"
  row = ladder.hyperparameter_columns(p)
  assert (row["lr_exponent"], row["lr"], row["lr_hidden"]) == (-5, 2.0**-5, 2.0**-6)
  c.ladder.lr_exponents = ()
  with pytest.raises(ValueError, match="ladder.lr_exponents"):
    ladder.expand(c)


def test_lr_transfer_builds_the_same_lr_sweep_ladder():

  c = lr_transfer.ladder_config(default.get_config("size=tiny"), (32, 64), (-9, -8), ("sp", "mup"))
  pts = _by_name(ladder.expand(c))
  assert len(pts) == 8
  p = pts["w64_mup_s40_lr2^-8"].config
  assert p.train.learning_rate == 2.0**-8
  assert (p.model.d_model, p.model.head_dim, p.model.mlp_dim, p.model.base_width) == (
      64,
      32,
      128,
      32,
  )


def test_a_diverged_sweep_point_is_a_row_with_nan_loss(tmp_path, monkeypatch):

  def diverge(config, workdir, hooks=None):
    raise trainer.NonFiniteError("10 consecutive non-finite steps")

  monkeypatch.setattr(trainer, "train_and_evaluate", diverge)
  point = ladder.expand(ladder_cfg.get_config("tiny_lr_sweep"))[0]
  row = ladder.run_point(point, tmp_path, "lr_sweep", log=lambda *_: None)
  assert math.isnan(row["val_loss"]) and row["lr_exponent"] == -8
  with pytest.raises(trainer.NonFiniteError):
    ladder.run_point(point, tmp_path, "grid", log=lambda *_: None)


@pytest.mark.slow
def test_lr_sweep_ladder_trains_the_grid_and_lr_transfer_reads_it(tmp_path):
  c = ladder_cfg.get_config("tiny_lr_sweep")
  c.ladder.update(steps=(3,), parametrizations=("mup",))
  c.eval.batches = 1
  rows = ladder.run_ladder(c, tmp_path)
  assert sorted((r["d_model"], r["lr_exponent"]) for r in rows) == [
      (16, -8),
      (16, -5),
      (32, -8),
      (32, -5),
  ]
  assert len({r["val_loss"] for r in rows}) == 4
  out = tmp_path / "lr.json"
  assert lr_transfer.main(["--workdir", str(tmp_path), "--json", str(out)]) == 0
  best = json.loads(out.read_text())["best"]["mup"]
  losses = {(r["d_model"], r["lr_exponent"]): r["val_loss"] for r in rows}
  for width in (16, 32):
    want = min((-8, -5), key=lambda k: losses[(width, k)])
    assert best["best_lr_exponent"][str(width)] == want


def _sweep_table(rng):
  """An lr_sweep results.csv: 3 sizes x 2 budgets x 3 learning rates x 2 seeds; the best
  exponent is -7 at width 32 and -8 at the wider sizes."""
  rows = []
  for width, N, best_k in ((32, 1e5, -7), (64, 4e5, -8), (128, 1.6e6, -8)):
    for steps, D in ((100, 1e7), (300, 3e7)):
      for k in (-9, -8, -7):
        for seed in (0, 1):
          point = f"w{width}_mup_s{steps}_lr2^{k}"
          loss = 1.7 + 400 / N**0.34 + 410 / D**0.28 + 0.05 * (k - best_k) ** 2
          rows.append(
              dict(
                  name=point + (f"_seed{seed}" if seed else ""),
                  point=point,
                  size=f"w{width}",
                  steps=steps,
                  seed=seed,
                  d_model=width,
                  parametrization="mup",
                  lr_exponent=k,
                  lr=2.0**k,
                  params_total=N,
                  tokens=D,
                  flops=6 * N * D,
                  train_loss=loss,
                  val_loss=loss + 0.002 * rng.standard_normal(),
              )
          )
  return pd.DataFrame(rows)


def test_report_fits_the_best_learning_rate_and_shows_the_transfer(tmp_path):

  df = _sweep_table(np.random.default_rng(1))
  df.to_csv(tmp_path / "results.csv", index=False)
  kept = report.read_results(tmp_path, "params_total", "val_loss")
  assert len(kept) == 6 and set(kept["lr_choices"]) == {3} and set(kept["seeds"]) == {2}
  assert sorted(zip(kept["d_model"], kept["lr_exponent"])) == [
      (32, -7),
      (32, -7),
      (64, -8),
      (64, -8),
      (128, -8),
      (128, -8),
  ]
  text = report.make_report(tmp_path, bootstrap=0, grid="coarse").read_text()
  section = text[text.index("## Learning-rate transfer") :]
  assert "| mup | -7 | -8 | -8 | 1 |" in section
  assert "best of its 3 grid learning rates" in text and "2 per point, averaged" in text


def test_lr_transfer_without_a_sweep_is_one_error_line(tmp_path):
  out = str(tmp_path / "lr.json")
  proc = subprocess.run(
      [sys.executable, "-m", "eval.lr_transfer", "--workdir", str(tmp_path), "--json", out],
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "not found" in proc.stderr
  with pytest.raises(ValueError, match="--widths and --lr-exponents"):
    lr_transfer.main(
        ["--config", "configs/default.py:size=tiny", "--workdir", str(tmp_path), "--json", out]
    )
  pd.DataFrame([dict(name="a", lr_exponent="")]).to_csv(tmp_path / "results.csv", index=False)
  with pytest.raises(ValueError, match="no lr_sweep rows"):
    lr_transfer.sweep_rows(tmp_path)
