"""Tokenize a corpus once into ArrayRecord shards + a JSON manifest (see store.py for layout).

    python -m train.data.prepare --source embedded --tokenizer byte --out DIR

- Documents are grouped, in source order, into shards of about `shard_bytes` raw bytes; the
  grouping depends only on the documents, so a rerun maps the same documents to the same
  shard numbers. Each shard is tokenized and written by a worker process (spawn context, so
  it is safe to call after JAX started threads); the main process streams the source,
  computes the fingerprint and keeps at most 2 shards per worker in flight.
- Resumable and idempotent: a shard whose sidecar exists and whose files match it is
  skipped; a damaged one is rebuilt; `manifest.json` is written last (atomically), and an
  existing manifest with the same settings is returned without work. A manifest made with
  other settings (tokenizer, source, val_fraction) is an error naming both.
- Never stale: an existing manifest is reused only while the corpus is unchanged (file
  stats, then the content fingerprint: `corpus_change`); each shard's sidecar records the
  fingerprint of its documents, so a resumed prepare rebuilds a shard whose documents changed.
  A changed corpus is prepared again (CLI) or stops training with one line saying how.
- Counts: `tokens` per split/domain include one EOS per document, because the loader
  predicts it (each document is packed as BOS t_1..t_n EOS: n+1 targets). `utf8_bytes` are
  the raw document bytes. bits/byte = (mean loss per target in nats / ln 2) / bytes_per_token.
- Non-UTF-8 bytes: the byte tokenizer keeps them; other tokenizers see U+FFFD and the
  manifest's `replaced_bytes` counts them per domain (a warning names the first files).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import pathlib
import sys
import time

import numpy as np
from tqdm import tqdm

from train import cli
from train.data import sources as sources_lib
from train.data import split as split_lib
from train.data import store
from train import paths
from train.data import synthetic
from train.data import tokenizer as tok_lib

FORMAT = 1
DEFAULT_SHARD_BYTES = 4_000_000

_WORKER_TOK = None


def _init_worker(tokenizer):
  """A spawned worker loads the tokenizer from its spec; in-process, the loaded one is used."""
  global _WORKER_TOK
  _WORKER_TOK = tok_lib.as_tokenizer(tokenizer)


def _tokenize(tok, raw: bytes):
  if isinstance(tok, tok_lib.ByteTokenizer):
    return tok.encode_array(raw), 0
  ids, n = tok.encode_bytes(raw)
  return np.asarray(ids, np.int64), n


def _build_shard(args):
  """Worker: tokenize one group of documents and write shard k. Returns the replaced counts."""
  out_dir, k, docs, domains, val_fraction, meta = args
  tok = _WORKER_TOK
  by_split = {s: [] for s in store.SPLITS}
  replaced = {}
  for domain, doc_id, raw in docs:
    ids, n_bad = _tokenize(tok, raw)
    if n_bad:
      replaced.setdefault(domain, []).append((doc_id, n_bad))
    if len(ids) == 0:
      continue
    s = split_lib.split_of(domain, raw, val_fraction)
    by_split[s].append((domains.index(domain), ids, len(raw)))
  store.write_shard(out_dir, k, by_split, domains, meta)
  return k, replaced


def _settings(source_spec, tok, val_fraction):
  return {
      "format": FORMAT,
      "source": source_spec,
      "tokenizer": tok.spec,
      "tokenizer_digest": tok.digest(),
      "vocab_size": tok.vocab_size,
      "val_fraction": val_fraction,
      "chunk_tokens": store.CHUNK_TOKENS,
      "token_dtype": store.token_dtype(tok.vocab_size).name,
  }


def check_manifest(manifest: dict, path, *, source=None, tokenizer=None, val_fraction=None):
  """Error naming both values if the prepared data was made with other settings.

  `tokenizer` is a Tokenizer or a spec; it is compared by content digest, so a retrained
  tokenizer.json at the same path is caught too.
  """
  get = manifest.get
  mismatches = []  # (what, prepared with, asked for)
  if tokenizer is not None:
    tok = tok_lib.as_tokenizer(tokenizer)
    if (get("tokenizer_digest"), get("vocab_size")) != (tok.digest(), tok.vocab_size):
      have = f"(vocab {get('vocab_size')}, digest {get('tokenizer_digest')})"
      want = f"(vocab {tok.vocab_size}, digest {tok.digest()})"
      mismatches.append(("tokenizer", f"{get('tokenizer')!r} {have}", f"{tok.spec!r} {want}"))
  for what, want in (("source", source), ("val_fraction", val_fraction)):
    if want is not None and get(what) != want:
      mismatches.append((what, repr(get(what)), repr(want)))
  if mismatches:
    what, have, want = mismatches[0]
    raise ValueError(
        f"{path} was prepared with {what} {have} but {want} was asked for; prepare into "
        f"another directory (--out / data.prepared_dir) or delete {os.path.dirname(path)}"
    )


def read_manifest(out_dir) -> dict | None:
  p = paths.path(out_dir) / "manifest.json"
  if not p.exists():
    return None
  return json.loads(p.read_text())


def _shard_done(out_dir, k, settings, group_digest: str) -> bool:
  try:
    side = store.read_sidecar(out_dir, k)
  except store.CorruptShardError as e:
    logging.warning("%s: rebuilding", e)
    return False
  if side is None:
    return False
  meta = {key: side["meta"].get(key) for key in settings}
  if meta != settings:
    raise ValueError(
        f"{store.shard_paths(out_dir, k)['sidecar']} was written with settings {meta}, "
        f"not {settings}; use another --out or delete {out_dir}"
    )
  if side["meta"].get("group_digest") != group_digest:
    logging.warning(
        "shard %d of %s holds other documents than the corpus now has; rebuilding it", k, out_dir
    )
    return False
  try:
    store.check_shard(out_dir, k, side)
  except store.CorruptShardError as e:
    logging.warning("%s: rebuilding it", e)
    return False
  return True


def _groups(source, shard_bytes, fingerprint):
  """Yields (documents of one shard, their own fingerprint); the latter tells a resumed
  prepare whether a finished shard still holds what the corpus has at its place."""
  group, size, group_fp = [], 0, sources_lib.Fingerprint()
  for doc in source.documents():
    raw = doc.raw()
    fingerprint.update(doc, raw)
    group_fp.update(doc, raw)
    group.append((doc.domain, doc.doc_id, raw))
    size += len(raw)
    if size >= shard_bytes:
      yield group, group_fp.hexdigest()
      group, size, group_fp = [], 0, sources_lib.Fingerprint()
  if group:
    yield group, group_fp.hexdigest()


class CorpusChangedError(ValueError):
  """The source's documents differ from those the prepared directory was made from."""


