"""Parity with lm-evaluation-harness itself: the same (context, ending) pairs scored by
eval.zeroshot and by lm-eval's own Hugging Face wrapper (lm_eval.models.huggingface.HFLM built
from the in-memory transformers model and tokenizer) agree within 1e-4 nats, for a HellaSwag
jsonl task, SST-2 and a jsonl task whose prompts end in a space, plus a context longer than
the model's window.

- GPT-2 (no BOS: its tokenizer.json has only `<|endoftext|>` and a post-processor that adds
  nothing) built in transformers, saved, imported with `eval.hf import` into a run and scored
  through `evaluate_run` with the defaults.
- Llama with GQA built in unleash, exported with `eval.hf export` (its tokenizer adds BOS, and
  the export carries that or, with bos=never, its absence), loaded back by transformers.

Needs the `lm_eval` extra (lm-eval, torch CPU, transformers); skipped with the reason
otherwise. Everything is local: tokenizers are trained here, nothing is downloaded.
"""

import json
import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch", reason="needs the `lm_eval` extra (torch CPU)")
transformers = pytest.importorskip("transformers", reason="needs the `lm_eval` extra")
huggingface = pytest.importorskip(
    "lm_eval.models.huggingface", reason="needs the `lm_eval` extra (lm-eval[hf])"
)

import tokenizers  # noqa: E402
from tokenizers import decoders  # noqa: E402
from tokenizers import models  # noqa: E402
from tokenizers import pre_tokenizers  # noqa: E402
from tokenizers import processors  # noqa: E402
from tokenizers import trainers  # noqa: E402
import yaml  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from eval import hf  # noqa: E402
from eval import zeroshot as zs  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.transformer import Transformer  # noqa: E402
from train import run as run_lib  # noqa: E402
from train.data import tokenizer as tok_lib  # noqa: E402

TOL = 1e-4
WINDOW = 64  # the models' context length: a long HellaSwag context overflows it
EOT = "<|endoftext|>"

HELLASWAG_ROWS = [
    dict(
        activity_label="Roof shingle removal",
        ctx_a="A man is sitting on a roof.",
        ctx_b="he",
        endings=[
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        label=3,
    ),
    dict(
        activity_label="Finance and Business",
        ctx_a="[header] How to save money [title] " "Cut costs. [step] Spend less on food.",
        ctx_b="",
        label="1",
        endings=[
            "[substeps] Eat in more often.",
            "Walk [title] Bike to work.",
            "Buy a boat.",
            "[step] Save money on rent.",
        ],
    ),
    dict(
        activity_label="Running a marathon",
        ctx_a=" ".join(["The runners move along the road while people cheer from the side."] * 6),
        ctx_b="THE man",
        endings=["waves.", "falls down.", "drinks water.", "stops."],
        label=0,
    ),
]
SST2_TSV = (
    "sentence\tlabel\nit 's a charming and often affecting journey . \t1\n"
    "unflinchingly bleak and desperate \t0\n"
)
SPACE_PROMPTS = [
    {"context": "Question: Is the sky blue? Answer: ", "choices": ["yes", "no"], "label": 0},
    {"context": "The capital of France is ", "choices": ["Paris.", "a roof."], "label": 0},
]
CORPUS = [
    json.dumps(HELLASWAG_ROWS),
    SST2_TSV,
    json.dumps(SPACE_PROMPTS),
    "Question: Answer: The man is sitting on a roof. negative positive",
] * 20


def _tasks(tmp_path) -> list[zs.Task]:
  (tmp_path / "hellaswag.jsonl").write_text("\n".join(json.dumps(r) for r in HELLASWAG_ROWS))
  (tmp_path / "dev.tsv").write_text(SST2_TSV)
  (tmp_path / "space.jsonl").write_text("\n".join(json.dumps(r) for r in SPACE_PROMPTS))
  return [
      zs.load_task(f"hellaswag:{tmp_path / 'hellaswag.jsonl'}"),
      zs.load_task(f"sst2:{tmp_path / 'dev.tsv'}"),
      zs.load_task(f"jsonl:{tmp_path / 'space.jsonl'}"),
  ]


def _lm_eval_loglikelihoods(model, hf_tokenizer, tasks) -> list[list[float]]:
  """lm-eval's log-likelihood of every (context, delimiter + choice), per item."""
  lm = huggingface.HFLM(pretrained=model, tokenizer=hf_tokenizer, batch_size=8)
  assert lm.max_length == WINDOW
  items = [item for task in tasks for item in task.items]
  reqs = [
      Instance(
          request_type="loglikelihood",
          doc={},
          idx=j,
          arguments=(item.context, item.delimiter + choice),
      )
      for item in items
      for j, choice in enumerate(item.choices)
  ]
  lls = iter(ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True))
  return [[next(lls) for _ in item.choices] for item in items]


