"""eval.bias (CrowS-Pairs): the CSV reader, the stereotype-preference rule and its intervals on
pairs with known answers, the tokenizer checks, the masked-LM pseudo-log-likelihood and the
causal sentence log-likelihood against direct computation, and the CLI on a tiny trained run."""

import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eval import bias
from eval import zeroshot
from model.config import ModelConfig
from model.transformer import Transformer
from train import cli
from train.data.tokenizer import ByteTokenizer

BYTES = ByteTokenizer()
HEADER = "index,sent_more,sent_less,stereo_antistereo,bias_type,annotations\n"
Z95 = 1.959963984540054  # standard normal 97.5% quantile


def _wilson(k, n, z=Z95):
  """The Wilson score interval written out, in percent."""
  p = k / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return 100 * (centre - half), 100 * (centre + half)


# ----------------------------------------------------------------------------- reading


def test_reader_keeps_a_quoted_field_spanning_lines(tmp_path):
  path = tmp_path / "cp.csv"
  path.write_text(
      HEADER
      + '0,"He said, ""poor"" people.",He said rich people.,stereo,socioeconomic,[]\n'
      + '1,Bob was poor.,"Bob was white\n.",antistereo,race-color,"[[\'x\'],\n[]]"\n'
      + "2,A old man.,A young man.,stereo,age,[]\n",
      encoding="utf-8",
  )
  pairs = bias.read_crows_pairs(path)
  assert [p.record for p in pairs] == [1, 2, 3]
  assert pairs[0] == bias.Pair(
      'He said, "poor" people.', "He said rich people.", "stereo", "socioeconomic", 1
  )
  assert pairs[1].sent_less == "Bob was white\n." and pairs[1].direction == "antistereo"
  assert pairs[2].bias_type == "age"
  assert [p.record for p in bias.read_crows_pairs(path, limit=2)] == [1, 2]
  # A byte-order mark (spreadsheet exports) must not rename the first column.
  path.write_text(
      "\ufeffsent_more,sent_less,stereo_antistereo,bias_type\na,b,stereo,age\n", encoding="utf-8"
  )
  assert bias.read_crows_pairs(path) == [bias.Pair("a", "b", "stereo", "age", 1)]


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "no pairs"),
        (HEADER, "no pairs"),
        ("sent_more,sent_less,bias_type\na,b,age\n", "missing column.*stereo_antistereo"),
        (HEADER + "0,a,b,both,age,[]\n", "record 1: stereo_antistereo must be"),
        (HEADER + "0,a,,stereo,age,[]\n", "record 1 has empty sent_less"),
    ],
)
def test_reader_rejects_bad_files(tmp_path, text, match):
  path = tmp_path / "bad.csv"
  path.write_text(text, encoding="utf-8")
  with pytest.raises(ValueError, match=match):
    bias.read_crows_pairs(path)


