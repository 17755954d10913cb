"""Image grids: model outputs in [-1, 1] to uint8 tiles and PNG files."""

from __future__ import annotations

import matplotlib.image
import numpy as np

from diffjax.files import atomic_output


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Maps float images in [-1, 1] to uint8 [0, 255] (values outside are clipped)."""
    images = np.asarray(images, np.float32)
    return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, ncols: int, *, pad: int = 1, upscale: int = 1) -> np.ndarray:
    """Tiles (N, H, W, C) images row-major into one (rows*H', cols*W', 3) uint8 image.

    Args:
      images: float images in [-1, 1], NHWC with C in {1, 3}.
      ncols: images per row.
      pad: pixels of black border between tiles.
      upscale: nearest-neighbour magnification (8x8 digits are tiny).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, 1|3), got shape {images.shape}")
    if ncols < 1:
        raise ValueError(f"ncols={ncols} must be >= 1")
    tiles = to_uint8(images)
    if tiles.shape[-1] == 1:
        tiles = np.repeat(tiles, 3, axis=-1)
    if upscale > 1:
        tiles = tiles.repeat(upscale, axis=1).repeat(upscale, axis=2)
    n, h, w, _ = tiles.shape
    nrows = -(-n // ncols)
    grid = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), np.uint8)
    for i in range(n):
        r, c = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = tiles[i]
    return grid


def save_grid(path: str, images: np.ndarray, ncols: int, *, upscale: int = 1) -> None:
    """Writes :func:`make_grid` of ``images`` as a PNG."""
    with atomic_output(path, suffix=".png") as tmp:
        matplotlib.image.imsave(tmp, make_grid(images, ncols, upscale=upscale), format="png")
