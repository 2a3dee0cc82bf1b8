"""Deterministic train/validation split by a hash of each document's content.

A document's split depends only on (domain, content, val_fraction): never on its position in
a file, its path (a glob written relative or absolute), the order documents are read, the
machine or the shard it lands in. So prepending a line to a jsonl file, moving the corpus, or
growing it never moves a training document into validation (or back), and identical documents
(duplicates) always land on the same side, so a duplicate cannot leak across the split. The
domain is part of the key, so each domain draws its own validation set and `val_fraction`
holds per domain. sha256 (not Python's salted `hash`) keeps it stable across processes.

`val_fraction` 1.0 puts every document in validation: evaluation-only preparations
(`eval.perplexity --split all`) score all of a source.
"""

import hashlib

SPLITS = ("train", "val")


def _as_bytes(content: bytes | str) -> bytes:
  return content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")


def val_score(domain: str, content: bytes | str) -> float:
  """A uniform number in [0, 1) derived from the document's domain and content."""
  h = hashlib.sha256(domain.encode("utf-8", "surrogatepass") + b"\x00")
  h.update(_as_bytes(content))
  return int.from_bytes(h.digest()[:8], "big") / 2.0**64


def check_val_fraction(val_fraction: float) -> float:
  """val_fraction as a float in [0, 1], or a ValueError naming the bad value."""
  try:
    vf = float(val_fraction)
  except (TypeError, ValueError):
    vf = float("nan")
  if not 0.0 <= vf <= 1.0:
    raise ValueError(f"val_fraction must be in [0, 1] (1: evaluation only), got {val_fraction!r}")
  return vf


def split_of(domain: str, content: bytes | str, val_fraction: float) -> str:
  """ "val" or "train" for a document of `domain` whose raw bytes (or text) are `content`."""
  vf = check_val_fraction(val_fraction)
  return "val" if vf == 1.0 or val_score(domain, content) < vf else "train"