def corpus_change(manifest: dict, src: sources_lib.Source) -> str | None:
  """Why `src` no longer matches the prepared `manifest`, or None if it still does.

  Cost: the stat signature (path, size, mtime of every file: milliseconds, no reading) is
  compared first; only when it differs (files touched, copied, moved) or the source has no
  files (synthetic, a local HF dataset without the signature) is the content fingerprint
  streamed again, reading every byte once but tokenizing nothing (the embedded corpus:
  15 MB in ~0.9 s on a loaded 2-core machine). A hub dataset streamed over the network is
  not re-read (`Source.verifiable` False): its prepared data is trusted.
  """
  if not src.verifiable:
    return None
  stat = src.stat_signature()
  if stat is not None and stat == manifest.get("source_stat"):
    return None
  fingerprint = src.content_fingerprint()
  if fingerprint == manifest.get("fingerprint"):
    return None
  return (
      f"the documents of {src.spec!r} changed since it was prepared (fingerprint "
      f"{str(manifest.get('fingerprint'))[:12]} -> {fingerprint[:12]})"
  )


def _write_manifest(out_dir: pathlib.Path, manifest: dict) -> None:
  tmp = out_dir / "manifest.json.tmp"
  tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
  os.replace(tmp, out_dir / "manifest.json")


def _open_for_check(source: str) -> tuple[sources_lib.Source | None, str | None]:
  """(source, its stat signature); (None, None) when its files are gone (prepared data
  copied without the raw corpus: it cannot be checked and is used as is)."""
  try:
    src = sources_lib.open_source(source)
    return src, src.stat_signature()
  except FileNotFoundError as e:
    logging.warning("cannot check the prepared data against its source (%s); using it as is", e)
    return None, None


def _changed_message(out_dir, reason, source, tokenizer, val_fraction) -> str:
  return (
      f"{out_dir}: {reason}; re-prepare it with `python -m train.data.prepare --source "
      f"{source} --tokenizer {tokenizer} --val-fraction {val_fraction} --out {out_dir}`, "
      f"or set data.prepared_dir to a new directory (a run resumed on a changed corpus "
      f"would no longer train on the data its checkpoints saw)"
  )


