"""Images with captions: the type, Fashion-MNIST captions from templates, and image folders.

A :class:`CaptionedDataset` is what text-to-image training reads: NHWC float32 images in
``[-1, 1]`` and one caption per image (and the class labels where the images have them,
for class agreement). Three sources need no download:

* :func:`caption_fashion_mnist`: Fashion-MNIST with captions drawn from templates over
  the class names and one attribute measured on each image (its tone, dark or light
  against the other images of its class), several phrasings per class; a separate set of
  held-out templates, never used in training, evaluates whether the text encoder
  generalises across wording;
* :mod:`diffjax.data.shapes`: the project's compositional set, with an exact detector;
* :func:`load_image_folder`: the user's own images with captions, in either common
  layout: a ``metadata.jsonl`` with one ``{"file_name": ..., "text": ...}`` record per
  image (Hugging Face's imagefolder layout; ``"caption"`` is accepted for ``"text"``),
  or a ``.txt`` file beside each image with the same stem (the sidecar layout).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from diffjax._checks import check_choice, check_int
from diffjax.data.dataset import ImageDataset, uint8_to_unit_range, validate_images

__all__ = [
    "FASHION_MNIST_NAMES",
    "FASHION_MNIST_TEMPLATES",
    "IMAGE_SUFFIXES",
    "CaptionedDataset",
    "caption_fashion_mnist",
    "load_image_folder",
    "make_captioned_dataset",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class CaptionedDataset(NamedTuple):
    """Images, one caption each, and class labels where the images have them.

    Attributes:
      images: ``(N, H, W, C)`` float32 in ``[-1, 1]``.
      captions: ``N`` non-empty strings.
      name: A short human-readable name (``"fashion_mnist/train+captions"``).
      labels: ``(N,)`` int32 class labels, or ``None``.
    """

    images: np.ndarray
    captions: tuple[str, ...]
    name: str
    labels: np.ndarray | None = None

    # The same properties as ImageDataset's (both read ``self.images``).
    num_examples = ImageDataset.num_examples
    image_shape = ImageDataset.image_shape


def make_captioned_dataset(
    images: Any, captions: Sequence[str], *, name: str, labels: Any = None
) -> CaptionedDataset:
    """Validates images and captions and bundles them.

    Raises:
      ValueError: If the counts differ, a caption is empty or not a string, or the
        images are not NHWC in ``[-1, 1]`` (see :func:`diffjax.data.validate_images`).
    """
    images = validate_images(images)
    captions = tuple(captions)
    if len(captions) != images.shape[0]:
        raise ValueError(
            f"{name}: {images.shape[0]} images but {len(captions)} captions; one caption per "
            "image."
        )
    for i, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{name}: caption {i} is empty or not a string ({caption!r}).")
    if labels is not None:
        labels = np.asarray(labels, np.int32)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{name}: labels must be ({images.shape[0]},), got {labels.shape}.")
    return CaptionedDataset(images, captions, name, labels)


# --------------------------------------------------------------------------- Fashion-MNIST

# The class names as a caption says them (FASHION_MNIST_CLASSES order).
FASHION_MNIST_NAMES = (
    "t-shirt", "pair of trousers", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
# {tone} is "dark" or "light"; {name} a class name; {a} its article. Training phrasings,
# and held-out ones that never appear in training (different words and word orders).
FASHION_MNIST_TEMPLATES = {
    "train": (
        "{a} {name}",
        "{a} {tone} {name}",
        "a photo of {a} {tone} {name}",
        "a picture of {a} {name}",
        "{tone} {name}",
        "an image of {a} {name}, {tone}",
    ),
    "heldout": (
        "a grayscale photo of {a} {tone} {name}",
        "this is {a} {name}",
        "{a} {name} in a {tone} shade",
    ),
}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _tones(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``"dark"`` or ``"light"`` per image: its foreground's mean against its class's median."""
    flat = images.reshape(images.shape[0], -1)
    foreground = flat > -0.9
    mean = np.where(
        foreground.any(1), (flat * foreground).sum(1) / np.maximum(foreground.sum(1), 1), -1.0
    )
    tones = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        members = labels == label
        tones[members] = np.where(mean[members] > np.median(mean[members]), "light", "dark")
    return tones


def caption_fashion_mnist(
    dataset: ImageDataset, *, templates: str = "train", seed: int = 0
) -> CaptionedDataset:
    """Captions a Fashion-MNIST split from templates over its class names and tones.

    Each image gets one template drawn at random from ``FASHION_MNIST_TEMPLATES[templates]``
    and its class name and tone filled in: the tone is "light" when the mean of the
    image's foreground pixels (those above -0.9) is above the median of its class, else
    "dark", so every caption is true of its image.

    Args:
      dataset: A Fashion-MNIST split (:func:`diffjax.data.load_fashion_mnist`).
      templates: ``"train"`` or ``"heldout"`` (phrasings training never sees).
      seed: Which template each image gets.

    Returns:
      The captioned dataset, labels kept.
    """
    check_choice("templates", templates, tuple(FASHION_MNIST_TEMPLATES))
    if dataset.num_classes != len(FASHION_MNIST_NAMES):
        raise ValueError(
            f"{dataset.name} has {dataset.num_classes} classes; Fashion-MNIST has "
            f"{len(FASHION_MNIST_NAMES)}."
        )
    phrasings = FASHION_MNIST_TEMPLATES[templates]
    rng = np.random.default_rng(seed)
    choice = rng.integers(len(phrasings), size=dataset.num_examples)
    tones = _tones(dataset.images, dataset.labels)
    captions = []
    for label, tone, k in zip(dataset.labels, tones, choice, strict=True):
        name = FASHION_MNIST_NAMES[int(label)]
        template = phrasings[int(k)]
        # The article belongs to the word right after it.
        after = tone if "{a} {tone}" in template else name
        captions.append(template.format(a=_article(after), name=name, tone=tone))
    return make_captioned_dataset(
        dataset.images, captions, name=f"{dataset.name}+captions:{templates}",
        labels=dataset.labels,
    )


