"""The scikit-learn bundled handwritten digits (1,797 8x8 grey images, 10 classes).

The set ships inside scikit-learn, so it is available offline. Pixel values are integers
``0..16``; they are scaled to ``[-1, 1]`` by ``x / 8 - 1``.
"""

from __future__ import annotations

import functools

import numpy as np

from diffjax._checks import check_int
from diffjax.data.dataset import ImageDataset, make_dataset

__all__ = ["DIGITS_SPLITS", "load_digits"]

DIGITS_SPLITS = ("train", "heldout", "all")
_NUM_CLASSES = 10


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_load_digits  # lazy: sklearn is slow to import

    bunch = sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)[..., None] / 8.0 - 1.0
    labels = np.asarray(bunch.target, dtype=np.int32)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _heldout_mask(labels: np.ndarray, heldout_fraction: float, seed: int) -> np.ndarray:
    """Stratified held-out mask: ``round(fraction * n_c)`` examples of each class ``c``."""
    mask = np.zeros(labels.shape[0], dtype=bool)
    for c in range(_NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        k = round(heldout_fraction * idx.size)
        # One generator per (seed, class): the split of a class never depends on the others.
        chosen = np.random.default_rng([seed, c]).permutation(idx.size)[:k]
        mask[idx[chosen]] = True
    return mask


def load_digits(
    split: str = "train", *, heldout_fraction: float = 0.2, seed: int = 0
) -> ImageDataset:
    """Loads the scikit-learn digits as an ImageDataset of ``(N, 8, 8, 1)`` images in [-1, 1].

    The train/held-out split is stratified by class and fixed: it depends only on
    ``heldout_fraction`` and ``seed`` (through ``np.random.default_rng([seed, class])``), never on
    the process or call order. Examples keep the order of the original set.

    Args:
      split: ``"train"``, ``"heldout"`` or ``"all"`` (all 1,797 images).
      heldout_fraction: Fraction of each class held out, in ``(0, 1)``.
      seed: Non-negative int selecting the split.

    Returns:
      The requested split; with the defaults, 1,438 training and 359 held-out images.

    Raises:
      ValueError: For an unknown split, or a fraction or seed out of range.
    """
    if split not in DIGITS_SPLITS:
        raise ValueError(f"split must be one of {DIGITS_SPLITS}, got {split=}.")
    if not 0.0 < float(heldout_fraction) < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction=}.")
    check_int("seed", seed, minimum=0)
    images, labels = _raw_digits()
    if split == "all":
        keep = np.ones(labels.shape[0], dtype=bool)
    else:
        heldout = _heldout_mask(labels, float(heldout_fraction), int(seed))
        keep = heldout if split == "heldout" else ~heldout
    return make_dataset(
        images[keep], labels[keep], num_classes=_NUM_CLASSES, name=f"digits/{split}"
    )
