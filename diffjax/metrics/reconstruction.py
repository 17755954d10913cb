"""Reconstruction fidelity of an autoencoder: the peak signal-to-noise ratio."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["psnr"]


def psnr(images: Any, reconstructions: Any, *, data_range: float = 2.0) -> np.ndarray:
    """Per-image PSNR ``10 log10(R^2 / MSE)`` in dB, computed in float64.

    Args:
      images: ``(N, ...)`` originals.
      reconstructions: the same shape.
      data_range: ``R``, the span of the pixel values (2 for images on ``[-1, 1]``, the
        same number as 1 for ``[0, 1]``).

    Returns:
      ``(N,)`` values; ``inf`` for an exact reconstruction.

    Raises:
      ValueError: for different shapes.
    """
    x = np.asarray(images, np.float64)
    y = np.asarray(reconstructions, np.float64)
    if x.shape != y.shape or x.ndim < 2:
        raise ValueError(f"images {x.shape} and reconstructions {y.shape} must be the same "
                         "(N, ...) shape.")
    mse = np.mean(np.square(x - y).reshape(x.shape[0], -1), axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)