def _assert_parity(ours: list[list[float]], theirs: list[list[float]]):
  ours, theirs = np.concatenate(ours), np.concatenate(theirs)
  assert len(ours) == 3 * 4 + 2 * 2 + 2 * 2 == len(theirs)  # HellaSwag, SST-2, jsonl
  assert np.abs(theirs).std() > 1.0  # scores far apart: a wrong token would show
  np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)


def test_readers_build_lm_eval_documents(tmp_path):
  """Our HellaSwag items are what lm-eval's own process_docs makes of the same rows; our
  SST-2 prompt and choices are its task file's."""
  import datasets  # noqa: PLC0415 (`data` extra)
  from lm_eval.tasks.hellaswag import utils  # noqa: PLC0415 (`lmeval` extra)

  hs, sst2, _ = _tasks(tmp_path)
  docs = utils.process_docs(
      datasets.Dataset.from_list([{**r, "label": str(r["label"])} for r in HELLASWAG_ROWS])
  )
  assert [(d["query"], tuple(d["choices"]), d["gold"]) for d in docs] == [
      (i.context, i.choices, i.label) for i in hs.items
  ]
  assert hs.items[1].choices[0] == " Eat in more often."  # tag-led: scored after two spaces
  sst2_yaml = pathlib.Path(utils.__file__).parents[1] / "glue" / "sst2" / "default.yaml"
  conf = yaml.safe_load(sst2_yaml.read_text())
  assert conf["doc_to_text"].replace("{{sentence}}", "{sentence}") == zs.SST2_PROMPT
  assert tuple(conf["doc_to_choice"]) == zs.SST2_CHOICES
  assert conf.get("target_delimiter", " ") == sst2.items[0].delimiter


