"""The training input pipeline: grain datasets of shuffled, sharded, augmented batches.

Every training source (the in-memory digits and Fashion-MNIST IDX sets, and TFDS
datasets read through ``tfds.data_source``) goes through :func:`training_batches`, a
lazy ``grain.MapDataset`` whose element ``s`` is this process's part of the global
batch of step ``s``:

1. Epoch ``e`` visits the ``N`` records in a fresh pseudo-random order (grain's
   ``shuffle``, reseeded each epoch); the last ``N % B`` of each epoch are dropped, so
   every global batch of ``B`` examples holds ``B`` distinct records.
2. Each record is decoded to a float32 ``(H, W, C)`` image in ``[-1, 1]`` (and an int32
   label), then flipped left-right with probability 1/2 if asked. The flip is drawn
   from grain's ``random_map`` generator, keyed by the seed and the example's position
   in the stream, so it is the same in every run.
3. Global batch ``s`` is positions ``[s B, (s + 1) B)`` of that stream. Process ``p``
   of ``P`` reads only its contiguous slice ``[p B / P, (p + 1) B / P)``. The sequence
   of global batches therefore does not depend on the number of processes, and
   stacking the processes' slices in process order gives the global batch (which is
   how ``jax.make_array_from_process_local_data`` assembles it on a 1-D data mesh).

The iterator over it (:func:`batch_iterator`) reads ahead in threads. Its state, the
number of batches it has returned, is what a checkpoint stores (grain's orbax
``CheckpointHandler``); restoring it resumes the exact batch sequence. Because the
dataset is random-access, batch ``s`` can also be read directly (``batches[s]``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import grain
import numpy as np

from diffjax.data.dataset import ImageDataset, _check_int, steps_per_epoch, validate_dataset

__all__ = [
    "ImageSource",
    "batch_iterator",
    "check_example",
    "derived_seed",
    "in_memory_source",
    "random_flip_left_right",
    "training_batches",
]

Example = dict[str, np.ndarray]


class ImageSource(NamedTuple):
    """A random-access image dataset, the input of :func:`training_batches`.

    Attributes:
      records: Random-access records (``len(records)`` and ``records[i]``), e.g. what
        ``tfds.data_source`` returns.
      decode: Maps one record to an example ``{"image": float32 (H, W, C) in [-1, 1],
        "label": int32 scalar}``; the ``"label"`` key is absent when ``num_classes`` is 0.
      image_shape: ``(H, W, C)`` of decoded images.
      num_classes: Number of classes; 0 for an unlabelled dataset.
      name: Short human-readable name, e.g. ``"tfds:cifar10/train"``.
    """

    records: Sequence[Any]
    decode: Callable[[Any], Example]
    image_shape: tuple[int, int, int]
    num_classes: int
    name: str

    @property
    def num_examples(self) -> int:
        """Number of records ``N``."""
        return len(self.records)


class _ArrayRecords:
    """Random-access view of an ImageDataset: record ``i`` is its image and label."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self._images, self._labels = images, labels

    def __len__(self) -> int:
        return int(self._images.shape[0])

    def __getitem__(self, index: int) -> Example:
        return {"image": self._images[index], "label": self._labels[index]}


def _as_example(record: Example) -> Example:
    return record


def in_memory_source(dataset: ImageDataset) -> ImageSource:
    """Wraps an in-memory :class:`ImageDataset` (already in ``[-1, 1]``) as an ImageSource."""
    dataset = validate_dataset(dataset)
    return ImageSource(
        records=_ArrayRecords(dataset.images, dataset.labels),
        decode=_as_example,
        image_shape=dataset.image_shape,
        num_classes=int(dataset.num_classes),
        name=dataset.name,
    )


def random_flip_left_right(example: Example, rng: np.random.Generator) -> Example:
    """Flips ``example["image"]`` (H, W, C) along W with probability 1/2 drawn from ``rng``."""
    if rng.integers(2):
        return {**example, "image": np.ascontiguousarray(example["image"][:, ::-1])}
    return example


def derived_seed(seed: int, stream: int) -> int:
    """A 32-bit seed for one random stream (shuffle, flips) of a run seeded with ``seed``.

    grain reseeds epoch ``e`` with ``seed + e``, so the run seeds themselves must not be
    used directly (seed 1 would replay seed 0 one epoch late); hashing ``(seed, stream)``
    with ``np.random.SeedSequence`` gives unrelated streams.
    """
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


_SHUFFLE_STREAM, _FLIP_STREAM = 0, 1


