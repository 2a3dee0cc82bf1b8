"""A fake Google Cloud Storage bucket in this process, for tests without a network.

One in-memory object store is seen through both clients the code uses for `gs://` paths:
  - fsspec (what etils.epath uses for gs:// when TensorFlow is absent): `FakeGCSFileSystem`,
    registered under the "gs" and "gcs" protocols;
  - TensorStore (Orbax's array I/O), which speaks the GCS JSON API over HTTP: `serve()` starts
    a local server for the requests it makes, and `install()` points TensorStore at it
    (TENSORSTORE_GCS_HTTP_URL) with a fixed token (GOOGLE_AUTH_TOKEN_FOR_TESTING).
Objects carry a generation derived from their content, enough for TensorStore's conditional
writes (ifGenerationMatch / ifGenerationNotMatch).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
import urllib.parse

import fsspec
import types
from orbax.checkpoint._src.path import gcs_utils
from fsspec.implementations import memory


class FakeGCSFileSystem(memory.MemoryFileSystem):
  """fsspec's in-memory filesystem under gs:// URLs (keys are "bucket/path")."""

  protocol = ("gs", "gcs")
  root_marker = ""
  store: dict = {}
  pseudo_dirs: list = [""]

  @classmethod
  def _strip_protocol(cls, path):
    path = fsspec.utils.stringify_path(path)
    for prefix in ("gs://", "gcs://"):
      path = path.removeprefix(prefix)
    return path.rstrip("/")

  def __init__(self, *args, **kwargs):
    del kwargs  # e.g. epath's finalize_on_close=True, meaningless here
    super().__init__(*args)


def _generation(data: bytes) -> int:
  return int(hashlib.sha256(data).hexdigest()[:12], 16) + 1


class _Handler(http.server.BaseHTTPRequestHandler):
  """The GCS JSON API calls TensorStore's gcs kvstore makes: media read (with Range and
  generation conditions), media upload, delete and list."""

  protocol_version = "HTTP/1.1"

  def log_message(self, *args):  # quiet
    del args

  def _reply(self, code: int, body: bytes = b"", headers: dict | None = None):
    self.send_response(code)
    for k, v in (headers or {}).items():
      self.send_header(k, str(v))
    self.send_header("content-length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def _json(self, code: int, obj: dict):
    self._reply(code, json.dumps(obj).encode(), {"content-type": "application/json"})

  def _target(self):
    url = urllib.parse.urlsplit(self.path)
    query = dict(urllib.parse.parse_qsl(url.query))
    parts = url.path.split("/")
    return parts, query

  def _key(self, parts):
    # /storage/v1/b/{bucket}/o/{name}
    return f"{parts[4]}/{urllib.parse.unquote(parts[6])}"

  def _current(self, key):
    store = FakeGCSFileSystem.store
    return store[key].getvalue() if key in store else None

  def _precondition_fails(self, data, query) -> bool:
    gen = 0 if data is None else _generation(data)
    if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != gen:
      return True
    return False

  def do_GET(self):
    parts, query = self._target()
    if len(parts) == 6 and parts[5] == "o":  # list
      self._list(parts[4], query)
      return
    key = self._key(parts)
    data = self._current(key)
    if data is None:
      self._json(404, {"error": {"code": 404, "message": "No such object"}})
      return
    gen = _generation(data)
    if self._precondition_fails(data, query):
      self._json(412, {"error": {"code": 412}})
      return
    if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == gen:
      self._reply(304, b"", {"x-goog-generation": gen})
      return
    if query.get("alt") != "media":
      meta = {"name": key.split("/", 1)[1], "size": str(len(data)), "generation": str(gen)}
      self._json(200, meta)
      return
    rng = self.headers.get("range")
    if rng:
      start, _, end = rng.removeprefix("bytes=").partition("-")
      start = int(start)
      end = min(int(end), len(data) - 1) if end else len(data) - 1
      body = data[start : end + 1]
      headers = {
          "x-goog-generation": gen,
          "content-range": f"bytes {start}-{start + len(body) - 1}/{len(data)}",
      }
      self._reply(206, body, headers)
      return
    self._reply(200, data, {"x-goog-generation": gen})

  def _list(self, bucket, query):
    prefix = f"{bucket}/{query.get('prefix', '')}"
    start = f"{bucket}/{query['startOffset']}" if "startOffset" in query else None
    end = f"{bucket}/{query['endOffset']}" if "endOffset" in query else None
    items = []
    for key in sorted(FakeGCSFileSystem.store):
      if not key.startswith(prefix) or (start and key < start) or (end and key >= end):
        continue
      data = FakeGCSFileSystem.store[key].getvalue()
      items.append(
          {
              "name": key.split("/", 1)[1],
              "size": str(len(data)),
              "generation": str(_generation(data)),
          }
      )
    self._json(200, {"items": items} if items else {})

  def do_POST(self):
    parts, query = self._target()
    data = self.rfile.read(int(self.headers.get("content-length") or 0))
    key = f"{parts[5]}/{query['name']}"  # /upload/storage/v1/b/{bucket}/o?name=
    if self._precondition_fails(self._current(key), query):
      self._json(412, {"error": {"code": 412}})
      return
    FakeGCSFileSystem().pipe_file(f"gs://{key}", data)
    self._json(
        200,
        {"name": query["name"], "size": str(len(data)), "generation": str(_generation(data))},
    )

  def do_DELETE(self):
    parts, query = self._target()
    key = self._key(parts)
    data = self._current(key)
    if data is None:
      self._json(404, {"error": {"code": 404}})
      return
    if self._precondition_fails(data, query):
      self._json(412, {"error": {"code": 412}})
      return
    FakeGCSFileSystem().rm_file(f"gs://{key}")
    self._reply(204)


def serve() -> http.server.ThreadingHTTPServer:
  """Starts the fake GCS JSON API on 127.0.0.1 (a daemon thread); returns the server."""
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server


def install() -> http.server.ThreadingHTTPServer:
  """Routes gs:// for fsspec/epath and TensorStore to one fake in-memory store, whose bucket
  Orbax is told is a flat one (it asks google-cloud-storage about hierarchical namespaces).
  Call before TensorStore first opens a gs:// path."""

  gcs_utils.get_bucket = lambda name: types.SimpleNamespace(hierarchical_namespace_enabled=False)
  fsspec.register_implementation("gs", FakeGCSFileSystem, clobber=True)
  fsspec.register_implementation("gcs", FakeGCSFileSystem, clobber=True)
  server = serve()
  os.environ["TENSORSTORE_GCS_HTTP_URL"] = f"http://127.0.0.1:{server.server_port}"
  os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] = "fake-token"
  return server


def objects() -> dict[str, int]:
  """{gs:// URL: size} of every object in the fake bucket(s)."""
  return {f"gs://{k}": len(v.getvalue()) for k, v in FakeGCSFileSystem.store.items()}
