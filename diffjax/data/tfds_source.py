"""TFDS image datasets read with ``tfds.data_source`` (random access, no TensorFlow).

``tfds.data_source`` reads a dataset prepared in the ``array_record`` file format and
decodes its images with NumPy and PIL, so training needs no TensorFlow. Preparing a
dataset (downloading and writing its files) does need it, on any machine with network
access; the files are then copied to the training machine's ``data_dir``::

    pip install tensorflow tensorflow-datasets
    tfds build cifar10 --data_dir=/data/tfds --file_format=array_record

Supported datasets (:data:`TFDS_DATASETS`):

- ``mnist``, ``fashion_mnist``: 28x28 grey, 10 classes.
- ``cifar10``: 32x32 RGB, 10 classes.
- ``celeb_a``: unlabelled faces at 64x64 by default: the central 140x140 of each
  178x218 image (rows 39-178, columns 19-158), resized with antialiased bilinear
  interpolation. This is the NCSNv2 / score_sde (Song et al. 2021) recipe,
  ``central_crop(img, 140)`` then ``tf.image.resize(..., antialias=True)``. The DDIM
  code crops 128x128 around (x=89, y=121) instead, a slightly tighter, lower window.
- ``imagenet_resized/64x64``: ImageNet downsampled to 64x64 (Chrabaszcz et al. 2017)
  with its 1000 class labels, the class-conditional set of the classifier-free guidance
  paper.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

from diffjax._checks import check_int
from diffjax.data.dataset import uint8_to_unit_range
from diffjax.data.pipeline import Example, ImageSource

__all__ = [
    "TFDS_DATASETS",
    "TfdsSpec",
    "center_crop",
    "load_tfds_source",
    "resize_antialiased_bilinear",
]


class TfdsSpec(NamedTuple):
    """What the pipeline needs to know about one TFDS dataset.

    Attributes:
      image_shape: ``(H, W, C)`` of the stored images.
      num_classes: Classes of the ``label`` feature; 0 for an unlabelled dataset.
      crop: Side of the central square crop, or 0 for none.
      image_size: Default side of the training images (after crop and resize).
      random_flip: Whether left-right flips preserve the data distribution (natural
        images: yes; digits and letters: no). The experiment configs follow it.
    """

    image_shape: tuple[int, int, int]
    num_classes: int
    crop: int
    image_size: int
    random_flip: bool


TFDS_DATASETS: dict[str, TfdsSpec] = {
    "mnist": TfdsSpec((28, 28, 1), 10, 0, 28, False),
    "fashion_mnist": TfdsSpec((28, 28, 1), 10, 0, 28, False),
    "cifar10": TfdsSpec((32, 32, 3), 10, 0, 32, True),
    "celeb_a": TfdsSpec((218, 178, 3), 0, 140, 64, True),
    "imagenet_resized/64x64": TfdsSpec((64, 64, 3), 1000, 0, 64, True),
}


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` window of an ``(H, W, C)`` image.

    The window starts at row ``(H - size) // 2`` and column ``(W - size) // 2``, as
    ``tf.image.crop_to_bounding_box`` is used in score_sde's ``central_crop``.
    """
    h, w = image.shape[:2]
    if not 0 < size <= min(h, w):
        raise ValueError(f"crop size must be in [1, {min(h, w)}] for a {h}x{w} image, got {size}.")
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


