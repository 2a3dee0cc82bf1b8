"""Parallel data: line-aligned (gzip) and jsonl pairs, prepared once, rows with the source
beside its target and the loss on target tokens only; bad files get one-line errors."""

import gzip
import json

import ml_collections
import numpy as np
import pytest

from train.data import parallel
from train.data import sources
from train.data import tokenizer as tok_lib

SRC = ["a cat sits", "two dogs run", "the sun", "hello world", "green tree", "red car"]
TGT = ["eine katze sitzt", "zwei hunde rennen", "die sonne", "hallo welt", "gruener baum", "rot"]


def _write(path, lines, gz=False):
  data = ("\n".join(lines) + "\n").encode()
  if gz:
    with gzip.open(path, "wb") as f:
      f.write(data)
  else:
    path.write_bytes(data)
  return str(path)


def _data_cfg(source, seq_len=32, val_fraction=0.0):
  return ml_collections.ConfigDict(
      dict(source=source, tokenizer="byte", seq_len=seq_len, val_fraction=val_fraction)
  )


def test_pairs_rows_hold_source_and_target(tmp_path):
  src = _write(tmp_path / "train.en.gz", SRC, gz=True)
  tgt = _write(tmp_path / "train.de.gz", TGT, gz=True)
  spec = f"pairs:{src}:{tgt}"
  assert [(p.src, p.tgt) for p in parallel.read_pairs(spec)] == list(zip(SRC, TGT))
  data = parallel.load_for_training(
      _data_cfg(spec), tmp_path / "prep", global_batch_size=2, seed=0, num_threads=0
  )
  assert sorted(sum(parallel.pack_rows(data_store(tmp_path), range(6), 32), [])) == list(range(6))
  batch = next(data.train_iter)
  tok = tok_lib.load("byte")
  seen = 0
  for r in range(2):
    for k in range(1, int(batch["segment_ids"][r].max()) + 1):
      s_cols = np.flatnonzero(batch["src_segment_ids"][r] == k)
      t_cols = np.flatnonzero(batch["segment_ids"][r] == k)
      src_text = tok.decode(batch["src_tokens"][r, s_cols[:-1]].tolist())
      assert batch["src_tokens"][r, s_cols[-1]] == tok.eos_id
      assert batch["src_positions"][r, s_cols].tolist() == list(range(len(s_cols)))
      tgt_text = tok.decode(batch["targets"][r, t_cols[:-1]].tolist())
      assert TGT[SRC.index(src_text)] == tgt_text  # segment k's target translates its source
      assert batch["inputs"][r, t_cols[0]] == tok.bos_id
      assert batch["targets"][r, t_cols[-1]] == tok.eos_id
      assert (batch["inputs"][r, t_cols[1:]] == batch["targets"][r, t_cols[:-1]]).all()
      seen += 1
    real = batch["segment_ids"][r] > 0
    assert (batch["weights"][r] == real).all()  # the loss counts target tokens only
    assert (batch["targets"][r, ~real] == tok.pad_id).all()
    assert (batch["src_tokens"][r, batch["src_segment_ids"][r] == 0] == tok.pad_id).all()
  assert seen > 2  # rows pack several pairs
  # prepared once: a second load reuses the manifest (same file, same mtime)
  mtime = (tmp_path / "prep" / parallel.MANIFEST).stat().st_mtime_ns
  parallel.load_for_training(_data_cfg(spec), tmp_path / "prep", global_batch_size=2, seed=0)
  assert (tmp_path / "prep" / parallel.MANIFEST).stat().st_mtime_ns == mtime


def data_store(tmp_path):
  return parallel.PairStore(tmp_path / "prep", "train")


def test_eval_batches_cover_every_val_target_once(tmp_path):
  spec = f"pairs:{_write(tmp_path / 's.txt', SRC)}:{_write(tmp_path / 't.txt', TGT)}"
  data = parallel.load_for_training(
      _data_cfg(spec, val_fraction=0.5), tmp_path / "prep", global_batch_size=2, seed=0
  )
  ev, val = data.eval_source, data.manifest["splits"]["val"]
  total = sum(b["weights"].sum() for b in ev.batches("pairs", global_batch_size=4))
  assert val["pairs"] > 0 and total == val["target_tokens"]


def test_jsonl_pairs_join_list_sources_and_split_list_targets(tmp_path):
  rows = [{"source": ["First.", "Second."], "target": ["tldr one", "tldr two"]}]
  path = tmp_path / "d.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in rows))
  pairs = list(parallel.read_pairs(f"jsonl:{path}:source:target"))
  assert [(p.src, p.tgt) for p in pairs] == [("First. Second.", "tldr one")] + [
      ("First. Second.", "tldr two")
  ]
  with pytest.raises(ValueError, match="no field 'summary'"):
    list(parallel.read_pairs(f"jsonl:{path}:source:summary"))