def _reusable(existing, out_dir, source, src, stat, tok, val_fraction, if_changed) -> dict | None:
  """The existing manifest if its shards are intact and the corpus unchanged, else None
  (after removing the manifest, so the shards are rebuilt) or CorpusChangedError."""
  if existing is None:
    return None
  check_manifest(
      existing, out_dir / "manifest.json", source=source, tokenizer=tok, val_fraction=val_fraction
  )
  reason = corpus_change(existing, src) if src is not None else None
  if reason is not None:
    if if_changed == "error":
      raise CorpusChangedError(_changed_message(out_dir, reason, source, tok.spec, val_fraction))
    logging.warning("%s; preparing %s again", reason, out_dir)
    (out_dir / "manifest.json").unlink()
    return None
  try:
    for k in range(existing["num_shards"]):
      side = store.read_sidecar(out_dir, k)
      if side is None:
        raise store.CorruptShardError(f"{store.shard_paths(out_dir, k)['sidecar']} is missing")
      store.check_shard(out_dir, k, side)
  except store.CorruptShardError as e:  # rebuild the damaged shards, then a new manifest
    logging.warning("%s; rebuilding damaged shards of %s", e, out_dir)
    (out_dir / "manifest.json").unlink()
    return None
  if stat is not None and existing.get("source_stat") != stat:  # same content, touched files
    existing["source_stat"] = stat
    _write_manifest(out_dir, existing)
  return existing


def _with_reachable_floor(manifest: dict, out_dir: pathlib.Path, seq_len: int | None) -> dict:
  """Adds the synthetic corpus's packed-stream floor for `seq_len` to the manifest (and its
  file) under "synthetic": `reachable_floor_bits_per_byte` (the latest seq_len's, with
  `reachable_floor_seq_len`) and `reachable_floor_by_seq_len` {str(seq_len): bits/byte}.
  Byte tokenizer only (one symbol = one token fixes the packing; see synthetic.py)."""
  syn = manifest.get("synthetic")
  if not seq_len or not isinstance(syn, dict) or manifest.get("tokenizer") != "byte":
    return manifest
  if syn.get("reachable_floor_seq_len") == int(seq_len):
    return manifest
  fields = {f: syn[f] for f in synthetic.MarkovSpec.__dataclass_fields__}
  floor = synthetic.MarkovSource(synthetic.MarkovSpec(**fields)).reachable_floor(int(seq_len))
  syn.update(floor)
  syn.setdefault("reachable_floor_by_seq_len", {})[str(int(seq_len))] = floor[
      "reachable_floor_bits_per_byte"
  ]
  _write_manifest(out_dir, manifest)
  return manifest


def prepare(
    source: str,
    tokenizer: tok_lib.Tokenizer | str,
    out_dir,
    *,
    val_fraction: float = 0.01,
    num_workers: int | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = True,
    if_changed: str = "reprepare",
    seq_len: int | None = None,
) -> dict:
  """Prepare `source` with `tokenizer` into `out_dir` (idempotent, resumable); returns the
  manifest. Existing prepared data is reused only if the corpus is unchanged (see
  `corpus_change`); otherwise it is prepared again (`if_changed="reprepare"`) or a
  CorpusChangedError says why and how to proceed (`"error"`, what training uses).
  `seq_len` (the loader's window) adds a synthetic corpus's reachable floor for it."""
  if if_changed not in ("reprepare", "error"):
    raise ValueError(f"if_changed must be 'reprepare' or 'error', got {if_changed!r}")
  if paths.is_remote(out_dir):
    kwargs = dict(val_fraction=val_fraction, num_workers=num_workers, shard_bytes=shard_bytes)
    kwargs.update(progress=progress, if_changed=if_changed, seq_len=seq_len)
    return _prepare_remote(source, tokenizer, out_dir, **kwargs)
  out_dir = pathlib.Path(out_dir)
  val_fraction = split_lib.check_val_fraction(val_fraction)  # here, not inside a worker
  tok = tok_lib.as_tokenizer(tokenizer)
  settings = _settings(str(source), tok, val_fraction)
  existing = read_manifest(out_dir)
  src, stat = _open_for_check(str(source)) if existing is not None else (None, None)
  reused = _reusable(existing, out_dir, str(source), src, stat, tok, val_fraction, if_changed)
  if reused is not None:
    return _with_reachable_floor(reused, out_dir, seq_len)
  src = sources_lib.open_source(source)
  stat = src.stat_signature()  # taken before reading: a file edited meanwhile shows next time
  domains = list(src.domains)
  num_workers = min(2, os.cpu_count() or 1) if num_workers is None else num_workers
  fp = sources_lib.Fingerprint()
  bar = tqdm(desc=f"prepare {source}", unit=" shard", disable=not progress, file=sys.stderr)
  replaced, t0 = {}, time.time()
  pool = None
  if num_workers > 1:
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(num_workers, initializer=_init_worker, initargs=(tok.spec,))
  else:
    _init_worker(tok)
  pending, num_shards = [], 0

  def collect(result):
    _, rep = result
    for dom, items in rep.items():
      replaced.setdefault(dom, []).extend(items)
    bar.update(1)

  try:
    for k, (group, group_digest) in enumerate(_groups(src, shard_bytes, fp)):
      num_shards = k + 1
      if _shard_done(out_dir, k, settings, group_digest):
        bar.update(1)
        continue
      job = (
          out_dir,
          k,
          group,
          domains,
          float(val_fraction),
          {**settings, "group_digest": group_digest},
      )
      if pool is None:
        collect(_build_shard(job))
        continue
      pending.append(pool.apply_async(_build_shard, (job,)))
      while len(pending) >= 2 * num_workers:
        collect(pending.pop(0).get())
    for p in pending:
      collect(p.get())
  finally:
    if pool is not None:
      pool.terminate()
      pool.join()
    bar.close()
  if num_shards == 0:
    raise ValueError(f"source {source!r} yielded no documents (empty corpus); check the path/field")
  manifest = _summarize(out_dir, num_shards, settings, domains, replaced, src)
  manifest["fingerprint"] = fp.hexdigest()
  manifest["source_stat"] = stat
  manifest["prepare_seconds"] = round(time.time() - t0, 3)
  _write_manifest(out_dir, manifest)
  return _with_reachable_floor(manifest, out_dir, seq_len)


