"""Zero-shot scoring: parsers of each task format (lm-eval's HellaSwag preprocessing), pair
encoding as lm-eval builds it, the scorer and its metrics with a stub model whose answers are
known, and the real Transformer path (padding/segments) against a direct computation.
Parity with lm-evaluation-harness itself: tests/test_zeroshot_lm_eval.py."""

import bz2
import json
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eval import zeroshot as zs
from model.config import ModelConfig
from model.transformer import Transformer

encode = lambda s: list(s.encode("utf-8"))
BOS = 256
BYTES = zs.Encoder(encode, None, BOS)  # bytes, no BOS (an empty context gets BOS)
BYTES_BOS = zs.Encoder(encode, BOS, BOS)  # BOS before every context


def _unigram_fn(logp_V):
  """A stub 'model': every target token t gets log-prob logp_V[t] whatever the context."""

  def fn(batch):
    t = batch["targets"]
    argmax = int(np.argmax(logp_V))
    return logp_V[t], t == argmax

  return fn


def _bigram_fn(next_of):
  """A stub model that is certain: after byte a it predicts next_of[a] with prob 1."""

  def fn(batch):
    pred = np.vectorize(lambda a: next_of.get(int(a), -1))(batch["inputs"])
    hit = pred == batch["targets"]
    return np.where(hit, 0.0, -30.0), hit

  return fn


HELLASWAG = """Roof shingle removal: A man is sitting on a roof. he
3
is using wrap to wrap a pair of skis.
is ripping level tiles off.
is holding a rubik's cube.
starts pulling up roofing on a roof.
Clean and jerk: A lady walks to a barbell. the lady
0
stands and lifts the weight.
pulls the barbell forward.
pulls a rope.
swings.
"""


def test_read_hellaswag_plain_and_bz2(tmp_path):
  (tmp_path / "h.txt").write_text(HELLASWAG)
  with bz2.open(tmp_path / "h.txt.bz2", "wt") as f:
    f.write(HELLASWAG)
  for name in ("h.txt", "h.txt.bz2"):
    task = zs.load_task(f"hellaswag:{tmp_path / name}")
    assert task.kind == "choice" and len(task.items) == 2
    first = task.items[0]
    assert first.context == "Roof shingle removal: A man is sitting on a roof. he"
    assert first.label == 3 and first.choices[3] == "starts pulling up roofing on a roof."
    assert first.delimiter == " "
    assert task.name == "hellaswag_text" and not task.comparable
  (tmp_path / "bad.txt").write_text(HELLASWAG.replace("\n0\n", "\nx\n"))
  with pytest.raises(ValueError, match=r"bad.txt:8: gold label must be 0-3"):
    zs.read_hellaswag(tmp_path / "bad.txt")
  (tmp_path / "short.txt").write_text("\n".join(HELLASWAG.split("\n")[:7]))
  with pytest.raises(ValueError, match="not a multiple of 6"):
    zs.read_hellaswag(tmp_path / "short.txt")


