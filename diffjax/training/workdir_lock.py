"""One writer per workdir: an exclusive lock file held while ``train`` runs.

``WORKDIR/train.lock`` is created by the run that takes the lock, holds its pid, host
and start time as JSON, is locked with ``fcntl.flock`` (which the kernel releases when
the process dies, however it dies) and is removed when the run ends. A second ``train``
on the same workdir is refused with the holder's pid and host:

* a lock file whose ``flock`` is free was left by a dead process on this host (or a
  filesystem without ``flock``): it is stale and taken over, with a warning;
* a lock recorded by another host cannot be checked from here (``flock`` does not
  reach across hosts on most network filesystems) and is refused, naming the file to
  delete once that run is known to be dead.

Readers (``sample``, ``evaluate``) take no lock: orbax only lists a checkpoint once it
is complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import warnings
from typing import Any

from diffjax._checks import is_int

LOCK_FILE = "train.lock"


class WorkdirLockedError(RuntimeError):
    """Another ``train`` holds the workdir."""


def _read_holder(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unknown process"
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    return f"pid {holder.get('pid')} on host {holder.get('host')!r} (since {when})"


def _pid_alive(pid: Any) -> bool:
    if not is_int(pid) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """Context manager holding ``workdir/train.lock`` exclusively (see the module doc).

    Args:
      workdir: an existing directory.

    Raises (on entry):
      WorkdirLockedError: another live process holds the lock, or a process on another
        host recorded it.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        """Takes the lock or raises :class:`WorkdirLockedError`."""
        host = socket.gethostname()
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise WorkdirLockedError(
                    f"workdir {os.path.dirname(self.path)!r} is in use by another `diffjax "
                    f"train`: {_describe(_read_holder(self.path))} holds {self.path}; wait "
                    "for it to finish or stop it, or use another workdir"
                ) from None
            # The previous holder may have removed the file between our open and flock:
            # then we locked an orphaned inode and must retry on the new file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            holder = _read_holder(self.path)
            if holder:
                if holder.get("host") != host:
                    os.close(fd)
                    raise WorkdirLockedError(
                        f"workdir {os.path.dirname(self.path)!r} is locked by "
                        f"{_describe(holder)}, which cannot be checked from host {host!r}; "
                        f"if that run is dead, delete {self.path} and run again"
                    )
                if not _pid_alive(holder.get("pid")) or holder.get("pid") == os.getpid():
                    warnings.warn(
                        f"taking over the stale lock {self.path} of {_describe(holder)}, "
                        "which is no longer running",
                        stacklevel=2,
                    )
                else:  # alive but not holding flock: a filesystem without flock
                    os.close(fd)
                    raise WorkdirLockedError(
                        f"workdir {os.path.dirname(self.path)!r} is in use by "
                        f"{_describe(holder)} (its lock {self.path}); wait for it to "
                        "finish or stop it, or use another workdir"
                    )
            record = json.dumps({"pid": os.getpid(), "host": host, "since": time.time()})
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
            os.fsync(fd)
            self._fd = fd
            return
        raise WorkdirLockedError(f"could not take {self.path}: it keeps being replaced")

    def release(self) -> None:
        """Removes the lock file and releases the lock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
