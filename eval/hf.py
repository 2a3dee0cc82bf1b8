"""Hugging Face interop: export our GPT-2-style and Llama-style models to a `transformers`
directory (config.json + model.safetensors + tokenizer files when the run has them) and import
such a directory from disk into our parameters. Needs numpy and safetensors only (no torch):
`transformers` is needed just to *run* the exported model (tests: the `hf` extra).

Weights convert through one declarative table per architecture (`conversion_table`: our
path, HF key, transform, inverse), which generates export, import and the shapes import
checks. Layouts (ours -> HF, D embed, N heads, K kv heads, H head_dim, F mlp):
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

import argparse
import dataclasses
import json
import pathlib
import shutil
from typing import Callable

from flax import serialization
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file
from safetensors.numpy import save_file
from tokenizers import processors
import tokenizers

from configs import base
from eval import zeroshot
from model.config import ModelConfig
from model.transformer import Transformer
from train import checkpoint
from train import cli
from train import run as run_lib

ARCHS = ("gpt2", "llama")


# ----------------------------------------------------------------------------- configs


def _check_arch(arch: str, cfg) -> None:
  """ValueError listing why `cfg` is not exactly `arch`, if it is not."""
  why = _mismatches(arch, cfg)
  if why:
    raise ValueError(f"model config cannot be exported as {arch}: " + "; ".join(why))


def detect_arch(cfg) -> str:
  """'gpt2' or 'llama' for a ModelConfig that one of them implements exactly, else ValueError
  listing why each does not fit."""
  reasons = {a: _mismatches(a, cfg) for a in ARCHS}
  for a in ARCHS:
    if not reasons[a]:
      return a
  raise ValueError(
      "model config matches neither GPT-2 nor Llama: "
      + " | ".join(f"{a}: {', '.join(r)}" for a, r in reasons.items())
  )


def _mismatches(arch: str, cfg) -> list[str]:
  """What keeps `cfg` from being exactly `arch` (empty when it fits)."""
  want = dict(
      attention_mask="causal",
      norm_position="pre",
      mlm_head=False,
      embed_norm=False,
      type_vocab_size=0,
      pooler=False,
  )
  if arch == "gpt2":
    want.update(
        pos_encoding="learned",
        norm="layernorm",
        mlp="gelu",
        use_bias=True,
        tie_embeddings=True,
        num_kv_heads=cfg.num_heads,
    )
  else:
    want.update(pos_encoding="rope", norm="rmsnorm", mlp="swiglu")
  out = [
      f"model.{k}={getattr(cfg, k)!r} (needs {v!r})"
      for k, v in want.items()
      if getattr(cfg, k) != v
  ]
  if arch == "gpt2" and cfg.num_heads * cfg.head_dim != cfg.d_model:
    out.append(f"num_heads*head_dim={cfg.num_heads * cfg.head_dim} != d_model={cfg.d_model}")
  return out


def hf_config(cfg, arch: str, tokenizer=None) -> dict:
  """The config.json dict for `cfg` as `arch`."""
  _check_arch(arch, cfg)
  special = {}
  if tokenizer is not None:
    special = dict(
        bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id
    )
  if arch == "gpt2":
    return dict(
        architectures=["GPT2LMHeadModel"],
        model_type="gpt2",
        vocab_size=cfg.vocab_size,
        n_positions=cfg.max_seq_len,
        n_embd=cfg.d_model,
        n_layer=cfg.num_layers,
        n_head=cfg.num_heads,
        n_inner=cfg.mlp_dim,
        activation_function="gelu_new",
        layer_norm_epsilon=cfg.norm_eps,
        initializer_range=cfg.init_std,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        scale_attn_weights=True,
        tie_word_embeddings=True,
        torch_dtype=cfg.param_dtype,
        **special,
    )
  return dict(
      architectures=["LlamaForCausalLM"],
      model_type="llama",
      vocab_size=cfg.vocab_size,
      hidden_size=cfg.d_model,
      intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim,
      hidden_act="silu",
      max_position_embeddings=cfg.max_seq_len,
      rms_norm_eps=cfg.norm_eps,
      rope_theta=cfg.rope_theta,
      rope_parameters=dict(rope_type="default", rope_theta=cfg.rope_theta),
      attention_bias=cfg.use_bias,
      mlp_bias=cfg.use_bias,
      tie_word_embeddings=cfg.tie_embeddings,
      initializer_range=cfg.init_std,
      attention_dropout=0.0,
      torch_dtype=cfg.param_dtype,
      **special,
  )


def model_config_from_hf(hf: dict, **overrides):
  """Our ModelConfig for a GPT-2 or Llama config.json dict; ValueError for what we cannot
  represent exactly (other activations, RoPE scaling, ...)."""
  mtype = hf.get("model_type")
  if mtype == "gpt2":
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
      raise ValueError(
          f"GPT-2 activation_function={act!r}: only the tanh GELU (gelu_new) "
          "matches our mlp='gelu'"
      )
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
      raise ValueError(
          "GPT-2 scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn are " "not supported"
      )
    d, n = hf["n_embd"], hf["n_head"]
    fields = dict(
        vocab_size=hf["vocab_size"],
        d_model=d,
        num_layers=hf["n_layer"],
        num_heads=n,
        num_kv_heads=n,
        head_dim=d // n,
        mlp_dim=hf.get("n_inner") or 4 * d,
        max_seq_len=hf["n_positions"],
        pos_encoding="learned",
        norm="layernorm",
        mlp="gelu",
        use_bias=True,
        tie_embeddings=True,
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        init_std=hf.get("initializer_range", 0.02),
    )
  elif mtype == "llama":
    if hf.get("hidden_act", "silu") != "silu":
      raise ValueError(f"Llama hidden_act={hf['hidden_act']!r}: only silu (SwiGLU) is supported")
    rope = dict(hf.get("rope_parameters") or {})
    if hf.get("rope_scaling"):
      rope.update(hf["rope_scaling"])
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
      raise ValueError(
          f"Llama rope_type={rope_type!r}: only unscaled RoPE ('default') is " "supported"
      )
    theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
    if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
      raise ValueError("Llama with attention_bias != mlp_bias is not supported (one use_bias)")
    n = hf["num_attention_heads"]
    fields = dict(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=n,
        num_kv_heads=hf.get("num_key_value_heads") or n,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n,
        mlp_dim=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        pos_encoding="rope",
        rope_theta=float(theta),
        norm="rmsnorm",
        mlp="swiglu",
        use_bias=bool(hf.get("attention_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        init_std=hf.get("initializer_range", 0.02),
    )
  else:
    raise ValueError(f"config.json model_type={mtype!r}: supported are 'gpt2' and 'llama'")
  fields.update(overrides)
  return ModelConfig.from_config(fields)


# ----------------------------------------------------------------------------- weights


@dataclasses.dataclass(frozen=True)
class Entry:
  """One row of a conversion table: our leaves `ours` ('/'-joined paths, inside a layer's
  dict for per-layer rows) <-> the HF tensor `theirs` ('{i}': the layer index).
  `to_hf(*leaves) -> tensor`; `from_hf(tensor, *leaf_shapes) -> leaves`, its inverse. Both
  directions, and the HF shapes checked on import, come from the same row."""

  ours: tuple[str, ...]
  theirs: str
  to_hf: Callable
  from_hf: Callable


_reshape = lambda t, s: (t.reshape(s),)  # inverse of any flattening below
_transpose_reshape = lambda t, s: (t.T.reshape(s),)
_by_rows = lambda a: a.reshape(a.shape[0], -1)  # [D, N, H] -> [D, N*H]
_by_cols = lambda a: a.reshape(-1, a.shape[-1])  # [N, H, D] -> [N*H, D]


def _same(ours: str, theirs: str) -> Entry:
  return Entry((ours,), theirs, lambda a: a, _reshape)


def _fused(ours: tuple[str, ...], theirs: str, flatten, axis: int) -> Entry:
  """Several leaves flattened by `flatten` and concatenated along `axis` (GPT-2's c_attn)."""

  def from_hf(t, *shapes):
    sizes = [int(np.prod(s[axis:])) for s in shapes]
    parts = np.split(t, np.cumsum(sizes)[:-1], axis=axis)
    return tuple(p.reshape(s) for p, s in zip(parts, shapes))

  return Entry(ours, theirs, lambda *a: jnp.concatenate([flatten(x) for x in a], axis), from_hf)


def _linear(ours: str, theirs: str, flatten=lambda a: a) -> Entry:
  """A torch Linear weight [out, in]: our kernel [in..., out...] flattened, transposed."""
  return Entry((ours,), theirs, lambda a: flatten(a).T, _transpose_reshape)


def conversion_table(cfg, arch: str) -> tuple[list[Entry], list[Entry]]:
  """(model-level rows, per-layer rows) mapping our params to `arch`'s HF tensors."""
  qkv = ("attn/query", "attn/key", "attn/value")
  if arch == "gpt2":
    top = [
        _same("embed/embedding", "transformer.wte.weight"),
        _same("pos_embed/embedding", "transformer.wpe.weight"),
        _same("final_norm/scale", "transformer.ln_f.weight"),
        _same("final_norm/bias", "transformer.ln_f.bias"),
    ]
    pre = "transformer.h.{i}."
    layer = [
        _same("attn_norm/scale", pre + "ln_1.weight"),
        _same("attn_norm/bias", pre + "ln_1.bias"),
        _fused(tuple(m + "/kernel" for m in qkv), pre + "attn.c_attn.weight", _by_rows, 1),
        _fused(
            tuple(m + "/bias" for m in qkv), pre + "attn.c_attn.bias", lambda a: a.reshape(-1), 0
        ),
        Entry(("attn/out/kernel",), pre + "attn.c_proj.weight", _by_cols, _reshape),
        _same("attn/out/bias", pre + "attn.c_proj.bias"),
        _same("mlp_norm/scale", pre + "ln_2.weight"),
        _same("mlp_norm/bias", pre + "ln_2.bias"),
        _same("mlp/wi/kernel", pre + "mlp.c_fc.weight"),
        _same("mlp/wi/bias", pre + "mlp.c_fc.bias"),
        _same("mlp/wo/kernel", pre + "mlp.c_proj.weight"),
        _same("mlp/wo/bias", pre + "mlp.c_proj.bias"),
    ]
    return top, layer
  top = [
      _same("embed/embedding", "model.embed_tokens.weight"),
      _same("final_norm/scale", "model.norm.weight"),
  ]
  if not cfg.tie_embeddings:
    top.append(_linear("unembed/kernel", "lm_head.weight"))
  pre = "model.layers.{i}."
  projections = [(m, f"self_attn.{p}_proj", _by_rows) for m, p in zip(qkv, "qkv")]
  projections += [
      ("attn/out", "self_attn.o_proj", _by_cols),
      ("mlp/wi_0", "mlp.gate_proj", _by_rows),
      ("mlp/wi_1", "mlp.up_proj", _by_rows),
      ("mlp/wo", "mlp.down_proj", _by_rows),
  ]
  layer = [
      _same("attn_norm/scale", pre + "input_layernorm.weight"),
      _same("mlp_norm/scale", pre + "post_attention_layernorm.weight"),
  ]
  for ours, theirs, flatten in projections:
    layer.append(_linear(f"{ours}/kernel", f"{pre}{theirs}.weight", flatten))
    if cfg.use_bias:
      layer.append(
          Entry((f"{ours}/bias",), f"{pre}{theirs}.bias", lambda a: a.reshape(-1), _reshape)
      )
  return top, layer


def _leaf(tree: dict, path: str):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def _put(tree: dict, path: str, value) -> None:
  *parents, last = path.split("/")
  for key in parents:
    tree = tree.setdefault(key, {})
  tree[last] = value


def _layers(params: dict, cfg) -> list[dict]:
  """Per-layer param dicts from a scanned ('block', leading layer axis) or unrolled
  ('block_i') stack (arrays or shape structs)."""
  stack = params["layers"]
  if "block" in stack:
    return [jax.tree.map(lambda a, i=i: a[i], stack["block"]) for i in range(cfg.num_layers)]
  return [stack[f"block_{i}"] for i in range(cfg.num_layers)]


def _stack_layers(layers: list[dict], scan: bool) -> dict:
  if not scan:
    return {f"block_{i}": layer for i, layer in enumerate(layers)}
  return {"block": jax.tree.map(lambda *xs: np.stack(xs), *layers)}


def _our_shapes(cfg) -> tuple[dict, dict]:
  """(model-level shape structs, one layer's shape structs) of our params for `cfg`."""
  shapes = nn.unbox(
      jax.eval_shape(
          lambda: Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
      )["params"]
  )
  stack = shapes["layers"]
  one = (
      jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), stack["block"])
      if "block" in stack
      else stack["block_0"]
  )
  return shapes, one


