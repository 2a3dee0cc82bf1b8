"""Tokenizers: a lossless byte tokenizer, byte-level BPE (HF `tokenizers`), SentencePiece.

All tokenizers share one small interface (`Tokenizer`): `encode(str) -> list[int]`,
`decode(ids) -> str`, `vocab_size`, `bos_id`, `eos_id`, `pad_id`, `mask_id`, `spec`,
`adds_bos`, plus `encode_bytes(raw) -> (ids, n_replaced)` used by prepare on raw file bytes.
`encode` never adds special tokens; `adds_bos` records the tokenizer's own convention (its
post-processor) so evaluation can follow it as Hugging Face tools do.

Why these choices:
- `byte` needs no training and is exact for any input, including non-UTF-8 bytes (they are
  kept as their byte values; `n_replaced` is always 0). Ids 0..255 are bytes, then
  BOS=256, EOS=257, PAD=258, MASK=259: vocab 260, the default model's vocab_size.
- `bpe` is HF byte-level BPE with no normalizer and a ByteLevel decoder, so
  `decode(encode(x)) == x` for any Unicode string (also unseen text). Special tokens are
  `<bos> <eos> <pad> <mask>` with ids 0..3 and `encode_special_tokens` is set, so a literal
  "<eos>" in a document is encoded as ordinary text, never as the special id. Its
  post-processor prepends `<bos>` (as training does), so an exported model scored by HF tools
  sees the BOS it was trained with. Imported tokenizer.json files (GPT-2, Llama) keep their
  own special tokens, found by name (see `HFTokenizer`).
  Non-UTF-8 input bytes must be decoded first: they become U+FFFD and are counted.
- SentencePiece models (`*.model`) load when `sentencepiece` is importable; their exact
  round trip depends on how they were trained (byte_fallback, no normalization).

CLI:
  python -m train.data.tokenizer train --source embedded --vocab-size 8192 --out tok.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pathlib
from typing import Iterable, Protocol, Sequence

import numpy as np
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import processors
from tokenizers import trainers
import tokenizers

from train import cli
from train.data import sources
from train.data import split

SPECIAL_TOKENS = ("<bos>", "<eos>", "<pad>", "<mask>")
SPECIAL_ROLES = ("bos", "eos", "pad", "mask")


class Tokenizer(Protocol):
  spec: str
  vocab_size: int
  bos_id: int
  eos_id: int
  pad_id: int
  mask_id: int | None
  adds_bos: bool  # the tokenizer's own convention: BOS before a text (see eval/zeroshot --bos)

  def encode(self, text: str) -> list[int]:
    ...

  def decode(self, ids: Sequence[int]) -> str:
    ...

  def encode_bytes(self, raw: bytes) -> tuple[list[int], int]:
    ...

  def digest(self) -> str:
    ...


def _decode_counting(raw: bytes) -> tuple[str, int]:
  """UTF-8 decode with U+FFFD replacement; returns (text, number of replaced bytes)."""
  try:
    return raw.decode("utf-8"), 0
  except UnicodeDecodeError:
    pass
  count = 0
  pieces = []
  i = 0
  # Slow path only for bad files: decode, counting each invalid byte span.
  while i < len(raw):
    try:
      pieces.append(raw[i:].decode("utf-8"))
      break
    except UnicodeDecodeError as e:
      pieces.append(raw[i : i + e.start].decode("utf-8"))
      pieces.append("\ufffd")
      count += e.end - e.start
      i += e.end
  return "".join(pieces), count


class ByteTokenizer:
  """256 byte values + BOS/EOS/PAD/MASK. Lossless for any byte string."""

  spec = "byte"
  vocab_size = 260
  bos_id, eos_id, pad_id, mask_id = 256, 257, 258, 259
  adds_bos = True  # no post-processor of its own: follows the data pipeline (BOS per document)

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def encode_bytes(self, raw: bytes) -> tuple[list[int], int]:
    return list(raw), 0

  def encode_array(self, raw: bytes):
    """Fast path for prepare: a uint16 numpy array of the bytes."""
    return np.frombuffer(raw, np.uint8).astype(np.uint16)

  def decode_bytes(self, ids: Sequence[int]) -> bytes:
    return bytes(int(i) for i in ids if int(i) < 256)

  def decode(self, ids: Sequence[int]) -> str:
    """Special ids are dropped; invalid UTF-8 (only from non-UTF-8 input) becomes U+FFFD."""
    return self.decode_bytes(ids).decode("utf-8", errors="replace")

  def digest(self) -> str:
    return "byte"


def _token_name(value) -> str | None:
  """A tokenizer_config.json special-token entry: a string or {"content": str, ...}."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) else None