def test_read_sst2_jsonl_cloze_and_specs(tmp_path):
  (tmp_path / "dev.tsv").write_text(
      "sentence\tlabel\nit 's a charming journey . \t1\n" "unflinchingly bleak \t0\n"
  )
  task = zs.load_task(f"sst2:{tmp_path / 'dev.tsv'}")
  assert [i.label for i in task.items] == [1, 0] and task.comparable
  # lm-eval's prompt with the sentence unstripped (GLUE's trailing space kept).
  assert task.items[0].context == (
      "it 's a charming journey . \nQuestion: Is this sentence " "positive or negative?\nAnswer:"
  )
  assert (task.items[0].choices, task.items[0].delimiter) == (("negative", "positive"), " ")
  review = zs.load_task(f"sst2_review:{tmp_path / 'dev.tsv'}")
  assert review.items[0].context == "Review: it 's a charming journey .\nSentiment:"
  assert review.name == "sst2_review" and not review.comparable
  (tmp_path / "bad.tsv").write_text("text\tlabel\nx\t1\n")
  with pytest.raises(ValueError, match="'sentence' and 'label'"):
    zs.read_sst2(tmp_path / "bad.tsv")

  rows = [
      {"context": "2+2=", "choices": ["4", "5"], "label": 0},
      {"context": "sky is", "choices": [" blue", " red", " green"], "label": 0},
  ]
  (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
  task = zs.load_task(f"jsonl:{tmp_path / 't.jsonl'}", limit=1)
  assert task.items == [zs.Item("2+2=", ("4", "5"), 0)]
  (tmp_path / "b.jsonl").write_text(
      json.dumps({"context": "a", "choices": ["b"], "label": 3}) + "\n"
  )
  with pytest.raises(ValueError, match=r"b.jsonl:1: label must be an int index"):
    zs.read_jsonl(tmp_path / "b.jsonl")

  (tmp_path / "c.txt").write_text("the cat sat on the mat\n\nhello world\nalone\n")
  task = zs.load_task(f"cloze:{tmp_path / 'c.txt'}")
  assert task.kind == "cloze" and task.skipped == 1
  assert [(i.context, i.delimiter + i.choices[0]) for i in task.items] == [
      ("the cat sat on the", " mat"),
      ("hello", " world"),
  ]
  (tmp_path / "c.jsonl").write_text(json.dumps({"text": "a b c"}) + "\n")
  assert zs.load_task(f"cloze:{tmp_path / 'c.jsonl'}").items[0].choices == ("c",)
  (tmp_path / "latin1.jsonl").write_bytes(b'{"context": "caf\xe9"}\n')
  with pytest.raises(ValueError, match="not UTF-8"):
    zs.read_jsonl(tmp_path / "latin1.jsonl")
  (tmp_path / "empty.jsonl").write_text("\n")
  with pytest.raises(ValueError, match="has no items"):
    zs.load_task(f"jsonl:{tmp_path / 'empty.jsonl'}")

  with pytest.raises(ValueError, match="KIND:PATH"):
    zs.load_task("squad:x.json")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    zs.load_task(f"jsonl:{tmp_path / 'missing.jsonl'}")


def test_windows_and_batch_layout():
  rows = zs.request_windows([BOS, 1, 2], [3, 4], window=6) + zs.request_windows(
      [BOS, 5], [6], window=6
  )
  b = zs.make_batch(rows, width=6, pad_id=9)
  assert b["inputs"][0].tolist() == [BOS, 1, 2, 3, 9, 9]
  assert b["targets"][0].tolist() == [1, 2, 3, 4, 9, 9]
  assert b["weights"][0].tolist() == [0, 0, 1, 1, 0, 0]
  assert b["segment_ids"][1].tolist() == [1, 1, 0, 0, 0, 0]
  assert b["positions"][0].tolist() == [0, 1, 2, 3, 0, 0]
  # Long context: cut from the left (as lm-eval), the continuation kept whole.
  assert zs.request_windows(list(range(10)), [20, 21], window=4) == [([7, 8, 9, 20, 21], 2)]
  # A continuation longer than the window spans windows that together score every token once.
  w = zs.request_windows([BOS, 1], list(range(10, 20)), window=4)
  assert w == [([BOS, 1, 10, 11], 2), ([11, 12, 13, 14, 15], 4), ([15, 16, 17, 18, 19], 4)]
  with pytest.raises(ValueError, match="nothing to be predicted"):
    zs.request_windows([], [1], window=4)
  with pytest.raises(ValueError, match="adds no tokens"):
    zs.request_windows([1], [], window=4)


def test_long_continuations_are_scored_whole():
  logp = -np.arange(1, 258, dtype=np.float64) / 100
  cont = list(range(30, 60))
  logprob, greedy = zs.score_requests(
      _unigram_fn(logp), [([BOS, 1, 2], cont), ([BOS, 3], [0])], window=8, batch_size=3
  )
  np.testing.assert_allclose(logprob, [logp[cont].sum(), logp[0]])
  assert greedy.tolist() == [False, True]


def test_choice_metrics_acc_norm_by_characters_acc_bytes_by_bytes():
  """Unigram stub: ' ' costs 0.5 nats, 'a' 1, 'b' 2, each byte of 'é' (2 bytes, 1 character)
  1. acc takes the sum; acc_norm (lm-eval) divides by the choice's characters without the
  delimiter; acc_bytes by its UTF-8 bytes: on item z all three disagree as designed."""
  logp = np.full(257, -10.0)
  logp[ord("a")], logp[ord("b")], logp[ord(" ")] = -1.0, -2.0, -0.5
  logp[0xC3] = logp[0xA9] = -1.0
  items = [
      zs.Item("x", ("aaaa", "b"), 0, " "),  # ' aaaa' -4.5, ' b' -2.5
      zs.Item("y", ("aaaa", "b"), 1, " "),
      zs.Item("z", ("ab", "é", "bb"), 1),
  ]  # -3, -2, -4; /chars -1.5, -2, -2; /bytes -1
  res = zs.evaluate_task(
      zs.Task("t", "choice", items), _unigram_fn(logp), BYTES_BOS, window=16, batch_size=4
  )
  assert res["predictions"] == [1, 1, 1]  # sums: ' b' twice, then 'é'
  assert res["acc"] == pytest.approx(2 / 3)
  # per character: -4.5/4 = -1.125 beats -2.5/1: ' aaaa' on x and y; 'ab' on z.
  assert res["acc_norm"] == pytest.approx(1 / 3)
  assert res["acc_bytes"] == pytest.approx(2 / 3)  # x: aaaa (right), y: aaaa (wrong), z: é
  assert res["n"] == 3 and res["acc_stderr"] == pytest.approx(np.std([1, 1, 0], ddof=1) / 3**0.5)


def test_continuous_metrics_of_the_correct_answer():
  """correct_logprob, correct_bpb and correct_prob_norm are per-item means of known values,
  with sample-std / sqrt(n) standard errors."""
  logp = np.full(257, -3.0)
  logp[ord("a")], logp[ord("b")] = -1.0, -2.0
  items = [
      zs.Item("x", ("a", "b"), 0),
      zs.Item("y", ("a", "bb", "b"), 2),
      zs.Item("z", ("ab", "b"), 0, " "),
  ]
  res = zs.evaluate_task(
      zs.Task("t", "choice", items), _unigram_fn(logp), BYTES_BOS, window=16, batch_size=3
  )
  gold = np.array([-1.0, -2.0, -3.0 - 1 - 2])  # 'a'; 'b'; ' ab' (' ' costs 3)
  nbytes = np.array([1, 1, 3])
  share = np.array(
      [
          1 / (1 + np.exp(-1)),
          np.exp(-2) / (np.exp(-1) + np.exp(-4) + np.exp(-2)),
          np.exp(-6) / (np.exp(-6) + np.exp(-5)),
      ]
  )
  for name, per_item in (
      ("correct_logprob", gold),
      ("correct_prob_norm", share),
      ("correct_bpb", -gold / (np.log(2) * nbytes)),
  ):
    assert res[name] == pytest.approx(per_item.mean())
    assert res[name + "_stderr"] == pytest.approx(per_item.std(ddof=1) / np.sqrt(3))
  one = zs.evaluate_task(
      zs.Task("t", "choice", items[:1]), _unigram_fn(logp), BYTES_BOS, window=16, batch_size=3
  )
  assert one["acc_stderr"] is None  # no standard error from a single item
  json.dumps(one)  # JSON-safe (no NaN)


def test_certain_model_and_cloze():
  """A bigram model that makes one continuation certain: 100% on items whose gold ending it
  predicts, 0% when the gold label points elsewhere; cloze needs every token greedy."""
  chain = {ord(c): ord(n) for c, n in zip("abcdefg", "bcdefgh")}
  fn = _bigram_fn(chain)
  items = [
      zs.Item("ab", ("cd", "xy"), 0),
      zs.Item("abc", ("zz", "de"), 1),
      zs.Item("a", ("bc", "q"), 1),
  ]
  res = zs.evaluate_task(zs.Task("t", "choice", items), fn, BYTES, window=12, batch_size=2)
  assert res["predictions"] == [0, 1, 0] and res["acc"] == pytest.approx(2 / 3)
  cloze = zs.Task("c", "cloze", [zs.Item("abc", ("de",), 0), zs.Item("abc", ("dx",), 0)])
  res = zs.evaluate_task(cloze, fn, BYTES, window=12, batch_size=3)
  assert res["predictions"] == [True, False] and res["acc"] == 0.5
  assert res["correct_logprob"] == pytest.approx(-15.0)  # 'dx': one wrong token of two
  assert res["correct_bpb"] == pytest.approx(15.0 / np.log(2) / 2)


def test_pair_encoding_follows_lm_eval():
  """Trailing context whitespace moves to the continuation; the continuation is what the
  joined encoding has past the context's (BPE merges across the boundary stay); an empty
  context is the lone BOS; BOS only when the encoder adds it."""
  vocab = {"ab": 1, "a": 2, "b": 3, "c": 4, " ": 5, " c": 6}

  def bpe(s):  # greedy longest match
    out, i = [], 0
    while i < len(s):
      n = 2 if s[i : i + 2] in vocab else 1
      out.append(vocab[s[i : i + n]])
      i += n
    return out

  enc = zs.Encoder(bpe, None, 0)
  assert enc.pair("c", "ab") == ([4], [1])
  # 'cabc' -> [c, ab, c] does not start with 'ca' -> [c, a]: lm-eval keeps the context's own
  # ids and scores what the joined encoding has past their count.
  assert enc.pair("ca", "bc") == ([4, 2], [4])
  assert enc.pair("a ", "c") == ([2], [6])  # 'a ' + 'c' -> 'a' + ' c'
  assert enc.pair("", "ab") == ([0], [1])
  assert zs.Encoder(bpe, 9, 9).pair("a ", "c") == ([9, 2], [6])
  with_bos = types.SimpleNamespace(encode=bpe, bos_id=7, adds_bos=True)
  without = types.SimpleNamespace(encode=bpe, bos_id=7, adds_bos=False)
  assert zs.make_encoder(with_bos, "auto").bos_id == 7
  assert zs.make_encoder(without, "auto").bos_id is None
  assert zs.make_encoder(without, "always").bos_id == 7
  assert zs.make_encoder(with_bos, "never").bos_id is None
  with pytest.raises(ValueError, match="choose one of auto, always, never"):
    zs.make_encoder(with_bos, "sometimes")


def test_read_hellaswag_jsonl_like_lm_eval(tmp_path):
  """lm-eval's HellaSwag: ctx_b capitalised (str.capitalize), every [...] removed, ' [title]'
  -> '. ', and a tag-led ending keeps one leading space (scored after two spaces)."""
  rows = [
      dict(
          activity_label="Removing ice from car",
          ctx_a="Then, the man writes over the snow.",
          ctx_b="the man in the USA",
          endings=["a.", "b.", "c.", "d."],
          label=3,
      ),
      dict(
          activity_label="Finance and Business",
          ctx_a="[header] How to save money [title] " "Cut costs. [step] Spend less.",
          ctx_b="",
          endings=["[substeps] Eat in.", "Walk [title] Bike.", "x [step] y", "plain"],
          label="1",
      ),
  ]
  (tmp_path / "hs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  task = zs.load_task(f"hellaswag:{tmp_path / 'hs.jsonl'}")
  assert task.name == "hellaswag" and task.comparable
  a, b = task.items
  assert a.context == (
      "Removing ice from car: Then, the man writes over the snow. " "The man in the usa"
  )
  assert (a.label, a.delimiter, a.choices) == (3, " ", ("a.", "b.", "c.", "d."))
  assert b.context == "Finance and Business: How to save money. Cut costs. Spend less."
  assert b.choices == (" Eat in.", "Walk. Bike.", "x y", "plain") and b.label == 1
  (tmp_path / "bad.jsonl").write_text(json.dumps({**rows[0], "label": 4}) + "\n")
  with pytest.raises(ValueError, match="bad.jsonl:1: label 4 is not an index"):
    zs.load_task(f"hellaswag:{tmp_path / 'bad.jsonl'}")
  (tmp_path / "miss.jsonl").write_text(json.dumps({"ctx": "x"}) + "\n")
  with pytest.raises(ValueError, match="miss.jsonl:1: expected HellaSwag fields"):
    zs.load_task(f"hellaswag:{tmp_path / 'miss.jsonl'}")


def test_transformer_scores_match_direct_computation():
  """The jitted model path (padding, segments, BOS) equals log-softmax of an unpadded forward
  pass summed over each continuation, and its acc follows those sums."""
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
  )
  model = Transformer(cfg)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
  fn = zs.make_token_logprobs_fn(cfg, params)
  items = [zs.Item("ab", ("c", "dd", "e"), 2), zs.Item("hello", (" w", " x"), 0)]
  res = zs.evaluate_task(
      zs.Task("t", "choice", items), fn, BYTES_BOS, window=12, batch_size=4, pad_id=258
  )
  # Reference: one unpadded row at a time (right-filled with zeros: causal, so the logits at
  # the row's own positions do not see them), one compiled shape.
  apply = jax.jit(lambda ids: jax.nn.log_softmax(model.apply({"params": params}, ids)[0]))
  ref = lambda ids: np.asarray(apply(jnp.asarray([ids + [0] * (12 - len(ids))])))
  want = []
  for item in items:
    scores = []
    for c in item.choices:
      ids = [BOS] + encode(item.context + c)
      logp = ref(ids[:-1])
      n = len(encode(c))
      scores.append(sum(float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1 - n, len(ids) - 1)))
    want.append(int(np.argmax(scores)))
  assert res["predictions"] == want
  logprob, _ = zs.score_requests(
      fn, [([BOS] + encode("ab"), encode("e"))], window=12, batch_size=4, pad_id=258
  )
  ids = [BOS] + encode("abe")
  logp = ref(ids[:-1])
  assert logprob[0] == pytest.approx(float(logp[2, ord("e")]), abs=1e-5)