def to_hf_state_dict(cfg, params: dict, arch: str) -> dict[str, np.ndarray]:
  """Our (unboxed) params -> HF tensor dict (numpy float32, contiguous)."""
  _check_arch(arch, cfg)
  f32 = lambda a: np.ascontiguousarray(np.asarray(a, np.float32))
  params = jax.tree.map(np.asarray, params)
  top, per_layer = conversion_table(cfg, arch)
  sd = {e.theirs: f32(e.to_hf(*[_leaf(params, p) for p in e.ours])) for e in top}
  for i, layer in enumerate(_layers(params, cfg)):
    sd.update(
        {e.theirs.format(i=i): f32(e.to_hf(*[_leaf(layer, p) for p in e.ours])) for e in per_layer}
    )
  return sd


def from_hf_state_dict(cfg, sd: dict[str, np.ndarray]) -> dict:
  """HF tensor dict -> our params (numpy), layer stack laid out per cfg.scan_layers.
  Raises KeyError naming the missing tensor, ValueError on a shape mismatch."""
  dt = np.dtype(cfg.param_dtype) if cfg.param_dtype != "bfloat16" else np.float32
  top, per_layer = conversion_table(cfg, detect_arch(cfg))
  shapes, layer_shapes = _our_shapes(cfg)

  def convert(entry: Entry, key: str, tree: dict, out: dict) -> None:
    structs = [_leaf(tree, p) for p in entry.ours]
    want = jax.eval_shape(entry.to_hf, *structs).shape
    if key not in sd:
      raise KeyError(f"HF weights lack {key!r} (have e.g. {sorted(sd)[:4]}...)")
    t = np.asarray(sd[key], np.float32)
    if t.shape != want:
      raise ValueError(
          f"HF tensor {key}: shape {t.shape}, expected {want} for the config in " "config.json"
      )
    for path, leaf in zip(entry.ours, entry.from_hf(t, *[s.shape for s in structs])):
      _put(out, path, np.ascontiguousarray(leaf.astype(dt)))

  params = {}
  for e in top:
    convert(e, e.theirs, shapes, params)
  layers = [{} for _ in range(cfg.num_layers)]
  for i, layer in enumerate(layers):
    for e in per_layer:
      convert(e, e.theirs.format(i=i), layer_shapes, layer)
  params["layers"] = _stack_layers(layers, cfg.scan_layers)
  return params


