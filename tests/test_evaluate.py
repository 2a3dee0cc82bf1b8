"""Held-out evaluation: document-clustered SEs, bits per byte over exactly the bytes scored,
MLM masks that differ per batch but repeat across evaluations."""

import math

import jax
import numpy as np
import pytest

from configs import default as default_cfg
from train import build as build_lib
from train import evaluate as eval_lib
from train import inputs as inputs_lib
from train.data import pipeline
from train.data import prepare
from train import spec


def _eval_source(tmp_path, texts, seq_len):
  """All of `texts` (one document per file) as the validation split."""
  (tmp_path / "c").mkdir()
  for i, t in enumerate(texts):
    (tmp_path / "c" / f"{i:03d}.txt").write_text(t)
  prepare.prepare(
      f"text:{tmp_path}/c/*.txt",
      "byte",
      tmp_path / "p",
      val_fraction=1.0,
      num_workers=1,
      progress=False,
  )
  manifest, stores = pipeline.open_prepared(tmp_path / "p")
  from train.data import tokenizer as tok_lib

  return pipeline.EvalSource(stores["val"], manifest, tok_lib.load("byte"), seq_len), manifest


class _TokenValueLoss:
  """A stand-in eval step whose loss of a target token is (token % 7 + 1) / 10: the
  aggregation can then be computed by hand."""

  objective = "next_token"
  batch_sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])

  def __call__(self, params, batch, doc_ids, token_bytes, mask_index):
    t, w = np.asarray(batch["targets"]), np.asarray(batch["weights"])
    return {
        "loss": (t % 7 + 1) / 10 * w,
        "weights": w,
        "bytes": token_bytes[t] * w,
        "doc_ids": np.asarray(doc_ids),
    }


def _hand_loss(text: str) -> tuple[float, int, int]:
  """(summed loss, target tokens, bytes) of one document under _TokenValueLoss (EOS=257)."""
  targets = list(text.encode()) + [257]
  return sum((t % 7 + 1) / 10 for t in targets), len(targets), len(text.encode())


def test_clustered_se_on_two_documents_matches_hand_computation(tmp_path):
  texts = ["abcabcabcab" * 5, "zzzzyxw" * 4]  # 55 and 28 bytes: several windows each
  es, _ = _eval_source(tmp_path, texts, seq_len=16)
  res = eval_lib.evaluate(_TokenValueLoss(), None, es, global_batch_size=2, max_batches=None)
  (l_a, w_a, b_a), (l_b, w_b, b_b) = (_hand_loss(t) for t in texts)
  r = (l_a + l_b) / (w_a + w_b)
  se = math.sqrt(2 / 1 * ((l_a - r * w_a) ** 2 + (l_b - r * w_b) ** 2)) / (w_a + w_b)
  rb = (l_a + l_b) / (b_a + b_b)
  bpb_se = math.sqrt(2 * ((l_a - rb * b_a) ** 2 + (l_b - rb * b_b) ** 2)) / (b_a + b_b)
  for key in ("text", "all"):
    got = res[key]
    assert got["docs"] == 2 and got["tokens"] == w_a + w_b and got["bytes"] == b_a + b_b
    assert got["loss"] == pytest.approx(r)
    assert got["loss_se"] == pytest.approx(se)
    assert got["bpb"] == pytest.approx(rb / math.log(2))
    assert got["bpb_se"] == pytest.approx(bpb_se / math.log(2))


def test_bpb_on_truncated_eval_equals_the_hand_count(tmp_path):
  # Short documents first (many EOS per byte), long ones after: the first batch's bytes per
  # token differ from the split's, which the old divisor (the split's average) got wrong.
  texts = [f"d{i}" for i in range(20)] + ["long document " * 40 for _ in range(5)]
  es, manifest = _eval_source(tmp_path, texts, seq_len=32)
  config = default_cfg.get_config("size=tiny")
  config.train.batch_size = 4
  built = build_lib.build(spec.resolve(config), mask_id=259)
  params = built.init_state().params
  res = eval_lib.evaluate(built.eval_step, params, es, global_batch_size=4, max_batches=1)
  batch = next(es.batches("text", global_batch_size=4))
  scored = batch["targets"][batch["weights"] > 0]
  hand_bytes = int((scored < 256).sum())  # byte tokens; EOS stands for no byte
  got = res["text"]
  assert got["tokens"] == len(scored) and got["bytes"] == hand_bytes
  assert got["bpb"] == pytest.approx(
      got["loss"] * got["tokens"] / math.log(2) / hand_bytes, rel=1e-6
  )
  split_average = got["loss"] / math.log(2) / pipeline.bytes_per_token(manifest, "text")
  assert abs(got["bpb"] / split_average - 1) > 0.05
  # Over every batch the bytes scored are the manifest's bytes (EOS = 0 bytes there too).
  full = eval_lib.evaluate(built.eval_step, params, es, global_batch_size=4, max_batches=None)
  row = manifest["splits"]["val"]["domains"]["text"]
  assert full["text"]["bytes"] == row["utf8_bytes"] and full["text"]["tokens"] == row["tokens"]


def test_mlm_masks_differ_per_batch_and_repeat_across_evaluations(tmp_path):
  es, _ = _eval_source(tmp_path, ["masked language modelling text " * 20], seq_len=32)
  config = default_cfg.get_config("size=tiny")
  config.train.update(objective="mlm", batch_size=4, mlm_probability=0.3)
  config.model.attention_mask = "bidirectional"
  built = build_lib.build(spec.resolve(config), mask_id=259)
  params = built.init_state().params
  batches = list(es.batches("text", global_batch_size=4))
  assert len(batches) >= 2
  masks = []
  for g, local in enumerate(batches[:2]):
    batch = inputs_lib.to_global(local, built.eval_step.batch_sharding, 4)
    doc = jax.device_put(local["doc_ids"], built.eval_step.batch_sharding)
    masks.append(np.asarray(built.eval_step(params, batch, doc, es.token_bytes, (0, g))["weights"]))
  assert (masks[0] != masks[1]).any()  # another batch, other positions
  first = eval_lib.evaluate(built.eval_step, params, es, global_batch_size=4, max_batches=None)
  again = eval_lib.evaluate(built.eval_step, params, es, global_batch_size=4, max_batches=None)
  assert (first["text"]["loss"], first["text"]["tokens"]) == (
      again["text"]["loss"],
      again["text"]["tokens"],
  )
  assert "bpb" not in first["text"] and first["text"]["mlm_loss"] == first["text"]["loss"]
