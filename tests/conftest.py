"""Shared test fixtures. Tests run on the CPU; multi-device tests live in their own
modules and start subprocesses with XLA_FLAGS set before jax is imported."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data():
  """Real corpora next to the checkout; tests that need them skip without them."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} not present")
  return SHARED_DATA
