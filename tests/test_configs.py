"""Presets load and validate at config time; bad model settings fail with clear messages."""

import importlib

import pytest

from configs import base
from model.config import ModelConfig

PRESETS = {
    "gpt1": [""],
    "gpt2": ["size=124M", "size=355M", "size=774M", "size=1558M"],
    "gpt3": [
        "size=125M",
        "size=350M",
        "size=760M",
        "size=1.3B",
        "size=2.7B",
        "size=6.7B",
        "size=13B",
        "size=175B",
    ],
    "bert": ["size=base", "size=large"],
    "llama": ["size=tiny", "size=small", "size=1B", "size=7B"],
    "mixtral": ["size=tiny", "size=8x7B"],
    "transformer": ["size=base", "size=big", "size=tiny", "size=tiny,arch=decoder"],
}


def get(preset, arg=""):
  return importlib.import_module(f"configs.{preset}").get_config(arg)


@pytest.mark.parametrize("preset,arg", [(p, a) for p, args in PRESETS.items() for a in args])
def test_presets_build_valid_configs_with_full_schema(preset, arg):
  c = get(preset, arg)
  assert set(c.model.keys()) == set(base.model_config().keys())
  assert set(c.keys()) == set(base.base_config().keys())
  m = ModelConfig.from_config(c)
  assert c.data.seq_len <= m.max_seq_len or m.pos_encoding != "learned"
  assert c.train.batch_size > 0 and 0 < c.train.learning_rate < 1e-2


def test_transformer_decoder_only_counterpart():
  """arch=decoder: one causal stack as deep as both stacks of the encoder-decoder, rows that
  hold source and target; an unknown arch is refused in one line."""
  lm = ModelConfig.from_config(get("transformer", "size=tiny,arch=decoder"))
  assert (lm.arch, lm.num_layers, lm.d_model) == ("decoder", 8, 128)
  assert get("transformer", "size=tiny,arch=decoder").data.seq_len == 256
  with pytest.raises(ValueError, match="arch=encoder_decoder or arch=decoder"):
    get("transformer", "arch=encoder")


def test_preset_specifics():
  g3 = get("gpt3", "size=175B")
  assert (g3.model.num_layers, g3.model.d_model, g3.model.num_heads, g3.model.head_dim) == (
      96,
      12288,
      96,
      128,
  )
  assert g3.data.seq_len == 2048 and g3.model.vocab_size == 50257
  bert = ModelConfig.from_config(get("bert", "size=large"))
  assert not bert.causal and bert.norm_position == "post" and bert.mlm_head and bert.pooler
  assert (bert.vocab_size, bert.max_seq_len, bert.type_vocab_size) == (30522, 512, 2)
  assert get("bert").train.objective == "mlm"
  llama = ModelConfig.from_config(get("llama", "size=1B"))
  assert (llama.pos_encoding, llama.norm, llama.mlp, llama.use_bias, llama.tie_embeddings) == (
      "rope",
      "rmsnorm",
      "swiglu",
      False,
      False,
  )
  assert llama.num_kv_heads < llama.num_heads
  assert get("gpt2").name == "gpt2-124M"


@pytest.mark.parametrize("preset", ["gpt2", "gpt3", "bert", "llama"])
def test_unknown_size_lists_valid_sizes(preset):
  with pytest.raises(ValueError, match=r"unknown size 'XXL'.*valid sizes: .*\|"):
    get(preset, "size=XXL")
  with pytest.raises(ValueError, match="unknown argument 'colour'"):
    get(preset, "colour=red")


@pytest.mark.parametrize(
    "overrides,pattern",
    [
        (
            dict(num_heads=6, num_kv_heads=4),
            r"model\.num_kv_heads: num_heads=6 is not divisible.*" r"\[1, 2, 3, 6\]",
        ),
        (dict(pos_encoding="rope", head_dim=63), r"model\.head_dim: rope .*even head_dim"),
        (
            dict(pos_encoding="alibi"),
            r"model\.pos_encoding: unknown value 'alibi'; choose one of "
            r"learned\|sinusoidal\|rope\|none",
        ),
        (dict(mlp="relu"), r"model\.mlp: .*gelu\|swiglu"),
        (dict(norm="batchnorm"), r"model\.norm: "),
        (dict(norm_position="sandwich"), r"model\.norm_position: "),
        (dict(attention_mask="local"), r"model\.attention_mask: "),
        (dict(remat="some"), r"model\.remat: .*dots_saveable"),
        (dict(dtype="float8"), r"model\.dtype: "),
        (dict(d_model=0), r"model\.d_model: must be a positive integer"),
        (dict(num_layers=-2), r"model\.num_layers: must be a positive integer"),
        (dict(mlp_dim=2.5), r"model\.mlp_dim: must be a positive integer"),
        (dict(dropout=1.0), r"model\.dropout: must be in \[0, 1\)"),
        (dict(mlm_head=True), r"model\.mlm_head: .*bidirectional"),
        (dict(pos_encoding="sinusoidal", d_model=33), r"model\.d_model: sinusoidal"),
    ],
)
def test_bad_model_configs_name_field_and_fix(overrides, pattern):
  with pytest.raises(ValueError, match=pattern):
    ModelConfig.from_config({**base.model_config().to_dict(), **overrides})


def test_unknown_key_and_replace_validate():
  with pytest.raises(ValueError, match=r"unknown key\(s\) \['n_layers'\]"):
    ModelConfig.from_config({"n_layers": 3})
  cfg = ModelConfig.from_config(base.base_config())
  assert cfg == ModelConfig()  # dataclass defaults mirror configs/base.py
  with pytest.raises(ValueError, match="num_kv_heads"):
    cfg.replace(num_kv_heads=3)