def _configured_specials(path: pathlib.Path) -> dict[str, str]:
  """Role -> token string from the tokenizer_config.json beside a `tokenizer.json` (how HF
  directories name their BOS/EOS/PAD/MASK); empty when there is none."""
  conf = path.with_name("tokenizer_config.json")
  if path.name != "tokenizer.json" or not conf.is_file():
    return {}
  try:
    data = json.loads(conf.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{conf}: not readable JSON ({e}); fix or remove it") from None
  names = {role: _token_name(data.get(f"{role}_token")) for role in SPECIAL_ROLES}
  return {role: name for role, name in names.items() if name}


class HFTokenizer:
  """A `tokenizers` tokenizer.json (byte-level BPE as trained by `train_bpe`, or an imported
  Hugging Face one).

  Special tokens are looked up by name, never assumed by id: the roles named in a
  tokenizer_config.json beside a `tokenizer.json`, else our `<bos> <eos> <pad> <mask>`, else a
  tokenizer with a single special token (GPT-2's `<|endoftext|>`) uses it as BOS and EOS. PAD
  falls back to EOS (padding carries weight 0) and MASK is optional (None; only MLM needs it).
  `adds_bos` says whether the tokenizer's own post-processor prepends BOS (what HF and
  lm-evaluation-harness do when encoding with special tokens).
  """

  def __init__(self, path: str):
    self.spec = str(path)
    self._path = pathlib.Path(path)
    self._tok = tokenizers.Tokenizer.from_file(str(path))
    self._tok.encode_special_tokens = True
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    self.special_tokens = self._special_tokens()
    ids = {role: self._tok.token_to_id(name) for role, name in self.special_tokens.items()}
    self.bos_id, self.eos_id = ids["bos"], ids["eos"]
    self.pad_id = ids.get("pad", self.eos_id)
    self.mask_id = ids.get("mask")
    self.adds_bos = self._post_processor_adds_bos()

  def _special_tokens(self) -> dict[str, str]:
    """Role ('bos', 'eos', 'pad', 'mask') -> token string, for the roles this tokenizer has."""
    roles = _configured_specials(self._path)
    for role, name in zip(SPECIAL_ROLES, SPECIAL_TOKENS):
      if role not in roles and self._tok.token_to_id(name) is not None:
        roles[role] = name
    specials = [t.content for t in self._tok.get_added_tokens_decoder().values() if t.special]
    if len(specials) == 1:
      roles.setdefault("bos", specials[0])
      roles.setdefault("eos", specials[0])
    missing = [r for r in ("bos", "eos") if r not in roles]
    unknown = [n for n in roles.values() if self._tok.token_to_id(n) is None]
    if missing or unknown:
      raise ValueError(
          f"tokenizer {self._path}: cannot tell its {' and '.join(missing) or 'special'} token"
          f"{f' (names {unknown} are not in its vocabulary)' if unknown else ''}; its special "
          f"tokens are {specials}. Name them in a tokenizer_config.json beside a "
          "tokenizer.json (bos_token, eos_token, optional pad_token/mask_token), or train one "
          "with `python -m train.data.tokenizer train`"
      )
    return roles

  def _post_processor_adds_bos(self) -> bool:
    plain = self._tok.encode("a", add_special_tokens=False).ids
    full = self._tok.encode("a", add_special_tokens=True).ids
    return len(full) > len(plain) and full[0] == self.bos_id and full[1 : 1 + len(plain)] == plain

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

  def encode_bytes(self, raw: bytes) -> tuple[list[int], int]:
    text, n = _decode_counting(raw)
    return self.encode(text), n

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def digest(self) -> str:
    return hashlib.sha256(self._path.read_bytes()).hexdigest()[:16]


class SentencePieceTokenizer:
  """A SentencePiece `.model`. BOS/EOS/PAD come from the model; MASK is `<mask>` if present
  as a piece, else the unknown id (MLM with SentencePiece needs a model trained with it)."""

  def __init__(self, path: str):
    try:
      import sentencepiece as spm  # noqa: PLC0415 (`data` extra)
    except ImportError as e:
      raise ImportError(
          f"{path} looks like a SentencePiece model but `sentencepiece` is not installed; "
          "pip install sentencepiece"
      ) from e
    self.spec = str(path)
    self._path = pathlib.Path(path)
    self._sp = spm.SentencePieceProcessor(model_file=str(path))
    self.vocab_size = self._sp.get_piece_size()
    unk = self._sp.unk_id()
    pick = lambda i: i if i >= 0 else unk
    self.bos_id = pick(self._sp.bos_id())
    self.eos_id = pick(self._sp.eos_id())
    self.pad_id = pick(self._sp.pad_id())
    mask = self._sp.piece_to_id("<mask>")
    self.mask_id = mask if mask != unk else unk
    self.adds_bos = self._sp.bos_id() >= 0  # as HF's conversion of SentencePiece models

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text))

  def encode_bytes(self, raw: bytes) -> tuple[list[int], int]:
    text, n = _decode_counting(raw)
    return self.encode(text), n

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def digest(self) -> str:
    return hashlib.sha256(self._path.read_bytes()).hexdigest()[:16]


