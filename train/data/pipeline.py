"""The Grain loader: prepared shards -> shuffled, packed, per-process batches with exact resume.

Packing. Each document d (tokens t_1..t_n) is a unit of n+1 (input, target) pairs:
inputs BOS t_1..t_n, targets t_1..t_n EOS, so every document is self-contained (its first
token is predicted from BOS, its end by EOS; no target crosses a document). The units of all
documents, in a seed-dependent document order, are concatenated into one stream that is cut
into `seq_len` windows; a window is one row. In a row, `segment_ids` number the documents
1, 2, ... (0 = padding), `positions` count from 0 within each document piece, `weights` are 1
on real targets. A document longer than `seq_len` (or one crossing a window edge) is split
across windows: each piece is its own segment and its positions restart at 0, so positions
never exceed seq_len - 1 (the learned position table has max_seq_len entries); a continued
piece simply lacks the context of the previous window.

Shuffling. The document order is `default_rng([seed, 1]).permutation`, fixed for the run;
the window order is `grain.MapDataset.shuffle(seed)` reshuffled every epoch by `.repeat()`.
Window shuffling decorrelates rows (a long file would otherwise fill a batch).

Data-constrained runs. `data.max_unique_tokens` = U > 0 keeps only the first U / seq_len
windows of that stream (a prefix of the seed's document order: whole windows, so the subset
holds exactly U target tokens) and the same `.shuffle(seed).repeat()` cycles over it, so a
run of T tokens sees the subset T / U times (epochs), each epoch in a new order. The iterator
state is still the next batch index, so a resume is exact also across epoch boundaries (a
batch may straddle one).

Pipeline (all random access, so the iterator state is just the next batch index):
  MapDataset.range(num_windows).shuffle(seed).repeat()    window ids, global order
  .batch(global_batch // process_count)                   local batches
  [process_index::process_count]                          this process's part of each global batch
  .map(Packer.build)                                      ids -> the batch dict (vectorised read)
  .to_iter_dataset(ReadOptions(...))                      prefetching threads
Global batch g = the local batches g*P .. g*P+P-1 stacked, i.e. windows [g*B, (g+1)*B) of the
shuffled order: concatenating the P processes' parts reproduces the global batch exactly.

Checkpointing. The train iterator is a `grain.DatasetIterator`; its state is a small JSON dict
(`it.get_state()` / `it.set_state(state)`), and restoring it (also in a new process) yields
exactly the next batch. With Orbax (the trainer's CheckpointManager):
    mngr.save(step, args=ocp.args.Composite(state=..., data_iter=grain.checkpoint.CheckpointSave(it)))
    mngr.restore(step, args=ocp.args.Composite(state=..., data_iter=grain.checkpoint.CheckpointRestore(it)))
(the Grain handler writes one `process_<i>-of-<n>.json` per process), or store
`json.dumps(it.get_state())` with `ocp.args.JsonSave`. Restoring is valid only with the same
prepared data (manifest fingerprint), seed, seq_len, global batch and process count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Iterator

import grain
import numpy as np

from train import paths
from train.data import prepare as prepare_lib
from train.data import store as store_lib
from train.data import tokenizer as tok_lib

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "weights")


class Packer:
  """Builds packed windows from a fixed document order over one split (see module doc)."""

  def __init__(
      self,
      split_store: store_lib.SplitStore,
      doc_order: np.ndarray,
      seq_len: int,
      tok: tok_lib.Tokenizer,
  ):
    self.store, self.order, self.seq_len = split_store, np.asarray(doc_order, np.int64), seq_len
    self.bos, self.eos, self.pad = tok.bos_id, tok.eos_id, tok.pad_id
    units = split_store.lengths[self.order] + 1
    self.starts = np.concatenate([[0], np.cumsum(units)]).astype(np.int64)
    self.total = int(self.starts[-1])  # pairs in the stream

  def num_windows(self, *, full_only: bool) -> int:
    return self.total // self.seq_len if full_only else -(-self.total // self.seq_len)

  def _pieces(self, window_ids):
    """(row, col, doc, o0, o1): pairs o0..o1-1 of doc land at row, columns col.."""
    L, out = self.seq_len, []
    for row, w in enumerate(np.asarray(window_ids, np.int64).ravel()):
      a, b = int(w) * L, min(int(w) * L + L, self.total)
      i = int(np.searchsorted(self.starts, a, side="right")) - 1
      while a < b:
        s, e = int(self.starts[i]), int(self.starts[i + 1])
        o0, o1 = a - s, min(b, e) - s
        out.append((row, a - int(w) * L, int(self.order[i]), o0, o1))
        a, i = s + o1, i + 1
    return out

  def build(self, window_ids, *, with_doc_ids: bool = False) -> dict:
    """window ids [n] -> batch dict of [n, seq_len] arrays. Ids >= num_windows give padding rows.
    `with_doc_ids` adds "doc_ids": the split-store index of each target's document (-1 on
    padding), which evaluation uses to cluster standard errors by document."""
    window_ids = np.asarray(window_ids, np.int64).ravel()
    n, L, C = len(window_ids), self.seq_len, store_lib.CHUNK_TOKENS
    pieces = self._pieces(window_ids)
    need = set()
    for _, _, d, o0, o1 in pieces:
      n_d = int(self.store.lengths[d])
      t0, t1 = max(o0 - 1, 0), min(o1, n_d)
      if t1 > t0:
        f = int(self.store.first_record[d])
        need.update(range(f + t0 // C, f + (t1 - 1) // C + 1))
    recs = self.store.read_records(sorted(need)) if need else {}
    inputs = np.full((n, L), self.pad, np.int32)
    targets = np.full((n, L), self.pad, np.int32)
    seg = np.zeros((n, L), np.int32)
    pos = np.zeros((n, L), np.int32)
    seg_counter = np.zeros(n, np.int32)
    doc_ids = np.full((n, L), -1, np.int32)
    for row, col, d, o0, o1 in pieces:
      n_d, f = int(self.store.lengths[d]), int(self.store.first_record[d])
      # ext[j] for j in [o0-1, o1]: BOS at -1, tokens, EOS at n_d.
      t0, t1 = max(o0 - 1, 0), min(o1, n_d)
      toks = np.zeros(0, np.int32)
      if t1 > t0:
        r0, r1 = t0 // C, (t1 - 1) // C
        chunk = np.concatenate([recs[f + r] for r in range(r0, r1 + 1)])
        toks = chunk[t0 - r0 * C : t1 - r0 * C].astype(np.int32)
      ext = np.concatenate(
          [[self.bos] if o0 == 0 else [], toks, [self.eos] if o1 == n_d + 1 else []]
      )
      m = o1 - o0
      inputs[row, col : col + m] = ext[:m]
      targets[row, col : col + m] = ext[1 : m + 1]
      seg_counter[row] += 1
      seg[row, col : col + m] = seg_counter[row]
      pos[row, col : col + m] = np.arange(m, dtype=np.int32)
      doc_ids[row, col : col + m] = d
    out = {
        "inputs": inputs,
        "targets": targets,
        "segment_ids": seg,
        "positions": pos,
        "weights": (seg > 0).astype(np.float32),
    }
    if with_doc_ids:
      out["doc_ids"] = doc_ids
    return out


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(
        f"global batch size {global_batch_size} is not divisible by the process "
        f"count {process_count}; set train.batch_size to a multiple of {process_count}"
    )
  return global_batch_size // process_count


def subset_windows(
    max_unique_tokens, *, seq_len: int, global_batch_size: int, split_windows: int
) -> int:
  """Windows of a data-constrained run's subset: max_unique_tokens / seq_len, or all
  `split_windows` when max_unique_tokens is 0. Values that cannot be honoured exactly raise
  a ValueError naming data.max_unique_tokens and the range that works."""
  batch_tokens, split_tokens = global_batch_size * seq_len, split_windows * seq_len
  if isinstance(max_unique_tokens, bool) or not isinstance(max_unique_tokens, (int, np.integer)):
    raise ValueError(
        f"data.max_unique_tokens must be an integer number of tokens (0: the whole train "
        f"split), got {max_unique_tokens!r}"
    )
  u = int(max_unique_tokens)
  if u == 0:
    return split_windows
  if u < 0 or u % seq_len:
    example = max(u // seq_len * seq_len, batch_tokens)
    raise ValueError(
        f"data.max_unique_tokens={u} must be a positive multiple of data.seq_len={seq_len} "
        f"(whole windows; 0: the whole train split), e.g. {example}"
    )
  if u < batch_tokens:
    raise ValueError(
        f"data.max_unique_tokens={u} is smaller than one global batch (train.batch_size x "
        f"data.seq_len = {batch_tokens} tokens); use at least {batch_tokens}"
    )
  if u > split_tokens:
    raise ValueError(
        f"data.max_unique_tokens={u} is larger than the train split ({split_tokens} tokens "
        f"in whole seq_len windows); use at most {split_tokens} or 0 for the whole split"
    )
  return u // seq_len


def _train_packer(split_store, tok, data_cfg, global_batch_size: int, seed: int):
  """(Packer of the train split in the seed's document order, the number of its windows the
  run cycles over: every full one, or data.max_unique_tokens' worth; see module doc)."""
  seq_len = int(data_cfg.seq_len)
  order = np.random.default_rng([seed, 1]).permutation(len(split_store.lengths))
  packer = Packer(split_store, order, seq_len, tok)
  num_windows = packer.num_windows(full_only=True)
  if num_windows == 0:
    raise ValueError(
        f"the train split has {packer.total} tokens, fewer than one window of "
        f"seq_len={seq_len}; use more data or a shorter data.seq_len"
    )
  num_windows = subset_windows(
      getattr(data_cfg, "max_unique_tokens", 0),
      seq_len=seq_len,
      global_batch_size=global_batch_size,
      split_windows=num_windows,
  )
  return packer, num_windows


def shuffled_batches(
    num_rows: int,
    build,
    *,
    seed: int,
    global_batch_size: int,
    process_index: int,
    process_count: int,
    num_threads: int,
) -> grain.DatasetIterator:
  """`build(row ids)` of this process's part of each global batch of rows 0..num_rows-1,
  shuffled by `seed` and reshuffled every epoch, forever: a checkpointable iterator whose
  state is the next batch index (also the parallel loader's, train/data/parallel.py)."""
  local = _local_batch_size(global_batch_size, process_count)
  ds = grain.MapDataset.range(num_rows).shuffle(seed=seed).repeat(None)
  ds = ds.batch(local, drop_remainder=True)[process_index::process_count].map(build)
  return iter(
      ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=8))
  )


