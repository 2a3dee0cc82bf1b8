"""HF interop: weight mapping round trips (always) and logit parity with `transformers`
(needs the `hf` extra: torch CPU + transformers; skipped with the reason otherwise).

Parity both ways on tiny random models built from configs locally (nothing downloaded):
HF -> ours (import a save_pretrained directory) and ours -> HF (export, then
AutoModelForCausalLM.from_pretrained on that directory). Weights are drawn with a large std
so the logits are O(1) and a layout error could not hide under the tolerance.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eval import hf
from model.config import ModelConfig
from model.transformer import Transformer

GPT2 = dict(
    vocab_size=61,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=4,
    head_dim=8,
    mlp_dim=48,
    max_seq_len=24,
    pos_encoding="learned",
    norm="layernorm",
    mlp="gelu",
    use_bias=True,
    tie_embeddings=True,
)
# GQA (4 query heads over 2 kv heads), head_dim * heads != d_model, untied head, custom theta.
LLAMA = dict(
    vocab_size=61,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=12,
    mlp_dim=40,
    max_seq_len=24,
    pos_encoding="rope",
    rope_theta=500.0,
    norm="rmsnorm",
    mlp="swiglu",
    use_bias=False,
    tie_embeddings=False,
    norm_eps=1e-6,
)
TOL = 1e-4


def _random_params(cfg, seed=0):
  """Our params with every leaf random (norm scales/biases too): N(0, 0.3), scales around 1.
  Shapes from jax.eval_shape, values from numpy: no compilation."""
  shapes = nn.unbox(
      jax.eval_shape(
          lambda: Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
      )["params"]
  )
  rng = np.random.default_rng(seed)
  flat = jax.tree_util.tree_flatten_with_path(shapes)
  leaves = [
      (0.3 * rng.standard_normal(x.shape) + ("scale" in jax.tree_util.keystr(path))).astype(
          np.float32
      )
      for path, x in flat[0]
  ]
  return jax.tree.unflatten(flat[1], leaves)


def _ours_logits(cfg, params, tokens):
  return np.asarray(Transformer(cfg).apply({"params": params}, jnp.asarray(tokens)))


def _tokens(cfg, b=2, l=11, seed=0):
  return np.random.default_rng(seed).integers(0, cfg.vocab_size, (b, l)).astype(np.int32)


# Llama's optional rows: biases everywhere and a tied head (no lm_head tensor).
LLAMA_BIAS_TIED = {**LLAMA, "use_bias": True, "tie_embeddings": True}


@pytest.mark.parametrize(
    "fields", [GPT2, LLAMA, LLAMA_BIAS_TIED], ids=["gpt2", "llama", "llama-bias-tied"]
)
@pytest.mark.parametrize("scan", [True, False])
def test_state_dict_round_trip(fields, scan):
  """Every row of the conversion table, both directions: params -> HF -> params is exact
  (so every leaf is covered), and each HF tensor comes from exactly one row."""
  cfg = ModelConfig(**fields, scan_layers=scan)
  params = _random_params(cfg)
  arch = hf.detect_arch(cfg)
  sd = hf.to_hf_state_dict(cfg, params, arch)
  back = hf.from_hf_state_dict(cfg, sd)
  jax.tree.map(np.testing.assert_array_equal, params, back)
  top, layer = hf.conversion_table(cfg, arch)
  keys = [e.theirs for e in top] + [e.theirs.format(i=i) for i in range(2) for e in layer]
  assert sorted(keys) == sorted(sd) and len(set(keys)) == len(keys)
  model_leaves = jax.tree.leaves({k: v for k, v in params.items() if k != "layers"})
  assert sum(len(e.ours) for e in top) == len(model_leaves)
  assert sum(len(e.ours) for e in layer) == len(jax.tree.leaves(hf._layers(params, cfg)[0]))
  if cfg.pos_encoding == "learned":  # GPT-2: tied head, fused qkv in Conv1D [in, out] layout
    assert "lm_head.weight" not in sd
    assert sd["transformer.h.0.attn.c_attn.weight"].shape == (32, 3 * 32)
  elif cfg.tie_embeddings:
    assert "lm_head.weight" not in sd and sd["model.layers.1.mlp.down_proj.bias"].shape == (32,)
  else:
    assert sd["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 12, 32)
    assert sd["lm_head.weight"].shape == (61, 32)


def test_import_names_missing_and_misshapen_tensors():
  cfg = ModelConfig(**LLAMA)
  sd = hf.to_hf_state_dict(cfg, _random_params(cfg), "llama")
  with pytest.raises(KeyError, match="model.layers.1.mlp.up_proj.weight"):
    hf.from_hf_state_dict(cfg, {k: v for k, v in sd.items() if "1.mlp.up_proj" not in k})
  sd["model.layers.0.self_attn.k_proj.weight"] = np.zeros((48, 32), np.float32)
  with pytest.raises(ValueError, match=r"k_proj.weight: shape \(48, 32\), expected \(24, 32\)"):
    hf.from_hf_state_dict(cfg, sd)


def test_directory_round_trip_and_config(tmp_path):
  cfg = ModelConfig(**LLAMA)
  params = _random_params(cfg)
  conf = hf.export_dir(cfg, params, tmp_path)
  assert json.loads((tmp_path / "config.json").read_text()) == conf
  cfg2, params2 = hf.import_dir(tmp_path)
  assert cfg2 == cfg.replace(init_std=cfg2.init_std)
  jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_unsupported_configs_are_named():
  with pytest.raises(ValueError, match=r"model.pos_encoding='sinusoidal'"):
    hf.detect_arch(ModelConfig(**{**GPT2, "pos_encoding": "sinusoidal"}))
  with pytest.raises(ValueError, match="mlp"):
    hf.hf_config(ModelConfig(**GPT2), "llama")
  with pytest.raises(ValueError, match="rope_type='linear'"):
    hf.model_config_from_hf(
        dict(
            model_type="llama",
            vocab_size=8,
            hidden_size=8,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            rope_scaling={"rope_type": "linear"},
        )
    )
  with pytest.raises(ValueError, match="model_type='bert'"):
    hf.model_config_from_hf(dict(model_type="bert"))


# ----------------------------------------------------------------------------- parity


def _hf_model(fields):
  torch = pytest.importorskip("torch", reason="parity needs the `hf` extra (torch CPU)")
  transformers = pytest.importorskip("transformers", reason="parity needs the `hf` extra")
  torch.manual_seed(0)
  if fields["pos_encoding"] == "learned":
    conf = transformers.GPT2Config(
        vocab_size=61,
        n_positions=24,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=48,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        initializer_range=0.3,
    )
    model = transformers.GPT2LMHeadModel(conf)
  else:
    conf = transformers.LlamaConfig(
        vocab_size=61,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        max_position_embeddings=24,
        rms_norm_eps=1e-6,
        rope_parameters=dict(rope_type="default", rope_theta=500.0),
        tie_word_embeddings=False,
        initializer_range=0.3,
    )
    model = transformers.LlamaForCausalLM(conf)
  with torch.no_grad():  # norms start at 1/0: randomise them too
    for name, p in model.named_parameters():
      if "ln" in name or "norm" in name:
        p.add_(0.3 * torch.randn_like(p))
  return torch, transformers, model.eval()


def _hf_logits(torch, model, tokens):
  with torch.no_grad():
    return model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("fields", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_parity_import_hf_into_ours(fields, tmp_path):
  torch, _, model = _hf_model(fields)
  model.save_pretrained(tmp_path, safe_serialization=True)
  cfg, params = hf.import_dir(tmp_path)
  tokens = _tokens(cfg)
  theirs = _hf_logits(torch, model, tokens)
  ours = _ours_logits(cfg, params, tokens)
  assert np.abs(theirs).max() > 1.0  # a meaningful scale for the tolerance
  np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)


@pytest.mark.parametrize("fields", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_parity_export_ours_to_hf(fields, tmp_path):
  torch = pytest.importorskip("torch", reason="parity needs the `hf` extra (torch CPU)")
  transformers = pytest.importorskip("transformers", reason="parity needs the `hf` extra")
  cfg = ModelConfig(**fields)
  params = _random_params(cfg, seed=3)
  hf.export_dir(cfg, params, tmp_path)
  model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True)
  tokens = _tokens(cfg, seed=1)
  theirs = _hf_logits(torch, model.eval(), tokens)
  ours = _ours_logits(cfg, params, tokens)
  assert np.abs(ours).max() > 1.0
  np.testing.assert_allclose(theirs, ours, atol=TOL, rtol=0)


def test_cli_export_from_run_and_import(tmp_path, monkeypatch, capsys):
  """`python -m eval.hf export --workdir RUN` takes the run's config, params and tokenizer
  (a BPE tokenizer.json is copied, its special tokens named as the tokenizer names them);
  `import` writes the params back as msgpack."""
  import types
  from flax import serialization
  from configs import base
  from train import run as run_lib
  from train import spec
  from train.data import tokenizer as tok_lib

  tok = tok_lib.train_bpe(["plain text for a tiny tokenizer"] * 5, 270, tmp_path / "tok.json")
  config = base.base_config()
  config.model.update(**{**GPT2, "vocab_size": tok.vocab_size})
  cfg = ModelConfig.from_config(config.model)
  params = _random_params(cfg)
  monkeypatch.setattr(
      run_lib,
      "load_run",
      lambda workdir, **kw: types.SimpleNamespace(
          config=config, spec=spec.resolve(config), params=params, tokenizer=tok
      ),
  )
  hf.main(["export", "--workdir", "RUN", "--out", str(tmp_path / "hf")])
  assert "wrote gpt2 model" in capsys.readouterr().out
  conf = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert (conf["bos_token_id"], conf["eos_token_id"], conf["n_inner"]) == (0, 1, 48)
  assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (tmp_path / "tok.json").read_bytes()
  tc = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
  assert (tc["bos_token"], tc["eos_token"], tc["mask_token"]) == ("<bos>", "<eos>", "<mask>")
  hf.main(["import", "--hf-dir", str(tmp_path / "hf"), "--out", str(tmp_path / "p.msgpack")])
  back = serialization.msgpack_restore((tmp_path / "p.msgpack").read_bytes())
  jax.tree.map(np.testing.assert_array_equal, params, back)


def _gpt2_style_tokenizer(path):
  """Byte-level BPE with GPT-2's one special token, added last (id 257 here, not 0)."""
  import tokenizers
  from tokenizers import models, pre_tokenizers, trainers

  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator(
      ["ab ab"] * 4,
      trainer=trainers.BpeTrainer(
          vocab_size=257, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
      ),
  )
  tok.add_special_tokens(["<|endoftext|>"])
  tok.save(str(path))
  return tok


