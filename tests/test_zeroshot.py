"""Zero-shot scoring: parsers of each task format, the scorer with a stub model whose answers
are known, and the real Transformer path (padding/segments) against a direct computation."""

import bz2
import json

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
    assert first.label == 3 and first.choices[3] == " starts pulling up roofing on a roof."
  (tmp_path / "bad.txt").write_text(HELLASWAG.replace("\n0\n", "\nx\n"))
  with pytest.raises(ValueError, match=r"bad.txt:8: gold label must be 0-3"):
    zs.read_hellaswag(tmp_path / "bad.txt")
  (tmp_path / "short.txt").write_text("\n".join(HELLASWAG.split("\n")[:7]))
  with pytest.raises(ValueError, match="not a multiple of 6"):
    zs.read_hellaswag(tmp_path / "short.txt")


def test_read_sst2_jsonl_cloze_and_specs(tmp_path):
  (tmp_path / "dev.tsv").write_text("sentence\tlabel\nit 's a charming journey . \t1\n"
                                    "unflinchingly bleak \t0\n")
  task = zs.load_task(f"sst2:{tmp_path / 'dev.tsv'}")
  assert [i.label for i in task.items] == [1, 0]
  assert task.items[0].context == "Review: it 's a charming journey .\nSentiment:"
  assert task.items[0].choices == (" negative", " positive")
  (tmp_path / "bad.tsv").write_text("text\tlabel\nx\t1\n")
  with pytest.raises(ValueError, match="'sentence' and 'label'"):
    zs.read_sst2(tmp_path / "bad.tsv")

  rows = [{"context": "2+2=", "choices": ["4", "5"], "label": 0},
          {"context": "sky is", "choices": [" blue", " red", " green"], "label": 0}]
  (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
  task = zs.load_task(f"jsonl:{tmp_path / 't.jsonl'}", limit=1)
  assert task.items == [zs.Item("2+2=", ("4", "5"), 0)]
  (tmp_path / "b.jsonl").write_text(json.dumps({"context": "a", "choices": ["b"],
                                                "label": 3}) + "\n")
  with pytest.raises(ValueError, match=r"b.jsonl:1: label must be an int index"):
    zs.read_jsonl(tmp_path / "b.jsonl")

  (tmp_path / "c.txt").write_text("the cat sat on the mat\n\nhello world\nalone\n")
  task = zs.load_task(f"cloze:{tmp_path / 'c.txt'}")
  assert task.kind == "cloze" and task.skipped == 1
  assert [(i.context, i.choices) for i in task.items] == [
      ("the cat sat on the", (" mat",)), ("hello", (" world",))]
  (tmp_path / "c.jsonl").write_text(json.dumps({"text": "a b c"}) + "\n")
  assert zs.load_task(f"cloze:{tmp_path / 'c.jsonl'}").items[0].choices == (" c",)

  with pytest.raises(ValueError, match="KIND:PATH"):
    zs.load_task("squad:x.json")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    zs.load_task(f"jsonl:{tmp_path / 'missing.jsonl'}")


def test_windows_and_batch_layout():
  rows = zs.request_windows([1, 2], [3, 4], seq_len=6, bos_id=BOS) + zs.request_windows(
      [5], [6], seq_len=6, bos_id=BOS)
  b = zs.make_batch(rows, seq_len=6, pad_id=9)
  assert b["inputs"][0].tolist() == [BOS, 1, 2, 3, 9, 9]
  assert b["targets"][0].tolist() == [1, 2, 3, 4, 9, 9]
  assert b["weights"][0].tolist() == [0, 0, 1, 1, 0, 0]
  assert b["segment_ids"][1].tolist() == [1, 1, 0, 0, 0, 0]
  assert b["positions"][0].tolist() == [0, 1, 2, 3, 0, 0]
  # Long context: cut from the left, the continuation kept whole.
  assert zs.request_windows(list(range(10)), [20, 21], seq_len=4) == [([7, 8, 9, 20, 21], 2)]
  # A continuation longer than seq_len spans windows that together score every token once.
  w = zs.request_windows([1], list(range(10, 20)), seq_len=4, bos_id=BOS)
  assert w == [([BOS, 1, 10, 11], 2), ([11, 12, 13, 14, 15], 4), ([15, 16, 17, 18, 19], 4)]
  with pytest.raises(ValueError, match="nothing to be predicted"):
    zs.request_windows([], [1], seq_len=4)


def test_long_continuations_are_scored_whole():
  logp = -np.arange(1, 258, dtype=np.float64) / 100
  cont = list(range(30, 60))
  logprob, greedy = zs.score_requests(_unigram_fn(logp), [([1, 2], cont), ([3], [0])],
                                      seq_len=8, batch_size=3, bos_id=BOS)
  np.testing.assert_allclose(logprob, [logp[cont].sum(), logp[0]])
  assert greedy.tolist() == [False, True]


def test_choice_scoring_acc_vs_length_normalised():
  """Unigram stub: ' ' costs 0.5 nats, 'a' 1, 'b' 2. ' aaaa' loses to ' b' on the sum but wins
  per byte, so acc and acc_norm disagree exactly as designed."""
  logp = np.full(257, -10.0)
  logp[ord("a")], logp[ord("b")], logp[ord(" ")] = -1.0, -2.0, -0.5
  items = [zs.Item("x", (" aaaa", " b"), 0), zs.Item("y", (" aaaa", " b"), 1),
           zs.Item("z", (" b", " c"), 0)]
  res = zs.evaluate_task(zs.Task("t", "choice", items), _unigram_fn(logp), encode,
                         seq_len=16, batch_size=4, bos_id=BOS)
  # sums: ' aaaa' = -4.5, ' b' = -2.5 -> predicts ' b'; per byte: -0.9 vs -1.25 -> ' aaaa'.
  assert res["predictions"] == [1, 1, 0]
  assert res["acc"] == pytest.approx(2 / 3)
  assert res["acc_norm"] == pytest.approx(2 / 3)  # item 0 right, item 1 wrong, item 2 right
  assert res["n"] == 3


def test_certain_model_and_cloze():
  """A bigram model that makes one continuation certain: 100% on items whose gold ending it
  predicts, 0% when the gold label points elsewhere; cloze needs every token greedy."""
  chain = {ord(c): ord(n) for c, n in zip("abcdefg", "bcdefgh")}
  fn = _bigram_fn(chain)
  items = [zs.Item("ab", ("cd", "xy"), 0), zs.Item("abc", ("zz", "de"), 1),
           zs.Item("a", ("bc", "q"), 1)]
  res = zs.evaluate_task(zs.Task("t", "choice", items), fn, encode, seq_len=12, batch_size=2)
  assert res["predictions"] == [0, 1, 0] and res["acc"] == pytest.approx(2 / 3)
  cloze = zs.Task("c", "cloze", [zs.Item("abc", ("de",), 0), zs.Item("abc", ("dx",), 0)])
  res = zs.evaluate_task(cloze, fn, encode, seq_len=12, batch_size=3)
  assert res["predictions"] == [True, False] and res["acc"] == 0.5
  assert res["mean_logprob"] == pytest.approx(-15.0)  # 'dx': one wrong token of two


def test_encode_pair_keeps_bpe_merges():
  vocab = {"ab": 1, "a": 2, "b": 3, "c": 4}
  def bpe(s):  # greedy: 'ab' merges
    out, i = [], 0
    while i < len(s):
      if s[i:i + 2] == "ab":
        out.append(1); i += 2
      else:
        out.append(vocab[s[i]]); i += 1
    return out
  assert zs.encode_pair(bpe, "c", "ab") == ([4], [1])
  assert zs.encode_pair(bpe, "ca", "b") == ([4, 2], [3])  # joined 'cab' -> [4, 1]: fall back


def test_transformer_scores_match_direct_computation():
  """The jitted model path (padding, segments, BOS) equals log-softmax of an unpadded forward
  pass summed over each continuation, and its acc follows those sums."""
  cfg = ModelConfig(vocab_size=260, d_model=32, num_layers=1, num_heads=2, num_kv_heads=2,
                    head_dim=16, mlp_dim=64, max_seq_len=32, init_std=0.3)
  model = Transformer(cfg)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
  fn = zs.make_token_logprobs_fn(cfg, params)
  items = [zs.Item("ab", ("c", "dd", "e"), 2), zs.Item("hello", (" w", " x"), 0)]
  res = zs.evaluate_task(zs.Task("t", "choice", items), fn, encode, seq_len=12, batch_size=4,
                         pad_id=258, bos_id=BOS)
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
      scores.append(sum(float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1 - n,
                                                                    len(ids) - 1)))
    want.append(int(np.argmax(scores)))
  assert res["predictions"] == want
  logprob, _ = zs.score_requests(fn, [(encode("ab"), encode("e"))], seq_len=12, batch_size=4,
                                 pad_id=258, bos_id=BOS)
  ids = [BOS] + encode("abe")
  logp = ref(ids[:-1])
  assert logprob[0] == pytest.approx(float(logp[2, ord("e")]), abs=1e-5)