def _shard(shard: grain.sharding.ShardOptions | None) -> tuple[int, int]:
    # grain.sharding.ShardOptions checks 0 <= shard_index < shard_count itself.
    shard = grain.sharding.ShardByJaxProcess() if shard is None else shard
    return int(shard.shard_index), int(shard.shard_count)


def training_batches(
    source: ImageSource,
    global_batch_size: int,
    *,
    seed: int,
    random_flip: bool = False,
    shard: grain.sharding.ShardOptions | None = None,
    labels: bool = True,
) -> grain.MapDataset:
    """This process's batches of an endless, epoch-shuffled stream (see the module doc).

    Args:
      source: The data.
      global_batch_size: Examples per step over all processes, in ``[1, N]`` and
        divisible by the number of processes.
      seed: Non-negative int; fixes the order of every epoch and the flips.
      random_flip: Flip each image left-right with probability 1/2.
      shard: Which slice of each global batch this process reads
        (``shard_index`` of ``shard_count``). Defaults to
        ``grain.sharding.ShardByJaxProcess()``: ``jax.process_index()`` of
        ``jax.process_count()``.
      labels: Include ``"label"`` in the batches (needs a labelled source).

    Returns:
      An infinite ``grain.MapDataset``; element ``s`` is a dict with ``"image"`` of shape
      ``(global_batch_size // shard_count, H, W, C)`` float32 and, if ``labels``,
      ``"label"`` int32 of shape ``(global_batch_size // shard_count,)``.

    Raises:
      ValueError: If the batch size does not fit the source or the shards, or
        ``labels`` is asked of an unlabelled source.
    """
    n = source.num_examples
    steps = steps_per_epoch(n, global_batch_size)
    seed = _check_int(seed, "seed", 0)
    shard_index, shard_count = _shard(shard)
    if global_batch_size % shard_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by the "
            f"{shard_count} processes; use a multiple of {shard_count}."
        )
    if labels and source.num_classes < 1:
        raise ValueError(
            f"{source.name!r} has no class labels; train an unconditional model "
            "(model.class_conditional=False)."
        )
    ds = grain.MapDataset.source(source.records)
    ds = ds.shuffle(seed=derived_seed(seed, _SHUFFLE_STREAM)).map(source.decode)
    if not labels:
        ds = ds.map(lambda example: {"image": example["image"]})
    if random_flip:
        ds = ds.random_map(random_flip_left_right, seed=derived_seed(seed, _FLIP_STREAM))
    # Slicing and batching keep grain's epoch offsets: position e * N + i of the stream
    # is record i of epoch e's order, so every epoch is shuffled (and flipped) anew.
    ds = ds[: steps * global_batch_size]
    ds = ds.batch(global_batch_size // shard_count, drop_remainder=True)
    return ds[shard_index::shard_count].repeat()


def batch_iterator(
    batches: grain.MapDataset, *, num_threads: int = 8, prefetch_batches: int = 8
) -> grain.DatasetIterator:
    """An iterator over ``batches`` that reads up to ``prefetch_batches`` ahead in threads.

    Its ``get_state()`` is ``{"next_index": k}`` after ``k`` batches; ``set_state`` of a
    saved state resumes there. ``num_threads=0`` reads in the calling thread.
    """
    num_threads = _check_int(num_threads, "num_threads", 0)
    prefetch_batches = _check_int(prefetch_batches, "prefetch_batches", 0)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
    return iter(batches.to_iter_dataset(options))


def check_example(source: ImageSource, example: Mapping[str, Any]) -> None:
    """Checks a decoded example against the source's declared shape, range and classes.

    Raises:
      ValueError: If the image is not float32 ``image_shape`` in ``[-1, 1]`` or the label
        is missing or out of range.
    """
    image = np.asarray(example["image"])
    if image.shape != tuple(source.image_shape) or image.dtype != np.float32:
        raise ValueError(
            f"{source.name}: decoded images must be float32 of shape {source.image_shape}, "
            f"got {image.dtype} {image.shape}."
        )
    lo, hi = float(image.min()), float(image.max())
    if not (lo >= -1.0 and hi <= 1.0):
        raise ValueError(f"{source.name}: decoded images must be in [-1, 1], got [{lo}, {hi}].")
    if source.num_classes:
        label = int(example["label"])
        if not 0 <= label < source.num_classes:
            raise ValueError(
                f"{source.name}: label {label} is outside [0, {source.num_classes})."
            )
