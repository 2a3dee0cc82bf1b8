"""Parameter counts vs published figures, the FLOP formula vs a hand count (model/summary.py);
memory per device and the CLI, under both its names (train/accounting.py)."""

import importlib
import json
import os
import subprocess
import sys

import pytest

from model import summary
from model.config import ModelConfig
from train import accounting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (preset, arg, published params, relative tolerance)
PUBLISHED = [
    ("gpt2", "size=124M", 124_439_808, 0.005),
    ("gpt2", "size=355M", 354_823_168, 0.005),
    ("gpt2", "size=774M", 774_030_080, 0.005),
    ("gpt2", "size=1558M", 1_557_611_200, 0.005),
    ("gpt1", "", 117e6, 0.02),
    ("gpt3", "size=125M", 125e6, 0.02),
    ("gpt3", "size=350M", 350e6, 0.02),
    ("gpt3", "size=760M", 760e6, 0.02),
    ("gpt3", "size=1.3B", 1.3e9, 0.02),
    ("gpt3", "size=2.7B", 2.7e9, 0.02),
    ("gpt3", "size=6.7B", 6.7e9, 0.02),
    ("gpt3", "size=13B", 13e9, 0.02),
    ("gpt3", "size=175B", 175e9, 0.02),
    ("bert", "size=base", 110e6, 0.02),
    ("bert", "size=large", 340e6, 0.02),
    ("llama", "size=1B", 1_100_048_384, 0.005),  # TinyLlama-1.1B
    ("llama", "size=7B", 6_738_415_616, 0.005),  # Llama-2-7B
]


def model_cfg(preset, arg=""):
  return ModelConfig.from_config(importlib.import_module(f"configs.{preset}").get_config(arg))


@pytest.mark.parametrize("preset,arg,published,tol", PUBLISHED)
def test_param_counts_match_published(preset, arg, published, tol):
  counts = summary.param_counts(model_cfg(preset, arg))
  assert abs(counts["total"] / published - 1) <= tol, counts["total"]
  assert sum(counts["per_module"].values()) == counts["total"]


def test_gpt2_small_exact_breakdown():
  c = summary.param_counts(model_cfg("gpt2", "size=124M"))
  assert c["total"] == 124_439_808
  assert c["per_module"]["embed"] == 50257 * 768
  assert c["per_module"]["pos_embed"] == 1024 * 768
  assert c["non_embedding"] == 124_439_808 - 50257 * 768 - 1024 * 768
  assert c["per_module"]["layers/attn/query"] == 12 * (768 * 768 + 768)


def test_flops_formula_matches_hand_count():
  cfg = ModelConfig(
      vocab_size=100,
      d_model=64,
      num_layers=3,
      num_heads=8,
      num_kv_heads=2,
      head_dim=16,
      mlp_dim=256,
      mlp="swiglu",
      tie_embeddings=False,
  )
  seq = 32
  # Hand count, forward, per token, multiply-adds x 2:
  q = 64 * 8 * 16  # 8192
  kv = 2 * 64 * 2 * 16  # 4096 (2 kv heads, k and v)
  out = 8 * 16 * 64  # 8192
  scores = 2 * 8 * 16 * 32 / 2  # qk^T and pv over on average half of 32 keys: 4096
  mlp = 3 * 64 * 256  # 49152
  per_layer = 2 * (q + kv + out + scores + mlp)  # 147456
  head = 2 * 64 * 100  # 12800
  forward = 3 * per_layer + head  # 455168
  assert summary.flops_per_token_train(cfg, seq) == 3 * forward == 1_365_504
  bidir = ModelConfig(**{**cfg.to_dict(), "attention_mask": "bidirectional"})
  assert summary.flops_per_token_train(bidir, seq) - 3 * forward == 3 * 3 * 2 * scores
  s = accounting.summarize(cfg, seq_len=seq, batch_size=4)
  assert s["flops_per_step_train"] == 3 * forward * seq * 4


def test_large_model_flops_close_to_6n():
  cfg = model_cfg("gpt3", "size=175B")
  n = summary.param_counts(cfg)["non_embedding"]
  ratio = summary.flops_per_token_train(cfg, 2048) / (6 * n)
  assert 1.0 < ratio < 1.05  # attention + unembedding add a few percent


def test_memory_per_device_scales_with_mesh_and_remat():
  cfg = model_cfg("gpt2", "size=124M")
  n = summary.param_counts(cfg)["total"]
  one = accounting.memory_per_device(cfg, batch_size=8, seq_len=1024, remat="none")
  assert one["params_bytes"] == 4 * n and one["optimizer_bytes"] == 8 * n
  fsdp = accounting.memory_per_device(
      cfg, batch_size=8, seq_len=1024, mesh_shape=(1, 4, 1), remat="none"
  )
  assert fsdp["params_bytes"] == one["params_bytes"] / 4
  assert fsdp["activations_bytes"] == pytest.approx(one["activations_bytes"] / 4)
  full = accounting.memory_per_device(cfg, batch_size=8, seq_len=1024, remat="full")
  dots = accounting.memory_per_device(cfg, batch_size=8, seq_len=1024, remat="dots_saveable")
  assert full["activations_bytes"] < dots["activations_bytes"] < one["activations_bytes"]
  assert one["total_bytes"] == sum(v for k, v in one.items() if k != "total_bytes")
  ada = accounting.memory_per_device(cfg, batch_size=8, seq_len=1024, optimizer="adafactor")
  assert ada["optimizer_bytes"] < one["optimizer_bytes"] / 50
  with pytest.raises(ValueError, match="mesh_shape"):
    accounting.memory_per_device(cfg, batch_size=8, seq_len=1024, mesh_shape=(-1, 1, 1))


@pytest.mark.parametrize("module", ["model.summary", "train.accounting"])
def test_cli_json(tmp_path, module):
  out = tmp_path / "s.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          module,
          "--config",
          "configs/gpt3.py:size=175B",
          "--json",
          str(out),
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  assert "non-embedding" in proc.stdout and "layers/mlp/wi" in proc.stdout
  s = json.loads(out.read_text())
  assert abs(s["params_total"] / 175e9 - 1) < 0.02
  assert s["params_non_embedding"] < s["params_total"]
  assert s["flops_per_token_train"] > 6 * s["params_non_embedding"]
  assert s["flops_per_step_train"] == s["flops_per_token_train"] * 2048 * 1536
  assert s["memory_per_device"]["total_bytes"] > 0


def test_model_package_imports_nothing_from_train():
  """model/ is a model: loading its summary must not pull in the trainer's modules."""
  code = (
      "import sys, model.summary, model.transformer; "
      "print(sorted(m for m in sys.modules if m == 'train' or m.startswith('train.')))"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "[]"
