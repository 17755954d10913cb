"""Writing result files so that a crash never leaves half a file, nor destroys the old one.

Every file diffjax writes (configs, reports, tables, sample grids, weights, statistics,
checkpoint metadata) goes to a temporary
file in the same folder, is flushed to disk, and then renamed over the target, so a
reader sees the old file or the new one, never a mixture, and a kill or a full disk
mid-write leaves the previous result in place.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path to write; on success it replaces ``path`` atomically.

    Args:
      path: the file to (re)place; its folder is created if needed.
      suffix: the temporary file's extension (some writers choose the format by it,
        e.g. ``'.png'``, ``'.npz'``).

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes a binary file atomically (see :func:`atomic_output`)."""
    with atomic_output(os.fspath(path)) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_npz_atomic(path: str | os.PathLike[str], **arrays: Any) -> str:
    """Writes ``arrays`` to an uncompressed ``.npz`` atomically, as ``np.savez`` would.

    Like ``np.savez``, appends ``.npz`` to a name without it.

    Returns:
      The path written.
    """
    import numpy as np

    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    with atomic_output(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return path


def write_figure_atomic(fig: Any, path: str | os.PathLike[str], **savefig_kwargs: Any) -> str:
    """Saves a matplotlib figure atomically, in the format its extension names.

    Returns:
      The path written.
    """
    path = os.fspath(path)
    with atomic_output(path, suffix=os.path.splitext(path)[1]) as tmp:
        fig.savefig(tmp, **savefig_kwargs)
    return path


def write_text_atomic(path: str, text: str) -> None:
    """Writes a text file atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        f.write(text)
