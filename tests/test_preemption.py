"""The stop flag: read locally every step with one process, OR-ed across processes only every
`poll_every` steps with several (the allgather waits for the device queue)."""

import os
import signal

from jax.experimental import multihost_utils
import numpy as np
import pytest

from train import preemption


def test_single_process_sees_the_signal_at_the_next_step():
  with preemption.PreemptionGuard(poll_every=10) as guard:
    assert not guard.requested(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.requested(3) and guard.signal_name == "SIGTERM"


def test_several_processes_poll_collectively_every_n_steps(monkeypatch):
  calls = []

  def allgather(x):
    calls.append(int(x))
    return np.array([int(x), 0])

  monkeypatch.setattr(preemption.jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
  with preemption.PreemptionGuard(poll_every=5) as guard:
    answers = [guard.requested(s) for s in range(1, 12)]
    assert calls == [0, 0] and not any(answers)  # collectives at steps 5 and 10 only
    guard._flag.set()  # pylint: disable=protected-access
    assert not guard.requested(12) and guard.requested(15)
  assert calls == [0, 0, 1]


def test_poll_every_must_be_positive():
  with pytest.raises(ValueError, match="preemption_poll_every=0"):
    preemption.PreemptionGuard(poll_every=0)
