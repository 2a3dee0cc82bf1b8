"""Tokenizers: exact round trips (also unseen Unicode), special tokens, vocab checks."""

import numpy as np
import pytest

from train.data import sources
from train.data import tokenizer as tok_lib

# A small real corpus: the first 20 chapters of the embedded prose (offline, deterministic).
CORPUS = [d.text() for _, d in zip(range(20), sources._bible_docs())]


def random_unicode(rng, n):
  """Random code points from all planes (no surrogates), plus some ASCII and whitespace."""
  cps = []
  for _ in range(n):
    r = rng.random()
    if r < 0.4:
      cps.append(int(rng.integers(0x20, 0x7F)))
    elif r < 0.5:
      cps.append(int(rng.choice([0x0A, 0x09, 0x20, 0x0D, 0x00])))
    else:
      c = int(rng.integers(0x80, 0x110000))
      cps.append(c if not 0xD800 <= c <= 0xDFFF else 0xFFFD)
  return "".join(map(chr, cps))


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
  out = tmp_path_factory.mktemp("tok") / "tok.json"
  return tok_lib.train_bpe(CORPUS, 400, out)


def test_byte_round_trip_and_ids():
  tok = tok_lib.load("byte")
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id) == (
      260,
      256,
      257,
      258,
      259,
  )
  rng = np.random.default_rng(0)
  for _ in range(50):
    s = random_unicode(rng, int(rng.integers(0, 200)))
    ids = tok.encode(s)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == s
  assert tok.encode("é") == [0xC3, 0xA9]
  # Special ids are dropped by decode.
  assert tok.decode([tok.bos_id] + tok.encode("hi") + [tok.eos_id, tok.pad_id]) == "hi"


def test_byte_keeps_non_utf8_bytes():
  tok = tok_lib.load("byte")
  raw = b"ok \xff\xfe bad \xc3"
  ids, replaced = tok.encode_bytes(raw)
  assert replaced == 0 and tok.decode_bytes(ids) == raw


def test_bpe_round_trip_unseen_unicode(bpe):
  assert bpe.vocab_size == 400
  assert [bpe.bos_id, bpe.eos_id, bpe.pad_id, bpe.mask_id] == [0, 1, 2, 3]
  rng = np.random.default_rng(1)
  texts = [random_unicode(rng, int(rng.integers(0, 300))) for _ in range(50)]
  texts += [
      "",
      " leading space",
      "trailing  \n\n",
      "日本語のテキスト 🎉🚀",
      "<eos> <bos><pad><mask> literal",
      "\u0301combining first",
      "tabs\tand\r\nCRLF",
  ]
  for s in texts:
    ids = bpe.encode(s)
    assert bpe.decode(ids) == s, repr(s)
  # Literal special-token strings are text, never the special ids.
  assert bpe.eos_id not in bpe.encode("<eos>")
  # It learned merges: training text compresses below one token per byte.
  s = CORPUS[0]
  assert len(bpe.encode(s)) < len(s.encode()) / 2


def test_bpe_reports_replaced_bytes(bpe):
  ids, replaced = bpe.encode_bytes(b"abc \xff\xfe def \xc3")
  assert replaced == 3
  assert bpe.decode(ids) == "abc \ufffd\ufffd def \ufffd"


def test_load_from_path_same_as_trained(bpe):
  again = tok_lib.load(bpe.spec)
  assert again.encode("hello world") == bpe.encode("hello world")
  assert again.digest() == bpe.digest()


def test_vocab_size_mismatch_names_both_numbers(bpe, caplog):
  tok_lib.check_vocab_size(bpe, 400)
  with pytest.raises(ValueError, match=r"400.*300|300.*400"):
    tok_lib.check_vocab_size(bpe, 300)
  with pytest.raises(ValueError, match="260.*256"):
    tok_lib.check_vocab_size(tok_lib.load("byte"), 256)
  # A larger model table is padding: allowed, with one note.
  with caplog.at_level("WARNING"):
    tok_lib.check_vocab_size(tok_lib.load("byte"), 50257)
  assert len(caplog.records) == 1 and "padding" in caplog.records[0].getMessage()


def test_missing_tokenizer_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.json"):
    tok_lib.load(str(tmp_path / "nope.json"))


def test_sentencepiece_if_available(tmp_path):
  """A SentencePiece model trained with lossless settings round-trips unseen Unicode too."""
  spm = pytest.importorskip("sentencepiece")
  text = tmp_path / "c.txt"
  text.write_text("".join(CORPUS))
  spm.SentencePieceTrainer.train(
      input=str(text),
      model_prefix=str(tmp_path / "sp"),
      vocab_size=500,
      byte_fallback=True,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      user_defined_symbols=["<mask>"],
      pad_id=3,
      minloglevel=2,
  )
  tok = tok_lib.load(str(tmp_path / "sp.model"))
  assert tok.vocab_size == 500
  assert len({tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id}) == 4
  rng = np.random.default_rng(2)
  for s in ["the quick fox", " two  spaces ", "日本語 🎉"] + [
      random_unicode(rng, 50) for _ in range(10)
  ]:
    assert tok.decode(tok.encode(s)) == s, repr(s)


def test_train_cli(tmp_path):
  src = tmp_path / "docs"
  src.mkdir()
  for i, t in enumerate(CORPUS[:8]):
    (src / f"{i}.txt").write_text(t)
  tok_lib._main(
      [
          "train",
          "--source",
          f"text:{src}/*.txt",
          "--vocab-size",
          "300",
          "--val-fraction",
          "0",
          "--out",
          str(tmp_path / "t.json"),
      ]
  )
  tok = tok_lib.load(str(tmp_path / "t.json"))
  assert tok.vocab_size == 300 and tok.decode(tok.encode("zebra ü")) == "zebra ü"


def test_token_byte_lengths_sum_to_the_text_bytes(bpe):
  rng = np.random.default_rng(0)
  for tok in (bpe, tok_lib.load("byte")):
    lengths = tok_lib.token_byte_lengths(tok)
    assert lengths.shape == (tok.vocab_size,)
    assert (lengths[[tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id]] == 0).all()
    for text in [CORPUS[0][:2000], random_unicode(rng, 300), "<eos> literal"]:
      assert int(lengths[tok.encode(text)].sum()) == len(text.encode("utf-8"))