def test_joint_vocabulary_source_sees_both_sides(tmp_path):
  spec = f"pairs:{_write(tmp_path / 's.txt', SRC)}:{_write(tmp_path / 't.txt', TGT)}"
  texts = [d.text() for d in sources.open_source(spec).documents()]
  assert texts == [x for pair in zip(SRC, TGT) for x in pair]
  jl = tmp_path / "d.jsonl"
  jl.write_text(json.dumps({"a": "x y", "b": "z"}) + "\n")
  docs = sources.open_source(f"jsonl:{jl}:a:b").documents()
  assert [d.text() for d in docs] == ["x y", "z"]


def test_bad_parallel_files_get_one_line_errors(tmp_path):
  src = _write(tmp_path / "s.txt", SRC)
  short = _write(tmp_path / "t.txt", TGT[:-1])
  with pytest.raises(ValueError, match=r"has 6 lines but .* has 5; .*line-aligned"):
    list(parallel.read_pairs(f"pairs:{src}:{short}"))
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(ValueError, match="empty file"):
    list(parallel.read_pairs(f"pairs:{src}:{tmp_path / 'empty.txt'}"))
  holes = _write(tmp_path / "holes.txt", ["a"] + [""] + SRC[2:])
  with pytest.raises(ValueError, match=r"holes.txt:2: empty source"):
    list(parallel.read_pairs(f"pairs:{holes}:{_write(tmp_path / 't6.txt', TGT)}"))
  with pytest.raises(ValueError, match="not a parallel source"):
    parallel.parse_spec("text:foo")
  spec = f"pairs:{src}:{_write(tmp_path / 't6b.txt', TGT)}"
  with pytest.raises(ValueError, match=r"s.txt:1: the source has 10 tokens .* position table 8"):
    parallel.load_for_training(
        _data_cfg(spec, seq_len=32), tmp_path / "p", global_batch_size=2, seed=0, position_table=8
    )


def test_decoder_only_rows_hold_source_sep_target_with_the_loss_on_the_target(tmp_path):
  spec = (
      f"pairs:{_write(tmp_path / 's.txt', ['ab', 'c'])}:{_write(tmp_path / 't.txt', ['xyz', 'q'])}"
  )
  parallel.prepare(spec, "byte", tmp_path / "prep", val_fraction=0.0)
  store = parallel.PairStore(tmp_path / "prep", "train")
  tok = tok_lib.load("byte")
  bos, eos, pad = tok.bos_id, tok.eos_id, tok.pad_id
  row = parallel.JointPairPacker(store, 14, tok).build_rows([[0, 1]])
  a, b, c, x, y, z, q = (ord(ch) for ch in "abcxyzq")
  assert row["inputs"][0].tolist() == [bos, a, b, eos, x, y, z, bos, c, eos, q, pad, pad, pad]
  assert row["targets"][0].tolist() == [a, b, eos, x, y, z, eos, c, eos, q, eos, pad, pad, pad]
  assert row["weights"][0].tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0]
  assert row["segment_ids"][0].tolist() == [1] * 7 + [2] * 4 + [0] * 3
  assert row["positions"][0].tolist() == list(range(7)) + list(range(4)) + [0] * 3
  assert "src_tokens" not in row
  assert parallel.pack_rows(store, [0, 1], 11, joint=True) == [[0, 1]]
  assert parallel.pack_rows(store, [0, 1], 10, joint=True) == [[0], [1]]
  with pytest.raises(ValueError, match=r"s.txt:1: the source \+ target has 5 tokens"):
    store.check_lengths(6, None, joint=True)


def test_decoder_only_training_batches_weigh_every_target_token_once(tmp_path):
  spec = f"pairs:{_write(tmp_path / 's.txt', SRC)}:{_write(tmp_path / 't.txt', TGT)}"
  data = parallel.load_for_training(
      _data_cfg(spec, seq_len=48, val_fraction=0.3),
      tmp_path / "prep",
      global_batch_size=1,
      seed=0,
      num_threads=0,
      decoder_only=True,
  )
  val = data.manifest["splits"]["val"]
  batches = list(data.eval_source.batches("pairs", global_batch_size=2))
  assert val["pairs"] > 0 and sum(b["weights"].sum() for b in batches) == val["target_tokens"]
  batch = next(data.train_iter)
  assert set(batch) == {"inputs", "targets", "segment_ids", "positions", "weights"}
