"""Parallel (sequence-to-sequence) data: source/target pairs, tokenized once, served as padded
rows with the source beside its target (encoder-decoder) or before it (decoder-only).

Specs (data.source when model.arch=encoder_decoder, or model.arch=decoder for "source <sep>
target" rows):
  pairs:<src_glob>:<tgt_glob>          line-aligned text files (`.gz` read as gzip): line i of
                                       the k-th source file translates line i of the k-th
                                       target file (both globs sorted)
  jsonl:<glob>:<src_field>:<tgt_field> one pair per JSON line; a list-valued source is joined
                                       with spaces, a list-valued target gives one pair per item
                                       (several references, e.g. SciTLDR)

Rows (width data.seq_len): src_tokens = s_1..s_m EOS, then padding (src_segment_ids 1 on the
source, 0 on padding; src_positions count from 0); the decoder reads inputs = BOS t_1..t_n and
predicts targets = t_1..t_n EOS (segment 1, weights 1 there, 0 on padding), so the loss counts
target tokens only. Training rows pack several pairs (a fixed, seed-dependent packing for the
run): pair k of a row is source segment k and target segment k, and cross-attention lets
target segment k read only source segment k. Validation rows hold one pair each.

Decoder-only models (model.arch=decoder) read the same sources as "source <sep> target" rows:
inputs = BOS s_1..s_m SEP t_1..t_n, targets = s_1..s_m SEP t_1..t_n EOS, with weights 1 only
where the target is t_1..t_n EOS, so the loss counts target tokens only, as for the
encoder-decoder. The separator is the EOS token (the tokenizer's own end-of-text id: no new
token is added), so the prompt BOS + source + EOS is exactly the encoder-decoder's source
with BOS in front. Each pair is one segment (positions from 0); training rows pack several.

Preparing: every pair is tokenized once into `parallel-<split>.npz` (flat token arrays plus
offsets) under the prepared dir, with a `parallel.json` manifest naming the source, tokenizer
digest, val_fraction and the files' stat signature; a later run with the same settings and
unchanged files reuses it. The train/validation split is keyed on each pair's content
(split.py), as for every other source.
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import gzip
import hashlib
import json
import os
import pathlib
from typing import Iterator

import numpy as np
from train.data import pipeline

from train.data import split as split_lib
from train.data import tokenizer as tok_lib

FORMAT = 1
DOMAIN = "pairs"
MANIFEST = "parallel.json"


@dataclasses.dataclass(frozen=True)
class Pair:
  doc_id: str  # file:line, for messages
  src: str
  tgt: str


def _glob(pattern: str, spec: str) -> list[str]:
  paths = sorted(p for p in globlib.glob(pattern, recursive=True) if os.path.isfile(p))
  if not paths:
    raise FileNotFoundError(f"source {spec!r}: no files match {pattern!r}; check the path")
  return paths


def read_lines(path: str) -> list[str]:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); convert it to UTF-8") from e
  if not text.strip():
    raise ValueError(f"{path}: empty file; a parallel source needs one sentence per line")
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  return [line.rstrip("\r") for line in lines]


def is_parallel(spec: str) -> bool:
  """Whether data.source is a parallel source (pairs: or jsonl: with two fields)."""
  try:
    parse_spec(spec)
  except ValueError:
    return False
  return True


def parse_spec(spec: str) -> tuple[str, list[str]]:
  """('pairs', [src_glob, tgt_glob]) or ('jsonl', [glob, src_field, tgt_field])."""
  kind, _, arg = str(spec).partition(":")
  if kind == "pairs":
    parts = arg.split(":")
    if len(parts) == 2 and all(parts):
      return kind, parts
  elif kind == "jsonl":
    parts = arg.rsplit(":", 2)
    if len(parts) == 3 and all(parts):
      return kind, parts
  raise ValueError(
      f"data.source={spec!r} is not a parallel source; an encoder-decoder reads "
      "pairs:<src_glob>:<tgt_glob> or jsonl:<glob>:<src_field>:<tgt_field>"
  )


def files(spec: str) -> list[str]:
  kind, args = parse_spec(spec)
  if kind == "pairs":
    return _glob(args[0], spec) + _glob(args[1], spec)
  return _glob(args[0], spec)


def read_pairs(spec: str) -> Iterator[Pair]:
  """Every pair of a parallel source, in file order; bad files raise one-line ValueErrors."""
  kind, args = parse_spec(spec)
  if kind == "pairs":
    yield from _file_pairs(spec, *args)
  else:
    yield from _jsonl_pairs(spec, *args)


def _file_pairs(spec: str, src_glob: str, tgt_glob: str) -> Iterator[Pair]:
  srcs, tgts = _glob(src_glob, spec), _glob(tgt_glob, spec)
  if len(srcs) != len(tgts):
    raise ValueError(
        f"source {spec!r}: {len(srcs)} source file(s) but {len(tgts)} target file(s); "
        "the globs must match files one to one"
    )
  for src_path, tgt_path in zip(srcs, tgts):
    src_lines, tgt_lines = read_lines(src_path), read_lines(tgt_path)
    if len(src_lines) != len(tgt_lines):
      raise ValueError(
          f"{src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}; "
          "source and target files must be line-aligned"
      )
    for i, (s, t) in enumerate(zip(src_lines, tgt_lines), 1):
      yield _checked(Pair(f"{src_path}:{i}", s, t))


def _jsonl_pairs(spec: str, pattern: str, src_field: str, tgt_field: str) -> Iterator[Pair]:
  for path in _glob(pattern, spec):
    fix = "name the fields in jsonl:<glob>:<src>:<tgt>"
    for i, src, tgts in jsonl_examples(path, src_field, tgt_field, fix):
      for t in tgts:
        yield _checked(Pair(f"{path}:{i}", src, t))


def jsonl_examples(
    path, src_field: str, tgt_field: str, fix: str
) -> Iterator[tuple[int, str, list[str]]]:
  """(line number, source, targets) per non-blank line of a jsonl file: a list source is joined
  with spaces, a single target is a list of one. `fix` tells how to name other fields."""
  for i, line in enumerate(read_lines(path), 1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{i}: not valid JSON ({e.msg}); fix or remove the line") from e
    for f in (src_field, tgt_field):
      if not isinstance(obj, dict) or f not in obj:
        raise ValueError(f"{path}:{i}: no field {f!r}; {fix}")
    src, tgts = obj[src_field], obj[tgt_field]
    src = " ".join(map(str, src)) if isinstance(src, list) else str(src)
    yield i, src, [str(t) for t in tgts] if isinstance(tgts, list) else [str(tgts)]


def _checked(pair: Pair) -> Pair:
  if not pair.src.strip():
    raise ValueError(f"{pair.doc_id}: empty source; remove the pair or fill in its source")
  if not pair.tgt.strip():
    raise ValueError(f"{pair.doc_id}: empty target; remove the pair or fill in its target")
  return pair


# ---- preparing ----------------------------------------------------------------------------


def _stat_signature(paths: list[str]) -> str:
  h = hashlib.sha256()
  for p in paths:
    st = os.stat(p)
    h.update(json.dumps([os.path.abspath(p), st.st_size, st.st_mtime_ns]).encode())
  return h.hexdigest()


def prepare(spec: str, tokenizer, out_dir, *, val_fraction: float) -> dict:
  """Tokenizes the pairs once into out_dir (see module doc); returns the manifest.
  `tokenizer`: a loaded Tokenizer or its spec."""
  out_dir = pathlib.Path(out_dir)
  tok = tok_lib.as_tokenizer(tokenizer)
  settings = {
      "format": FORMAT,
      "source": str(spec),
      "tokenizer": tok.digest(),
      "val_fraction": float(val_fraction),
      "stat_signature": _stat_signature(files(spec)),
  }
  path = out_dir / MANIFEST
  if path.exists():
    manifest = json.loads(path.read_text())
    if {k: manifest.get(k) for k in settings} == settings:
      return manifest
  by_split = {s: ([], [], []) for s in split_lib.SPLITS}
  for pair in read_pairs(spec):
    content = pair.src + "\x00" + pair.tgt
    ids, srcs, tgts = by_split[split_lib.split_of(DOMAIN, content, val_fraction)]
    ids.append(pair.doc_id)
    srcs.append(tok.encode(pair.src))
    tgts.append(tok.encode(pair.tgt))
  out_dir.mkdir(parents=True, exist_ok=True)
  counts = {}
  for s, (ids, srcs, tgts) in by_split.items():
    np.savez(
        out_dir / f"parallel-{s}.npz",
        doc_ids=np.asarray(ids, str),
        **_flat("src", srcs),
        **_flat("tgt", tgts),
    )
    counts[s] = {"pairs": len(ids), "target_tokens": int(sum(len(t) + 1 for t in tgts))}
  manifest = {**settings, "domains": [DOMAIN], "splits": counts}
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(manifest, indent=2))
  os.replace(tmp, path)
  return manifest


def _flat(name: str, seqs: list[list[int]]) -> dict:
  lengths = np.asarray([len(s) for s in seqs], np.int64)
  flat = np.concatenate([np.asarray(s, np.int32) for s in seqs]) if seqs else np.zeros(0, np.int32)
  return {f"{name}_flat": flat, f"{name}_offsets": np.concatenate([[0], np.cumsum(lengths)])}


class PairStore:
  """One split's tokenized pairs (all in memory: parallel corpora are small)."""

  def __init__(self, out_dir, split: str):
    with np.load(pathlib.Path(out_dir) / f"parallel-{split}.npz") as z:
      self.doc_ids = z["doc_ids"]
      self._src = (z["src_flat"], z["src_offsets"])
      self._tgt = (z["tgt_flat"], z["tgt_offsets"])

  def __len__(self) -> int:
    return len(self.doc_ids)

  def src(self, i: int) -> np.ndarray:
    return self._src[0][self._src[1][i] : self._src[1][i + 1]]

  def tgt(self, i: int) -> np.ndarray:
    return self._tgt[0][self._tgt[1][i] : self._tgt[1][i + 1]]

  def check_lengths(self, seq_len: int, table: int | None, *, joint: bool = False) -> None:
    """Each source + EOS and each BOS + target must fit a row (and the position table);
    `joint` (decoder-only rows): BOS + source + SEP + target must fit one."""
    limit = min(seq_len, table) if table else seq_len
    src_len, tgt_len = np.diff(self._src[1]), np.diff(self._tgt[1])
    if joint:
      checks = (("source + target", src_len + tgt_len, 2, "+2 for BOS and SEP"),)
    else:
      checks = (("source", src_len, 1, "+1 for EOS/BOS"), ("target", tgt_len, 1, "+1 for EOS/BOS"))
    for name, lengths, added, note in checks:
      over = np.flatnonzero(lengths + added > limit)
      if len(over):
        i = int(over[0])
        raise ValueError(
            f"{self.doc_ids[i]}: the {name} has {int(lengths[i])} tokens ({note}), longer "
            f"than the rows of data.seq_len={seq_len}"
            + (f" / position table {table}" if table else "")
            + "; raise data.seq_len (and model.max_seq_len) or drop the pair"
        )


