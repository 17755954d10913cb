"""Preemption: turn SIGTERM into "save a checkpoint at the current step and stop".

Schedulers (Kubernetes, Slurm, spot/preemptible VMs) announce the end of a job with
SIGTERM and follow with SIGKILL after a grace period. :class:`PreemptionWatcher` catches
the SIGTERM, and the training loop asks :meth:`PreemptionWatcher.reached` after every
step whether to save and stop.

On one process a Python signal handler sets a flag. On several processes every host
must stop at the *same* step (the checkpoint save is a collective), so no handler is
installed and the decision comes from JAX's preemption sync point
(``multihost_utils.reached_preemption_sync_point`` via orbax), which agrees on a step
through the ``jax.distributed`` coordination service; it needs the preemption service
that ``jax.distributed.initialize`` starts by default.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

import jax


class PreemptionWatcher:
    """Context manager that records SIGTERM while training runs.

    On entry (single process, main thread only: Python allows signal handlers nowhere
    else) it installs a SIGTERM handler that only sets a flag; on exit it puts the
    previous handler back, so a library caller's own handling is untouched.

    Args:
      manager: the run's orbax CheckpointManager; its ``reached_preemption`` is the
        multi-process decision.
    """

    def __init__(self, manager: Any):
        self._manager = manager
        self._multiprocess = jax.process_count() > 1
        self._previous: Any = None
        self._installed = False
        self.signal_number: int | None = None

    def __enter__(self) -> PreemptionWatcher:
        if not self._multiprocess and threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.signal_number = signum

    @property
    def installed(self) -> bool:
        """Whether the SIGTERM handler is in place (single process, main thread)."""
        return self._installed

    def reached(self, step: int) -> bool:
        """True when the run should save at ``step`` and stop.

        Every process must call this at every step, in order (multi-process runs
        agree on the stopping step through it).
        """
        if self._multiprocess:
            return bool(self._manager.reached_preemption(step))
        return self.signal_number is not None