def test_special_tokens_are_asked_of_the_tokenizer(tmp_path):
  """A GPT-2 tokenizer.json (only <|endoftext|>) loads with BOS = EOS = that token, PAD
  falling back to EOS and no MASK; a tokenizer_config.json beside it names roles; the export
  names them back and carries the BOS behaviour chosen (bos=always adds the tokenizer's own
  BOS)."""
  import tokenizers
  from train.data import tokenizer as tok_lib

  raw = _gpt2_style_tokenizer(tmp_path / "tokenizer.json")
  eot = raw.token_to_id("<|endoftext|>")
  assert eot == 257
  tok = tok_lib.load(str(tmp_path / "tokenizer.json"))
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id, tok.adds_bos) == (
      eot,
      eot,
      eot,
      None,
      False,
  )
  cfg = ModelConfig(**{**GPT2, "vocab_size": tok.vocab_size})
  hf.export_dir(cfg, _random_params(cfg), tmp_path / "hf", tokenizer=tok, bos="always")
  tc = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
  assert (tc["bos_token"], tc["eos_token"]) == ("<|endoftext|>",) * 2
  assert "mask_token" not in tc and "pad_token" not in tc  # as GPT-2: roles it has only
  exported = tokenizers.Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
  assert exported.encode("ab").ids == [eot] + raw.encode("ab").ids
  again = tok_lib.load(str(tmp_path / "hf" / "tokenizer.json"))
  assert again.adds_bos and again.bos_id == eot

  (tmp_path / "two").mkdir()
  two = _gpt2_style_tokenizer(tmp_path / "two" / "tokenizer.json")
  two.add_special_tokens(["<|pad|>"])
  two.save(str(tmp_path / "two" / "tokenizer.json"))
  with pytest.raises(ValueError, match=r"cannot tell its bos and eos token.*tokenizer_config"):
    tok_lib.load(str(tmp_path / "two" / "tokenizer.json"))
  (tmp_path / "two" / "tokenizer_config.json").write_text(
      json.dumps(
          {
              "bos_token": {"content": "<|endoftext|>"},
              "eos_token": "<|endoftext|>",
              "pad_token": "<|pad|>",
          }
      )
  )
  named = tok_lib.load(str(tmp_path / "two" / "tokenizer.json"))
  assert (named.bos_id, named.eos_id, named.pad_id) == (257, 257, 258)


def test_import_to_run_is_loadable(tmp_path):
  """An HF directory becomes a params-only run that run_lib.load_run (and so init_from and the
  eval CLIs) accepts, with the same logits, and keeps the model's context length (300
  positions, more than the default data.seq_len of 256) as the zero-shot window."""
  from eval import zeroshot
  from train import run as run_lib

  cfg = ModelConfig(**{**GPT2, "vocab_size": 260, "max_seq_len": 300})
  params = _random_params(cfg)
  hf.export_dir(cfg, params, tmp_path / "hf")
  hf.main(["import", "--hf-dir", str(tmp_path / "hf"), "--workdir", str(tmp_path / "run")])
  run = run_lib.load_run(str(tmp_path / "run"))
  assert run.tokenizer.vocab_size == 260 and run.config.model.d_model == 32
  assert run.config.data.seq_len == zeroshot.context_length(run) == 300
  tokens = _tokens(cfg)
  np.testing.assert_allclose(
      _ours_logits(
          ModelConfig.from_config(run.config.model), jax.tree.map(np.asarray, run.params), tokens
      ),
      _ours_logits(cfg, params, tokens),
      atol=1e-6,
  )
