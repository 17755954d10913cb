"""Reading and writing ``.safetensors`` files with numpy alone (no torch, no extra package).

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian unsigned
header length ``n``, then ``n`` bytes of UTF-8 JSON mapping each tensor name to
``{"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}`` (offsets relative to
the byte buffer that follows the header; an optional ``"__metadata__"`` entry maps strings
to strings), then the raw row-major little-endian tensor bytes. Nothing in it is executed
on load, unlike a pickle.

``BF16`` has no numpy dtype; it is returned as ``ml_dtypes.bfloat16`` (the type behind
``jnp.bfloat16``), which converts exactly to float32.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from diffjax.files import atomic_output

__all__ = ["read_safetensors", "read_safetensors_header", "write_safetensors"]

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_CODES = {v: k for k, v in _DTYPES.items()}
_METADATA = "__metadata__"
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit


def read_safetensors_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int]:
    """Parses the JSON header of a ``.safetensors`` file.

    Args:
      path: The file.

    Returns:
      ``(header, data_start)``: the header mapping (``"__metadata__"`` included when
      present) and the file offset at which the tensor bytes begin.

    Raises:
      ValueError: If the file is too short or the header is not valid safetensors JSON.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path!r} is not a safetensors file: shorter than 8 bytes.")
        (n,) = struct.unpack("<Q", prefix)
        if n > min(_MAX_HEADER, size - 8):
            raise ValueError(
                f"{path!r} is not a safetensors file: header length {n} does not fit in "
                f"the file ({size} bytes)."
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path!r}: the safetensors header is not UTF-8 JSON ({e}).") from e
    if not isinstance(header, dict):
        raise ValueError(f"{path!r}: the safetensors header is not a JSON object.")
    return header, 8 + n


def _tensor_spec(path: str, name: str, entry: Any, buffer_size: int) -> tuple[np.dtype, tuple]:
    """Validates one header entry; returns its numpy dtype and shape."""
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise ValueError(f"{path!r}: tensor {name!r} has a malformed header entry {entry!r}.")
    code = entry["dtype"]
    if code not in _DTYPES:
        raise ValueError(
            f"{path!r}: tensor {name!r} has dtype {code!r}; supported: {sorted(_DTYPES)}."
        )
    dtype = _DTYPES[code]
    shape = tuple(int(s) for s in entry["shape"])
    begin, end = (int(o) for o in entry["data_offsets"])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not 0 <= begin <= end <= buffer_size or end - begin != expected:
        raise ValueError(
            f"{path!r}: tensor {name!r} ({code}, shape {list(shape)}) has data_offsets "
            f"[{begin}, {end}], which do not hold {expected} bytes inside the "
            f"{buffer_size}-byte buffer (truncated or corrupt file?)."
        )
    return dtype, shape


def read_safetensors(
    path: str | os.PathLike[str], names: Any = None
) -> dict[str, np.ndarray]:
    """Reads tensors from a ``.safetensors`` file into numpy arrays (memory-mapped, copied).

    Args:
      path: The file.
      names: Optional collection of tensor names to read (default: all). A name that
        the file lacks raises ``KeyError``.

    Returns:
      Mapping from tensor name to a native-byte-order numpy array of the stored dtype
      (``BF16`` as ``ml_dtypes.bfloat16``), in header order.

    Raises:
      FileNotFoundError: If ``path`` does not exist.
      KeyError: If a requested name is absent.
      ValueError: On a malformed header, an unsupported dtype, or offsets that do not fit.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"safetensors file {path!r} does not exist.")
    header, start = read_safetensors_header(path)
    header.pop(_METADATA, None)
    if names is not None:
        names = list(names)
        absent = [n for n in names if n not in header]
        if absent:
            raise KeyError(f"{path!r} has no tensors named {absent[:5]}.")
        header = {n: header[n] for n in names}
    buffer_size = os.path.getsize(path) - start
    if not header:
        return {}
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(buffer_size,))
    out = {}
    for name, entry in header.items():
        dtype, shape = _tensor_spec(path, name, entry, buffer_size)
        begin, end = (int(o) for o in entry["data_offsets"])
        arr = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape)
        out[name] = arr.astype(dtype.newbyteorder("="), copy=True)
    del data
    return out


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Writes numpy-convertible arrays as a ``.safetensors`` file (little-endian).

    Args:
      path: Destination file.
      tensors: Mapping from name to array of a supported dtype (float64/32/16,
        bfloat16, int64/32/16/8, uint8, bool).
      metadata: Optional string-to-string ``"__metadata__"``.

    Raises:
      TypeError: If an array has an unsupported dtype.
    """
    arrays = {}
    for name, value in tensors.items():
        arr = np.asarray(value)
        le = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        if np.dtype(le) not in _CODES:
            raise TypeError(f"tensor {name!r} has unsupported dtype {arr.dtype}.")
        arrays[name] = np.asarray(arr, dtype=le, order="C")  # keeps 0-d shapes
    header: dict[str, Any] = {}
    if metadata:
        header[_METADATA] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, arr in arrays.items():
        header[name] = {
            "dtype": _CODES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the tensor buffer starts 8-byte aligned
    with atomic_output(os.fspath(path)) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for arr in arrays.values():
            f.write(arr.tobytes())