def pack_rows(store: PairStore, order, seq_len: int, *, joint: bool = False) -> list[list[int]]:
  """Pair indices per row, in `order`, each row filled until the next pair's source + EOS or
  BOS + target would overflow seq_len (checked by PairStore.check_lengths to fit alone);
  `joint`: until the next BOS + source + SEP + target would."""
  rows, row, src_used, tgt_used = [], [], 0, 0
  for i in np.asarray(order, np.int64).tolist():
    m, t = len(store.src(i)) + 1, len(store.tgt(i)) + 1
    if joint:
      m, t = 0, m + t
    if row and (src_used + m > seq_len or tgt_used + t > seq_len):
      rows.append(row)
      row, src_used, tgt_used = [], 0, 0
    row.append(i)
    src_used, tgt_used = src_used + m, tgt_used + t
  if row:
    rows.append(row)
  return rows


class PairPacker:
  """Rows of pair indices -> the batch dict (see module doc). Pair k of a row is source and
  target segment k; indices past the store are padding (weight 0)."""

  def __init__(self, store: PairStore, seq_len: int, tok):
    self.store, self.seq_len = store, seq_len
    self.bos, self.eos, self.pad = tok.bos_id, tok.eos_id, tok.pad_id

  def build(self, indices, *, with_doc_ids: bool = False) -> dict:
    """One pair per row."""
    rows = [[i] for i in np.asarray(indices, np.int64).ravel().tolist()]
    return self.build_rows(rows, with_doc_ids=with_doc_ids)

  def build_rows(self, rows, *, with_doc_ids: bool = False) -> dict:
    n, length = len(rows), self.seq_len
    out = {k: np.full((n, length), self.pad, np.int32) for k in ("inputs", "targets", "src_tokens")}
    for k in ("segment_ids", "positions", "src_segment_ids", "src_positions"):
      out[k] = np.zeros((n, length), np.int32)
    doc_ids = np.full((n, length), -1, np.int32)
    for r, pairs in enumerate(rows):
      s0 = t0 = 0
      for seg, i in enumerate(p for p in pairs if p < len(self.store)):
        src, tgt = self.store.src(i), self.store.tgt(i)
        s1, t1 = s0 + len(src) + 1, t0 + len(tgt) + 1
        out["src_tokens"][r, s0:s1] = np.append(src, self.eos)
        out["src_segment_ids"][r, s0:s1] = seg + 1
        out["src_positions"][r, s0:s1] = np.arange(s1 - s0)
        out["inputs"][r, t0:t1] = np.concatenate([[self.bos], tgt])
        out["targets"][r, t0:t1] = np.append(tgt, self.eos)
        out["segment_ids"][r, t0:t1] = seg + 1
        out["positions"][r, t0:t1] = np.arange(t1 - t0)
        doc_ids[r, t0:t1] = i
        s0, t0 = s1, t1
    out["weights"] = (out["segment_ids"] > 0).astype(np.float32)
    if with_doc_ids:
      out["doc_ids"] = doc_ids
    return out


