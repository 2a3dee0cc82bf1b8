"""Encoder-decoder (model.arch=encoder_decoder): the decoder stays causal while cross-attention
sees the whole source, bad sources are rejected, every stack option still works, and the
presets have the paper's parameter counts."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import transformer as transformer_preset
from model import summary
from model.config import ModelConfig
from model.transformer import Transformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(
    arch="encoder_decoder",
    vocab_size=40,
    d_model=32,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=4,
    num_kv_heads=4,
    head_dim=8,
    mlp_dim=64,
    max_seq_len=32,
    pos_encoding="sinusoidal",
    norm_position="post",
    attention_impl="xla",
    init_std=0.2,  # large enough that every dependence shows well above float32 noise
)


def _model(**overrides):
  cfg = ModelConfig(**{**SMALL, **overrides})
  cfg.validate()
  model = Transformer(cfg)
  src, tgt = _tokens(0, (1, 6)), _tokens(1, (1, 6))
  params = model.init(jax.random.PRNGKey(0), tgt, src_tokens_BxS=src)["params"]
  return model, params, src, tgt


def _tokens(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).integers(4, 40, shape), jnp.int32)


def _bump(x_1xL, i):
  return x_1xL.at[0, i].set((x_1xL[0, i] + 1) % 40)


VARIANTS = [
    {},
    dict(
        norm_position="pre",
        pos_encoding="rope",
        num_kv_heads=2,  # GQA
        norm="rmsnorm",
        mlp="swiglu",
        scan_layers=False,
        remat="full",
        share_embeddings=False,
        tie_embeddings=False,
        num_decoder_layers=3,
    ),
]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_decoder_is_causal_and_reads_the_whole_source(overrides):
  """One batch: row 0 the original pair, rows 1..T-1 target token t+1 changed, then rows with
  source token s changed (one jitted forward)."""
  model, params, src, tgt = _model(**overrides)
  t_len, s_len = tgt.shape[1], src.shape[1]
  tgts = [tgt] + [_bump(tgt, t + 1) for t in range(t_len - 1)] + [tgt] * s_len
  srcs = [src] * t_len + [_bump(src, s) for s in range(s_len)]
  run = jax.jit(lambda p, s, t: model.apply({"params": p}, t, src_tokens_BxS=s))
  out = np.asarray(run(params, jnp.concatenate(srcs), jnp.concatenate(tgts)))
  base = out[0]
  for t in range(t_len - 1):
    np.testing.assert_allclose(out[1 + t, : t + 1], base[: t + 1], atol=1e-5)
    assert np.abs(out[1 + t, t + 1] - base[t + 1]).max() > 1e-3
  for s in range(s_len):
    # every target position sees every source position
    assert (np.abs(out[t_len + s] - base).max(axis=-1) > 1e-3).all(), s


def test_source_padding_is_invisible():
  model, params, src, tgt = _model(pos_encoding="learned")
  seg = jnp.asarray([[1] * 4 + [0] * 2] * 2, jnp.int32)
  both = jnp.concatenate([src, src.at[:, 4:].set(3)])
  out = model.apply(
      {"params": params}, jnp.concatenate([tgt, tgt]), src_tokens_BxS=both, src_segment_ids_BxS=seg
  )
  np.testing.assert_allclose(out[0], out[1], atol=1e-5)


def test_empty_or_missing_source_is_rejected():
  model, params, _, tgt = _model()
  with pytest.raises(ValueError, match="empty source"):
    model.apply({"params": params}, tgt, src_tokens_BxS=jnp.zeros((1, 0), jnp.int32))
  with pytest.raises(ValueError, match="needs src_tokens_BxS"):
    model.apply({"params": params}, tgt)


def test_bad_arch_settings_name_the_field():
  with pytest.raises(ValueError, match="model.arch"):
    ModelConfig(arch="seq2seq").validate()
  with pytest.raises(ValueError, match="model.attention_mask"):
    ModelConfig(**{**SMALL, "attention_mask": "bidirectional"}).validate()
  with pytest.raises(ValueError, match="model.mlm_head"):
    ModelConfig(**{**SMALL, "mlm_head": True}).validate()


def test_arch_encoder_is_bidirectional():
  cfg = ModelConfig(arch="encoder", vocab_size=40, d_model=32, num_heads=4, head_dim=8)
  model = Transformer(cfg)
  tok = _tokens(0, (1, 6))
  params = model.init(jax.random.PRNGKey(0), tok)["params"]
  base = model.apply({"params": params}, tok)
  out = model.apply({"params": params}, tok.at[:, 5].set(7))
  assert np.abs(np.asarray(out - base))[:, 0].max() > 1e-5  # the first token sees the last


def test_separate_embeddings_add_a_source_table():
  shared = summary.param_counts(ModelConfig(**SMALL))
  separate = summary.param_counts(ModelConfig(**{**SMALL, "share_embeddings": False}))
  assert separate["total"] - shared["total"] == 40 * 32
  assert separate["non_embedding"] == shared["non_embedding"]


def test_preset_param_counts_match_the_paper(tmp_path):
  out = tmp_path / "base.json"
  subprocess.run(
      [sys.executable, "-m", "model.summary", "--config", "configs/transformer.py:size=base"]
      + ["--json", str(out)],
      cwd=REPO,
      check=True,
      capture_output=True,
      env={**os.environ, "PYTHONPATH": REPO},
  )
  assert abs(json.loads(out.read_text())["params_total"] / 65e6 - 1) <= 0.04
  big = ModelConfig.from_config(transformer_preset.get_config("size=big"))
  assert abs(summary.param_counts(big)["total"] / 213e6 - 1) <= 0.04
  tiny = ModelConfig.from_config(transformer_preset.get_config("size=tiny"))
  assert (tiny.num_layers, tiny.decoder_layers, tiny.d_model, tiny.mlp_dim, tiny.num_heads) == (
      4,
      4,
      128,
      256,
      4,
  )


def test_packed_pairs_equal_each_pair_alone():
  """Training rows pack pairs: target segment k reads only source segment k, and each
  segment's positions restart, so a packed row gives each pair's own logits."""
  model, params, _, _ = _model(pos_encoding="learned")
  src_a, src_b, tgt_a, tgt_b = (
      _tokens(5, (1, 3)),
      _tokens(6, (1, 4)),
      _tokens(7, (1, 2)),
      _tokens(8, (1, 4)),
  )
  seg = lambda a, b: jnp.asarray([[1] * a + [2] * b], jnp.int32)
  pos = lambda a, b: jnp.asarray([list(range(a)) + list(range(b))], jnp.int32)
  packed = model.apply(
      {"params": params},
      jnp.concatenate([tgt_a, tgt_b], 1),
      positions_BxL=pos(2, 4),
      segment_ids_BxL=seg(2, 4),
      src_tokens_BxS=jnp.concatenate([src_a, src_b], 1),
      src_positions_BxS=pos(3, 4),
      src_segment_ids_BxS=seg(3, 4),
  )
  alone_a = model.apply({"params": params}, tgt_a, src_tokens_BxS=src_a)
  alone_b = model.apply({"params": params}, tgt_b, src_tokens_BxS=src_b)
  np.testing.assert_allclose(packed[:, :2], alone_a, atol=1e-4)
  np.testing.assert_allclose(packed[:, 2:], alone_b, atol=1e-4)


def test_encoder_decoder_flops_add_encoder_decoder_and_cross_attention():
  cfg = ModelConfig(**{**SMALL, "num_decoder_layers": 3})
  d, n, h, m, v, length = 32, 4, 8, 64, 40, 10
  layer = 2 * d * h * 3 * n + 2 * n * h * d + 2 * d * m * 2  # qkv, out, mlp (MHA, gelu)
  enc = 2 * (layer + 4 * n * h * length)  # bidirectional scores
  dec = 3 * (layer + 4 * n * h * length * 0.5)  # causal scores
  cross = 3 * (2 * d * h * 3 * n + 2 * n * h * d + 4 * n * h * length)
  total = sum(summary.flops_per_token_forward(cfg, length).values())
  assert total == pytest.approx(enc + dec + cross + 2 * d * v)