def test_reader_rejects_non_utf8_and_missing_file(tmp_path):
  path = tmp_path / "latin1.csv"
  path.write_bytes((HEADER + "0,caf\xe9 a,b,stereo,age,[]\n").encode("latin-1"))
  with pytest.raises(ValueError, match="not UTF-8"):
    bias.read_crows_pairs(path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    bias.read_crows_pairs(tmp_path / "absent.csv")


# ----------------------------------------------------------------------------- the rule


def _pair(more, less, direction, bias_type, record=0):
  return bias.Pair(more, less, direction, bias_type, record)


# A scorer that always prefers the sentence starting with "A" (both or neither: a tie).
PREFERS_A = lambda pairs: (
    np.array([float(p.sent_more.startswith("A")) for p in pairs]),
    np.array([float(p.sent_less.startswith("A")) for p in pairs]),
)

KNOWN = [
    _pair("A he", "B she", "stereo", "gender"),  # preferred
    _pair("B he", "A she", "stereo", "gender"),  # not
    _pair("A she", "B he", "antistereo", "gender"),  # preferred: sent_more wins, any direction
    _pair("A x", "A y", "stereo", "gender"),  # tie: counted, not preferred
    _pair("A old", "B young", "stereo", "age"),  # preferred
    _pair("A young", "B old", "antistereo", "age"),  # preferred
    _pair("B young", "A old", "antistereo", "age"),  # not
] + [
    _pair("B us", "A them", "stereo", "religion")
] * 5  # none preferred


def test_always_prefers_a_gives_the_hand_counted_shares_and_intervals():
  res = bias.evaluate_pairs(KNOWN, PREFERS_A, metric="sentence_ll")
  want = {"gender": (4, 2, 1), "age": (3, 2, 0), "religion": (5, 0, 0)}
  assert list(res["by_type"]) == ["religion", "gender", "age"]  # largest first
  for bias_type, (n, k, ties) in want.items():
    g = res["by_type"][bias_type]
    assert (g["n"], g["preferred"], g["ties"]) == (n, k, ties)
    assert g["pct"] == pytest.approx(100 * k / n)
    assert (g["ci_low"], g["ci_high"]) == pytest.approx(_wilson(k, n), abs=1e-9)
  assert res["by_type"]["religion"]["p_vs_50"] == pytest.approx(2 / 2**5)  # 0 of 5, two-sided
  overall = res["overall"]
  assert (overall["n"], overall["preferred"], overall["ties"]) == (12, 4, 1)
  # two-sided exact p of 4 of 12: outcomes 0..4 and 8..12 are as or less likely
  assert overall["p_vs_50"] == pytest.approx(2 * (1 + 12 + 66 + 220 + 495) / 4096)
  assert (res["by_direction"]["stereo"]["n"], res["by_direction"]["stereo"]["preferred"]) == (9, 2)
  assert (
      res["by_direction"]["antistereo"]["n"],
      res["by_direction"]["antistereo"]["preferred"],
  ) == (3, 2)
  assert [p["score_more"] > p["score_less"] for p in res["pairs"][:3]] == [True, False, True]
  report = bias.format_report(res)
  assert "sentence_ll" in report and "not the paper's metric" in report
  assert "50% is the unbiased ideal" in report and "Blodgett" in report
  assert "not a certificate" in report and "US stereotypes" in report
  assert "12 read, 12 scored, 0 skipped" in report


def test_scores_are_compared_at_three_decimals():
  pairs = [_pair("a", "b", "stereo", "age")] * 3
  res = bias.bias_scores(pairs, [-1.0004, -1.0006, -2.0], [-1.0, -1.0, -2.0])
  # -1.0004 rounds to -1.0: a tie, as in the reference code; -1.0006 rounds to -1.001: loses
  assert (res["overall"]["preferred"], res["overall"]["ties"]) == (0, 2)
  with pytest.raises(ValueError, match="non-finite"):
    bias.bias_scores(pairs, [np.nan, 0, 0], [0, 0, 0])


# ----------------------------------------------------------------------------- tokenizer checks


class _LossyTokenizer:
  """Like a SentencePiece model without byte fallback: anything outside a-z and space is <unk>."""

  spec = "lossy"

  def encode(self, text):
    return [ord(c) if c == " " or "a" <= c <= "z" else 0 for c in text]

  def decode(self, ids):
    return "".join(chr(i) if i else "\u2047" for i in ids)


def test_unencodable_pairs_are_skipped_and_counted():
  pairs = [
      _pair("the cat", "the dog", "stereo", "age"),
      _pair("\u00c9 is poor", "\u00d6 is poor", "stereo", "nationality"),  # both <unk> is poor
      _pair("the Cat", "the Dog", "stereo", "age"),  # <unk>at, <unk>og
      _pair("a very long sentence", "a short one", "stereo", "age"),
  ]
  kept, skipped = bias.check_encodable(pairs, _LossyTokenizer(), max_tokens=15)
  assert kept == pairs[:1]
  assert skipped == {"identical_encoding": 1, "no_round_trip": 1, "too_long": 1}
  kept, skipped = bias.check_encodable(pairs, BYTES)  # lossless, no length limit
  assert kept == pairs and skipped == {}
  with pytest.raises(ValueError, match="none of the 2 pairs.*1 identical encoding.*cannot encode"):
    bias.check_encodable(pairs[1:3], _LossyTokenizer())
  with pytest.raises(ValueError, match="1 too long.*exceed the sequence length 15"):
    bias.check_encodable(pairs[3:], BYTES, max_tokens=15)


def test_a_sentencepiece_model_that_maps_text_to_unk_is_detected(tmp_path):
  """A real SentencePiece model trained on the letters a-d only (no byte fallback)."""
  spm = pytest.importorskip("sentencepiece")
  import io
  from train.data import tokenizer as tok_lib

  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(["a bad cab", "a dab cab bad"] * 20),
      model_writer=model,
      vocab_size=12,
      hard_vocab_limit=False,
      minloglevel=2,
  )
  (tmp_path / "sp.model").write_bytes(model.getvalue())
  tok = tok_lib.load(str(tmp_path / "sp.model"))
  pairs = [
      _pair("a bad cab", "a dab cab", "stereo", "age"),
      _pair("X is bad", "Y is bad", "stereo", "race-color"),  # both "? ?? bad"
      _pair("Jamal was poor", "Jake was poor", "stereo", "race-color"),
  ]
  kept, skipped = bias.check_encodable(pairs, tok)
  assert kept == pairs[:1] and skipped == {"identical_encoding": 1, "no_round_trip": 1}