class JointPairPacker(PairPacker):
  """Rows of pair indices -> decoder-only batches: pair k of a row is segment k holding
  BOS source SEP target (see module doc); weights 1 where the target is a target token or
  the final EOS."""

  def build_rows(self, rows, *, with_doc_ids: bool = False) -> dict:
    n, length = len(rows), self.seq_len
    out = {k: np.full((n, length), self.pad, np.int32) for k in ("inputs", "targets")}
    for k in ("segment_ids", "positions"):
      out[k] = np.zeros((n, length), np.int32)
    out["weights"] = np.zeros((n, length), np.float32)
    doc_ids = np.full((n, length), -1, np.int32)
    for r, pairs in enumerate(rows):
      t0 = 0
      for seg, i in enumerate(p for p in pairs if p < len(self.store)):
        src, tgt = self.store.src(i), self.store.tgt(i)
        seq = np.concatenate([[self.bos], src, [self.eos], tgt, [self.eos]])
        t1 = t0 + len(seq) - 1
        out["inputs"][r, t0:t1], out["targets"][r, t0:t1] = seq[:-1], seq[1:]
        out["segment_ids"][r, t0:t1] = seg + 1
        out["positions"][r, t0:t1] = np.arange(t1 - t0)
        out["weights"][r, t1 - len(tgt) - 1 : t1] = 1.0
        doc_ids[r, t0:t1] = i
        t0 = t1
    if with_doc_ids:
      out["doc_ids"] = doc_ids
    return out