# --------------------------------------------------------------------------- image folders


def _read_metadata(path: str) -> dict[str, str]:
    captions: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON record ({e.msg}).") from None
            text = record.get("text", record.get("caption")) if isinstance(record, dict) else None
            name = record.get("file_name") if isinstance(record, dict) else None
            if not isinstance(name, str) or not isinstance(text, str):
                raise ValueError(
                    f"{path}:{number}: each record needs a 'file_name' and a 'text' (or "
                    f"'caption') string, got {line.strip()[:200]!r}."
                )
            if name in captions:
                raise ValueError(f"{path}:{number}: {name!r} is captioned twice.")
            captions[name] = text
    return captions


def _read_image(path: str, image_size: int) -> np.ndarray:
    from PIL import Image  # Pillow, matplotlib's own dependency

    with Image.open(path) as im:
        im = im.convert("L" if im.mode in ("1", "L", "I;16", "I") else "RGB")
        if image_size:
            side = min(im.size)
            left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
            im = im.crop((left, top, left + side, top + side))
            im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
        pixels = np.asarray(im, np.uint8)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def load_image_folder(path: str | os.PathLike[str], *, image_size: int = 0) -> CaptionedDataset:
    """Loads a folder of images and their captions (``metadata.jsonl`` or ``.txt`` sidecars).

    Images are the files with a suffix in :data:`IMAGE_SUFFIXES` directly in ``path``,
    in sorted order. With ``metadata.jsonl`` present, it must caption exactly those files;
    otherwise each image needs ``<stem>.txt`` beside it.

    Args:
      path: The folder.
      image_size: ``0`` to keep the images' own size (they must then all be the same
        size); ``S`` to centre-crop each to a square and resize it to ``S x S``.

    Returns:
      The dataset (greyscale when every image is, else RGB), without labels.

    Raises:
      FileNotFoundError: If the folder is missing or holds no image.
      ValueError: If an image has no caption, a caption names no image, a caption is
        empty, or the sizes differ without ``image_size`` (the messages name the files).
    """
    path = os.fspath(path)
    check_int("image_size", image_size, minimum=0)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"image folder {path} does not exist.")
    files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"{path} holds no image file ({', '.join(IMAGE_SUFFIXES)}).")
    metadata = os.path.join(path, "metadata.jsonl")
    if os.path.isfile(metadata):
        by_name = _read_metadata(metadata)
        unknown = sorted(set(by_name) - set(files))
        missing = [f for f in files if f not in by_name]
        if unknown or missing:
            raise ValueError(
                f"{metadata} does not match the images in {path}: "
                f"{len(by_name)} captions for {len(files)} images; "
                + (f"captions of no image: {unknown[:5]}; " if unknown else "")
                + (f"images without a caption: {missing[:5]}" if missing else "")
            )
        captions = [by_name[f] for f in files]
    else:
        missing = [f for f in files if not os.path.isfile(os.path.join(path, _stem(f) + ".txt"))]
        if missing:
            raise ValueError(
                f"{path}: no metadata.jsonl, and {len(missing)} of {len(files)} images have no "
                f".txt caption beside them (e.g. {missing[:5]})."
            )
        captions = []
        for f in files:
            with open(os.path.join(path, _stem(f) + ".txt"), encoding="utf-8") as caption_file:
                captions.append(caption_file.read().strip())
    empty = [f for f, c in zip(files, captions, strict=True) if not c.strip()]
    if empty:
        raise ValueError(f"{path}: empty captions for {empty[:5]}.")
    pixels = [_read_image(os.path.join(path, f), image_size) for f in files]
    sizes = sorted({p.shape[:2] for p in pixels})
    if len(sizes) > 1:
        examples = {p.shape[:2]: f for f, p in zip(files, pixels, strict=True)}
        listed = ", ".join(f"{h}x{w} (e.g. {examples[(h, w)]})" for h, w in sizes[:4])
        raise ValueError(
            f"{path}: images of {len(sizes)} sizes: {listed}; pass image_size=S to crop and "
            "resize them all to S x S."
        )
    channels = 3 if any(p.shape[-1] == 3 for p in pixels) else 1
    stacked = np.stack([np.repeat(p, 3, -1) if p.shape[-1] < channels else p for p in pixels])
    return make_captioned_dataset(
        uint8_to_unit_range(stacked), captions, name=f"folder:{os.path.basename(path)}"
    )


def _stem(filename: str) -> str:
    return os.path.splitext(filename)[0]
