"""The loader: packing, shuffling, per-process slices, exact resume, eval batches."""

import json
import os
import pathlib
import subprocess
import sys

import grain
import ml_collections
import numpy as np
import pytest

from train.data import pipeline
from train.data import prepare
from train.data import tokenizer as tok_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SEQ_LEN = 64


def cfg(source, seq_len=SEQ_LEN, val_fraction=0.2):
  return ml_collections.ConfigDict(
      dict(
          source=source,
          tokenizer="byte",
          seq_len=seq_len,
          prepared_dir="",
          val_fraction=val_fraction,
          num_workers=1,
      )
  )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """Documents of 1..~600 bytes: many shorter than SEQ_LEN, many longer (split across windows)."""
  root = tmp_path_factory.mktemp("pipe")
  rng = np.random.default_rng(0)
  d = root / "c"
  d.mkdir()
  for i in range(150):
    n = int(rng.choice([1, 5, 30, 63, 64, 65, 200, 600]))
    text = "".join(rng.choice(list("abcdefgh é🎉\n"), size=n))
    (d / f"{i:04d}.txt").write_text(text, encoding="utf-8")
  source = f"text:{d}/*.txt"
  prepare.prepare(
      source, "byte", root / "p", val_fraction=0.2, num_workers=1, shard_bytes=3000, progress=False
  )
  return source, root / "p"


def load(corpus, **kw):
  source, prepared = corpus
  kw.setdefault("global_batch_size", 8)
  kw.setdefault("seed", 0)
  return pipeline.load_for_training(cfg(source), prepared, progress=False, **kw)


def unpack(batch):
  """(input pieces, target pieces) per segment, in row order."""
  pieces = []
  for r in range(batch["inputs"].shape[0]):
    seg = batch["segment_ids"][r]
    for s in range(1, seg.max() + 1):
      m = seg == s
      idx = np.flatnonzero(m)
      assert (np.diff(idx) == 1).all(), "segments are contiguous"
      np.testing.assert_array_equal(batch["positions"][r][m], np.arange(m.sum()))
      pieces.append((batch["inputs"][r][m], batch["targets"][r][m]))
    np.testing.assert_array_equal(batch["weights"][r], (seg > 0).astype(np.float32))
    assert (batch["inputs"][r][seg == 0] == 258).all()
  return pieces


def test_batch_shapes_and_types(corpus):
  b = next(load(corpus).train_iter)
  assert set(b) == set(pipeline.BATCH_KEYS)
  for k in ("inputs", "targets", "segment_ids", "positions"):
    assert b[k].shape == (8, SEQ_LEN) and b[k].dtype == np.int32
  assert b["weights"].dtype == np.float32
  assert b["weights"].all()  # train windows are full: no padding
  assert b["positions"].max() < SEQ_LEN


def test_packing_reconstructs_every_document(corpus):
  """One pass over all windows in stream order gives back each doc as BOS+doc / doc+EOS."""
  tok = tok_lib.load("byte")
  _, stores = pipeline.open_prepared(corpus[1])
  st = stores["train"]
  order = np.random.default_rng(5).permutation(len(st.lengths))
  packer = pipeline.Packer(st, order, SEQ_LEN, tok)
  n = packer.num_windows(full_only=False)
  pieces = unpack(packer.build(np.arange(n)))
  inputs = np.concatenate([p[0] for p in pieces])
  targets = np.concatenate([p[1] for p in pieces])
  want_in, want_tg = [], []
  for d in order:
    toks = st.doc_tokens(d).astype(np.int32)
    want_in.append(np.concatenate([[tok.bos_id], toks]))
    want_tg.append(np.concatenate([toks, [tok.eos_id]]))
  np.testing.assert_array_equal(inputs, np.concatenate(want_in))
  np.testing.assert_array_equal(targets, np.concatenate(want_tg))
  # Long documents were split: more pieces than documents; total weight = manifest tokens.
  assert len(pieces) > len(order)
  assert len(targets) == sum(int(l) + 1 for l in st.lengths)


