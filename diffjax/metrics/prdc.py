"""Precision / recall (k-NN manifolds) and density / coverage of generated samples.

Both pairs estimate the support of a distribution by the union of balls around its
samples, each ball reaching the sample's k-th nearest neighbour within the same set:

- Precision (Kynkäänniemi et al. 2019, k=3): the fraction of generated samples that fall
  inside the real manifold (fidelity). Recall: the fraction of real samples inside the
  generated manifold (diversity). A point is inside when ``d <= radius`` of some ball.
- Density (Naeem et al. 2020, k=5): how many real balls contain each generated sample, on
  average, divided by k (about 1 when the distributions match, unbounded above); more
  robust to real outliers than precision. Coverage: the fraction of real samples whose
  ball contains at least one generated sample; more robust to generated outliers than
  recall. Inside means ``d < radius``, as in the reference implementation.

All distances are exact (brute force, no approximate index), computed in JAX in chunks so
that memory stays bounded (see :mod:`diffjax.metrics._neighbors`). The features can be any
embedding (Inception pool3, a classifier's penultimate layer, or raw pixels for toy
data); the metrics are only as meaningful as the embedding.

References:
  Kynkäänniemi, Karras, Laine, Lehtinen & Aila, "Improved Precision and Recall Metric for
  Assessing Generative Models", NeurIPS 2019 (https://arxiv.org/abs/1904.06991).
  Naeem, Oh, Uh, Choi & Yoo, "Reliable Fidelity and Diversity Metrics for Generative
  Models", ICML 2020 (https://arxiv.org/abs/2002.09797).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from diffjax._checks import check_int
from diffjax.metrics._neighbors import ball_counts, flatten_rows, knn_sq_distances

__all__ = [
    "DensityCoverage",
    "PrecisionRecall",
    "density_coverage",
    "knn_radii",
    "precision_recall",
]


class PrecisionRecall(NamedTuple):
    """Improved precision and recall.

    Attributes:
      precision: Fraction of generated samples inside the real k-NN manifold.
      recall: Fraction of real samples inside the generated k-NN manifold.
    """

    precision: float
    recall: float


class DensityCoverage(NamedTuple):
    """Density and coverage.

    Attributes:
      density: Mean number of real k-NN balls holding a generated sample, divided by k.
      coverage: Fraction of real k-NN balls holding at least one generated sample.
    """

    density: float
    coverage: float


def _check_k(k: int, n: int, name: str) -> int:
    check_int("k", k, minimum=1)
    if n < k + 1:
        raise ValueError(
            f"{name} has {n} samples; the k-NN radius with k={k} needs at least {k + 1}."
        )
    return int(k)


def _pair(real: Any, fake: Any) -> tuple[np.ndarray, np.ndarray]:
    r = flatten_rows(real, "real")
    f = flatten_rows(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise ValueError(
            f"real and fake features have different dimensions: {r.shape[1]} vs {f.shape[1]}."
        )
    return r, f


def _radii_sq(x: np.ndarray, k: int, center: np.ndarray, **chunks: int) -> np.ndarray:
    # The (k+1)-th smallest distance counts the point itself (distance 0): it is the
    # distance to the k-th other point, duplicates included.
    d2, _ = knn_sq_distances(x, x, k + 1, center=center, **chunks)
    return d2[:, k]


def knn_radii(
    features: Any, k: int, *, query_chunk: int = 1024, ref_chunk: int = 8192
) -> np.ndarray:
    """Distance from each row to its k-th nearest other row of the same set.

    Args:
      features: ``(N, D)`` features (or ``(N, ...)`` arrays, flattened), ``N > k``.
      k: Neighbour rank.
      query_chunk: Queries per compiled call (bounds memory with ``ref_chunk``).
      ref_chunk: Reference rows per scan step.

    Returns:
      ``(N,)`` float64 radii.
    """
    x = flatten_rows(features, "features")
    k = _check_k(k, x.shape[0], "features")
    d2 = _radii_sq(x, k, x.mean(axis=0), query_chunk=query_chunk, ref_chunk=ref_chunk)
    return np.sqrt(d2.astype(np.float64))


def precision_recall(
    real: Any,
    fake: Any,
    *,
    k: int = 3,
    query_chunk: int = 1024,
    ref_chunk: int = 8192,
) -> PrecisionRecall:
    """Improved precision and recall of ``fake`` against ``real`` (Kynkäänniemi et al.).

    Args:
      real: ``(N, D)`` real features (images are flattened), ``N > k``.
      fake: ``(M, D)`` generated features, ``M > k``.
      k: Neighbour rank of the manifold radii (3 in the paper).
      query_chunk: Queries per compiled call.
      ref_chunk: Reference rows per scan step.

    Returns:
      :class:`PrecisionRecall`.
    """
    r, f = _pair(real, fake)
    k = _check_k(k, r.shape[0], "real")
    _check_k(k, f.shape[0], "fake")
    chunks = {"query_chunk": query_chunk, "ref_chunk": ref_chunk}
    center = r.mean(axis=0)
    real_r2 = _radii_sq(r, k, center, **chunks)
    fake_r2 = _radii_sq(f, k, center, **chunks)
    in_real = ball_counts(f, r, real_r2, strict=False, center=center, **chunks) > 0
    in_fake = ball_counts(r, f, fake_r2, strict=False, center=center, **chunks) > 0
    return PrecisionRecall(float(np.mean(in_real)), float(np.mean(in_fake)))


def density_coverage(
    real: Any,
    fake: Any,
    *,
    k: int = 5,
    query_chunk: int = 1024,
    ref_chunk: int = 8192,
) -> DensityCoverage:
    """Density and coverage of ``fake`` against ``real`` (Naeem et al.).

    Args:
      real: ``(N, D)`` real features (images are flattened), ``N > k``.
      fake: ``(M, D)`` generated features.
      k: Neighbour rank of the real balls' radii (5 in the paper).
      query_chunk: Queries per compiled call.
      ref_chunk: Reference rows per scan step.

    Returns:
      :class:`DensityCoverage`.
    """
    r, f = _pair(real, fake)
    k = _check_k(k, r.shape[0], "real")
    chunks = {"query_chunk": query_chunk, "ref_chunk": ref_chunk}
    center = r.mean(axis=0)
    real_r2 = _radii_sq(r, k, center, **chunks)
    counts = ball_counts(f, r, real_r2, strict=True, center=center, **chunks)
    density = float(np.sum(counts)) / (k * f.shape[0])
    nn_d2, _ = knn_sq_distances(r, f, 1, center=center, **chunks)
    coverage = float(np.mean(nn_d2[:, 0] < real_r2))
    return DensityCoverage(density, coverage)
