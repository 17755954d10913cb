"""Checkpoint integrity: per-array checksums written with a checkpoint, checked on restore.

Orbax's array files carry no checksums, so a flipped byte in a copied or damaged
checkpoint restores as a plausible-looking but wrong state (or NaNs). Each diffjax
checkpoint therefore holds an integrity record, saved as one more item of the same
orbax checkpoint (so it is committed, or lost, with the arrays):

* for every array leaf: its path, shape, dtype and two 32-bit checksums of its bytes,
  ``sum_i w_i b_i`` and ``sum_i v_i b_i (mod 2^32)`` over its 32-bit words ``b_i`` with
  odd weights ``w_i = 2 i K_1 + 1``, ``v_i = 2 i K_2 + 1``. Because every weight is odd,
  any change of a single word (a flipped bit above all) changes both sums; words swapped
  between positions change them too. On accelerators the sums are computed on the
  devices (a save moves two words per array to the host); arrays already in host
  memory (the CPU backend) are summed with NumPy, which gives the same words;
* the SHA-256 of the run config saved beside the state, and the data iterator's state.

On restore the same sums are recomputed from the restored arrays and compared, and
every floating-point leaf is checked to be finite.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = 1
_K1 = 0x9E3779B1  # odd 32-bit constants (golden-ratio and murmur multipliers)
_K2 = 0x85EBCA6B


class IntegrityError(ValueError):
    """A restored checkpoint does not match its integrity record."""


def leaf_name(path: Any) -> str:
    """A pytree path as orbax names the array (``'opt_state.1.0.mu.conv_in.bias'``)."""
    return jax.tree_util.keystr(path, simple=True, separator=".")


def _words(x: jax.Array) -> jax.Array:
    """The bytes of ``x`` as a flat uint32 vector (narrow types widened per element)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.reshape(-1).astype(jnp.uint32)
    itemsize = jnp.dtype(x.dtype).itemsize
    if itemsize == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    if itemsize == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    unsigned = {1: jnp.uint8, 2: jnp.uint16}[itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).reshape(-1).astype(jnp.uint32)


def _checksums(x: jax.Array) -> jax.Array:
    words = _words(x)
    index = jnp.arange(words.shape[0], dtype=jnp.uint32)
    w1 = index * jnp.uint32(2 * _K1 % 2**32) + jnp.uint32(1)
    w2 = index * jnp.uint32(2 * _K2 % 2**32) + jnp.uint32(1)
    return jnp.stack([jnp.sum(words * w1, dtype=jnp.uint32), jnp.sum(words * w2, dtype=jnp.uint32)])