def test_train_rows_are_a_shuffled_epoch_of_windows(corpus):
  td = load(corpus, global_batch_size=4)
  _, stores = pipeline.open_prepared(corpus[1])
  st = stores["train"]
  order = np.random.default_rng([0, 1]).permutation(len(st.lengths))
  packer = pipeline.Packer(st, order, SEQ_LEN, tok_lib.load("byte"))
  w = packer.num_windows(full_only=True)
  rows = []
  while len(rows) < 2 * w:
    rows.extend(map(bytes, next(td.train_iter)["targets"].astype(np.int32)))
  epoch = packer.build(np.arange(w))["targets"].astype(np.int32)
  assert sorted(rows[:w]) == sorted(map(bytes, epoch))
  assert rows[:w] != list(map(bytes, epoch))  # shuffled, not stream order
  assert sorted(rows[w : 2 * w]) == sorted(map(bytes, epoch))  # epoch 2: all windows again,
  assert rows[w : 2 * w] != rows[:w]  # in a new order
  # Another seed, another order.
  other = load(corpus, global_batch_size=4, seed=1)
  assert not np.array_equal(
      next(other.train_iter)["inputs"], next(load(corpus, global_batch_size=4).train_iter)["inputs"]
  )


def test_per_process_parts_concatenate_to_global_batch(corpus):
  full = load(corpus, global_batch_size=8).train_iter
  parts = [
      load(corpus, global_batch_size=8, process_index=p, process_count=2).train_iter
      for p in range(2)
  ]
  for _ in range(5):
    g = next(full)
    a, b = next(parts[0]), next(parts[1])
    for k in g:
      assert a[k].shape[0] == 4
      np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), g[k])
  with pytest.raises(ValueError, match="not divisible by the process count 3"):
    load(corpus, global_batch_size=8, process_index=0, process_count=3)


def test_resume_continues_with_the_next_batch(corpus):
  it = load(corpus).train_iter
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # survives JSON (Orbax JsonSave / grain handler)
  expected = [next(it) for _ in range(4)]
  fresh = load(corpus).train_iter
  fresh.set_state(state)
  for e in expected:
    got = next(fresh)
    for k in e:
      np.testing.assert_array_equal(got[k], e[k])


def test_resume_in_a_new_process(corpus, tmp_path):
  it = load(corpus).train_iter
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  worker = REPO / "tests" / "workers" / "pipeline_resume.py"
  args = [corpus[0], str(corpus[1]), str(SEQ_LEN), json.dumps(state), str(tmp_path / "out.npz")]
  env = dict(os.environ, PYTHONPATH=str(REPO))
  subprocess.run([sys.executable, str(worker), *args], cwd=REPO, env=env, check=True, timeout=120)
  got = np.load(tmp_path / "out.npz")
  for i, e in enumerate(expected):
    for k in e:
      np.testing.assert_array_equal(got[f"{i}_{k}"], e[k])


def test_orbax_checkpoint_of_iterator_state(corpus, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  it = load(corpus).train_iter
  next(it)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(1, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  expected = next(it)
  fresh = load(corpus).train_iter
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.restore(1, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
  np.testing.assert_array_equal(next(fresh)["inputs"], expected["inputs"])


def test_eval_batches_cover_validation_exactly(corpus):
  td = load(corpus)
  es = td.eval_source
  assert es.domains == ("text",)
  row = td.manifest["splits"]["val"]["domains"]["text"]
  first = None
  for P in (1, 2):
    total = 0.0
    for p in range(P):
      batches = list(es.batches("text", global_batch_size=8, process_index=p, process_count=P))
      assert len(batches) == es.num_batches("text", 8)
      total += sum(b["weights"].sum() for b in batches)
      for b in batches:
        unpack(b)
      first = first if first is not None else batches[0]
    assert total == row["tokens"]
  again = next(es.batches("text", global_batch_size=8))
  np.testing.assert_array_equal(again["inputs"], first["inputs"])  # deterministic
  assert es.bytes_per_token("text") == pytest.approx(row["utf8_bytes"] / row["tokens"])
  assert len(list(es.batches("text", global_batch_size=8, max_batches=1))) == 1
  with pytest.raises(KeyError, match="prose"):
    next(es.batches("prose", global_batch_size=8))


def test_vocab_size_checked_against_model(corpus):
  with pytest.raises(ValueError, match=r"260.*200"):
    load(corpus, model_vocab_size=200)
  load(corpus, model_vocab_size=512)  # a larger table is padding


def test_seq_len_longer_than_corpus(tmp_path):
  (tmp_path / "c").mkdir()
  for i in range(10):
    (tmp_path / "c" / f"{i}.txt").write_text(f"tiny {i}")
  src = f"text:{tmp_path}/c/*.txt"
  prepare.prepare(src, "byte", tmp_path / "p", val_fraction=0.4, num_workers=1, progress=False)
  with pytest.raises(ValueError, match="fewer than one window of seq_len=4096"):
    pipeline.load_for_training(
        cfg(src, seq_len=4096, val_fraction=0.4),
        tmp_path / "p",
        global_batch_size=2,
        seed=0,
        progress=False,
    )