@functools.lru_cache(maxsize=16)
def _bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` antialiased bilinear (triangle kernel) weights, rows sum to 1.

    Output pixel ``i`` is centred at input coordinate ``(i + 0.5) * in / out - 0.5``;
    when shrinking, the triangle kernel is widened by ``in / out`` so every input pixel
    contributes (the ``antialias=True`` resize of TensorFlow and ``jax.image.resize``).
    """
    scale = out_size / in_size
    kernel_width = max(1.0 / scale, 1.0)
    centers = (np.arange(out_size) + 0.5) / scale - 0.5
    distance = np.abs(centers[:, None] - np.arange(in_size)[None, :]) / kernel_width
    weights = np.maximum(0.0, 1.0 - distance)
    weights /= weights.sum(axis=1, keepdims=True)
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=16)
def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The nonzero entries of :func:`_bilinear_weights` as ``(indices, weights)``.

    Both are ``(out_size, K)``; zero weights pad rows with fewer than K taps.
    """
    dense = _bilinear_weights(in_size, out_size)
    taps = int((dense > 0).sum(axis=1).max())
    indices = np.argsort(dense <= 0, axis=1, kind="stable")[:, :taps]  # nonzeros first
    weights = np.take_along_axis(dense, indices, axis=1)
    return indices, weights


def resize_antialiased_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes an ``(H, W, C)`` image to ``(size, size, C)`` float32, antialiased bilinear.

    Matches ``jax.image.resize(image, shape, "linear", antialias=True)`` (and TensorFlow's
    ``tf.image.resize(..., antialias=True)``). Each output pixel is a weighted sum of a
    few input pixels per axis, computed as gathers and sums: no BLAS call, whose threads
    made a 140 -> 64 resize take tens of milliseconds on a loaded machine.
    """
    h, w, _ = image.shape
    row_idx, row_w = _bilinear_taps(h, size)
    col_idx, col_w = _bilinear_taps(w, size)
    x = np.asarray(image, np.float32)
    x = np.sum(x[row_idx] * row_w[:, :, None, None], axis=1)  # (size, W, C)
    return np.sum(x[:, col_idx] * col_w[None, :, :, None], axis=2)  # (size, size, C)


class _Decoder:
    """Turns a TFDS record into a diffjax example (picklable, for worker processes)."""

    def __init__(self, spec: TfdsSpec, image_size: int):
        self.spec, self.image_size = spec, image_size

    def __call__(self, record: dict[str, Any]) -> Example:
        image = np.asarray(record["image"])
        if self.spec.crop:
            image = center_crop(image, self.spec.crop)
        if image.shape[0] != self.image_size or image.shape[1] != self.image_size:
            image = resize_antialiased_bilinear(image, self.image_size)
            out = np.clip(image / np.float32(127.5) - np.float32(1.0), -1.0, 1.0)
        else:
            out = uint8_to_unit_range(image)
        example = {"image": out.astype(np.float32, copy=False)}
        if self.spec.num_classes:
            example["label"] = np.int32(record["label"])
        return example


def _missing_dataset_error(name: str, split: str, data_dir: str | None) -> Exception | None:
    """The error to raise when ``tfds.data_source`` failed, or None to re-raise its own."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir or None)
    where = str(builder.data_dir)
    root = str(builder.data_dir_root)
    prepare = (
        f"On a machine with network access and TensorFlow, run `pip install tensorflow "
        f"tensorflow-datasets` and `tfds build {name} --data_dir={root} "
        f"--file_format=array_record` (or, in Python, tfds.builder({name!r}, "
        f"data_dir={root!r}, file_format='array_record').download_and_prepare()), then copy its "
        f"{name.split('/')[0]}/ directory into {root} on this machine (or set data.path to "
        "the directory that holds it)."
    )
    if builder.is_prepared():
        fmt = getattr(builder.info.file_format, "value", builder.info.file_format)
        if str(fmt) != "array_record":
            return FileNotFoundError(
                f"TFDS dataset {name!r} in {where} is prepared in the {fmt!r} file format; "
                "tfds.data_source (reading without TensorFlow) needs 'array_record'. Convert "
                f"it with `tfds convert_format --dataset_version_dir={where} "
                "--out_file_format=array_record` (needs TensorFlow), or rebuild it: " + prepare
            )
        return None
    return FileNotFoundError(
        f"TFDS dataset {name!r} (split {split!r}) is not prepared in data_dir {root} "
        f"(looked for {where}); nothing is downloaded at training time. {prepare}"
    )


def load_tfds_source(
    name: str, *, split: str = "train", data_dir: str | None = None, image_size: int = 0
) -> ImageSource:
    """Opens a prepared TFDS dataset as an :class:`ImageSource` for the training pipeline.

    Args:
      name: A key of :data:`TFDS_DATASETS`, e.g. ``"cifar10"``.
      split: A TFDS split, e.g. ``"train"`` or ``"train[:90%]"``.
      data_dir: The TFDS data directory; ``None`` or ``""`` for TFDS's default
        (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      image_size: Side of the training images; 0 for the dataset's default
        (:attr:`TfdsSpec.image_size`). Other sizes are reached by an antialiased
        bilinear resize (after the crop, where the dataset has one).

    Returns:
      The source; its records are read and decoded lazily, on access.

    Raises:
      ValueError: For an unknown name or a negative ``image_size``.
      FileNotFoundError: If the dataset is not prepared (in the array_record format) in
        ``data_dir``; the message names the directory searched and how to prepare it.
    """
    if name not in TFDS_DATASETS:
        raise ValueError(f"Unknown TFDS dataset {name=}; known: {tuple(TFDS_DATASETS)}.")
    check_int("image_size", image_size, minimum=0, what="0: the dataset's own size")
    import tensorflow_datasets as tfds  # lazy: only TFDS runs need it

    spec = TFDS_DATASETS[name]
    size = image_size or spec.image_size
    try:
        records = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as e:  # tfds raises several types for a missing or unreadable dataset
        error = _missing_dataset_error(name, split, data_dir)
        if error is None:
            raise
        raise error from e
    return ImageSource(
        records=records,
        decode=_Decoder(spec, size),
        image_shape=(size, size, spec.image_shape[2]),
        num_classes=spec.num_classes,
        name=f"tfds:{name}/{split}",
    )
