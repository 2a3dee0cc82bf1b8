"""Every preset and size in configs/ builds and runs one training step on the CPU.

Width, depth, sequence length and batch are shrunk (so the test is fast); the vocabulary and
everything else (architecture, dtypes, remat, objective, optimizer) stay the preset's. The
presets that `python -m train` runs take their batch from the real data pipeline with the
default byte tokenizer (260 ids), so their larger published vocabularies (50257, 32000, ...)
must be accepted as padding; the bench configs feed random tokens as `train.bench` does.

Every size is validated and built, and its vocabulary checked against the tokenizer as the
loader checks it. Shrunk, the sizes of one preset differ only in scalar hyperparameters (learning
rate, betas, warmup, batch): a step is compiled and run once per distinct shrunk program
(model section + objective, optimizer, schedule, z-loss, microbatches), which covers every
code path a size can take while keeping the test to a dozen compilations.
"""

import importlib
import json
import math

import jax
import ml_collections
import pytest

from train import build as build_lib
from train import bench as bench_lib
from train import inputs as inputs_lib
from train.data import pipeline
from train.data import tokenizer as tok_lib
from train import spec

PRESETS = {
    "gpt1": ["117M"],
    "gpt2": ["124M", "355M", "774M", "1558M"],
    "gpt3": ["125M", "350M", "760M", "1.3B", "2.7B", "6.7B", "13B", "175B"],
    "llama": ["tiny", "small", "1B", "7B"],
    "bert": ["base", "large"],
    "default": ["default", "tiny"],
    "bench": ["S", "M", "tiny"],
}
SEQ, BATCH = 16, 2


def test_the_list_covers_every_size_in_configs():
  for name, sizes in PRESETS.items():
    module = importlib.import_module(f"configs.{name}")
    assert sorted(getattr(module, "SIZES", {"117M": None})) == sorted(sizes), name


def shrink(config) -> ml_collections.ConfigDict:
  m = config.model
  gqa = m.num_kv_heads < m.num_heads
  m.update(
      d_model=32,
      num_layers=1,
      num_heads=2,
      num_kv_heads=1 if gqa else 2,
      head_dim=16,
      mlp_dim=64,
      max_seq_len=SEQ,
  )
  config.data.update(seq_len=SEQ, num_workers=1)
  config.train.batch_size = BATCH
  return config


@pytest.fixture(scope="module")
def local_batch(tmp_path_factory):
  """One batch of the real loader (byte tokenizer, ids < 260) for every data-fed preset."""
  data_cfg = ml_collections.ConfigDict(
      dict(
          source="synthetic:markov:docs=40,doc_len=64",
          tokenizer="byte",
          seq_len=SEQ,
          val_fraction=0.1,
          num_workers=1,
      )
  )
  data = pipeline.load_for_training(
      data_cfg,
      tmp_path_factory.mktemp("presets") / "p",
      global_batch_size=BATCH,
      seed=0,
      progress=False,
  )
  return next(data.train_iter)


def _batch(name, config, built, local_batch):
  if name == "bench":
    return bench_lib.make_batches(config, built, n=1)[0]
  tok_lib.check_vocab_size(tok_lib.load(config.data.tokenizer), int(config.model.vocab_size))
  return inputs_lib.to_global(local_batch, built.train_step.batch_sharding, BATCH)


def _program(config) -> str:
  t = config.train
  return json.dumps(
      [config.model.to_dict(), t.objective, t.optimizer, t.schedule, t.z_loss, t.microbatches],
      sort_keys=True,
      default=str,
  )


@pytest.mark.slow  # 11 compilations: ~2 CPU-minutes
def test_every_preset_runs_one_step(local_batch):
  mask_id = tok_lib.load("byte").mask_id
  built_sizes, stepped = [], {}
  for name, sizes in PRESETS.items():
    for size in sizes:
      module = importlib.import_module(f"configs.{name}")
      config = shrink(module.get_config(f"size={size}"))
      built = build_lib.build(spec.resolve(config), mask_id=mask_id)
      batch = _batch(name, config, built, local_batch)
      built_sizes.append((name, size, int(config.model.vocab_size)))
      if _program(config) in stepped:
        continue
      state = built.init_state()
      assert state.params["embed"]["embedding"].shape[0] == int(config.model.vocab_size)
      _, metrics = built.train_step(state, batch)
      loss = float(jax.device_get(metrics["loss"]))
      assert math.isfinite(loss) and loss > 0, (name, size, loss)
      stepped[_program(config)] = (name, size)
  assert len(built_sizes) == sum(len(s) for s in PRESETS.values())
  assert {v for _, _, v in built_sizes} >= {50257, 32000, 40478, 30522}
  assert {name for name, _ in stepped.values()} == set(PRESETS)
