"""Data-constrained training: `data.max_unique_tokens` keeps a prefix of the train windows and
repeats it epoch after epoch, with an exact resume across epoch boundaries."""

import json

import ml_collections
import numpy as np
import pytest

from train.data import pipeline
from train.data import prepare
from train.data import tokenizer as tok_lib

SEQ_LEN = 32
BATCH = 4
UNIQUE_WINDOWS = 10  # 2.5 global batches: batches straddle epoch boundaries


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("constrained")
  rng = np.random.default_rng(1)
  d = root / "c"
  d.mkdir()
  for i in range(60):
    n = int(rng.choice([5, 40, 90, 300]))
    (d / f"{i:03d}.txt").write_text("".join(rng.choice(list("abcdefgh \n"), size=n)))
  source = f"text:{d}/*.txt"
  prepare.prepare(source, "byte", root / "p", val_fraction=0.1, num_workers=1, progress=False)
  return source, root / "p"


def load(corpus, max_unique_tokens, global_batch_size=BATCH):
  source, prepared = corpus
  data_cfg = ml_collections.ConfigDict(
      dict(
          source=source,
          tokenizer="byte",
          seq_len=SEQ_LEN,
          prepared_dir="",
          val_fraction=0.1,
          num_workers=1,
          max_unique_tokens=max_unique_tokens,
      )
  )
  return pipeline.load_for_training(
      data_cfg, prepared, global_batch_size=global_batch_size, seed=0, progress=False
  )


def rows(it, n_batches):
  """The input windows of the next n_batches batches, as bytes (one per row)."""
  out = []
  for _ in range(n_batches):
    out.extend(map(bytes, next(it)["inputs"].astype(np.int32)))
  return out


def stream_prefix(corpus, n_windows):
  """The first n_windows windows of the seed-0 document stream, as bytes."""
  _, stores = pipeline.open_prepared(corpus[1])
  st = stores["train"]
  order = np.random.default_rng([0, 1]).permutation(len(st.lengths))
  packer = pipeline.Packer(st, order, SEQ_LEN, tok_lib.load("byte"))
  return list(map(bytes, packer.build(np.arange(n_windows))["inputs"].astype(np.int32)))


def test_subset_holds_exactly_max_unique_tokens_repeated_in_new_orders(corpus):
  td = load(corpus, UNIQUE_WINDOWS * SEQ_LEN)
  seen = rows(td.train_iter, 10)  # 40 windows: 4 epochs of 10
  assert len(set(seen)) * SEQ_LEN == UNIQUE_WINDOWS * SEQ_LEN  # distinct windows seen
  prefix = stream_prefix(corpus, UNIQUE_WINDOWS)
  assert len(set(prefix)) == UNIQUE_WINDOWS
  epochs = [seen[i : i + UNIQUE_WINDOWS] for i in range(0, len(seen), UNIQUE_WINDOWS)]
  for e in epochs:
    assert sorted(e) == sorted(prefix)  # every epoch: each window of the prefix once
  assert len({tuple(e) for e in epochs}) == len(epochs)  # each in its own order
  # Without the cap the run would have seen other windows by now.
  full = rows(load(corpus, 0).train_iter, 10)
  assert len(set(full)) > UNIQUE_WINDOWS


def test_resume_mid_second_epoch_is_exact(corpus):
  it = load(corpus, UNIQUE_WINDOWS * SEQ_LEN).train_iter
  straight = [next(it) for _ in range(9)]
  it = load(corpus, UNIQUE_WINDOWS * SEQ_LEN).train_iter
  for _ in range(4):  # windows 0..15: 6 windows into the second epoch
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  resumed = load(corpus, UNIQUE_WINDOWS * SEQ_LEN).train_iter
  resumed.set_state(state)
  for want in straight[4:]:  # across the boundaries into epochs 3 and 4
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize(
    "value, message",
    [
        (SEQ_LEN * BATCH - SEQ_LEN, "smaller than one global batch"),
        (10**9 * SEQ_LEN, "larger than the train split"),
        (SEQ_LEN * 5 + 1, "multiple of data.seq_len=32"),
        (-SEQ_LEN, "positive multiple"),
        (1.5, "integer number of tokens"),
    ],
)
def test_bad_values_name_the_field(corpus, value, message):
  with pytest.raises(ValueError, match=message) as e:
    load(corpus, value)
  assert "data.max_unique_tokens" in str(e.value) and "\n" not in str(e.value)