def _host_words(x: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`_words` (the same words for the same bytes)."""
    if x.dtype == np.bool_:
        return x.reshape(-1).astype(np.uint32)
    if x.dtype.itemsize in (4, 8):
        return np.ascontiguousarray(x).view(np.uint32).reshape(-1)
    unsigned = {1: np.uint8, 2: np.uint16}[x.dtype.itemsize]
    return np.ascontiguousarray(x).view(unsigned).reshape(-1).astype(np.uint32)


def _host_checksums(x: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`_checksums` (uint32 arithmetic wraps the same way)."""
    words = _host_words(x)
    index = np.arange(words.shape[0], dtype=np.uint32)
    w1 = index * np.uint32(2 * _K1 % 2**32) + np.uint32(1)
    w2 = index * np.uint32(2 * _K2 % 2**32) + np.uint32(1)
    return np.array(
        [np.sum(words * w1, dtype=np.uint32), np.sum(words * w2, dtype=np.uint32)], np.uint32
    )


def _host_view(x: Any) -> np.ndarray | None:
    """``x`` as NumPy without a device transfer, if it lives whole in host memory."""
    if isinstance(x, np.ndarray):
        return x
    if not isinstance(x, jax.Array) or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return None
    if any(d.platform != "cpu" for d in x.sharding.device_set):
        return None
    if x.is_fully_addressable and len(x.sharding.device_set) == 1:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    return None


def _all_finite(x: jax.Array) -> jax.Array:
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.all(jnp.isfinite(x))
    return jnp.bool_(True)


@jax.jit
def _tree_summary(tree: Any) -> tuple[jax.Array, jax.Array]:
    """``(checksums (n, 2) uint32, finite (n,) bool)`` for the n leaves, in one transfer."""
    leaves = jax.tree.leaves(tree)
    return (
        jnp.stack([_checksums(x) for x in leaves]),
        jnp.stack([_all_finite(x) for x in leaves]),
    )


def _to_host(x: jax.Array) -> np.ndarray:
    """A replicated result as NumPy (works for arrays spanning several processes)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(jax.device_get(x))


def summarize(tree: Any) -> tuple[dict[str, list[int]], list[str]]:
    """Checksums of every array leaf and the names of the non-finite ones.

    Returns:
      ``({name: [checksum_1, checksum_2]}, [names of leaves holding NaN/Inf])``.
    """
    paths = [leaf_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
    if not paths:
        return {}, []
    host = [_host_view(x) for x in jax.tree.leaves(tree)]
    if all(h is not None for h in host):  # CPU: NumPy, no compile, no copy
        sums = np.stack([_host_checksums(h) for h in host])
        finite = np.array(
            [not np.issubdtype(h.dtype, np.inexact) or bool(np.isfinite(h).all()) for h in host]
        )
    else:  # accelerators: on the devices, two words per array to the host
        sums, finite = (_to_host(a) for a in _tree_summary(tree))
    checksums = {name: [int(a), int(b)] for name, (a, b) in zip(paths, sums, strict=True)}
    bad = [name for name, ok in zip(paths, finite.tolist(), strict=True) if not ok]
    return checksums, bad


def config_digest(config_dict: dict[str, Any]) -> str:
    """SHA-256 of a config dict in canonical JSON."""
    text = json.dumps(config_dict, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def make_record(
    state: Any, config_dict: dict[str, Any], data_iterator_state: dict[str, Any] | None
) -> dict[str, Any]:
    """The integrity record of a checkpoint about to be saved."""
    checksums, _ = summarize(state)
    leaves = jax.tree_util.tree_leaves_with_path(state)
    arrays = {
        leaf_name(p): {
            "shape": list(x.shape),
            "dtype": str(x.dtype),
            "checksums": checksums[leaf_name(p)],
        }
        for p, x in leaves
    }
    return {
        "format": FORMAT,
        "arrays": arrays,
        "config_sha256": config_digest(config_dict),
        "data_iterator": data_iterator_state,
    }


def verify(
    record: dict[str, Any],
    state: Any,
    config_dict: dict[str, Any] | None = None,
    data_iterator_state: dict[str, Any] | None = None,
) -> None:
    """Checks a restored state (and config, iterator state) against its record.

    Raises:
      IntegrityError: naming the first arrays whose checksums, shapes or dtypes differ,
        the non-finite ones, or a config / iterator state that differs from the record.
    """
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise IntegrityError(f"integrity record of unknown format: {str(record)[:200]}")
    checksums, non_finite = summarize(state)
    expected = record.get("arrays", {})
    problems = []
    missing = sorted(set(expected) - set(checksums))
    extra = sorted(set(checksums) - set(expected))
    if missing or extra:
        problems.append(f"arrays missing {missing[:3]} / unrecorded {extra[:3]}")
    leaves = {leaf_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(state)}
    changed = []
    for name in sorted(set(expected) & set(checksums)):
        entry, x = expected[name], leaves[name]
        if (
            entry.get("checksums") != checksums[name]
            or list(entry.get("shape", [])) != list(x.shape)
            or entry.get("dtype") != str(x.dtype)
        ):
            changed.append(name)
    if changed:
        problems.append(
            f"{len(changed)} array(s) differ from their checksums: {', '.join(changed[:3])}"
            + (" ..." if len(changed) > 3 else "")
        )
    if non_finite:
        problems.append(f"non-finite values in {', '.join(non_finite[:3])}")
    if config_dict is not None and record.get("config_sha256") != config_digest(config_dict):
        problems.append("the saved config differs from its checksum")
    recorded_iterator = record.get("data_iterator")
    if None not in (data_iterator_state, recorded_iterator) and (
        recorded_iterator != data_iterator_state
    ):
        problems.append(
            f"data iterator state {data_iterator_state} differs from the recorded "
            f"{recorded_iterator}"
        )
    if problems:
        raise IntegrityError("; ".join(problems))


def check_finite(state: Any) -> None:
    """Raises IntegrityError naming the leaves of ``state`` that hold NaN or Inf."""
    _, non_finite = summarize(state)
    if non_finite:
        raise IntegrityError(
            f"non-finite values in {len(non_finite)} array(s): {', '.join(non_finite[:3])}"
        )