def _prepare_remote(source: str, tokenizer, url: str, **kwargs) -> dict:
  """Prepares into the local mirror of `url` (ArrayRecord writes local files; train/paths.py),
  after fetching what the bucket already holds so that an intact copy is reused, then uploads
  the shards and, last, the manifest (its presence means "prepare finished")."""
  local = paths.local_mirror(url)
  if read_manifest(url) is not None:
    paths.copy_tree(url, local, last=("manifest.json",))
  manifest = prepare(source, tokenizer, local, **kwargs)
  paths.copy_tree(local, url, last=("manifest.json",))
  return manifest


def _summarize(out_dir, num_shards, settings, domains, replaced, src) -> dict:
  splits = {
      s: {
          "docs": 0,
          "tokens": 0,
          "utf8_bytes": 0,
          "domains": {d: {"docs": 0, "tokens": 0, "utf8_bytes": 0} for d in domains},
      }
      for s in store.SPLITS
  }
  for k in range(num_shards):
    side = store.read_sidecar(out_dir, k)
    for s in store.SPLITS:
      dom = side[f"{s}_domain"]
      for i, d in enumerate(domains):
        m = dom == i
        row = splits[s]["domains"][d]
        row["docs"] += int(m.sum())
        row["tokens"] += int((side[f"{s}_lengths"][m] + 1).sum())
        row["utf8_bytes"] += int(side[f"{s}_bytes"][m].sum())
  for s, tot in splits.items():
    for key in ("docs", "tokens", "utf8_bytes"):
      tot[key] = sum(r[key] for r in tot["domains"].values())
    for d, row in tot["domains"].items():
      if row["docs"] == 0 and s == "train" and settings["val_fraction"] == 1.0:
        continue  # evaluation only: every document is held out
      if row["docs"] == 0:
        raise ValueError(
            f"{out_dir}: split {s!r} of domain {d!r} is empty (source {src.spec!r}, val_fraction="
            f"{settings['val_fraction']}); "
            + (
                "raise --val-fraction / data.val_fraction or add documents (split one file into "
                "many with text:<glob>:<separator>)"
                if s == "val"
                else "lower val_fraction or add documents"
            )
        )
      row["bytes_per_token"] = row["utf8_bytes"] / row["tokens"] if row["tokens"] else 0.0
  rep = {d: sum(n for _, n in items) for d, items in replaced.items()}
  if rep:
    examples = [i for items in replaced.values() for i, _ in items][:5]
    logging.warning(
        "%s: %d non-UTF-8 bytes replaced by U+FFFD for tokenizer %s (e.g. in %s)",
        src.spec,
        sum(rep.values()),
        settings["tokenizer"],
        examples,
    )
  return {
      **settings,
      "domains": domains,
      "num_shards": num_shards,
      "splits": splits,
      "replaced_bytes": rep,
      **src.info,
      "tokens_note": "tokens include one EOS per document; bytes are raw UTF-8 bytes",
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
      prog="python -m train.data.prepare", description=__doc__.split("\n")[0]
  )
  p.add_argument("--source", default="embedded")
  p.add_argument("--tokenizer", default="byte")
  p.add_argument("--out", required=True)
  p.add_argument("--val-fraction", type=float, default=0.01)
  p.add_argument("--num-workers", type=int, default=None)
  p.add_argument("--shard-bytes", type=int, default=DEFAULT_SHARD_BYTES)
  a = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  m = prepare(
      a.source,
      a.tokenizer,
      a.out,
      val_fraction=a.val_fraction,
      num_workers=a.num_workers,
      shard_bytes=a.shard_bytes,
  )
  print(
      json.dumps(
          {k: m[k] for k in ("source", "fingerprint", "num_shards", "prepare_seconds") if k in m}
      )
  )
  print(
      json.dumps(
          {s: {d: r["tokens"] for d, r in v["domains"].items()} for s, v in m["splits"].items()}
      )
  )
  return 0


if __name__ == "__main__":
  cli.run(main)
