"""Exact (brute-force) nearest-neighbour search and ball counts, chunked, in JAX.

Shared by :mod:`diffjax.metrics.prdc` and :mod:`diffjax.metrics.memorization`.

Squared distances are computed as ``|q|^2 + |r|^2 - 2 q.r`` in float32 with
``Precision.HIGHEST`` matrix products, after subtracting a common centre (by default the
reference set's float64 mean) from both sets: distances do not change, and the
cancellation error, proportional to the squared norms, shrinks. Queries are processed in
fixed-size chunks (the last one padded, so one compilation per shape) and the reference
set in fixed-size blocks inside a ``lax.scan``, so memory is bounded by
``query_chunk * ref_chunk`` floats whatever the set sizes.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_int

__all__ = ["ball_counts", "flatten_rows", "knn_sq_distances"]

_HIGHEST = jax.lax.Precision.HIGHEST


def flatten_rows(x: Any, name: str) -> np.ndarray:
    """Returns ``x`` as a float64 ``(N, D)`` array (images are flattened per row)."""
    arr = np.asarray(x)
    if arr.ndim < 2:
        raise ValueError(
            f"{name} must be a batch of vectors (N, D) or images (N, H, W, C), got shape "
            f"{arr.shape}."
        )
    if arr.shape[0] < 1:
        raise ValueError(f"{name} is empty (shape {arr.shape}).")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}.")
    arr = arr.reshape(arr.shape[0], -1).astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf).")
    return arr


def _check_chunk(value: int, name: str) -> int:
    return check_int(name, value, minimum=1)


def _blocks(x: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """Pads ``x`` with zero rows to a multiple of ``size``; returns (x reshaped, n blocks)."""
    n = x.shape[0]
    nb = -(-n // size)
    pad = nb * size - n
    if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    return x.reshape(nb, size, *x.shape[1:]), nb


def _sq_dists(q: jax.Array, q_sq: jax.Array, r: jax.Array, r_sq: jax.Array) -> jax.Array:
    d2 = q_sq[:, None] + r_sq[None, :] - 2.0 * jnp.matmul(q, r.T, precision=_HIGHEST)
    return jnp.maximum(d2, 0.0)


@functools.partial(jax.jit, static_argnames=("k",))
def _knn_block(
    q: jax.Array, ref: jax.Array, ref_sq: jax.Array, valid: jax.Array, k: int
) -> tuple[jax.Array, jax.Array]:
    """The k smallest squared distances from each row of ``q`` to the blocked reference set."""
    nq = q.shape[0]
    nb, rb = ref.shape[:2]
    q_sq = jnp.sum(q * q, axis=-1)

    def body(
        carry: tuple[jax.Array, jax.Array], xs: tuple[jax.Array, ...]
    ) -> tuple[tuple[jax.Array, jax.Array], None]:
        best_d, best_i = carry
        r, r_sq, v, c = xs
        d2 = jnp.where(v[None, :], _sq_dists(q, q_sq, r, r_sq), jnp.inf)
        idx = jnp.broadcast_to(c * rb + jnp.arange(rb, dtype=jnp.int32), (nq, rb))
        all_d = jnp.concatenate([best_d, d2], axis=1)
        all_i = jnp.concatenate([best_i, idx], axis=1)
        neg, pos = jax.lax.top_k(-all_d, k)
        return (-neg, jnp.take_along_axis(all_i, pos, axis=1)), None

    init = (jnp.full((nq, k), jnp.inf, q.dtype), jnp.full((nq, k), -1, jnp.int32))
    xs = (ref, ref_sq, valid, jnp.arange(nb, dtype=jnp.int32))
    (best_d, best_i), _ = jax.lax.scan(body, init, xs)
    return best_d, best_i


@functools.partial(jax.jit, static_argnames=("strict",))
def _ball_block(
    q: jax.Array, ref: jax.Array, ref_sq: jax.Array, radii_sq: jax.Array, strict: bool
) -> jax.Array:
    """For each row of ``q``: how many reference balls ``|q - r|^2 (<|<=) radius^2`` hold it."""
    q_sq = jnp.sum(q * q, axis=-1)

    def body(count: jax.Array, xs: tuple[jax.Array, ...]) -> tuple[jax.Array, None]:
        r, r_sq, rad = xs
        d2 = _sq_dists(q, q_sq, r, r_sq)
        inside = d2 < rad[None, :] if strict else d2 <= rad[None, :]
        return count + jnp.sum(inside, axis=1, dtype=jnp.int32), None

    count, _ = jax.lax.scan(body, jnp.zeros((q.shape[0],), jnp.int32), (ref, ref_sq, radii_sq))
    return count


def _prepare(
    queries: np.ndarray, reference: np.ndarray, center: np.ndarray | None, ref_chunk: int
) -> tuple[np.ndarray, jax.Array, jax.Array, int, int]:
    if queries.shape[1] != reference.shape[1]:
        raise ValueError(
            f"queries and reference have different dimensions: {queries.shape[1]} vs "
            f"{reference.shape[1]}."
        )
    c = reference.mean(axis=0) if center is None else np.asarray(center, np.float64)
    q = (queries - c).astype(np.float32)
    r = (reference - c).astype(np.float32)
    rb = min(ref_chunk, r.shape[0])
    r_blocks, nb = _blocks(r, rb)
    r_sq = np.sum(r_blocks.astype(np.float32) ** 2, axis=-1)
    return q, jnp.asarray(r_blocks), jnp.asarray(r_sq), rb, nb


def _map_queries(q: np.ndarray, query_chunk: int, fn: Any) -> list[Any]:
    n = q.shape[0]
    qb = min(query_chunk, n)
    q_blocks, nb = _blocks(q, qb)
    outs = []
    for i in range(nb):
        m = min(qb, n - i * qb)
        out = fn(jnp.asarray(q_blocks[i]))
        outs.append(jax.tree_util.tree_map(lambda a, m=m: np.asarray(a)[:m], out))
    return outs


def knn_sq_distances(
    queries: np.ndarray,
    reference: np.ndarray,
    k: int,
    *,
    center: np.ndarray | None = None,
    query_chunk: int = 1024,
    ref_chunk: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (squared l2) of each query row in ``reference``.

    Args:
      queries: ``(N, D)`` float64 rows (see :func:`flatten_rows`).
      reference: ``(M, D)`` float64 rows, ``M >= k``.
      k: Number of neighbours.
      center: Vector subtracted from both sets before the float32 computation (default:
        the reference mean).
      query_chunk: Queries per compiled call.
      ref_chunk: Reference rows per scan step.

    Returns:
      ``(sq_dists, indices)``: float32 ``(N, k)`` in ascending order and int64 ``(N, k)``
      indices into ``reference`` (ties broken by the lower index).
    """
    k = _check_chunk(k, "k")
    query_chunk = _check_chunk(query_chunk, "query_chunk")
    ref_chunk = _check_chunk(ref_chunk, "ref_chunk")
    if k > reference.shape[0]:
        raise ValueError(f"k={k} exceeds the number of reference rows ({reference.shape[0]}).")
    q, r, r_sq, rb, nb = _prepare(queries, reference, center, ref_chunk)
    n_ref = reference.shape[0]
    valid = jnp.asarray((np.arange(nb * rb) < n_ref).reshape(nb, rb))
    outs = _map_queries(q, query_chunk, lambda qi: _knn_block(qi, r, r_sq, valid, k))
    d2 = np.concatenate([o[0] for o in outs])
    idx = np.concatenate([o[1] for o in outs]).astype(np.int64)
    return d2, idx


