"""Host-side evaluation of a jitted function over fixed-size batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def map_padded_batches(
    fn: Callable[[np.ndarray], Any],
    x: np.ndarray,
    batch_size: int,
    row_shape: Sequence[int],
    dtype: Any = np.float32,
) -> np.ndarray:
    """``fn`` over batches of ``x`` of one size, results concatenated on the host.

    The last batch is padded with copies of its last row, so a jitted ``fn`` compiles
    once; the padded rows' outputs are dropped.

    Args:
      fn: Maps a ``(b, ...)`` batch to a ``(b, *row_shape)`` array.
      x: The inputs, batch-first.
      batch_size: Rows per call (``min(batch_size, len(x))`` is used).
      row_shape: Shape of one output row, for the empty result when ``x`` has no rows.
      dtype: Dtype of that empty result.

    Returns:
      ``(len(x), *row_shape)`` numpy array.

    Raises:
      ValueError: if ``batch_size < 1``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size=}.")
    n = x.shape[0]
    if n == 0:
        return np.zeros((0, *row_shape), dtype)
    b = min(batch_size, n)
    out = []
    for start in range(0, n, b):
        chunk = x[start : start + b]
        m = chunk.shape[0]
        if m < b:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - m, axis=0)])
        out.append(np.asarray(fn(chunk))[:m])
    return np.concatenate(out)
