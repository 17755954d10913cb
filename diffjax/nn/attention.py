"""Scaled dot-product attention with the queries in chunks (bounded score memory).

``softmax(q k^T / sqrt(d)) v`` is independent per query row, so splitting the queries
into chunks of ``n`` rows and running :func:`jax.nn.dot_product_attention` on each (one
``lax.map``) gives the same result while the ``(B, H, L, S)`` score buffer shrinks to
``(B, H, n, S)``. At 512x512 Stable Diffusion's first UNet level has ``L = S = 4096``
tokens and 8 heads: float32 scores of 537 MB per image (1.07 GB under guidance's doubled
batch); 1024-query chunks hold a quarter of that (experiments/sd_memory.py measures the
pipeline's peak). This is the query chunking of Rabe & Staats (2021) without their key
chunking (the keys of one chunk fit), so no online softmax is needed.

References:
  Rabe & Staats, "Self-attention Does Not Need O(n^2) Memory", 2021 (arXiv 2112.05682).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["chunked_dot_product_attention"]


def chunked_dot_product_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, query_chunk_size: int | None = None
) -> jax.Array:
    """:func:`jax.nn.dot_product_attention` over query chunks of ``query_chunk_size`` rows.

    Args:
      query: ``(B, L, H, D)``.
      key: ``(B, S, H, D)``.
      value: ``(B, S, H, D)``.
      query_chunk_size: Rows per chunk; ``None`` (or ``>= L``) is one call. The last
        chunk is padded with zero queries, whose rows are dropped.

    Returns:
      ``(B, L, H, D)``, as ``jax.nn.dot_product_attention(query, key, value)``.

    Raises:
      ValueError: ``query_chunk_size < 1``.
    """
    length = query.shape[1]
    if query_chunk_size is None or length <= query_chunk_size:
        return jax.nn.dot_product_attention(query, key, value)
    if query_chunk_size < 1:
        raise ValueError(f"query_chunk_size must be >= 1 or None, got {query_chunk_size}")
    b, _, h, d = query.shape
    n = -(-length // query_chunk_size)
    padded = jnp.pad(query, ((0, 0), (0, n * query_chunk_size - length), (0, 0), (0, 0)))
    chunks = padded.reshape(b, n, query_chunk_size, h, d).swapaxes(0, 1)
    out = jax.lax.map(lambda q: jax.nn.dot_product_attention(q, key, value), chunks)
    return out.swapaxes(0, 1).reshape(b, n * query_chunk_size, h, d)[:, :length]
