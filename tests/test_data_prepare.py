"""prepare: shards + manifest, counts, resume after a kill, damaged shards, bad inputs."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from train.data import pipeline
from train.data import prepare
from train.data import sources
from train.data import split
from train.data import store
from train.data import synthetic
from train.data import tokenizer as tok_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "θ", "日本", "🎉", "\n", "def", "(x):"]


def write_corpus(d: pathlib.Path, n_docs=300, seed=0, max_words=400):
  """One document per file with random lengths (some longer than any test seq_len)."""
  rng = np.random.default_rng(seed)
  d.mkdir(parents=True, exist_ok=True)
  texts = []
  for i in range(n_docs):
    words = rng.choice(WORDS, size=int(rng.integers(1, max_words)))
    texts.append(f"doc {i}: " + " ".join(words))
    (d / f"{i:04d}.txt").write_text(texts[-1], encoding="utf-8")
  return texts


def strip_timing(m):
  return {k: v for k, v in m.items() if k != "prepare_seconds"}


def test_prepare_counts_and_round_trip(tmp_path):
  texts = write_corpus(tmp_path / "c", n_docs=120)
  src = f"text:{tmp_path}/c/*.txt"
  m = prepare.prepare(
      src,
      "byte",
      tmp_path / "p",
      val_fraction=0.2,
      num_workers=1,
      shard_bytes=20_000,
      progress=False,
  )
  assert m["num_shards"] > 3 and m["domains"] == ["text"]
  by_split = {"train": [], "val": []}
  for i, t in enumerate(texts):
    by_split[split.split_of("text", t, 0.2)].append(t)
  for s, docs in by_split.items():
    row = m["splits"][s]["domains"]["text"]
    assert row["docs"] == len(docs) > 0
    assert row["utf8_bytes"] == sum(len(t.encode()) for t in docs)
    assert row["tokens"] == row["utf8_bytes"] + len(docs)  # byte tokens + one EOS each
    assert row["bytes_per_token"] == pytest.approx(row["utf8_bytes"] / row["tokens"])
  # Documents read back from the shards, in source order, exactly.
  manifest, stores = pipeline.open_prepared(tmp_path / "p", tokenizer="byte")
  tok = tok_lib.load("byte")
  for s, docs in by_split.items():
    got = [tok.decode(stores[s].doc_tokens(i)) for i in range(len(stores[s].lengths))]
    assert got == docs
  # Fingerprint = sha256 over the ordered documents; a second prepare is a no-op.
  fp = sources.Fingerprint()
  for doc in sources.open_source(src).documents():
    fp.update(doc, doc.raw())
  assert m["fingerprint"] == fp.hexdigest()
  assert prepare.prepare(src, "byte", tmp_path / "p", val_fraction=0.2, progress=False) == m


def test_two_workers_match_one(tmp_path):
  write_corpus(tmp_path / "c", n_docs=80)
  src = f"text:{tmp_path}/c/*.txt"
  m1 = prepare.prepare(
      src,
      "byte",
      tmp_path / "p1",
      val_fraction=0.2,
      num_workers=1,
      shard_bytes=10_000,
      progress=False,
  )
  m2 = prepare.prepare(
      src,
      "byte",
      tmp_path / "p2",
      val_fraction=0.2,
      num_workers=2,
      shard_bytes=10_000,
      progress=False,
  )
  assert strip_timing(m1) == strip_timing(m2)
  for k in range(m1["num_shards"]):
    for s in store.SPLITS:
      a = store.shard_paths(tmp_path / "p1", k)[s].read_bytes()
      assert a == store.shard_paths(tmp_path / "p2", k)[s].read_bytes()


def test_resume_rebuilds_only_missing_and_damaged_shards(tmp_path):
  write_corpus(tmp_path / "c", n_docs=100)
  src = f"text:{tmp_path}/c/*.txt"
  kw = dict(val_fraction=0.2, num_workers=1, shard_bytes=10_000, progress=False)
  m = prepare.prepare(src, "byte", tmp_path / "p", **kw)
  out = tmp_path / "p"
  # Simulate a crash: no manifest, shard 1 never finished (sidecar gone, half-written temp
  # file left behind), shard 2's train file truncated.
  (out / "manifest.json").unlink()
  p1 = store.shard_paths(out, 1)
  p1["sidecar"].unlink()
  p1["train"].with_name(p1["train"].name + ".tmp").write_bytes(b"half a shard")
  p2 = store.shard_paths(out, 2)["train"]
  p2.write_bytes(p2.read_bytes()[:100])
  p0 = store.shard_paths(out, 0)["train"]
  before = p0.stat().st_mtime_ns
  time.sleep(0.01)
  m2 = prepare.prepare(src, "byte", out, **kw)
  assert strip_timing(m2) == strip_timing(m)
  assert p0.stat().st_mtime_ns == before  # finished shards are not redone
  pipeline.open_prepared(out)  # all shards consistent again


def test_kill_and_resume_subprocess(tmp_path):
  write_corpus(tmp_path / "c", n_docs=400)
  src = f"text:{tmp_path}/c/*.txt"
  args = [
      sys.executable,
      "-m",
      "train.data.prepare",
      "--source",
      src,
      "--out",
      str(tmp_path / "p"),
      "--val-fraction",
      "0.2",
      "--num-workers",
      "1",
      "--shard-bytes",
      "2000",
  ]
  proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 60
  while time.time() < deadline and not list((tmp_path / "p").glob("shards/*.npz")):
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_early = not (tmp_path / "p" / "manifest.json").exists()
  m = prepare.prepare(
      src, "byte", tmp_path / "p", val_fraction=0.2, num_workers=1, shard_bytes=2000, progress=False
  )
  fresh = prepare.prepare(
      src, "byte", tmp_path / "q", val_fraction=0.2, num_workers=1, shard_bytes=2000, progress=False
  )
  assert strip_timing(m) == strip_timing(fresh)
  assert killed_early, "prepare finished before the kill; make the corpus bigger"
  assert not list((tmp_path / "p").glob("shards/*.tmp*"))
  pipeline.open_prepared(tmp_path / "p")


def test_truncated_shard_is_detected_with_file_name(tmp_path):
  write_corpus(tmp_path / "c", n_docs=60)
  src = f"text:{tmp_path}/c/*.txt"
  prepare.prepare(src, "byte", tmp_path / "p", val_fraction=0.2, num_workers=1, progress=False)
  f = store.shard_paths(tmp_path / "p", 0)["train"]
  f.write_bytes(f.read_bytes()[:-50])
  with pytest.raises(store.CorruptShardError, match=rf"{f.name}.*truncated.*prepare"):
    pipeline.open_prepared(tmp_path / "p")
  # Re-running prepare repairs it.
  prepare.prepare(src, "byte", tmp_path / "p", val_fraction=0.2, num_workers=1, progress=False)
  pipeline.open_prepared(tmp_path / "p")


def test_manifest_from_another_tokenizer(tmp_path):
  write_corpus(tmp_path / "c", n_docs=60)
  src = f"text:{tmp_path}/c/*.txt"
  prepare.prepare(src, "byte", tmp_path / "p", val_fraction=0.2, num_workers=1, progress=False)
  tok = tok_lib.train_bpe(
      [(tmp_path / "c" / f"{i:04d}.txt").read_text() for i in range(60)], 300, tmp_path / "tok.json"
  )
  with pytest.raises(ValueError, match=r"prepared with tokenizer 'byte'.*tok\.json"):
    prepare.prepare(src, tok.spec, tmp_path / "p", val_fraction=0.2, progress=False)
  with pytest.raises(ValueError, match=r"tokenizer 'byte'.*tok\.json"):
    pipeline.open_prepared(tmp_path / "p", tokenizer=tok.spec)
  with pytest.raises(ValueError, match=r"val_fraction 0.2 but 0.3"):
    prepare.prepare(src, "byte", tmp_path / "p", val_fraction=0.3, progress=False)


def test_empty_corpus_and_empty_split(tmp_path):
  (tmp_path / "empty.txt").write_bytes(b"")
  with pytest.raises(ValueError, match="empty corpus"):
    prepare.prepare(f"text:{tmp_path}/empty.txt", "byte", tmp_path / "p", progress=False)
  (tmp_path / "one.txt").write_text("a single document")
  with pytest.raises(ValueError, match=r"'val' of domain 'text' is empty.*val-fraction"):
    prepare.prepare(
        f"text:{tmp_path}/one.txt", "byte", tmp_path / "q", num_workers=1, progress=False
    )


def test_non_utf8_bytes_kept_by_byte_counted_by_bpe(tmp_path):
  d = tmp_path / "c"
  d.mkdir()
  for i in range(40):
    (d / f"{i}.txt").write_bytes(b"caf\xe9 latin-1 " * 3 + str(i).encode())
  src = f"text:{d}/*.txt"
  m = prepare.prepare(src, "byte", tmp_path / "pb", val_fraction=0.3, num_workers=1, progress=False)
  assert m["replaced_bytes"] == {}
  _, stores = pipeline.open_prepared(tmp_path / "pb")
  assert b"caf\xe9" in bytes(stores["train"].doc_tokens(0).tolist())
  tok = tok_lib.train_bpe(["cafe latin plain text"] * 10, 280, tmp_path / "t.json")
  m = prepare.prepare(
      src, tok.spec, tmp_path / "pt", val_fraction=0.3, num_workers=1, progress=False
  )
  assert m["replaced_bytes"] == {"text": 3 * 40}


def test_synthetic_manifest_has_floor(tmp_path):
  m = prepare.prepare(
      "synthetic:markov:docs=50,doc_len=100",
      "byte",
      tmp_path / "p",
      val_fraction=0.2,
      num_workers=1,
      progress=False,
  )
  assert m["synthetic"]["entropy_rate_bits_per_byte"] > 0
  assert m["splits"]["train"]["domains"]["markov"]["tokens"] == 101 * m["splits"]["train"]["docs"]
  # The loader's window length adds the floor a packed model can reach (stored on disk too).
  src = synthetic.MarkovSource(synthetic.MarkovSpec(docs=50, doc_len=100))
  for seq_len in (32, 64):
    m = prepare.prepare(
        "synthetic:markov:docs=50,doc_len=100",
        "byte",
        tmp_path / "p",
        val_fraction=0.2,
        num_workers=1,
        progress=False,
        seq_len=seq_len,
    )
  syn = prepare.read_manifest(tmp_path / "p")["synthetic"]
  assert syn == m["synthetic"] and syn["reachable_floor_seq_len"] == 64
  assert (
      syn["reachable_floor_bits_per_byte"]
      == src.reachable_floor(64)["reachable_floor_bits_per_byte"]
      > syn["entropy_rate_bits_per_byte"]
  )
  assert set(syn["reachable_floor_by_seq_len"]) == {"32", "64"}


def test_prepare_cli_embedded(tmp_path):
  """The default corpus on a fresh clone (its speed is printed by train.data.bench, not timed here)."""
  r = subprocess.run(
      [
          sys.executable,
          "-m",
          "train.data.prepare",
          "--source",
          "embedded",
          "--tokenizer",
          "byte",
          "--out",
          str(tmp_path / "p"),
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert r.returncode == 0, r.stderr
  m = json.loads((tmp_path / "p" / "manifest.json").read_text())
  assert m["domains"] == ["prose", "code"]
  for s in ("train", "val"):
    for d in ("prose", "code"):
      assert m["splits"][s]["domains"][d]["docs"] > 0
  assert m["splits"]["train"]["domains"]["prose"]["utf8_bytes"] > 3_000_000


def test_tinyshakespeare_shard(shared_data, tmp_path):
  path = shared_data / "tinyshakespeare" / "input.txt"
  if not path.exists():
    pytest.skip("tinyshakespeare absent")
  m = prepare.prepare(
      f"text:{path}:\\n\\n", "byte", tmp_path / "p", val_fraction=0.05, progress=False
  )
  total = sum(m["splits"][s]["utf8_bytes"] for s in ("train", "val"))
  assert 1_000_000 < total <= path.stat().st_size
  assert m["splits"]["val"]["docs"] > 100
  td = pipeline.load_for_training(
      _cfg(f"text:{path}:\\n\\n", val_fraction=0.05),
      tmp_path / "p",
      global_batch_size=4,
      seed=0,
      progress=False,
  )
  b = next(td.train_iter)
  text = td.tokenizer.decode(b["inputs"][0])
  assert b["inputs"].shape == (4, 64) and any(c.isalpha() for c in text)


def _cfg(source, tokenizer="byte", seq_len=64, val_fraction=0.2):
  return ml_collections.ConfigDict(
      dict(
          source=source,
          tokenizer=tokenizer,
          seq_len=seq_len,
          prepared_dir="",
          val_fraction=val_fraction,
          num_workers=1,
      )
  )


def _read_back(out):
  _, stores = pipeline.open_prepared(out)
  return sorted(
      bytes(st.doc_tokens(i).astype(np.uint8)).decode()
      for st in stores.values()
      for i in range(len(st.lengths))
  )


def test_changed_corpus_is_prepared_again(tmp_path):
  texts = write_corpus(tmp_path / "c", n_docs=60)
  src = f"text:{tmp_path}/c/*.txt"
  m1 = prepare.prepare(
      src,
      "byte",
      tmp_path / "p",
      val_fraction=0.2,
      num_workers=1,
      shard_bytes=5_000,
      progress=False,
  )
  (tmp_path / "c" / "0003.txt").write_text("an edited document", encoding="utf-8")
  texts[3] = "an edited document"
  m2 = prepare.prepare(
      src,
      "byte",
      tmp_path / "p",
      val_fraction=0.2,
      num_workers=1,
      shard_bytes=5_000,
      progress=False,
  )
  assert m2["fingerprint"] != m1["fingerprint"]
  assert m2["fingerprint"] == sources.open_source(src).content_fingerprint()
  assert _read_back(tmp_path / "p") == sorted(texts)  # the stale shard was rebuilt


def test_changed_corpus_stops_training_with_one_line(tmp_path):
  write_corpus(tmp_path / "c", n_docs=40)
  src = f"text:{tmp_path}/c/*.txt"
  data_cfg = ml_collections.ConfigDict(
      dict(source=src, tokenizer="byte", seq_len=32, val_fraction=0.2, num_workers=1)
  )
  pipeline.load_for_training(data_cfg, tmp_path / "p", global_batch_size=2, seed=0, progress=False)
  (tmp_path / "c" / "0100.txt").write_text("a new file in the glob", encoding="utf-8")
  with pytest.raises(prepare.CorpusChangedError, match="changed since it was prepared") as e:
    pipeline.load_for_training(
        data_cfg, tmp_path / "p", global_batch_size=2, seed=0, progress=False
    )
  assert "\n" not in str(e.value) and "python -m train.data.prepare" in str(e.value)


def test_touched_but_identical_corpus_is_reused_without_tokenizing(tmp_path):
  write_corpus(tmp_path / "c", n_docs=40)
  src = f"text:{tmp_path}/c/*.txt"
  m1 = prepare.prepare(src, "byte", tmp_path / "p", val_fraction=0.2, num_workers=1, progress=False)
  shard = store.shard_paths(tmp_path / "p", 0)["train"]
  written = shard.stat().st_mtime_ns
  for p in (tmp_path / "c").iterdir():
    os.utime(p, ns=(time.time_ns(), time.time_ns()))
  m2 = prepare.prepare(src, "byte", tmp_path / "p", val_fraction=0.2, num_workers=1, progress=False)
  assert m2["fingerprint"] == m1["fingerprint"] and m2["source_stat"] != m1["source_stat"]
  assert shard.stat().st_mtime_ns == written
  assert prepare.read_manifest(tmp_path / "p")["source_stat"] == m2["source_stat"]


def test_prepared_data_without_its_source_is_used_as_is(tmp_path):
  write_corpus(tmp_path / "c", n_docs=40)
  src = f"text:{tmp_path}/c/*.txt"
  m1 = prepare.prepare(src, "byte", tmp_path / "p", val_fraction=0.2, num_workers=1, progress=False)
  for p in (tmp_path / "c").iterdir():
    p.unlink()
  assert (
      prepare.prepare(src, "byte", tmp_path / "p", val_fraction=0.2, num_workers=1, progress=False)
      == m1
  )


def test_evaluation_only_preparation_holds_out_everything(tmp_path):
  texts = write_corpus(tmp_path / "c", n_docs=30)
  src = f"text:{tmp_path}/c/*.txt"
  with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\].*1.5"):
    prepare.prepare(src, "byte", tmp_path / "bad", val_fraction=1.5, num_workers=2, progress=False)
  m = prepare.prepare(
      src,
      "byte",
      tmp_path / "p",
      val_fraction=1.0,
      num_workers=2,
      shard_bytes=3_000,
      progress=False,
  )
  assert m["splits"]["train"]["docs"] == 0 and m["splits"]["val"]["docs"] == len(texts)
  assert m["splits"]["val"]["utf8_bytes"] == sum(len(t.encode()) for t in texts)
