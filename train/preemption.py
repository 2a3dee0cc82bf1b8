"""SIGTERM / SIGINT: let the current step finish, save, and exit cleanly.

The handler only sets a flag; the loop asks `requested(step)` after each step. With several
processes every process must stop at the same step (saving is collective), so the flag is
OR-ed across them with an allgather; that collective waits for the devices to finish the
steps already queued, so it runs only every `poll_every` steps (the same steps on every
process), not every step: a stop takes effect within `poll_every` steps. A single process
reads its own flag every step. A second signal falls back to the default action (hard stop).
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils
import numpy as np


class PreemptionGuard:

  def __init__(self, poll_every: int = 10):
    if int(poll_every) < 1:
      raise ValueError(f"config.checkpoint.preemption_poll_every={poll_every} must be >= 1.")
    self.poll_every = int(poll_every)
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

  def requested(self, step: int) -> bool:
    """Whether to save and stop after `step` (every process gets the same answer)."""
    local = self._flag.is_set()
    if jax.process_count() == 1:
      return local
    if step % self.poll_every:
      return False
    flags = multihost_utils.process_allgather(np.asarray(local, np.int32))
    return bool(np.any(flags))
