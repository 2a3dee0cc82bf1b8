"""The on-disk format of prepared data: ArrayRecord shards of token chunks + npz sidecars.

Layout of a prepared DIR:
  manifest.json                 written last; its presence means "prepare finished"
  shards/{split}-{k:05d}.arrayrecord
                                records = consecutive chunks of <= CHUNK_TOKENS tokens of each
                                document (uint16 or uint32 little-endian), documents in source
                                order; written with group_size:1 so any record reads alone
  shards/{k:05d}.npz            sidecar of shard k: per split the document lengths (tokens,
                                without BOS/EOS), domain ids and UTF-8 byte counts, the
                                expected file size and record count, and the settings

Chunking bounds the cost of reading a window: a `seq_len` window touches at most
ceil(seq_len / CHUNK_TOKENS) + 1 records per document, however long the document.

Crash safety: every file is written under a `.tmp` name and renamed; the sidecar is renamed
after its ArrayRecord files, so a sidecar proves its shard complete. `check_shard` compares
files with their sidecar, which catches truncation and copy errors.
"""

from __future__ import annotations

import json
import os
import pathlib

from array_record.python import array_record_module as arm
from grain.sources import ArrayRecordDataSource
import numpy as np

CHUNK_TOKENS = 1024
WRITER_OPTIONS = "group_size:1,zstd:1"
SPLITS = ("train", "val")


class CorruptShardError(RuntimeError):
  pass


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def shard_paths(out_dir: pathlib.Path, k: int) -> dict:
  d = pathlib.Path(out_dir) / "shards"
  return {"sidecar": d / f"{k:05d}.npz", **{s: d / f"{s}-{k:05d}.arrayrecord" for s in SPLITS}}


def write_shard(out_dir, k: int, docs_by_split: dict, domains: list[str], meta: dict) -> None:
  """docs_by_split[split] = list of (domain_id, tokens np.ndarray, utf8_bytes)."""
  paths = shard_paths(out_dir, k)
  paths["sidecar"].parent.mkdir(parents=True, exist_ok=True)
  side = {}
  for split in SPLITS:
    docs = docs_by_split[split]
    tmp = paths[split].with_name(paths[split].name + ".tmp")
    writer = arm.ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
    records = 0
    for _, toks, _ in docs:
      data = np.ascontiguousarray(toks).astype(np.dtype(meta["token_dtype"]).newbyteorder("<"))
      for start in range(0, len(data), CHUNK_TOKENS):
        writer.write(data[start : start + CHUNK_TOKENS].tobytes())
        records += 1
    writer.close()
    os.replace(tmp, paths[split])
    side[f"{split}_lengths"] = np.array([len(t) for _, t, _ in docs], np.int64)
    side[f"{split}_domain"] = np.array([d for d, _, _ in docs], np.int32)
    side[f"{split}_bytes"] = np.array([b for _, _, b in docs], np.int64)
    side[f"{split}_records"] = np.array(records, np.int64)
    side[f"{split}_file_size"] = np.array(paths[split].stat().st_size, np.int64)
  side["meta"] = np.array(json.dumps({**meta, "domains": domains, "shard": k}))
  tmp = paths["sidecar"].with_name(paths["sidecar"].name + ".tmp.npz")
  np.savez(tmp, **side)
  os.replace(tmp, paths["sidecar"])


def read_sidecar(out_dir, k: int) -> dict | None:
  """The sidecar of shard k, or None if the shard was never finished."""
  p = shard_paths(out_dir, k)["sidecar"]
  if not p.exists():
    return None
  try:
    with np.load(p) as z:
      side = {key: z[key] for key in z.files}
  except Exception as e:  # a damaged sidecar: the shard must be rebuilt
    raise CorruptShardError(
        f"{p}: unreadable shard sidecar ({e}); delete it and re-run prepare "
        f"on {out_dir} to rebuild shard {k}"
    ) from e
  side["meta"] = json.loads(str(side["meta"]))
  return side


def check_shard(out_dir, k: int, side: dict) -> None:
  """Raise CorruptShardError naming the file if a shard file is missing or has the wrong size."""
  paths = shard_paths(out_dir, k)
  for split in SPLITS:
    p, want = paths[split], int(side[f"{split}_file_size"])
    have = p.stat().st_size if p.exists() else None
    if have != want:
      what = "missing" if have is None else f"truncated or altered ({have} bytes, expected {want})"
      raise CorruptShardError(
          f"shard file {p} is {what}; re-run `python -m train.data.prepare` with --out "
          f"{out_dir} (it rebuilds damaged shards) or delete {out_dir} and prepare again"
      )


class SplitStore:
  """All documents of one split: lengths, domains, and random access to tokens."""

  def __init__(self, out_dir, manifest: dict, split: str):
    out_dir = pathlib.Path(out_dir)
    self.split, self.dtype = split, np.dtype(manifest["token_dtype"]).newbyteorder("<")
    lengths, domains, files = [], [], []
    for k in range(manifest["num_shards"]):
      side = read_sidecar(out_dir, k)
      if side is None:
        raise CorruptShardError(
            f"{shard_paths(out_dir, k)['sidecar']} is missing; re-run prepare "
            f"with --out {out_dir}"
        )
      check_shard(out_dir, k, side)
      n_rec = int(side[f"{split}_records"])
      lengths.append(side[f"{split}_lengths"])
      domains.append(side[f"{split}_domain"])
      if n_rec:
        files.append(str(shard_paths(out_dir, k)[split]))
    self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    self.domains = np.concatenate(domains) if domains else np.zeros(0, np.int32)
    chunks = -(-self.lengths // CHUNK_TOKENS)
    # Records of consecutive documents are consecutive within a shard and across shards.
    self.first_record = np.concatenate([[0], np.cumsum(chunks)[:-1]]).astype(np.int64)
    try:
      self._source = ArrayRecordDataSource(files) if files else None
    except Exception as e:
      raise CorruptShardError(
          f"cannot open shards {files}: {e}; re-run prepare with --out "
          f"{out_dir} to rebuild them"
      ) from e

  def read_records(self, record_ids) -> dict:
    ids = [int(r) for r in record_ids]
    try:
      raw = self._source.__getitems__(ids)
    except Exception as e:
      raise CorruptShardError(
          f"reading records {ids[:4]}... of the {self.split} shards failed: "
          f"{e}; re-run prepare to rebuild the shards"
      ) from e
    return {r: np.frombuffer(b, self.dtype) for r, b in zip(ids, raw)}

  def doc_tokens(self, doc: int) -> np.ndarray:
    n = int(self.lengths[doc])
    first = int(self.first_record[doc])
    recs = self.read_records(range(first, first + -(-n // CHUNK_TOKENS)))
    return np.concatenate([recs[r] for r in sorted(recs)]) if recs else np.zeros(0, self.dtype)
