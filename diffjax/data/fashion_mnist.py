"""Fashion-MNIST read from its IDX files (60,000 train + 10,000 test 28x28 grey images).

Nothing is downloaded. The files are looked up, in order of precedence, in the ``path``
argument, the directory named by the environment variable ``DIFFJAX_FASHION_MNIST_DIR``,
and ``/usr/share/datasets/fashion-mnist/`` (where Debian's ``dataset-fashion-mnist`` package
installs them). Each file may be plain or gzip-compressed (``.gz``).

IDX format: a big-endian header ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian uint32
dimensions, then the data in C order. Type ``0x08`` is unsigned byte, the only type used here.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from diffjax.data.dataset import ImageDataset, make_dataset, uint8_to_unit_range

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ENV_VAR",
    "FASHION_MNIST_SPLITS",
    "load_fashion_mnist",
    "read_idx",
]

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV_VAR = "DIFFJAX_FASHION_MNIST_DIR"
FASHION_MNIST_SPLITS = ("train", "test", "heldout", "all")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGE_HW = (28, 28)
_UBYTE = 0x08


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an unsigned-byte IDX file (plain or gzip) into a uint8 array.

    Args:
      path: The file. Compression is detected from the gzip magic bytes, not the name.

    Returns:
      A uint8 array with the shape stored in the header.

    Raises:
      ValueError: If the magic number is wrong, the type is not unsigned byte, or the data
        length does not match the header's dimensions.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        raw = gzip.decompress(f.read()) if head == b"\x1f\x8b" else f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{path} is not an IDX file: expected a magic number starting with bytes 00 00, "
            f"got {raw[:4].hex(' ') or 'an empty file'}."
        )
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != _UBYTE:
        raise ValueError(
            f"{path}: IDX data type 0x{dtype_code:02x} is not supported (expected 0x08, "
            "unsigned byte)."
        )
    header_len = 4 + 4 * ndim
    if ndim < 1 or len(raw) < header_len:
        raise ValueError(f"{path}: truncated IDX header (ndim={ndim}, {len(raw)} bytes).")
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header_len != expected:
        raise ValueError(
            f"{path}: IDX header declares shape {shape} ({expected} bytes of data) but the "
            f"file holds {len(raw) - header_len} bytes of data."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)


def _resolve_dir(path: str | os.PathLike[str] | None) -> tuple[Path, str]:
    if path is not None:
        return Path(path), "the path argument"
    env = os.environ.get(FASHION_MNIST_ENV_VAR)
    if env:
        return Path(env), f"${FASHION_MNIST_ENV_VAR}"
    return Path(DEFAULT_FASHION_MNIST_DIR), "the default directory"


def _find(directory: Path, base: str) -> Path | None:
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing_error(directory: Path, source: str, split: str, missing: list[str]) -> Exception:
    wanted = ", ".join(f"{m} (or {m}.gz)" for m in missing)
    return FileNotFoundError(
        f"Fashion-MNIST {split!r} files not found in {directory} ({source}); missing: {wanted}. "
        "To get them: on Debian/Ubuntu run `apt-get install dataset-fashion-mnist` (installs "
        f"them under {DEFAULT_FASHION_MNIST_DIR}), or download the four IDX files from "
        "https://github.com/zalandoresearch/fashion-mnist (data/fashion) and pass "
        f"path=<directory> or set ${FASHION_MNIST_ENV_VAR}."
    )


def _load_split(directory: Path, source: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    names = _FILES[split]
    found = [_find(directory, n) for n in names]
    missing = [n for n, p in zip(names, found, strict=True) if p is None]
    if missing:
        raise _missing_error(directory, source, split, missing)
    img_path, lab_path = found
    images = read_idx(img_path)
    labels = read_idx(lab_path)
    if images.ndim != 3 or images.shape[1:] != _IMAGE_HW:
        raise ValueError(
            f"{img_path}: expected Fashion-MNIST images of shape (N, 28, 28), got {images.shape}."
        )
    if labels.ndim != 1:
        raise ValueError(f"{lab_path}: expected labels of shape (N,), got {labels.shape}.")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{img_path} holds {images.shape[0]} images but {lab_path} holds "
            f"{labels.shape[0]} labels."
        )
    return images, labels


def load_fashion_mnist(
    split: str = "train", path: str | os.PathLike[str] | None = None
) -> ImageDataset:
    """Loads Fashion-MNIST as an ImageDataset of ``(N, 28, 28, 1)`` float32 images in [-1, 1].

    Args:
      split: ``"train"`` (60,000), ``"test"`` (10,000), ``"heldout"`` (an alias of ``"test"``,
        matching :func:`diffjax.data.load_digits`) or ``"all"`` (train then test).
      path: Directory holding the IDX files. Defaults to ``$DIFFJAX_FASHION_MNIST_DIR`` if set,
        else ``/usr/share/datasets/fashion-mnist``.

    Returns:
      The dataset; pixels ``0..255`` are mapped to ``x / 127.5 - 1``.

    Raises:
      ValueError: For an unknown split or malformed files.
      FileNotFoundError: If the files are missing; the message names the directory searched,
        the files expected, and how to obtain them.
    """
    if split not in FASHION_MNIST_SPLITS:
        raise ValueError(f"split must be one of {FASHION_MNIST_SPLITS}, got {split=}.")
    directory, source = _resolve_dir(path)
    parts = ("train", "test") if split == "all" else ("test" if split == "heldout" else split,)
    loaded = [_load_split(directory, source, p) for p in parts]
    raw_images = loaded[0][0] if len(loaded) == 1 else np.concatenate([x for x, _ in loaded])
    raw_labels = loaded[0][1] if len(loaded) == 1 else np.concatenate([y for _, y in loaded])
    images = uint8_to_unit_range(raw_images)[..., None]
    return make_dataset(
        images,
        raw_labels.astype(np.int32),
        num_classes=len(FASHION_MNIST_CLASSES),
        name=f"fashion_mnist/{split}",
    )