class PairEvalSource:
  """Validation pairs in stored order, the interface of pipeline.EvalSource (one domain)."""

  def __init__(self, store: PairStore, manifest: dict, tok, seq_len: int, packer_cls=PairPacker):
    self.manifest, self.packer = manifest, packer_cls(store, seq_len, tok)
    self.domains = (DOMAIN,) if len(store) else ()
    self.token_bytes = tok_lib.token_byte_lengths(tok)

  def num_batches(self, domain: str, global_batch_size: int) -> int:
    return -(-len(self.packer.store) // global_batch_size)

  def batches(
      self, domain, *, global_batch_size, process_index=0, process_count=1, max_batches=None
  ):
    local = global_batch_size // process_count
    n = self.num_batches(domain, global_batch_size)
    for g in range(n if max_batches is None else min(n, max_batches)):
      start = g * global_batch_size + process_index * local
      yield self.packer.build(np.arange(start, start + local), with_doc_ids=True)


def load_for_training(
    data_cfg,
    prepared_dir,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    model_vocab_size: int | None = None,
    position_table: int | None = None,
    num_threads: int = 2,
    progress: bool = True,
    decoder_only: bool = False,
    tokenizer=None,
):
  """pipeline.TrainingData for a parallel source: packed rows of pairs, shuffled, repeated
  (decoder_only: "source <sep> target" rows, see the module doc)."""

  del progress
  tok = tok_lib.as_tokenizer(data_cfg.tokenizer if tokenizer is None else tokenizer)
  if model_vocab_size is not None:
    tok_lib.check_vocab_size(tok, model_vocab_size)
  manifest = prepare(data_cfg.source, tok, prepared_dir, val_fraction=float(data_cfg.val_fraction))
  seq_len = int(data_cfg.seq_len)
  train, val = PairStore(prepared_dir, "train"), PairStore(prepared_dir, "val")
  for store in (train, val):
    store.check_lengths(seq_len, position_table, joint=decoder_only)
  order = np.random.default_rng([seed, 1]).permutation(len(train))
  rows = pack_rows(train, order, seq_len, joint=decoder_only)
  if len(rows) < global_batch_size:
    raise ValueError(
        f"the train split packs into {len(rows)} rows of data.seq_len={seq_len}, fewer than "
        f"one batch of train.batch_size={global_batch_size}; use more pairs or a smaller batch"
    )
  packer_cls = JointPairPacker if decoder_only else PairPacker
  packer = packer_cls(train, seq_len, tok)
  it = pipeline.shuffled_batches(
      len(rows),
      lambda ids: packer.build_rows([rows[j] for j in np.asarray(ids).tolist()]),
      seed=seed,
      global_batch_size=global_batch_size,
      process_index=process_index,
      process_count=process_count,
      num_threads=num_threads,
  )
  evals = PairEvalSource(val, manifest, tok, seq_len, packer_cls)
  return pipeline.TrainingData(it, evals, manifest, tok)