# ----------------------------------------------------------------------------- directories


def export_dir(
    cfg, params: dict, out_dir, *, arch: str | None = None, tokenizer=None, bos: str = "auto"
) -> dict:
  """Writes config.json, model.safetensors and, when `tokenizer.spec` names a tokenizer.json,
  tokenizer.json + tokenizer_config.json. The tokenizer's post-processor is set to add BOS
  exactly when unleash adds it with `bos` (eval/zeroshot BOS_MODES), so HF tools and
  lm-evaluation-harness score the export as `eval.zeroshot --bos {bos}` scores the run.
  Returns the config dict written."""
  cfg = ModelConfig.from_config(cfg)
  arch = arch or detect_arch(cfg)
  if arch not in ARCHS:
    raise ValueError(f"arch {arch!r}: choose one of {ARCHS}")
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  conf = hf_config(cfg, arch, tokenizer)
  (out / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
  save_file(
      to_hf_state_dict(cfg, params, arch), str(out / "model.safetensors"), metadata={"format": "pt"}
  )
  spec = getattr(tokenizer, "spec", "") or ""
  if spec.endswith(".json") and pathlib.Path(spec).is_file():
    export_tokenizer(tokenizer, out, bos=bos, model_max_length=cfg.max_seq_len)
  elif spec == "byte":  # no tokenizer.json exists for it: say which one the weights expect
    (out / BYTE_MARKER).write_text(json.dumps({"tokenizer": "byte"}) + "\n")
  return conf


def export_tokenizer(tokenizer, out_dir, *, bos: str = "auto", model_max_length: int) -> None:
  """tokenizer.json (post-processor adding BOS as unleash does under `bos`) and a
  tokenizer_config.json naming the special tokens the tokenizer itself reports."""
  out = pathlib.Path(out_dir)
  add_bos = zeroshot.bos_added(tokenizer, bos)
  names = tokenizer.special_tokens
  if add_bos == tokenizer.adds_bos:
    shutil.copyfile(tokenizer.spec, out / "tokenizer.json")
  else:
    tok = tokenizers.Tokenizer.from_file(tokenizer.spec)
    b = names["bos"]
    tok.post_processor = (
        processors.TemplateProcessing(
            single=f"{b} $A", pair=f"{b} $A {b} $B", special_tokens=[(b, tokenizer.bos_id)]
        )
        if add_bos
        else processors.TemplateProcessing(single="$A", pair="$A $B")
    )
    tok.save(str(out / "tokenizer.json"))
  tc = dict(
      tokenizer_class="PreTrainedTokenizerFast",
      model_max_length=model_max_length,
      **{f"{role}_token": name for role, name in names.items()},
  )
  (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2) + "\n")