# ----------------------------------------------------------------------------- alignment


def _framed(text):
  return [BYTES.bos_id] + BYTES.encode(text) + [BYTES.eos_id]


def test_unmodified_positions_align_shared_tokens_without_framing():
  a, b = _framed("the cat sat"), _framed("the dog sat")
  assert bias.unmodified_positions(a, b) == ([1, 2, 3, 4, 8, 9, 10, 11],) * 2
  a, b = _framed("the woman sat"), _framed("the man sat")  # "man" is shared, "wo" inserted
  assert bias.unmodified_positions(a, b) == (
      [1, 2, 3, 4, *range(7, 14)],
      [1, 2, 3, 4, *range(5, 12)],
  )
  # Over 200 tokens difflib's autojunk would drop the lone shared space between two edits.
  base = "the person who lives next door helps everyone in the street with the shopping; " * 3
  a, b = _framed(base + "XX YY said so."), _framed(base + "QQ ZZ said so.")
  pos_a, pos_b = bias.unmodified_positions(a, b)
  assert len(a) > 200 and pos_a == pos_b and len(pos_a) == len(a) - 2 - 4


# ----------------------------------------------------------------------------- model scores


def _tiny(**kw):
  cfg = ModelConfig(
      vocab_size=260,
      d_model=32,
      num_layers=1,
      num_heads=2,
      num_kv_heads=2,
      head_dim=16,
      mlp_dim=64,
      max_seq_len=32,
      init_std=0.3,
      **kw,
  )
  model = Transformer(cfg)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
  logp = jax.jit(lambda ids: jax.nn.log_softmax(model.apply({"params": params}, ids)[0]))
  return cfg, params, lambda ids: np.asarray(logp(jnp.asarray([ids])))


PAIRS = [
    _pair("the cat sat", "the dog sat", "stereo", "age"),
    _pair("the woman sat", "the man sat", "antistereo", "gender"),
    _pair("poor people", "rich people", "stereo", "socioeconomic"),
]


def _naive_pll(logp, pair):
  """The paper's loop: one unpadded forward pass per masked unmodified token."""
  a, b = _framed(pair.sent_more), _framed(pair.sent_less)
  scores = []
  for ids, positions in zip((a, b), bias.unmodified_positions(a, b)):
    total = 0.0
    for p in positions:
      masked = list(ids)
      masked[p] = BYTES.mask_id
      total += float(logp(masked)[p, ids[p]])
    scores.append(total)
  return scores


def test_a_masked_lm_run_is_scored_by_pll_matching_a_naive_masking_loop():
  """evaluate_run on an MLM run (its mesh, batches padded): the paper's metric, equal to the
  naive loop; pairs longer than seq_len are skipped and counted."""
  from configs import default
  from train import mesh as mesh_lib
  from train import run as run_lib
  from train import spec

  config = default.get_config("size=tiny")
  config.model.update(attention_mask="bidirectional", mlm_head=True, num_layers=1, init_std=0.3)
  config.train.objective = "mlm"
  cfg, params, logp = _tiny(attention_mask="bidirectional", mlm_head=True)
  assert cfg == ModelConfig.from_config(config.model)
  run = run_lib.Run(
      config, spec.resolve(config), params, BYTES, mesh_lib.make_mesh(config), None, 0, "mem"
  )
  long = _pair("this sentence is much too long to fit", "that one too", "stereo", "age")
  res = bias.evaluate_run(run, PAIRS + [long], batch_size=3)
  assert res["metric"] == "pll" and "the paper's metric" in res["metric_description"]
  assert (res["n_read"], res["n_scored"], res["skipped"]) == (4, 3, {"too_long": 1})
  assert "1 skipped (1 too long)" in bias.format_report(res)
  for pair, got in zip(PAIRS, res["pairs"]):
    want = _naive_pll(logp, pair)
    assert [got["score_more"], got["score_less"]] == pytest.approx(want, abs=1e-4)
  assert res["pairs"][0]["score_more"] != res["pairs"][0]["score_less"]


