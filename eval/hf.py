"""Hugging Face interop: export our GPT-2-style and Llama-style models to a `transformers`
directory (config.json + model.safetensors + tokenizer files when the run has them) and import
such a directory from disk into our parameters. Needs numpy and safetensors only (no torch):
`transformers` is needed just to *run* the exported model (tests: the `hf` extra).

Weight layouts (ours -> HF, D embed, N heads, K kv heads, H head_dim, F mlp):
  GPT-2  Conv1D weights are [in, out], i.e. our kernels flattened: c_attn = [q | k | v] of
         [D, N*H] each, c_proj = out [N*H, D]; c_fc = wi, mlp.c_proj = wo; wte is tied
         (lm_head.weight is not stored); wpe is the learned position table; ln_1/ln_2/ln_f.
  Llama  torch Linear weights are [out, in]: q_proj = query^T [N*H, D], k/v_proj [K*H, D],
         o_proj [D, N*H], gate/up/down = wi_0^T / wi_1^T / wo^T; RMSNorm scales; lm_head
         unless tie_word_embeddings.
RoPE: HF Llama applies `rotate_half` (pairs dims i and i + H/2), and so does our
model/positional.apply_rope, so q/k weights map without permutation. (Meta's original
checkpoints use interleaved pairs; HF's conversion script permutes them into this layout.)

    python -m eval.hf export --workdir runs/gpt2 --out hf_out [--arch gpt2|llama] [--bos auto]
    python -m eval.hf import --hf-dir hf_out --workdir runs/imported   # then init_from / eval
    python -m eval.hf import --hf-dir hf_out --out params.msgpack
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from typing import Any

import jax
import numpy as np

from train import cli

ARCHS = ("gpt2", "llama")


# ----------------------------------------------------------------------------- configs


def _fail_arch(arch: str, cfg, why: list[str]):
  raise ValueError(f"model config cannot be exported as {arch}: " + "; ".join(why))


def detect_arch(cfg) -> str:
  """'gpt2' or 'llama' for a ModelConfig that one of them implements exactly, else ValueError
  listing why each does not fit."""
  reasons = {a: _mismatches(a, cfg) for a in ARCHS}
  for a in ARCHS:
    if not reasons[a]:
      return a
  raise ValueError("model config matches neither GPT-2 nor Llama: " + " | ".join(
      f"{a}: {', '.join(r)}" for a, r in reasons.items()))


def _mismatches(arch: str, cfg) -> list[str]:
  """What keeps `cfg` from being exactly `arch` (empty when it fits)."""
  want = dict(attention_mask="causal", norm_position="pre", mlm_head=False, embed_norm=False,
              type_vocab_size=0, pooler=False)
  if arch == "gpt2":
    want.update(pos_encoding="learned", norm="layernorm", mlp="gelu", use_bias=True,
                tie_embeddings=True, num_kv_heads=cfg.num_heads)
  else:
    want.update(pos_encoding="rope", norm="rmsnorm", mlp="swiglu")
  out = [f"model.{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in want.items()
         if getattr(cfg, k) != v]
  if arch == "gpt2" and cfg.num_heads * cfg.head_dim != cfg.d_model:
    out.append(f"num_heads*head_dim={cfg.num_heads * cfg.head_dim} != d_model={cfg.d_model}")
  return out


def hf_config(cfg, arch: str, tokenizer=None) -> dict:
  """The config.json dict for `cfg` as `arch`."""
  bad = _mismatches(arch, cfg)
  if bad:
    _fail_arch(arch, cfg, bad)
  special = {}
  if tokenizer is not None:
    special = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                   pad_token_id=tokenizer.pad_id)
  if arch == "gpt2":
    return dict(architectures=["GPT2LMHeadModel"], model_type="gpt2",
                vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model,
                n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.mlp_dim,
                activation_function="gelu_new", layer_norm_epsilon=cfg.norm_eps,
                initializer_range=cfg.init_std, resid_pdrop=0.0, embd_pdrop=0.0,
                attn_pdrop=0.0, scale_attn_weights=True, tie_word_embeddings=True,
                torch_dtype=cfg.param_dtype, **special)
  return dict(architectures=["LlamaForCausalLM"], model_type="llama",
              vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
              intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.num_layers,
              num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
              head_dim=cfg.head_dim, hidden_act="silu", max_position_embeddings=cfg.max_seq_len,
              rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
              rope_parameters=dict(rope_type="default", rope_theta=cfg.rope_theta),
              attention_bias=cfg.use_bias, mlp_bias=cfg.use_bias,
              tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std,
              attention_dropout=0.0, torch_dtype=cfg.param_dtype, **special)


def model_config_from_hf(hf: dict, **overrides):
  """Our ModelConfig for a GPT-2 or Llama config.json dict; ValueError for what we cannot
  represent exactly (other activations, RoPE scaling, ...)."""
  from model.config import ModelConfig
  mtype = hf.get("model_type")
  if mtype == "gpt2":
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
      raise ValueError(f"GPT-2 activation_function={act!r}: only the tanh GELU (gelu_new) "
                       "matches our mlp='gelu'")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
      raise ValueError("GPT-2 scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn are "
                       "not supported")
    d, n = hf["n_embd"], hf["n_head"]
    fields = dict(vocab_size=hf["vocab_size"], d_model=d, num_layers=hf["n_layer"],
                  num_heads=n, num_kv_heads=n, head_dim=d // n,
                  mlp_dim=hf.get("n_inner") or 4 * d, max_seq_len=hf["n_positions"],
                  pos_encoding="learned", norm="layernorm", mlp="gelu", use_bias=True,
                  tie_embeddings=True, norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                  init_std=hf.get("initializer_range", 0.02))
  elif mtype == "llama":
    if hf.get("hidden_act", "silu") != "silu":
      raise ValueError(f"Llama hidden_act={hf['hidden_act']!r}: only silu (SwiGLU) is supported")
    rope = dict(hf.get("rope_parameters") or {})
    if hf.get("rope_scaling"):
      rope.update(hf["rope_scaling"])
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
      raise ValueError(f"Llama rope_type={rope_type!r}: only unscaled RoPE ('default') is "
                       "supported")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
    if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
      raise ValueError("Llama with attention_bias != mlp_bias is not supported (one use_bias)")
    n = hf["num_attention_heads"]
    fields = dict(vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
                  num_layers=hf["num_hidden_layers"], num_heads=n,
                  num_kv_heads=hf.get("num_key_value_heads") or n,
                  head_dim=hf.get("head_dim") or hf["hidden_size"] // n,
                  mlp_dim=hf["intermediate_size"],
                  max_seq_len=hf.get("max_position_embeddings", 2048), pos_encoding="rope",
                  rope_theta=float(theta), norm="rmsnorm", mlp="swiglu",
                  use_bias=bool(hf.get("attention_bias", False)),
                  tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                  norm_eps=hf.get("rms_norm_eps", 1e-6),
                  init_std=hf.get("initializer_range", 0.02))
  else:
    raise ValueError(f"config.json model_type={mtype!r}: supported are 'gpt2' and 'llama'")
  fields.update(overrides)
  return ModelConfig.from_config(fields)


# ----------------------------------------------------------------------------- weights


def _layers(params: dict, cfg) -> list[dict]:
  """Per-layer param dicts (numpy) from a scanned ('block', leading layer axis) or unrolled
  ('block_i') stack."""
  stack = params["layers"]
  if "block" in stack:
    return [jax.tree.map(lambda a, i=i: np.asarray(a)[i], stack["block"])
            for i in range(cfg.num_layers)]
  return [jax.tree.map(np.asarray, stack[f"block_{i}"]) for i in range(cfg.num_layers)]


def _stack_layers(layers: list[dict], scan: bool) -> dict:
  if not scan:
    return {f"block_{i}": layer for i, layer in enumerate(layers)}

  return {"block": jax.tree.map(lambda *xs: np.stack(xs), *layers)}


def to_hf_state_dict(cfg, params: dict, arch: str) -> dict[str, np.ndarray]:
  """Our (unboxed) params -> HF tensor dict (numpy float32, contiguous)."""
  bad = _mismatches(arch, cfg)
  if bad:
    _fail_arch(arch, cfg, bad)
  d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  f32 = lambda a: np.ascontiguousarray(np.asarray(a, np.float32))
  sd = {}
  layers = _layers(params, cfg)
  if arch == "gpt2":
    sd["transformer.wte.weight"] = f32(params["embed"]["embedding"])
    sd["transformer.wpe.weight"] = f32(params["pos_embed"]["embedding"])
    for i, p in enumerate(layers):
      pre = f"transformer.h.{i}."
      a = p["attn"]
      sd[pre + "ln_1.weight"] = f32(p["attn_norm"]["scale"])
      sd[pre + "ln_1.bias"] = f32(p["attn_norm"]["bias"])
      sd[pre + "attn.c_attn.weight"] = f32(np.concatenate(
          [a[m]["kernel"].reshape(d, n * h) for m in ("query", "key", "value")], axis=1))
      sd[pre + "attn.c_attn.bias"] = f32(np.concatenate(
          [a[m]["bias"].reshape(n * h) for m in ("query", "key", "value")]))
      sd[pre + "attn.c_proj.weight"] = f32(a["out"]["kernel"].reshape(n * h, d))
      sd[pre + "attn.c_proj.bias"] = f32(a["out"]["bias"])
      sd[pre + "ln_2.weight"] = f32(p["mlp_norm"]["scale"])
      sd[pre + "ln_2.bias"] = f32(p["mlp_norm"]["bias"])
      sd[pre + "mlp.c_fc.weight"] = f32(p["mlp"]["wi"]["kernel"])
      sd[pre + "mlp.c_fc.bias"] = f32(p["mlp"]["wi"]["bias"])
      sd[pre + "mlp.c_proj.weight"] = f32(p["mlp"]["wo"]["kernel"])
      sd[pre + "mlp.c_proj.bias"] = f32(p["mlp"]["wo"]["bias"])
    sd["transformer.ln_f.weight"] = f32(params["final_norm"]["scale"])
    sd["transformer.ln_f.bias"] = f32(params["final_norm"]["bias"])
    return sd
  sd["model.embed_tokens.weight"] = f32(params["embed"]["embedding"])
  for i, p in enumerate(layers):
    pre = f"model.layers.{i}."
    a, m = p["attn"], p["mlp"]
    for ours, theirs, heads in (("query", "q_proj", n), ("key", "k_proj", k),
                                ("value", "v_proj", k)):
      sd[pre + f"self_attn.{theirs}.weight"] = f32(a[ours]["kernel"].reshape(d, heads * h).T)
      if cfg.use_bias:
        sd[pre + f"self_attn.{theirs}.bias"] = f32(a[ours]["bias"].reshape(heads * h))
    sd[pre + "self_attn.o_proj.weight"] = f32(a["out"]["kernel"].reshape(n * h, d).T)
    for ours, theirs in (("wi_0", "gate_proj"), ("wi_1", "up_proj"), ("wo", "down_proj")):
      sd[pre + f"mlp.{theirs}.weight"] = f32(m[ours]["kernel"].T)
    if cfg.use_bias:
      sd[pre + "self_attn.o_proj.bias"] = f32(a["out"]["bias"])
      for ours, theirs in (("wi_0", "gate_proj"), ("wi_1", "up_proj"), ("wo", "down_proj")):
        sd[pre + f"mlp.{theirs}.bias"] = f32(m[ours]["bias"])
    sd[pre + "input_layernorm.weight"] = f32(p["attn_norm"]["scale"])
    sd[pre + "post_attention_layernorm.weight"] = f32(p["mlp_norm"]["scale"])
  sd["model.norm.weight"] = f32(params["final_norm"]["scale"])
  if not cfg.tie_embeddings:
    sd["lm_head.weight"] = f32(params["unembed"]["kernel"].T)
  return sd


def from_hf_state_dict(cfg, sd: dict[str, np.ndarray]) -> dict:
  """HF tensor dict -> our params (numpy), layer stack laid out per cfg.scan_layers.
  Raises KeyError naming the missing tensor, ValueError on a shape mismatch."""
  arch = detect_arch(cfg)
  d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  dt = np.dtype(cfg.param_dtype) if cfg.param_dtype != "bfloat16" else np.float32

  def get(name, shape):
    if name not in sd:
      raise KeyError(f"HF weights lack {name!r} (have e.g. {sorted(sd)[:4]}...)")
    a = np.asarray(sd[name], np.float32)
    if a.shape != tuple(shape):
      raise ValueError(f"HF tensor {name}: shape {a.shape}, expected {tuple(shape)} for the "
                       "config in config.json")
    return a.astype(dt)

  layers = []
  if arch == "gpt2":
    params = {"embed": {"embedding": get("transformer.wte.weight", (cfg.vocab_size, d))},
              "pos_embed": {"embedding": get("transformer.wpe.weight", (cfg.max_seq_len, d))},
              "final_norm": {"scale": get("transformer.ln_f.weight", (d,)),
                             "bias": get("transformer.ln_f.bias", (d,))}}
    for i in range(cfg.num_layers):
      pre = f"transformer.h.{i}."
      w = get(pre + "attn.c_attn.weight", (d, 3 * n * h))
      b = get(pre + "attn.c_attn.bias", (3 * n * h,))
      qkv = {m: {"kernel": w[:, j * n * h:(j + 1) * n * h].reshape(d, n, h),
                 "bias": b[j * n * h:(j + 1) * n * h].reshape(n, h)}
             for j, m in enumerate(("query", "key", "value"))}
      qkv["out"] = {"kernel": get(pre + "attn.c_proj.weight", (n * h, d)).reshape(n, h, d),
                    "bias": get(pre + "attn.c_proj.bias", (d,))}
      layers.append({
          "attn": qkv,
          "attn_norm": {"scale": get(pre + "ln_1.weight", (d,)),
                        "bias": get(pre + "ln_1.bias", (d,))},
          "mlp_norm": {"scale": get(pre + "ln_2.weight", (d,)),
                       "bias": get(pre + "ln_2.bias", (d,))},
          "mlp": {"wi": {"kernel": get(pre + "mlp.c_fc.weight", (d, cfg.mlp_dim)),
                         "bias": get(pre + "mlp.c_fc.bias", (cfg.mlp_dim,))},
                  "wo": {"kernel": get(pre + "mlp.c_proj.weight", (cfg.mlp_dim, d)),
                         "bias": get(pre + "mlp.c_proj.bias", (d,))}}})
  else:
    params = {"embed": {"embedding": get("model.embed_tokens.weight", (cfg.vocab_size, d))},
              "final_norm": {"scale": get("model.norm.weight", (d,))}}
    if not cfg.tie_embeddings:
      params["unembed"] = {"kernel": get("lm_head.weight", (cfg.vocab_size, d)).T.copy()}
    for i in range(cfg.num_layers):
      pre = f"model.layers.{i}."
      attn = {}
      for ours, theirs, heads in (("query", "q_proj", n), ("key", "k_proj", k),
                                  ("value", "v_proj", k)):
        w = get(pre + f"self_attn.{theirs}.weight", (heads * h, d))
        attn[ours] = {"kernel": w.T.reshape(d, heads, h)}
        if cfg.use_bias:
          attn[ours]["bias"] = get(pre + f"self_attn.{theirs}.bias", (heads * h,)).reshape(
              heads, h)
      attn["out"] = {"kernel": get(pre + "self_attn.o_proj.weight", (d, n * h)).T.reshape(
          n, h, d)}
      mlp = {}
      for ours, theirs, shape in (("wi_0", "gate_proj", (cfg.mlp_dim, d)),
                                  ("wi_1", "up_proj", (cfg.mlp_dim, d)),
                                  ("wo", "down_proj", (d, cfg.mlp_dim))):
        mlp[ours] = {"kernel": get(pre + f"mlp.{theirs}.weight", shape).T.copy()}
        if cfg.use_bias:
          mlp[ours]["bias"] = get(pre + f"mlp.{theirs}.bias", (shape[0],))
      if cfg.use_bias:
        attn["out"]["bias"] = get(pre + "self_attn.o_proj.bias", (d,))
      layers.append({
          "attn": attn, "mlp": mlp,
          "attn_norm": {"scale": get(pre + "input_layernorm.weight", (d,))},
          "mlp_norm": {"scale": get(pre + "post_attention_layernorm.weight", (d,))}})
  params["layers"] = _stack_layers(layers, cfg.scan_layers)
  return params


# ----------------------------------------------------------------------------- directories


def export_dir(cfg, params: dict, out_dir, *, arch: str | None = None, tokenizer=None,
               bos: str = "auto") -> dict:
  """Writes config.json, model.safetensors and, when `tokenizer.spec` names a tokenizer.json,
  tokenizer.json + tokenizer_config.json. The tokenizer's post-processor is set to add BOS
  exactly when unleash adds it with `bos` (eval/zeroshot BOS_MODES), so HF tools and
  lm-evaluation-harness score the export as `eval.zeroshot --bos {bos}` scores the run.
  Returns the config dict written."""
  from safetensors.numpy import save_file
  from model.config import ModelConfig
  cfg = ModelConfig.from_config(cfg)
  arch = arch or detect_arch(cfg)
  if arch not in ARCHS:
    raise ValueError(f"arch {arch!r}: choose one of {ARCHS}")
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  conf = hf_config(cfg, arch, tokenizer)
  (out / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
  save_file(to_hf_state_dict(cfg, params, arch), str(out / "model.safetensors"),
            metadata={"format": "pt"})
  spec = getattr(tokenizer, "spec", "") or ""
  if spec.endswith(".json") and pathlib.Path(spec).is_file():
    export_tokenizer(tokenizer, out, bos=bos, model_max_length=cfg.max_seq_len)
  return conf


def export_tokenizer(tokenizer, out_dir, *, bos: str = "auto", model_max_length: int) -> None:
  """tokenizer.json (post-processor adding BOS as unleash does under `bos`) and a
  tokenizer_config.json naming the special tokens the tokenizer itself reports."""
  import tokenizers
  from tokenizers import processors
  from eval import zeroshot
  out = pathlib.Path(out_dir)
  add_bos = zeroshot.bos_added(tokenizer, bos)
  names = tokenizer.special_tokens
  if add_bos == tokenizer.adds_bos:
    shutil.copyfile(tokenizer.spec, out / "tokenizer.json")
  else:
    tok = tokenizers.Tokenizer.from_file(tokenizer.spec)
    b = names["bos"]
    tok.post_processor = (processors.TemplateProcessing(
        single=f"{b} $A", pair=f"{b} $A {b} $B", special_tokens=[(b, tokenizer.bos_id)])
        if add_bos else processors.TemplateProcessing(single="$A", pair="$A $B"))
    tok.save(str(out / "tokenizer.json"))
  tc = dict(tokenizer_class="PreTrainedTokenizerFast", model_max_length=model_max_length,
            **{f"{role}_token": name for role, name in names.items()})
  (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2) + "\n")


def _read_safetensors(hf_dir: pathlib.Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  single = hf_dir / "model.safetensors"
  if single.is_file():
    return load_file(str(single))
  index = hf_dir / "model.safetensors.index.json"
  if index.is_file():
    files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    sd = {}
    for f in files:
      sd.update(load_file(str(hf_dir / f)))
    return sd
  raise FileNotFoundError(f"{hf_dir}: no model.safetensors (or .index.json); save the HF "
                          "model with safe_serialization=True")


def import_dir(hf_dir, **overrides):
  """(ModelConfig, params) from a HF GPT-2/Llama directory on disk; `overrides` set other
  ModelConfig fields (e.g. scan_layers=False)."""
  hf_dir = pathlib.Path(hf_dir)
  conf_path = hf_dir / "config.json"
  if not conf_path.is_file():
    raise FileNotFoundError(f"{conf_path} not found; pass a directory written by "
                            "save_pretrained or `python -m eval.hf export`")
  cfg = model_config_from_hf(json.loads(conf_path.read_text()), **overrides)
  sd = _read_safetensors(hf_dir)
  # Bf16/fp16 checkpoints load as float32 master weights.
  return cfg, from_hf_state_dict(cfg, sd)


def import_to_run(hf_dir, workdir, *, tokenizer: str = "", config=None) -> str:
  """Imports a HF directory as a params-only run in `workdir` (train.checkpoint.save_params),
  so `trainer.load_run(workdir)`, `config.init_from=workdir` and the eval CLIs accept it.

  The tokenizer: `tokenizer` if given, else the directory's tokenizer.json (copied into the
  workdir with its tokenizer_config.json, which names the special tokens), else our byte
  tokenizer when vocab_size is 260. data.seq_len is the model's context length
  (max_seq_len), the window eval.zeroshot scores with. Returns the checkpoint dir.
  """
  from configs import base
  from train import checkpoint
  cfg, params = import_dir(hf_dir)
  hf_dir, workdir = pathlib.Path(hf_dir), pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  config = config or base.base_config()
  config.model.update({k: v for k, v in dataclasses.asdict(cfg).items() if k in config.model})
  config.data.seq_len = cfg.max_seq_len  # the model's context length (lower it to fine-tune)
  if not tokenizer and (hf_dir / "tokenizer.json").is_file():
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the config names the specials
      if (hf_dir / name).is_file():
        shutil.copyfile(hf_dir / name, workdir / name)
    tokenizer = str(workdir / "tokenizer.json")
  if not tokenizer:
    if cfg.vocab_size != 260:
      raise ValueError(f"{hf_dir} has no tokenizer.json and vocab_size={cfg.vocab_size} is not "
                       "the byte tokenizer's 260; pass tokenizer= (--tokenizer) a tokenizer.json")
    tokenizer = "byte"
  config.data.tokenizer = tokenizer
  config.name = f"hf-{pathlib.Path(hf_dir).name}"
  return checkpoint.save_params(str(workdir), params, config)


def main(argv=None):
  import argparse
  ap = argparse.ArgumentParser(description="Export a run to / import from a HF directory.")
  sub = ap.add_subparsers(dest="cmd", required=True)
  ex = sub.add_parser("export")
  ex.add_argument("--workdir", required=True)
  ex.add_argument("--out", required=True)
  ex.add_argument("--arch", choices=ARCHS, default=None)
  ex.add_argument("--bos", choices=("auto", "always", "never"), default="auto",
                  help="BOS behaviour the exported tokenizer carries (as eval.zeroshot --bos)")
  im = sub.add_parser("import")
  im.add_argument("--hf-dir", required=True)
  dest = im.add_mutually_exclusive_group(required=True)
  dest.add_argument("--workdir", help="write a params-only run here (for init_from / eval CLIs)")
  dest.add_argument("--out", help="or: write the params as a msgpack file")
  im.add_argument("--tokenizer", default="", help="tokenizer spec if the HF dir has none")
  args = ap.parse_args(argv)
  if args.cmd == "export":
    from train import trainer
    run = trainer.load_run(args.workdir)
    params = jax.tree.map(np.asarray, run.params)
    conf = export_dir(run.config.model, params, args.out, arch=args.arch,
                      tokenizer=run.tokenizer, bos=args.bos)
    print(f"wrote {conf['model_type']} model to {args.out}")
  elif args.workdir:
    print(f"wrote {import_to_run(args.hf_dir, args.workdir, tokenizer=args.tokenizer)}")
  else:
    from flax import serialization
    cfg, params = import_dir(args.hf_dir)
    pathlib.Path(args.out).write_bytes(serialization.msgpack_serialize(params))
    print(json.dumps(dataclasses.asdict(cfg)))


if __name__ == "__main__":
  cli.run(main)