class EvalSource:
  """Deterministic validation batches per domain, with each target's document and bytes.

  For each domain the validation documents are packed in stored (source) order, without
  shuffling, into ceil(tokens / seq_len) windows; the last global batch is padded with rows
  of weight 0. Summed over all batches, `weights` count exactly the manifest's tokens for
  that domain. Each batch also carries "doc_ids" (the document of every target, for
  document-clustered standard errors), and `token_bytes[targets]` gives the bytes each
  scored token stands for (EOS: 0), so bits per byte divide by exactly the bytes scored,
  also when only the first batches are evaluated.
  """

  def __init__(self, split_store, manifest: dict, tok, seq_len: int):
    self.manifest, self.seq_len = manifest, seq_len
    self.domains = tuple(manifest["domains"])
    self.token_bytes = tok_lib.token_byte_lengths(tok)
    self._packers = {}
    for i, d in enumerate(self.domains):
      docs = np.flatnonzero(split_store.domains == i)
      if len(docs):
        self._packers[d] = Packer(split_store, docs, seq_len, tok)
    self.domains = tuple(d for d in self.domains if d in self._packers)

  def num_batches(self, domain: str, global_batch_size: int) -> int:
    return -(-self._packers[domain].num_windows(full_only=False) // global_batch_size)

  def batches(
      self,
      domain: str,
      *,
      global_batch_size: int,
      process_index: int = 0,
      process_count: int = 1,
      max_batches: int | None = None,
  ) -> Iterator[dict]:
    """This process's rows of each global validation batch of `domain`, in a fixed order."""
    if domain not in self._packers:
      raise KeyError(f"unknown domain {domain!r}; prepared domains: {self.domains}")
    local = _local_batch_size(global_batch_size, process_count)
    n = self.num_batches(domain, global_batch_size)
    if max_batches is not None:
      n = min(n, max_batches)
    for g in range(n):
      start = g * global_batch_size + process_index * local
      yield self._packers[domain].build(np.arange(start, start + local), with_doc_ids=True)

  def bytes_per_token(self, domain: str, split: str = "val") -> float:
    return bytes_per_token(self.manifest, domain, split)


def bytes_per_token(manifest: dict, domain: str, split: str = "val") -> float:
  """UTF-8 bytes per target token (EOS included) of a domain/split, from the manifest."""
  return manifest["splits"][split]["domains"][domain]["bytes_per_token"]


@dataclasses.dataclass
class TrainingData:
  train_iter: grain.DatasetIterator  # yields per-process batch dicts; get_state/set_state
  eval_source: EvalSource
  manifest: dict
  tokenizer: tok_lib.Tokenizer


def default_prepared_dir(data_cfg, cache_root, tokenizer=None) -> os.PathLike:
  """A cache dir keyed by source/tokenizer/val_fraction, for `data.prepared_dir = ""`.
  `tokenizer`: data_cfg.tokenizer already loaded, if the caller holds it."""
  tok = tok_lib.as_tokenizer(data_cfg.tokenizer if tokenizer is None else tokenizer)
  key = f"{data_cfg.source}|{tok.digest()}|{float(data_cfg.val_fraction)}"
  return paths.path(cache_root) / f"prepared-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def load_for_training(
    data_cfg,
    prepared_dir,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    model_vocab_size: int | None = None,
    num_threads: int = 2,
    progress: bool = True,
    tokenizer: tok_lib.Tokenizer | None = None,
) -> TrainingData:
  """Everything the trainer needs for a data config.

  Prepares `data_cfg.source` with `data_cfg.tokenizer` into `prepared_dir` unless a matching
  manifest is already there (a manifest made with other settings is an error naming both).
  With several processes on a shared filesystem, call this on process 0 first (or `prepare`)
  and barrier, so the others only read. `model_vocab_size`, if given, must be at least the
  tokenizer's vocab size (see tokenizer.check_vocab_size). Prepared data whose corpus has
  changed since is never used silently: it raises prepare.CorpusChangedError saying how to
  re-prepare (this runs at every start, so a resumed run cannot switch corpora unnoticed).
  `tokenizer`: data_cfg.tokenizer already loaded, if the caller holds it.
  """
  tok = tok_lib.as_tokenizer(data_cfg.tokenizer if tokenizer is None else tokenizer)
  if model_vocab_size is not None:
    tok_lib.check_vocab_size(tok, model_vocab_size)
  manifest = prepare_lib.prepare(
      data_cfg.source,
      tok,
      prepared_dir,
      val_fraction=float(data_cfg.val_fraction),
      num_workers=(data_cfg.num_workers or None),
      progress=progress,
      if_changed="error",
      seq_len=int(data_cfg.seq_len),
  )
  local = paths.local_mirror(prepared_dir)  # prepare() left a bucket's shards there
  train_store = store_lib.SplitStore(local, manifest, "train")
  val_store = store_lib.SplitStore(local, manifest, "val")
  packer, num_windows = _train_packer(train_store, tok, data_cfg, global_batch_size, seed)
  it = shuffled_batches(
      num_windows,
      packer.build,
      seed=seed,
      global_batch_size=global_batch_size,
      process_index=process_index,
      process_count=process_count,
      num_threads=num_threads,
  )
  return TrainingData(
      it, EvalSource(val_store, manifest, tok, int(data_cfg.seq_len)), manifest, tok
  )


def open_prepared(prepared_dir, *, tokenizer: str | None = None) -> tuple[dict, dict]:
  """(manifest, {split: SplitStore}) of an existing prepared dir; checks the tokenizer if given."""
  manifest = prepare_lib.read_manifest(prepared_dir)
  if manifest is None:
    raise FileNotFoundError(
        f"{os.fspath(prepared_dir)}/manifest.json not found; run "
        f"`python -m train.data.prepare --out {os.fspath(prepared_dir)}` first"
    )
  if tokenizer is not None:
    prepare_lib.check_manifest(
        manifest, os.fspath(paths.path(prepared_dir) / "manifest.json"), tokenizer=tokenizer
    )
  local = paths.local_mirror(prepared_dir)  # shards are read from local files
  if paths.is_remote(prepared_dir):
    paths.copy_tree(prepared_dir, local, last=("manifest.json",))
  return manifest, {s: store_lib.SplitStore(local, manifest, s) for s in store_lib.SPLITS}
