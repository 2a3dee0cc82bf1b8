"""Per-process numpy batches -> global jax.Arrays laid out as the step expects.

Each process loads only its rows of a global batch (train/data splits them by process);
`jax.make_array_from_process_local_data` stitches them into one global array sharded over
the mesh's batch axes without any process seeing the others' rows.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from train.step import BATCH_KEYS, SOURCE_KEYS


def to_global(
    local_batch: dict[str, Any], sharding: NamedSharding, global_batch_size: int
) -> dict[str, jax.Array]:
  """{key: [B_local, L]} numpy -> {key: [B, L]} global arrays (only the step's keys; the
  source keys when the batch has them)."""
  out = {}
  for k in BATCH_KEYS + tuple(k for k in SOURCE_KEYS if k in local_batch):
    x = np.asarray(local_batch[k])
    out[k] = jax.make_array_from_process_local_data(sharding, x, (global_batch_size,) + x.shape[1:])
  return out
