"""Built-in image datasets, their validation, and deterministic (resumable) batching."""

from __future__ import annotations

from typing import Any

from diffjax.data.dataset import (
    ImageDataset,
    batch_indices,
    iterate_batches,
    make_dataset,
    steps_per_epoch,
    validate_dataset,
    validate_images,
    validate_labels,
)
from diffjax.data.digits import load_digits
from diffjax.data.fashion_mnist import load_fashion_mnist, read_idx

__all__ = [
    "DATASET_NAMES",
    "ImageDataset",
    "batch_indices",
    "iterate_batches",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "make_dataset",
    "read_idx",
    "steps_per_epoch",
    "validate_dataset",
    "validate_images",
    "validate_labels",
]

_LOADERS = {"digits": load_digits, "fashion_mnist": load_fashion_mnist}
DATASET_NAMES = tuple(_LOADERS)


def load_dataset(name: str, **kwargs: Any) -> ImageDataset:
    """Loads a built-in dataset by name (for configs and the command line).

    Args:
      name: ``"digits"`` or ``"fashion_mnist"``.
      **kwargs: Forwarded to :func:`load_digits` or :func:`load_fashion_mnist`
        (e.g. ``split="heldout"``, which both accept).

    Returns:
      The dataset.

    Raises:
      ValueError: If ``name`` is not a known dataset.
    """
    try:
        loader = _LOADERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown dataset {name=}; known names: {DATASET_NAMES}.") from None
    return loader(**kwargs)