def _gpt2_tokenizer_json(path):
  """A byte-level BPE laid out as GPT-2's tokenizer.json: one special token, <|endoftext|>,
  and a ByteLevel post-processor that adds nothing."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  tok.train_from_iterator(
      CORPUS,
      trainer=trainers.BpeTrainer(
          vocab_size=400,
          special_tokens=[EOT],
          show_progress=False,
          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      ),
  )
  tok.save(str(path))
  return tok.get_vocab_size()


def _randomise_norms(model):
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "ln" in name or "norm" in name:
        p.add_(0.3 * torch.randn_like(p))
  return model.eval()


def test_gpt2_imported_run_matches_lm_eval(tmp_path):
  hf_dir = tmp_path / "gpt2"
  hf_dir.mkdir()
  vocab = _gpt2_tokenizer_json(hf_dir / "tokenizer.json")
  torch.manual_seed(0)
  model = _randomise_norms(
      transformers.GPT2LMHeadModel(
          transformers.GPT2Config(
              vocab_size=vocab,
              n_positions=WINDOW,
              n_embd=32,
              n_layer=2,
              n_head=4,
              initializer_range=0.3,
              bos_token_id=0,
              eos_token_id=0,
          )
      )
  )
  model.save_pretrained(hf_dir, safe_serialization=True)
  hf.import_to_run(hf_dir, tmp_path / "run")  # the tokenizer.json alone names no roles
  run = run_lib.load_run(str(tmp_path / "run"))
  tok = run.tokenizer
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id, tok.adds_bos) == (0, 0, 0, None, False)
  assert run.config.data.seq_len == WINDOW  # not capped below the model's context length

  tasks = _tasks(tmp_path)
  results = [zs.evaluate_run(run, task, batch_size=8) for task in tasks]
  for res in results:
    assert (res["window"], res["bos"], res["bos_added"]) == (WINDOW, "auto", False)
    assert res["lm_eval_comparable"]
  hf_tok = transformers.PreTrainedTokenizerFast(
      tokenizer_file=str(hf_dir / "tokenizer.json"), bos_token=EOT, eos_token=EOT
  )
  theirs = _lm_eval_loglikelihoods(model, hf_tok, tasks)
  _assert_parity([ll for res in results for ll in res["loglikelihoods"]], theirs)

  # Always adding BOS (unleash's old behaviour) is what this test exists to catch.
  always = zs.evaluate_run(run, tasks[0], batch_size=8, bos="always")
  assert not always["lm_eval_comparable"]
  assert (
      np.abs(
          np.concatenate(always["loglikelihoods"]) - np.concatenate(theirs[: len(tasks[0].items)])
      ).max()
      > 0.1
  )
  columns = zs.ladder_columns(run, [f"sst2:{tmp_path / 'dev.tsv'}"], batch_size=8)
  assert columns["sst2/correct_logprob"] == pytest.approx(
      np.mean([ll[item.label] for ll, item in zip(theirs[3:5], tasks[1].items)]), abs=TOL
  )
  assert {
      "sst2/acc",
      "sst2/acc_stderr",
      "sst2/correct_bpb",
      "sst2/correct_prob_norm",
      "sst2/acc_norm",
      "sst2/acc_bytes",
      "sst2/n",
  } <= set(columns)


def _random_params(cfg, seed=0):
  shapes = nn.unbox(
      jax.eval_shape(
          lambda: Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
      )["params"]
  )
  rng = np.random.default_rng(seed)
  flat, tree = jax.tree_util.tree_flatten_with_path(shapes)
  leaves = [
      (0.3 * rng.standard_normal(x.shape) + ("scale" in jax.tree_util.keystr(path))).astype(
          np.float32
      )
      for path, x in flat
  ]
  return jax.tree.unflatten(tree, leaves)


@pytest.mark.parametrize("bos", ["auto", "never"])
def test_llama_gqa_export_matches_lm_eval(tmp_path, bos):
  """Our tokenizer adds BOS (auto); the export carries that, or its absence with bos=never,
  so lm-eval on the export scores what unleash scores."""
  tok = tok_lib.train_bpe(CORPUS, 400, tmp_path / "tok.json")
  assert tok.adds_bos
  cfg = ModelConfig(
      vocab_size=tok.vocab_size,
      d_model=32,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=12,
      mlp_dim=40,
      max_seq_len=WINDOW,
      pos_encoding="rope",
      rope_theta=500.0,
      norm="rmsnorm",
      mlp="swiglu",
      use_bias=False,
      tie_embeddings=False,
      norm_eps=1e-6,
  )
  params = _random_params(cfg)
  hf.export_dir(cfg, params, tmp_path / "hf", tokenizer=tok, bos=bos)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "hf", local_files_only=True
  ).eval()
  hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
  assert (hf_tok("a b")["input_ids"][0] == tok.bos_id) == (bos == "auto")

  tasks = _tasks(tmp_path)
  fn = zs.make_token_logprobs_fn(cfg, params)
  encoder = zs.make_encoder(tok, bos)
  ours = [
      ll
      for task in tasks
      for ll in zs.evaluate_task(
          task, fn, encoder, window=cfg.max_seq_len, batch_size=8, pad_id=tok.pad_id
      )["loglikelihoods"]
  ]
  _assert_parity(ours, _lm_eval_loglikelihoods(model, hf_tok, tasks))
