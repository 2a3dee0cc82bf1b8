"""Paths of runs, ladders and prepared data, local or on object storage (gs://, s3://, ...).

Every file the trainer, the ladder, the evaluators and the report read or write goes through
`etils.epath` (`path()`), the path type Orbax uses, so a workdir may be a bucket URL:
`--workdir gs://bucket/run`. epath reaches gs:// through TensorFlow's gfile when it is
installed and through fsspec (gcsfs) otherwise; Orbax also asks google-cloud-storage about the
bucket (`pip install -e ".[gcs]"`).

What object storage lacks is bridged here:
  - no append: `AppendFile` keeps a remote file's text and rewrites the object, at most every
    `every_s` seconds and on close (a killed run loses at most those seconds of lines);
  - no rename of directories or files written in place: `write_text_atomic` writes a remote
    object whole (an object appears only when its upload completes);
  - libraries that need a local file (ArrayRecord shards, TensorBoard event files, flock):
    they use `local_mirror(p)`, a directory under the cache (`cache_root()`:
    $UNLEASH_CACHE_DIR, else ~/.cache/unleash), copied to and from the remote with
    `upload` / `download`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pathlib
import shutil
import time

from etils import epath


def is_remote(p) -> bool:
  """A URL (gs://bucket/x, s3://...), as opposed to a local path."""
  return "://" in os.fspath(p)


def path(p) -> epath.Path:
  """`p` as an epath.Path: URLs as they are, local paths made absolute (Orbax's TensorStore
  backend rejects relative ones, and users pass `--workdir runs/x`)."""
  text = os.fspath(p)
  return epath.Path(text if is_remote(text) else os.path.abspath(text))


def cache_root() -> pathlib.Path:
  """Where local copies of remote data, lock files and compilation caches live."""
  root = os.environ.get("UNLEASH_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "unleash"
  )
  return pathlib.Path(root)


def local_mirror(p) -> pathlib.Path:
  """The local directory that stands for `p`: `p` itself when local, else a directory under
  cache_root()/remote named after the URL."""
  if not is_remote(p):
    return pathlib.Path(os.path.abspath(os.fspath(p)))
  scheme, _, rest = os.fspath(p).partition("://")
  return cache_root() / "remote" / scheme / rest.strip("/")


def write_text_atomic(p, text: str) -> None:
  """Writes the whole file so that a reader or a kill never sees half of it: locally a
  temporary file renamed over `p`; remotely one object upload."""
  p = path(p)
  if is_remote(p):
    p.write_text(text)
    return
  tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
  with open(tmp, "w", encoding="utf-8", newline="") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, p)


def files(root) -> dict[str, int]:
  """{path relative to root: size} of every file under `root` (local or remote); raises
  FileNotFoundError when `root` is not a directory."""
  root = path(root)
  if not root.is_dir():
    raise FileNotFoundError(os.fspath(root))
  out, todo = {}, [root]
  while todo:
    d = todo.pop()
    for child in d.iterdir():
      if child.is_dir():
        todo.append(child)
      else:
        out[os.fspath(child)[len(os.fspath(root)) + 1 :]] = int(child.stat().length)
  return out


def copy_tree(src, dst, *, last: tuple[str, ...] = ()) -> list[str]:
  """Copies every file under `src` that `dst` lacks or holds with another size (prepared
  shards never change in place, so the size tells a stale copy) and the names in `last` whose
  bytes differ, those after all others (a manifest whose presence means "complete").
  Temporary files (*.tmp*) of an unfinished write are left behind. Returns the copied names."""
  src, dst = path(src), path(dst)
  have = files(dst) if dst.is_dir() else {}

  def stale(name: str, size: int) -> bool:
    if name in last and name in have:
      return (src / name).read_bytes() != (dst / name).read_bytes()
    return have.get(name) != size

  todo = [
      n
      for n, size in sorted(files(src).items())
      if ".tmp" not in n.rsplit("/")[-1] and stale(n, size)
  ]
  todo.sort(key=lambda n: n in last)
  for name in todo:
    target = dst / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with (src / name).open("rb") as fin, target.open("wb") as fout:
      shutil.copyfileobj(fin, fout, 1 << 24)
  return todo


class AppendFile:
  """A text file opened for appending, also on object storage (module doc)."""

  def __init__(self, p, every_s: float = 10.0):
    self.path, self.every_s = path(p), every_s
    self._remote = is_remote(self.path)
    if self._remote:
      self._text = self.path.read_text() if self.path.exists() else ""
      self._dirty, self._last = False, 0.0
    else:
      self._file = open(self.path, "a", encoding="utf-8")

  def write(self, text: str) -> None:
    if not self._remote:
      self._file.write(text)
      return
    self._text += text
    self._dirty = True

  def flush(self, force: bool = False) -> None:
    if not self._remote:
      self._file.flush()
    elif self._dirty and (force or time.time() - self._last >= self.every_s):
      self.path.write_text(self._text)
      self._dirty, self._last = False, time.time()

  def close(self) -> None:
    self.flush(force=True)
    if not self._remote:
      self._file.close()


def append_text(p, text: str) -> None:
  """Appends `text` to the file at `p` (created if missing), also on object storage."""
  f = AppendFile(p)
  f.write(text)
  f.close()


@contextlib.contextmanager
def locked(p):
  """An exclusive lock between this host's processes on the file `p`: a lock file next to it
  when local; for a remote `p`, one under the cache keyed by its URL (processes on other hosts
  must not write `p`: the ladder's Ray executor writes results.csv from its driver only)."""
  if is_remote(p):
    digest = hashlib.sha256(os.fspath(p).encode()).hexdigest()[:16]
    lock_path = cache_root() / "locks" / f"{digest}.lock"
  else:
    lock_path = pathlib.Path(os.fspath(p)).with_name(f".{pathlib.Path(os.fspath(p)).name}.lock")
  lock_path.parent.mkdir(parents=True, exist_ok=True)
  with open(lock_path, "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