_MESH_SCRIPT = r"""
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
from configs import base
from eval import zeroshot as zs
from model.config import ModelConfig
from model.transformer import Transformer
from train import mesh as mesh_lib, spec
assert jax.device_count() == 4
config = base.base_config()
config.model.update(d_model=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16,
                    mlp_dim=64, max_seq_len=32, init_std=0.3)
config.data.seq_len = 32
config.mesh.shape = (2, 2, 1)  # data x fsdp: params sharded over fsdp, batch over both
mesh, rules = mesh_lib.make_mesh(config), spec.resolve(config).mesh.axis_rules
model = Transformer(ModelConfig.from_config(config.model))
boxed = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
params = nn.unbox(boxed)
sharded = jax.device_put(params, mesh_lib.param_shardings(boxed, mesh, rules))
assert not sharded["embed"]["embedding"].sharding.is_fully_replicated
reqs = [([256] + list(b"ctx %d" % i), list(b" cont%d" % (i * 7))) for i in range(10)]
one = zs.score_requests(zs.make_token_logprobs_fn(config.model, params), reqs, window=16,
                        batch_size=4)
multi = zs.score_requests(zs.make_token_logprobs_fn(config.model, sharded, mesh, rules), reqs,
                          window=16, batch_size=4)
np.testing.assert_allclose(one[0], multi[0], atol=1e-4)
assert one[1].tolist() == multi[1].tolist()
print("OK", one[0][:3])
"""