def _read_safetensors(hf_dir: pathlib.Path) -> dict[str, np.ndarray]:
  single = hf_dir / "model.safetensors"
  if single.is_file():
    return load_file(str(single))
  index = hf_dir / "model.safetensors.index.json"
  if index.is_file():
    files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return {k: v for f in files for k, v in load_file(str(hf_dir / f)).items()}
  raise FileNotFoundError(
      f"{hf_dir}: no model.safetensors (or .index.json); save the HF "
      "model with safe_serialization=True"
  )


def import_dir(hf_dir, **overrides):
  """(ModelConfig, params) from a HF GPT-2/Llama directory on disk; `overrides` set other
  ModelConfig fields (e.g. scan_layers=False)."""
  hf_dir = pathlib.Path(hf_dir)
  conf_path = hf_dir / "config.json"
  if not conf_path.is_file():
    raise FileNotFoundError(
        f"{conf_path} not found; pass a directory written by "
        "save_pretrained or `python -m eval.hf export`"
    )
  cfg = model_config_from_hf(json.loads(conf_path.read_text()), **overrides)
  sd = _read_safetensors(hf_dir)
  # Bf16/fp16 checkpoints load as float32 master weights.
  return cfg, from_hf_state_dict(cfg, sd)


# Written by export for a run that used unleash's byte tokenizer (which has no tokenizer.json):
# import then loads the byte tokenizer, whose 260 ids a padded model vocabulary covers.
BYTE_MARKER = "unleash_tokenizer.json"


