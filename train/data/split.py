"""Deterministic train/validation split by a hash of each document's id.

A document's split depends only on (domain, doc_id, val_fraction): never on order, the
machine or the shard it lands in, so a validation document can never leak into training
when a corpus is re-prepared, grown, or read in another order, and each domain keeps its own
validation set. sha256 (not Python's salted `hash`) keeps it stable across processes.
"""

import hashlib

SPLITS = ("train", "val")


def val_score(domain: str, doc_id: str) -> float:
  """A uniform number in [0, 1) derived from the document's identity."""
  h = hashlib.sha256(f"{domain}\x00{doc_id}".encode("utf-8", "surrogatepass")).digest()
  return int.from_bytes(h[:8], "big") / 2.0**64


def split_of(domain: str, doc_id: str, val_fraction: float) -> str:
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
  return "val" if val_score(domain, doc_id) < val_fraction else "train"
