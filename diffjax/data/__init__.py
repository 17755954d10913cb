"""Image datasets (built-in, TFDS, captioned), their validation, and the grain training pipeline.

The compositional shapes set with its exact detector is :mod:`diffjax.data.shapes`.
"""

from __future__ import annotations

from typing import Any

from diffjax.data.captions import (
    CaptionedDataset,
    caption_fashion_mnist,
    load_image_folder,
    make_captioned_dataset,
)
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
from diffjax.data.pipeline import (
    ImageSource,
    batch_iterator,
    in_memory_source,
    training_batches,
)
from diffjax.data.tfds_source import TFDS_DATASETS, load_tfds_source

__all__ = [
    "DATASET_NAMES",
    "SOURCE_NAMES",
    "TFDS_DATASETS",
    "TFDS_PREFIX",
    "CaptionedDataset",
    "ImageDataset",
    "ImageSource",
    "batch_indices",
    "batch_iterator",
    "caption_fashion_mnist",
    "in_memory_source",
    "iterate_batches",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_source",
    "load_tfds_source",
    "make_captioned_dataset",
    "make_dataset",
    "read_idx",
    "steps_per_epoch",
    "training_batches",
    "validate_dataset",
    "validate_images",
    "validate_labels",
]

_LOADERS = {"digits": load_digits, "fashion_mnist": load_fashion_mnist}
DATASET_NAMES = tuple(_LOADERS)
TFDS_PREFIX = "tfds:"
# Every name `config.data.name` accepts: the in-memory sets, then the TFDS ones.
SOURCE_NAMES = DATASET_NAMES + tuple(TFDS_PREFIX + name for name in TFDS_DATASETS)


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


def load_source(
    name: str, *, split: str = "train", path: str = "", image_size: int = 0
) -> ImageSource:
    """Opens the training data a config names, as the input of :func:`training_batches`.

    Args:
      name: One of :data:`SOURCE_NAMES`: ``"digits"`` and ``"fashion_mnist"`` (the
        Fashion-MNIST IDX files) are read into memory; ``"tfds:<name>"`` (e.g.
        ``"tfds:cifar10"``) is read on demand with ``tfds.data_source``.
      split: The split (``"train"``, ``"heldout"``, ... for the in-memory sets; any TFDS
        split string for TFDS).
      path: Where the data lives: the IDX directory for ``fashion_mnist``, the TFDS
        ``data_dir`` for TFDS names; ``""`` for the default place.
      image_size: TFDS only: side of the training images, 0 for the dataset's default.

    Returns:
      The source.

    Raises:
      ValueError: For an unknown name (the message lists the known ones), or an
        ``image_size`` asked of an in-memory set.
      FileNotFoundError: If the data is not where it is looked for; the message says how
        to get it.
    """
    if isinstance(name, str) and name.startswith(TFDS_PREFIX):
        tfds_name = name.removeprefix(TFDS_PREFIX)
        if tfds_name in TFDS_DATASETS:
            return load_tfds_source(tfds_name, split=split, data_dir=path, image_size=image_size)
    if name not in DATASET_NAMES:
        raise ValueError(f"Unknown dataset {name=}; known names: {SOURCE_NAMES}.")
    if image_size:
        raise ValueError(
            f"data.image_size={image_size} applies to TFDS datasets only; {name!r} is used at "
            "its own size (set data.image_size=0)."
        )
    kwargs: dict[str, Any] = {"split": split}
    if path:
        kwargs["path"] = path
    return in_memory_source(load_dataset(name, **kwargs))