def load(spec: str) -> Tokenizer:
  """ "byte", a tokenizer.json path, or a SentencePiece .model path."""
  spec = str(spec)
  if spec == "byte":
    return ByteTokenizer()
  path = pathlib.Path(spec)
  if not path.is_file():
    raise FileNotFoundError(
        f"tokenizer {spec!r} is neither 'byte' nor an existing file; train one with "
        f"`python -m train.data.tokenizer train --source embedded --vocab-size 8192 --out {spec}`"
    )
  if path.suffix == ".model":
    return SentencePieceTokenizer(spec)
  return HFTokenizer(spec)


def as_tokenizer(tokenizer: Tokenizer | str) -> Tokenizer:
  """A loaded Tokenizer unchanged, a spec (see `load`) loaded: the data functions take either,
  so a run that holds its tokenizer passes it down and loads it only once."""
  return load(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer


def check_vocab_size(tok: Tokenizer, model_vocab_size: int) -> None:
  """The model's embedding table must hold every tokenizer id; it may be larger.

  A larger table is padding (unused rows, as GPT-2 implementations pad 50257 to 50304 for
  fast matmuls): the published presets keep their vocab size whatever the tokenizer, so they
  start with the byte tokenizer; one note is logged. A smaller table cannot embed some ids:
  an error naming both numbers.
  """
  model_vocab_size, have = int(model_vocab_size), int(tok.vocab_size)
  if model_vocab_size < have:
    raise ValueError(
        f"tokenizer {tok.spec!r} has vocab_size {have} but model.vocab_size is "
        f"{model_vocab_size}, too small to embed every id; set "
        f"--config.model.vocab_size={have} (or larger: extra rows are padding)"
    )
  if model_vocab_size > have:
    logging.warning(
        "model.vocab_size %d > tokenizer %r vocab_size %d: rows %d..%d of the "
        "embedding are padding the data never uses",
        model_vocab_size,
        tok.spec,
        have,
        have,
        model_vocab_size - 1,
    )


def train_bpe(texts: Iterable[str], vocab_size: int, out: str | os.PathLike) -> HFTokenizer:
  """Train byte-level BPE (no normalizer, ByteLevel decoder: lossless) and save tokenizer.json."""
  if vocab_size < 256 + len(SPECIAL_TOKENS):
    raise ValueError(f"vocab_size {vocab_size} < 260: byte-level BPE needs 256 bytes + 4 specials")
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=list(SPECIAL_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  tok.train_from_iterator(texts, trainer=trainer)
  # Encoding "with special tokens" (HF, lm-evaluation-harness) prepends <bos>, as the data
  # pipeline does for every training document; our own encode never adds it.
  bos = SPECIAL_TOKENS[0]
  tok.post_processor = processors.TemplateProcessing(
      single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
  )
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(out.name + ".tmp")
  tok.save(str(tmp))
  os.replace(tmp, out)
  return HFTokenizer(str(out))


def _main(argv=None):
  p = argparse.ArgumentParser(prog="python -m train.data.tokenizer")
  sub = p.add_subparsers(dest="cmd", required=True)
  t = sub.add_parser("train", help="train byte-level BPE on a source's train split")
  t.add_argument("--source", default="embedded")
  t.add_argument("--vocab-size", type=int, default=8192)
  t.add_argument("--val-fraction", type=float, default=0.01)
  t.add_argument("--out", required=True)
  args = p.parse_args(argv)
  src = sources.open_source(args.source)

  def texts():
    for doc in src.documents():
      if split.split_of(doc.domain, doc.raw(), args.val_fraction) == "train":
        yield doc.text()

  tok = train_bpe(texts(), args.vocab_size, args.out)
  print(json.dumps({"out": args.out, "vocab_size": tok.vocab_size, "source": args.source}))


def token_byte_lengths(tok: Tokenizer):
  """int32 [vocab_size]: how many bytes of the original text each token id stands for.

  Bits per byte divide the loss of exactly the scored target tokens by exactly their bytes,
  so a truncated evaluation scores the text it saw. Special tokens (BOS, EOS, PAD, MASK,
  control pieces) stand for 0 bytes: EOS is predicted and scored but is not text, which
  matches the manifest (`utf8_bytes` are the documents' raw bytes; `tokens` include one EOS
  each). Byte tokenizer: 1 per byte id. Byte-level BPE: one character of a token's string is
  one byte. Other tokenizers: the UTF-8 length of the token's text (SentencePiece: "▁" is
  one space, byte-fallback pieces one byte), an approximation when a tokenizer normalizes.
  """
  if isinstance(tok, ByteTokenizer):
    out = np.zeros(tok.vocab_size, np.int32)
    out[:256] = 1
    return out
  if isinstance(tok, SentencePieceTokenizer):
    return _sentencepiece_byte_lengths(tok._sp)  # pylint: disable=protected-access
  if isinstance(tok, HFTokenizer):
    return _hf_byte_lengths(tok._tok, tok.vocab_size)  # pylint: disable=protected-access
  raise TypeError(f"no byte lengths for tokenizer {tok.spec!r} ({type(tok).__name__})")


def _hf_byte_lengths(hf_tok, vocab_size: int):
  alphabet = set(pre_tokenizers.ByteLevel.alphabet())
  special = {t.content for t in hf_tok.get_added_tokens_decoder().values() if t.special}
  out = np.zeros(vocab_size, np.int32)
  for token, i in hf_tok.get_vocab(with_added_tokens=True).items():
    if token in special or i >= vocab_size:
      continue
    out[i] = len(token) if set(token) <= alphabet else len(token.encode("utf-8"))
  return out


def _sentencepiece_byte_lengths(sp):
  out = np.zeros(sp.get_piece_size(), np.int32)
  for i in range(len(out)):
    if sp.is_control(i) or sp.is_unknown(i):
      continue
    out[i] = 1 if sp.is_byte(i) else len(sp.id_to_piece(i).replace("\u2581", " ").encode())
  return out


if __name__ == "__main__":
  cli.run(_main)
