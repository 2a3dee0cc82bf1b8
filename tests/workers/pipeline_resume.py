"""Restores a training-data iterator from a saved state in a fresh process, for
tests/test_data_pipeline.py.

    python tests/workers/pipeline_resume.py SOURCE DATA_DIR SEQ_LEN STATE_JSON OUT_NPZ

Writes the next 3 batches to OUT_NPZ as arrays named `<i>_<key>`.
"""

import json
import sys

import ml_collections
import numpy as np

from train.data import pipeline


def main() -> None:
  source, data_dir, seq_len, state, out_path = sys.argv[1:]
  c = ml_collections.ConfigDict(
      dict(
          source=source,
          tokenizer="byte",
          seq_len=int(seq_len),
          prepared_dir="",
          val_fraction=0.2,
          num_workers=1,
      )
  )
  td = pipeline.load_for_training(c, data_dir, global_batch_size=8, seed=0, progress=False)
  td.train_iter.set_state(json.loads(state))
  out = {f"{i}_{k}": v for i in range(3) for k, v in next(td.train_iter).items()}
  np.savez(out_path, **out)


if __name__ == "__main__":
  main()