def ball_counts(
    queries: np.ndarray,
    centers: np.ndarray,
    radii_sq: np.ndarray,
    *,
    strict: bool,
    center: np.ndarray | None = None,
    query_chunk: int = 1024,
    ref_chunk: int = 8192,
) -> np.ndarray:
    """For each query row, the number of balls ``B(centers[j], sqrt(radii_sq[j]))`` holding it.

    Args:
      queries: ``(N, D)`` float64 rows.
      centers: ``(M, D)`` float64 ball centres.
      radii_sq: ``(M,)`` squared radii (float32 values from :func:`knn_sq_distances`).
      strict: Count ``d^2 < r^2`` (True) or ``d^2 <= r^2`` (False).
      center: Vector subtracted from both sets (default: the mean of ``centers``). Use the
        same one that produced ``radii_sq`` so that both go through identical arithmetic.
      query_chunk: Queries per compiled call.
      ref_chunk: Ball centres per scan step.

    Returns:
      ``(N,)`` int64 counts.
    """
    query_chunk = _check_chunk(query_chunk, "query_chunk")
    ref_chunk = _check_chunk(ref_chunk, "ref_chunk")
    radii_sq = np.asarray(radii_sq, np.float32)
    if radii_sq.shape != (centers.shape[0],):
        raise ValueError(f"radii_sq must have shape ({centers.shape[0]},), got {radii_sq.shape}.")
    q, r, r_sq, rb, nb = _prepare(queries, centers, center, ref_chunk)
    pad = nb * rb - centers.shape[0]
    rad = np.concatenate([radii_sq, np.full((pad,), -np.inf, np.float32)]).reshape(nb, rb)
    rad = jnp.asarray(rad)
    outs = _map_queries(q, query_chunk, lambda qi: _ball_block(qi, r, r_sq, rad, strict))
    return np.concatenate(outs).astype(np.int64)
