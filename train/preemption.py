"""SIGTERM / SIGINT: let the current step finish, save, and exit cleanly.

The handler only sets a flag; the loop polls `requested()` after each step. With several
processes the flag is OR-ed across them (every process must stop at the same step, because
saving is collective). A second signal falls back to the default action (hard stop).
"""

import signal
import threading

import jax
import numpy as np


class PreemptionGuard:

  def __init__(self):
    self._flag = threading.Event()
    self._previous = {}
    self.signal_name = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, prev in self._previous.items():
      signal.signal(sig, prev)
    self._previous.clear()

  def _handle(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name
    self._flag.set()
    prev = self._previous.get(signum)
    # A second signal of the same kind stops at once.
    signal.signal(signum, prev if callable(prev) else signal.SIG_DFL)

  def requested(self) -> bool:
    local = self._flag.is_set()
    if jax.process_count() == 1:
      return local
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(local, np.int32))
    return bool(np.any(flags))