def import_to_run(hf_dir, workdir, *, tokenizer: str = "", config=None) -> str:
  """Imports a HF directory as a params-only run in `workdir` (train.checkpoint.save_params),
  so `run_lib.load_run(workdir)`, `config.init_from=workdir` and the eval CLIs accept it.

  The tokenizer: `tokenizer` if given, else the directory's tokenizer.json (copied into the
  workdir with its tokenizer_config.json, which names the special tokens), else our byte
  tokenizer when vocab_size is 260 or the export says so (BYTE_MARKER). data.seq_len is the model's context length
  (max_seq_len), the window eval.zeroshot scores with. Returns the checkpoint dir.
  """
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
    exported_byte = (hf_dir / BYTE_MARKER).is_file()
    if cfg.vocab_size != 260 and not exported_byte:
      raise ValueError(
          f"{hf_dir} has no tokenizer.json and vocab_size={cfg.vocab_size} is not "
          "the byte tokenizer's 260; pass tokenizer= (--tokenizer) a tokenizer.json"
      )
    tokenizer = "byte"
  config.data.tokenizer = tokenizer
  config.name = f"hf-{pathlib.Path(hf_dir).name}"
  return checkpoint.save_params(str(workdir), params, config)


def main(argv=None):
  ap = argparse.ArgumentParser(description="Export a run to / import from a HF directory.")
  sub = ap.add_subparsers(dest="cmd", required=True)
  ex = sub.add_parser("export")
  ex.add_argument("--workdir", required=True)
  ex.add_argument("--out", required=True)
  ex.add_argument("--arch", choices=ARCHS, default=None)
  ex.add_argument(
      "--bos",
      choices=("auto", "always", "never"),
      default="auto",
      help="BOS behaviour the exported tokenizer carries (as eval.zeroshot --bos)",
  )
  im = sub.add_parser("import")
  im.add_argument("--hf-dir", required=True)
  dest = im.add_mutually_exclusive_group(required=True)
  dest.add_argument("--workdir", help="write a params-only run here (for init_from / eval CLIs)")
  dest.add_argument("--out", help="or: write the params as a msgpack file")
  im.add_argument("--tokenizer", default="", help="tokenizer spec if the HF dir has none")
  args = ap.parse_args(argv)
  if args.cmd == "export":
    run = run_lib.load_run(args.workdir)
    params = jax.tree.map(np.asarray, run.params)
    conf = export_dir(
        run.spec.model, params, args.out, arch=args.arch, tokenizer=run.tokenizer, bos=args.bos
    )
    print(f"wrote {conf['model_type']} model to {args.out}")
  elif args.workdir:
    print(f"wrote {import_to_run(args.hf_dir, args.workdir, tokenizer=args.tokenizer)}")
  else:
    cfg, params = import_dir(args.hf_dir)
    pathlib.Path(args.out).write_bytes(serialization.msgpack_serialize(params))
    print(json.dumps(dataclasses.asdict(cfg)))


if __name__ == "__main__":
  cli.run(main)
