"""Shared test fixtures. Tests run on the CPU; multi-device tests live in their own
modules and start subprocesses with XLA_FLAGS set before jax is imported."""

import os
import pathlib
import sys

import pytest

# libtpu (the `tpu` extra, for train.plan) makes a bare CPU `import jax` probe for a TPU and
# warn; tests run on the CPU unless a test (or its subprocess) says otherwise.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = pathlib.Path(__file__).resolve().parents[1]
# Test helpers that tests import as modules (tests/fake_gcs.py).
sys.path.insert(0, str(REPO / "tests"))
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data():
  """Real corpora next to the checkout; tests that need them skip without them."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} not present")
  return SHARED_DATA
