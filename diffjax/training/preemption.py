"""Preemption: turn SIGTERM and SIGINT into "save a checkpoint at the current step and stop".

Schedulers (Kubernetes, Slurm, spot/preemptible VMs) announce the end of a job with
SIGTERM and follow with SIGKILL after a grace period; a person stops a run with Ctrl-C
(SIGINT). :class:`PreemptionWatcher` catches both for the whole of ``train`` (set-up,
every step, the final save and the shutdown), and the training loop asks
:meth:`PreemptionWatcher.reached` after every step whether to save and stop. A second
Ctrl-C aborts at once (``KeyboardInterrupt``; the last committed checkpoint stands).

On one process a Python signal handler sets a flag. On several processes every host
must stop at the *same* step (the checkpoint save is a collective), so the decision
comes from JAX's preemption sync point (``multihost_utils.reached_preemption_sync_point``
via orbax), which agrees on a step through the ``jax.distributed`` coordination
service; it needs the preemption service that ``jax.distributed.initialize`` starts by
default. A signal caught locally on one of several processes is reported at the end.

:func:`defer_signals` is for a program's ``main`` (the ``diffjax`` command): it records
SIGTERM / SIGINT that arrive outside ``train`` (while starting up, after the run has
committed its last checkpoint) instead of dying with exit code 143 or a traceback; a
watcher entered later sees a signal recorded before it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_pending: dict[str, int | None] = {"signal": None}


def pending_signal() -> int | None:
    """The signal recorded by :func:`defer_signals` or a watcher, if any."""
    return _pending["signal"]


def clear_pending_signal() -> None:
    """Forgets a recorded signal (for tests and long-lived programs)."""
    _pending["signal"] = None


def _record(signum: int, frame: FrameType | None) -> None:
    del frame
    _pending["signal"] = signum


def defer_signals() -> bool:
    """Makes SIGTERM and SIGINT only record themselves (see :func:`pending_signal`).

    Returns:
      Whether the handlers were installed (only possible in the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    for signum in SIGNALS:
        signal.signal(signum, _record)
    return True


@contextlib.contextmanager
def deferred_signals(keep: bool = False) -> Iterator[None]:
    """:func:`defer_signals` for a block; the previous handlers come back after it.

    Args:
      keep: leave the deferring handlers in place after the block (a program's ``main``
        about to exit: a signal during interpreter shutdown is then recorded, not fatal).
    """
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    installed = defer_signals()
    try:
        yield
    finally:
        if installed and not keep:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            clear_pending_signal()


class PreemptionWatcher:
    """Context manager that records SIGTERM and SIGINT while training runs.

    On entry (main thread only: Python allows signal handlers nowhere else) it installs
    handlers that only set a flag; on exit it puts the previous handlers back, so a
    library caller's own handling is untouched. Under :func:`defer_signals` a signal
    recorded before entry counts as received, and one received inside is recorded on
    exit.

    Args:
      manager: the run's orbax CheckpointManager; its ``reached_preemption`` is the
        multi-process decision (may be set later, before the first ``reached``).
    """

    def __init__(self, manager: Any = None):
        import jax  # here, so that defer_signals() can run before JAX is imported

        self.manager = manager
        self._multiprocess = jax.process_count() > 1
        self._previous: dict[int, Any] = {}
        self._installed = False
        self.signal_number: int | None = None

    def __enter__(self) -> PreemptionWatcher:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
            self._installed = True
            if self._defers():
                self.signal_number = pending_signal()
        return self

    def _defers(self) -> bool:
        """Whether the program deferred signals before (``defer_signals``)."""
        return any(previous is _record for previous in self._previous.values())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._installed:
            if self._defers() and self.signal_number is not None:
                _pending["signal"] = self.signal_number
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)
            self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if signum == signal.SIGINT and self.signal_number == signal.SIGINT:
            raise KeyboardInterrupt("second Ctrl-C: stopped without saving")
        if self.signal_number is None:
            self.signal_number = signum

    @property
    def installed(self) -> bool:
        """Whether the signal handlers are in place (main thread)."""
        return self._installed

    @property
    def signal_name(self) -> str:
        """'SIGTERM' or 'SIGINT' (or 'preemption' for a multi-process decision)."""
        if self.signal_number is None:
            return "preemption"
        return signal.Signals(self.signal_number).name

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for on this process (no collective)."""
        return self.signal_number is not None

    def reached(self, step: int) -> bool:
        """True when the run should save at ``step`` and stop.

        Every process must call this at every step, in order (multi-process runs
        agree on the stopping step through it).
        """
        if self._multiprocess:
            return bool(self.manager.reached_preemption(step))
        return self.signal_number is not None
