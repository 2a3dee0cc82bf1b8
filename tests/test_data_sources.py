"""Sources and the hash split: registry, bad specs, determinism, no leakage."""

import json

import numpy as np
import pytest

from train.data import pipeline
from train.data import prepare
from train.data import sources
from train.data import split


def test_split_deterministic_and_fraction():
  ids = [f"doc{i}" for i in range(20000)]
  a = [split.split_of("d", i, 0.1) for i in ids]
  assert a == [split.split_of("d", i, 0.1) for i in reversed(ids)][::-1]
  frac = np.mean([s == "val" for s in a])
  assert 0.09 < frac < 0.11
  # Growing the fraction only moves documents train -> val (nested val sets), never back.
  b = [split.split_of("d", i, 0.2) for i in ids]
  assert all(y == "val" for x, y in zip(a, b) if x == "val")
  # Domains split independently: the same id may land differently per domain.
  c = [split.split_of("e", i, 0.1) for i in ids]
  assert a != c
  with pytest.raises(ValueError, match="val_fraction"):
    split.split_of("d", "x", 1.5)
  assert split.split_of("d", "x", 1.0) == "val"  # evaluation only: everything held out


def _val_texts(spec, val_fraction, out):
  """The validation documents prepare writes for `spec` (decoded from the shards)."""
  prepare.prepare(spec, "byte", out, val_fraction=val_fraction, num_workers=1, progress=False)
  _, stores = pipeline.open_prepared(out)
  val = stores["val"]
  return {bytes(val.doc_tokens(i).astype(np.uint8)).decode() for i in range(len(val.lengths))}


def test_prepending_a_line_moves_no_document_across_the_split(tmp_path):
  lines = [json.dumps({"text": f"document number {i} " * 3}) for i in range(400)]
  (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
  before = _val_texts(f"jsonl:{tmp_path}/a.jsonl:text", 0.25, tmp_path / "p1")
  (tmp_path / "a.jsonl").write_text("\n".join([json.dumps({"text": "a new first line"})] + lines))
  after = _val_texts(f"jsonl:{tmp_path}/a.jsonl:text", 0.25, tmp_path / "p2")
  assert 50 < len(before) < 150
  assert after - {"a new first line"} == before


def test_relative_and_absolute_globs_give_the_same_split(tmp_path, monkeypatch):
  (tmp_path / "d").mkdir()
  for i in range(60):
    (tmp_path / "d" / f"{i:03d}.txt").write_text(f"file {i} " * 10)
  absolute = _val_texts(f"text:{tmp_path}/d/*.txt", 0.3, tmp_path / "p1")
  monkeypatch.chdir(tmp_path)
  relative = _val_texts("text:d/*.txt", 0.3, tmp_path / "p2")
  assert absolute == relative and 5 < len(absolute) < 35


def test_embedded_has_two_domains():
  src = sources.open_source("embedded")
  counts = {}
  first = {}
  for doc in src.documents():
    counts[doc.domain] = counts.get(doc.domain, 0) + 1
    first.setdefault(doc.domain, doc)
  assert counts["prose"] == 1189  # KJV chapters
  assert counts["code"] > 300
  assert first["prose"].doc_id == "kjv/Genesis/1"
  assert first["prose"].text().startswith("In the beginning God created")
  assert first["code"].doc_id.startswith("stdlib/") and "/test/" not in first["code"].doc_id


def test_text_source_files_and_separator(tmp_path):
  (tmp_path / "a.txt").write_bytes(b"one\n\ntwo\n\n\n\nthree")
  (tmp_path / "b.txt").write_bytes(b"bee \xff")
  whole = list(sources.open_source(f"text:{tmp_path}/*.txt").documents())
  assert [d.raw() for d in whole] == [b"one\n\ntwo\n\n\n\nthree", b"bee \xff"]
  parts = list(sources.open_source(f"text:{tmp_path}/*.txt:\\n\\n").documents())
  assert [d.raw() for d in parts] == [b"one", b"two", b"three", b"bee \xff"]
  assert len({d.doc_id for d in parts}) == 4


def test_missing_path_and_empty_glob(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing_here"):
    sources.open_source(f"text:{tmp_path}/nothing_here/*.txt")
  with pytest.raises(FileNotFoundError, match=r"\*\.jsonl"):
    sources.open_source(f"jsonl:{tmp_path}/*.jsonl:text")
  with pytest.raises(ValueError, match="known kinds"):
    sources.open_source("ftp:somewhere")


def test_jsonl_source_and_missing_field(tmp_path):
  p = tmp_path / "x.jsonl"
  p.write_text("\n".join(json.dumps({"text": f"doc {i}", "n": i}) for i in range(3)) + "\n")
  docs = list(sources.open_source(f"jsonl:{p}:text").documents())
  assert [d.text() for d in docs] == ["doc 0", "doc 1", "doc 2"]
  with pytest.raises(KeyError, match=r"x.jsonl:1.*body"):
    list(sources.open_source(f"jsonl:{p}:body").documents())


def test_parquet_source(tmp_path):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq  # noqa: PLC0415 (`data` extra)

  pq.write_table(pa.table({"content": ["alpha", None, "gamma"]}), tmp_path / "t.parquet")
  docs = list(sources.open_source(f"parquet:{tmp_path}/*.parquet:content").documents())
  assert [d.text() for d in docs] == ["alpha", "gamma"]
  with pytest.raises(KeyError, match="content2"):
    list(sources.open_source(f"parquet:{tmp_path}/*.parquet:content2").documents())


def test_hf_source_local_directory(tmp_path):
  datasets = pytest.importorskip("datasets")
  dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b", "c d", "e"]})})
  dd.save_to_disk(str(tmp_path / "ds"))
  docs = list(sources.open_source(f"hf:{tmp_path}/ds:train:text").documents())
  assert [d.text() for d in docs] == ["a b", "c d", "e"]
  with pytest.raises(KeyError, match="validation"):
    list(sources.open_source(f"hf:{tmp_path}/ds:validation:text").documents())


def test_fingerprint_is_order_and_content_sensitive():
  d1, d2 = sources.Document("t", "1", b"x"), sources.Document("t", "2", b"y")

  def fp(docs):
    f = sources.Fingerprint()
    for d in docs:
      f.update(d, d.raw())
    return f.hexdigest()

  assert fp([d1, d2]) == fp([d1, d2])
  assert fp([d1, d2]) != fp([d2, d1])
  assert fp([d1]) != fp([sources.Document("t", "1", b"z")])
