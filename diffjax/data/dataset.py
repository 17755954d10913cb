"""The in-memory image dataset type, its validation, and deterministic batching.

Every built-in source returns an :class:`ImageDataset`: NHWC float32 images scaled to
``[-1, 1]`` and int32 class labels. Batching is a pure function of
``(num_examples, batch_size, step, seed)`` so that a run resumed at step ``s`` sees exactly
the batches the uninterrupted run would have seen, with no iterator state to checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from diffjax._checks import is_int

__all__ = [
    "ImageDataset",
    "batch_indices",
    "iterate_batches",
    "make_dataset",
    "steps_per_epoch",
    "uint8_to_unit_range",
    "validate_dataset",
    "validate_images",
    "validate_labels",
]


class ImageDataset(NamedTuple):
    """A labelled image dataset held in host memory.

    Attributes:
      images: ``(N, H, W, C)`` float32 array with values in ``[-1, 1]``.
      labels: ``(N,)`` int32 array with values in ``[0, num_classes)``.
      num_classes: Number of classes.
      name: Short human-readable name, e.g. ``"digits/train"``.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str

    @property
    def num_examples(self) -> int:
        """Number of examples ``N``."""
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(H, W, C)`` of one image."""
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]


def _as_array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__array__") or hasattr(x, "__array_interface__"):
        return np.asarray(x)
    raise TypeError(f"{name} must be an array (numpy or jax), got {type(x).__name__}.")


def validate_images(images: Any, *, name: str = "images") -> np.ndarray:
    """Checks that ``images`` is a batch of NHWC floating-point images in ``[-1, 1]``.

    Args:
      images: Array-like of shape ``(N, H, W, C)`` with ``N >= 1`` and ``C`` in ``1..4``.
      name: Name of the argument, used in error messages.

    Returns:
      ``images`` as a numpy array (not copied when it already is one).

    Raises:
      TypeError: If ``images`` is not an array or its dtype is not floating point.
      ValueError: If the rank or layout is wrong, it is empty, or values are non-finite or
        outside ``[-1, 1]``.
    """
    arr = _as_array(images, name)
    if arr.ndim != 4:
        hint = ""
        if arr.ndim == 3:
            hint = " (a single-channel batch needs a trailing channel axis: images[..., None])"
        elif arr.ndim == 2:
            hint = " (flattened images must be reshaped to (N, H, W, C))"
        raise ValueError(
            f"{name} must have rank 4 (N, H, W, C), got shape {arr.shape} (rank {arr.ndim}){hint}."
        )
    n, h, w, c = arr.shape
    if not 1 <= c <= 4:
        hint = ""
        if 1 <= h <= 4:
            hint = "; this looks like NCHW, transpose it with images.transpose(0, 2, 3, 1)"
        raise ValueError(
            f"{name} must be NHWC with 1 to 4 trailing channels, got shape {arr.shape} "
            f"({c} channels){hint}."
        )
    if n < 1 or h < 1 or w < 1:
        raise ValueError(f"{name} must hold at least one non-empty image, got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(
            f"{name} must have a floating-point dtype with values in [-1, 1], got dtype "
            f"{arr.dtype}; for uint8 pixels use images.astype(np.float32) / 127.5 - 1."
        )
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf).")
    if lo < -1.0 or hi > 1.0:
        raise ValueError(
            f"{name} must have values in [-1, 1], observed min {lo:.6g} and max {hi:.6g}."
        )
    return arr


def validate_labels(labels: Any, num_classes: int, n: int, *, name: str = "labels") -> np.ndarray:
    """Checks that ``labels`` is an ``(n,)`` integer array with values in ``[0, num_classes)``.

    Args:
      labels: Array-like of class indices.
      num_classes: Number of classes (a positive int).
      n: The expected number of labels (the number of images).
      name: Name of the argument, used in error messages.

    Returns:
      ``labels`` as a numpy array (not copied when it already is one).

    Raises:
      TypeError: If ``labels`` is not an array, or its dtype is not integer.
      ValueError: If the shape is not ``(n,)``, ``num_classes`` is not positive, or a label is
        out of range.
    """
    if not is_int(num_classes):
        raise TypeError(f"num_classes must be an int, got {num_classes!r}.")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes=}.")
    arr = _as_array(labels, name)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the images, got {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype, got dtype {arr.dtype}.")
    if n:
        lo, hi = int(np.min(arr)), int(np.max(arr))
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{name} must be in [0, {num_classes}) for num_classes={num_classes}, "
                f"observed min {lo} and max {hi}."
            )
    return arr


def uint8_to_unit_range(pixels: np.ndarray) -> np.ndarray:
    """Maps uint8 pixels ``0..255`` to float32 ``x / 127.5 - 1`` in ``[-1, 1]``."""
    return np.asarray(pixels, np.float32) / np.float32(127.5) - np.float32(1.0)


def make_dataset(images: Any, labels: Any, *, num_classes: int, name: str) -> ImageDataset:
    """Validates images and labels and packs them (as float32 / int32) into an ImageDataset.

    Args:
      images: ``(N, H, W, C)`` floating-point images in ``[-1, 1]``.
      labels: ``(N,)`` integer labels in ``[0, num_classes)``.
      num_classes: Number of classes.
      name: Dataset name.

    Returns:
      The validated :class:`ImageDataset`.
    """
    imgs = validate_images(images)
    labs = validate_labels(labels, num_classes, imgs.shape[0])
    return ImageDataset(
        images=np.asarray(imgs, dtype=np.float32),
        labels=np.asarray(labs, dtype=np.int32),
        num_classes=int(num_classes),
        name=str(name),
    )


def validate_dataset(dataset: ImageDataset) -> ImageDataset:
    """Validates every field of an :class:`ImageDataset` and returns it unchanged."""
    if not isinstance(dataset, ImageDataset):
        raise TypeError(f"dataset must be an ImageDataset, got {type(dataset).__name__}.")
    validate_images(dataset.images, name="dataset.images")
    validate_labels(
        dataset.labels, dataset.num_classes, dataset.images.shape[0], name="dataset.labels"
    )
    return dataset


def _check_int(value: Any, name: str, minimum: int) -> int:
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}.")
    v = int(value)
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={v}.")
    return v


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Number of full batches per epoch (the remainder is dropped).

    Raises:
      ValueError: If ``batch_size`` is not in ``[1, num_examples]``.
    """
    num_examples = _check_int(num_examples, "num_examples", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    if batch_size > num_examples:
        raise ValueError(
            f"batch_size must be <= num_examples, got {batch_size=} > {num_examples=}."
        )
    return num_examples // batch_size


def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    # SeedSequence([seed, epoch]) is a documented, platform- and process-independent hash.
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Returns the example indices of the batch at global step ``step``.

    Each epoch (``step // steps_per_epoch``) uses a fresh permutation of ``range(num_examples)``
    drawn by ``np.random.default_rng([seed, epoch])``; the last ``num_examples % batch_size``
    examples of each permutation are dropped. The result depends only on the arguments, so a
    training run resumed at step ``s`` reproduces the batches of an uninterrupted run.

    Args:
      num_examples: Dataset size ``N >= 1``.
      batch_size: Batch size in ``[1, N]``.
      step: Global step, ``>= 0``.
      seed: Non-negative int seed.

    Returns:
      An int64 array of shape ``(batch_size,)``; within an epoch batches are disjoint.
    """
    spe = steps_per_epoch(num_examples, batch_size)
    step = _check_int(step, "step", 0)
    seed = _check_int(seed, "seed", 0)
    epoch, pos = divmod(step, spe)
    perm = _epoch_permutation(num_examples, seed, epoch)
    return perm[pos * batch_size : (pos + 1) * batch_size]


def iterate_batches(
    dataset: ImageDataset,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    *,
    num_steps: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``(images, labels)`` numpy batches for steps ``start_step, start_step + 1, ...``.

    Batch ``k`` of this generator equals ``dataset[batch_indices(N, batch_size,
    start_step + k, seed)]``; the permutation is computed once per epoch.

    Args:
      dataset: The dataset to draw from.
      batch_size: Batch size in ``[1, N]``.
      seed: Non-negative int seed.
      start_step: Global step of the first batch (for resuming).
      num_steps: Number of batches to yield; ``None`` (default) yields forever.

    Yields:
      ``images`` of shape ``(batch_size, H, W, C)`` and ``labels`` of shape ``(batch_size,)``.
    """
    n = int(dataset.images.shape[0])
    spe = steps_per_epoch(n, batch_size)
    seed = _check_int(seed, "seed", 0)
    step = _check_int(start_step, "start_step", 0)
    if num_steps is not None:
        num_steps = _check_int(num_steps, "num_steps", 0)
    return _batch_generator(dataset, batch_size, seed, step, spe, num_steps)


def _batch_generator(
    dataset: ImageDataset,
    batch_size: int,
    seed: int,
    step: int,
    spe: int,
    num_steps: int | None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    n = int(dataset.images.shape[0])
    perm_epoch, perm = -1, None
    end = None if num_steps is None else step + num_steps
    while end is None or step < end:
        epoch, pos = divmod(step, spe)
        if epoch != perm_epoch:
            perm_epoch, perm = epoch, _epoch_permutation(n, seed, epoch)
        idx = perm[pos * batch_size : (pos + 1) * batch_size]
        yield dataset.images[idx], dataset.labels[idx]
        step += 1