def test_scoring_on_a_sharded_mesh_matches_one_device():
  """4 CPU devices as a data x fsdp mesh: the batch is split like a training batch and the
  params stay FSDP-sharded; scores equal the single-device ones."""
  import os
  import pathlib
  import subprocess
  import sys

  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  repo = pathlib.Path(__file__).resolve().parents[1]
  out = subprocess.run(
      [sys.executable, "-c", _MESH_SCRIPT],
      cwd=repo,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "OK" in out.stdout


def test_cli_on_an_imported_run(tmp_path, capsys):
  """`python -m eval.zeroshot` on a run imported from an HF directory: prints the window (the
  model's context length, here 48, not data.seq_len) and the BOS mode, writes JSON with the
  metrics and standard errors; a bad task spec is one ValueError before loading anything."""
  from eval import hf
  from model.config import ModelConfig

  cfg = ModelConfig(
      vocab_size=260,
      d_model=32,
      num_layers=1,
      num_heads=2,
      num_kv_heads=2,
      head_dim=16,
      mlp_dim=64,
      max_seq_len=48,
      pos_encoding="learned",
      norm="layernorm",
      mlp="gelu",
      use_bias=True,
      tie_embeddings=True,
      init_std=0.3,
  )
  params = nn.unbox(
      Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  )
  hf.export_dir(cfg, jax.tree.map(np.asarray, params), tmp_path / "hf")
  hf.import_to_run(tmp_path / "hf", tmp_path / "run")
  import pathlib

  real = pathlib.Path(__file__).resolve().parents[2] / "shared/data/sst2/dev.tsv"
  dev = real if real.is_file() else tmp_path / "dev.tsv"
  if not real.is_file():
    dev.write_text("sentence\tlabel\ngood fun \t1\nbad , dull \t0\nfine \t1\n")
  zs.main(
      [
          "--workdir",
          str(tmp_path / "run"),
          "--task",
          f"sst2:{dev}",
          "--limit",
          "3",
          "--batch-size",
          "4",
          "--json",
          str(tmp_path / "out.json"),
      ]
  )
  out = capsys.readouterr().out
  assert (
      "scoring with a 48-token window (model context length 48), bos=auto (BOS added: yes)" in out
  )  # the byte tokenizer follows training: BOS before every document
  (res,) = json.loads((tmp_path / "out.json").read_text())
  assert (res["task"], res["n"], res["window"], res["bos"]) == ("sst2", 3, 48, "auto")
  assert res["lm_eval_comparable"] and "predictions" not in res
  for name in ("acc", "acc_norm", "acc_bytes"):
    assert 0 <= res[name] <= 1 and res[name + "_stderr"] >= 0
  for name in ("correct_logprob", "correct_bpb", "correct_prob_norm"):
    assert np.isfinite(res[name]) and res[name + "_stderr"] > 0
  with pytest.raises(ValueError, match="KIND:PATH"):
    zs.main(["--workdir", str(tmp_path / "run"), "--task", "squad:x"])