_MESH_SCRIPT = r"""
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
from configs import base
from eval import zeroshot as zs
from model.config import ModelConfig
from model.transformer import Transformer
from train import mesh as mesh_lib
assert jax.device_count() == 4
config = base.base_config()
config.model.update(d_model=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16,
                    mlp_dim=64, max_seq_len=32, init_std=0.3)
config.mesh.shape = (2, 2, 1)  # data x fsdp: params sharded over fsdp, batch over both
mesh, rules = mesh_lib.make_mesh(config), mesh_lib.axis_rules(config)
model = Transformer(ModelConfig.from_config(config.model))
boxed = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
params = nn.unbox(boxed)
sharded = jax.device_put(params, mesh_lib.param_shardings(boxed, mesh, rules))
assert not sharded["embed"]["embedding"].sharding.is_fully_replicated
reqs = [([256] + list(b"ctx %d" % i), list(b" cont%d" % (i * 7))) for i in range(10)]
one = zs.score_requests(zs.make_token_logprobs_fn(config.model, params), reqs, seq_len=16,
                        batch_size=4)
multi = zs.score_requests(zs.make_token_logprobs_fn(config.model, sharded, mesh, rules), reqs,
                          seq_len=16, batch_size=4)
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
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  repo = pathlib.Path(__file__).resolve().parents[1]
  out = subprocess.run([sys.executable, "-c", _MESH_SCRIPT], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "OK" in out.stdout