def test_sentence_log_likelihood_matches_direct_computation():
  cfg, params, logp = _tiny()
  fn = zeroshot.make_token_logprobs_fn(cfg, params)
  more, less = bias.sentence_ll_scorer(fn, BYTES, seq_len=32, batch_size=4)(PAIRS)
  for pair, got in zip(PAIRS, zip(more, less)):
    want = []
    for text in (pair.sent_more, pair.sent_less):
      ids = [BYTES.bos_id] + BYTES.encode(text)
      lp = logp(ids[:-1])
      want.append(sum(float(lp[i, ids[i + 1]]) for i in range(len(ids) - 1)))
    assert got == pytest.approx(want, abs=1e-4)


def test_metric_follows_the_model():
  from configs import default

  config = default.get_config("size=tiny")
  assert bias.metric_for(config) == "sentence_ll"
  config.model.attention_mask = "bidirectional"
  with pytest.raises(ValueError, match="without the MLM objective"):
    bias.metric_for(config)
  config.train.objective = "mlm"
  assert bias.metric_for(config) == "pll"


# ----------------------------------------------------------------------------- the CLI


def _cli_error(argv, capsys):
  with pytest.raises(SystemExit) as e:
    cli.guarded(bias.main)(argv)
  err = capsys.readouterr().err
  assert e.value.code == 1 and err.count("\n") == 1 and err.startswith("error: ")
  return err


def test_cli_bad_input_is_one_line(tmp_path, capsys):
  good = tmp_path / "cp.csv"
  good.write_text(HEADER + "0,a b,a c,stereo,age,[]\n")
  err = _cli_error(["--workdir", str(tmp_path / "absent"), "--data", str(good)], capsys)
  assert "run directory" in err and "does not exist" in err
  (tmp_path / "empty.csv").write_text("")
  assert "no pairs" in _cli_error(
      ["--workdir", str(tmp_path), "--data", str(tmp_path / "empty.csv")], capsys
  )
  (tmp_path / "cols.csv").write_text("sent_more,sent_less\na,b\n")
  assert "missing column" in _cli_error(
      ["--workdir", str(tmp_path), "--data", str(tmp_path / "cols.csv")], capsys
  )


@pytest.mark.slow
def test_cli_on_a_tiny_run_and_the_real_file(tmp_path, shared_data):
  """4 steps of the tiny default config, then `python -m eval.bias` on the first 20 pairs."""
  from configs import default
  from train import trainer

  data = shared_data / "bias" / "crows_pairs" / "crows_pairs_anonymized.csv"
  if not data.is_file():
    pytest.skip(f"{data} not present")
  config = default.get_config("size=tiny")
  config.train.steps = 4
  config.checkpoint.async_save = False
  trainer.train_and_evaluate(config, str(tmp_path / "run"))
  out_json = tmp_path / "bias.json"
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "eval.bias",
          "--workdir",
          str(tmp_path / "run"),
          "--data",
          str(data),
          "--limit",
          "20",
          "--json",
          str(out_json),
      ],
      cwd=repo,
      env=dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu"),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "metric: sentence_ll" in proc.stdout and "Blodgett" in proc.stdout
  assert "20 read, 20 scored, 0 skipped" in proc.stdout
  res = json.loads(out_json.read_text())
  first20 = bias.read_crows_pairs(data, limit=20)
  assert res["n_scored"] == 20 and res["step"] == 4
  assert {t: g["n"] for t, g in res["by_type"].items()} == {
      t: sum(p.bias_type == t for p in first20) for t in {p.bias_type for p in first20}
  }
  more = np.round([p["score_more"] for p in res["pairs"]], 3)
  less = np.round([p["score_less"] for p in res["pairs"]], 3)
  assert np.all(np.isfinite(more)) and np.all(more < 0)
  assert res["overall"]["preferred"] == int((more > less).sum())
