"""Memorization probes: do generated samples copy training images?

A generator that memorizes emits (near) copies of training images. Each probe here starts
from an exact nearest-neighbour search of the generated samples in the training set
(:func:`nearest_neighbors`: brute force in JAX, chunked, the reported distances recomputed
in float64), in pixel space by default or in any feature space the caller passes:

- :func:`gu_ratio`: ``l2(x, NN1) / l2(x, NN2)``; Gu et al. count a sample as memorized when
  it is below 1/3 (its nearest training image is much closer than the second nearest).
- :func:`carlini_ratio`: ``l2(x, NN1) / (alpha * mean l2(x, S))`` with ``alpha = 0.5`` and
  ``S`` the 50 nearest training images (NN1 included), the calibrated distance of Carlini
  et al.; small values mean "much closer to one training image than to its neighbours".
  A flagging threshold is data-dependent and left to the caller; rank by it and look.
- :func:`nn_distance_distribution`: the NN1 distances to the training set of generated
  samples against those of held-out real images. A model that generalizes produces the
  same distribution as the held-out set; memorization shows as a mass of generated
  distances near zero (summarized by quantiles and a rank AUC).
- :func:`save_nearest_neighbor_gallery`: a PNG of the closest (sample, training image)
  pairs, for the visual check every number here needs.

Images are compared as flattened vectors; pass ``(N, H, W, C)`` arrays (values in
``[-1, 1]`` for the gallery) or ``(N, D)`` features.

References:
  Carlini et al., "Extracting Training Data from Diffusion Models", USENIX Security 2023
  (https://arxiv.org/abs/2301.13188), Sec. 5.
  Gu, Du, Pang, Li, Lin & Wang, "On Memorization in Diffusion Models", 2023
  (https://arxiv.org/abs/2310.02664).
  Yoon, Choi, Lee & Kim, "Diffusion Probabilistic Models Generalize when They Fail to
  Memorize", ICML 2023 workshop (the 1/3 ratio test).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from diffjax.files import write_figure_atomic
from diffjax.metrics._neighbors import flatten_rows, knn_sq_distances

__all__ = [
    "GU_THRESHOLD",
    "MemorizationReport",
    "NNDistanceDistribution",
    "NearestNeighbors",
    "carlini_ratio",
    "gu_ratio",
    "memorization_report",
    "nearest_neighbors",
    "nn_distance_distribution",
    "save_nearest_neighbor_gallery",
]

GU_THRESHOLD = 1.0 / 3.0
"""Gu et al.: memorized when ``l2(x, NN1) / l2(x, NN2) < 1/3``."""


class NearestNeighbors(NamedTuple):
    """The k nearest training rows of each query.

    Attributes:
      distances: ``(N, k)`` float64 l2 distances in ascending order (recomputed exactly in
        float64 for the selected neighbours).
      indices: ``(N, k)`` int64 indices into the training set.
    """

    distances: np.ndarray
    indices: np.ndarray


def nearest_neighbors(
    queries: Any,
    reference: Any,
    k: int = 1,
    *,
    query_chunk: int = 1024,
    ref_chunk: int = 8192,
) -> NearestNeighbors:
    """Exact k-nearest-neighbour search of ``queries`` in ``reference`` (l2).

    The search runs in JAX (float32 with ``Precision.HIGHEST`` products after centring,
    one compilation per chunk shape, memory bounded by ``query_chunk * ref_chunk``); the
    distances of the k selected neighbours are then recomputed in float64 on the host and
    the k re-sorted by them.

    Args:
      queries: ``(N, ...)`` samples (images are flattened).
      reference: ``(M, ...)`` training samples with the same per-row shape, ``M >= k``.
      k: Number of neighbours.
      query_chunk: Queries per compiled call.
      ref_chunk: Reference rows per scan step.

    Returns:
      :class:`NearestNeighbors`.
    """
    q = flatten_rows(queries, "queries")
    r = flatten_rows(reference, "reference")
    if np.shape(queries)[1:] != np.shape(reference)[1:]:
        raise ValueError(
            f"queries and reference rows differ in shape: {np.shape(queries)[1:]} vs "
            f"{np.shape(reference)[1:]}."
        )
    _, idx = knn_sq_distances(q, r, k, query_chunk=query_chunk, ref_chunk=ref_chunk)
    # One column at a time: memory N * D, not N * k * D.
    dist = np.stack([np.linalg.norm(q - r[idx[:, j]], axis=-1) for j in range(k)], axis=1)
    order = np.argsort(dist, axis=1, kind="stable")
    return NearestNeighbors(
        np.take_along_axis(dist, order, axis=1), np.take_along_axis(idx, order, axis=1)
    )


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # den == 0 only when num == 0 too (exact copies of duplicated rows): ratio 0.
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _neighbors_for(
    samples: Any, train: Any, k: int, neighbors: NearestNeighbors | None
) -> NearestNeighbors:
    if neighbors is None:
        if train is None:
            raise ValueError("Pass the training set or precomputed neighbors.")
        n_train = int(np.shape(train)[0])
        if n_train < k:
            raise ValueError(f"The training set has {n_train} rows; this probe needs {k}.")
        return nearest_neighbors(samples, train, k)
    if neighbors.distances.shape[1] < k:
        raise ValueError(
            f"neighbors holds {neighbors.distances.shape[1]} neighbours per sample; this "
            f"probe needs {k}."
        )
    return neighbors


def gu_ratio(
    samples: Any, train: Any = None, *, neighbors: NearestNeighbors | None = None
) -> np.ndarray:
    """``l2(x, NN1) / l2(x, NN2)`` for each sample (Gu et al.).

    Memorized when below :data:`GU_THRESHOLD` (1/3).

    Args:
      samples: ``(N, ...)`` generated samples.
      train: ``(M, ...)`` training set, ``M >= 2`` (unused when ``neighbors`` is given).
      neighbors: Precomputed :func:`nearest_neighbors` with ``k >= 2``.

    Returns:
      ``(N,)`` float64 ratios in ``[0, 1]`` (0 for an exact copy of a duplicated image).
    """
    nn = _neighbors_for(samples, train, 2, neighbors)
    return _safe_ratio(nn.distances[:, 0], nn.distances[:, 1])


def carlini_ratio(
    samples: Any,
    train: Any = None,
    *,
    num_neighbors: int = 50,
    alpha: float = 0.5,
    neighbors: NearestNeighbors | None = None,
) -> np.ndarray:
    """Carlini et al.'s calibrated distance ``l2(x, NN1) / (alpha * mean_{y in S} l2(x, y))``.

    ``S`` is the set of the ``num_neighbors`` training images nearest to ``x`` (NN1
    included). Values well below ``1 / alpha`` mean one training image is much closer than
    the rest of the neighbourhood.

    Args:
      samples: ``(N, ...)`` generated samples.
      train: ``(M, ...)`` training set (unused when ``neighbors`` is given); ``M`` must be
        at least ``num_neighbors``.
      num_neighbors: ``n``, the size of ``S`` (50 in the paper).
      alpha: The scale ``alpha`` (0.5 in the paper).
      neighbors: Precomputed :func:`nearest_neighbors` with ``k >= num_neighbors``.

    Returns:
      ``(N,)`` float64 ratios.
    """
    if num_neighbors < 1:
        raise ValueError(f"num_neighbors must be positive, got {num_neighbors=}.")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha=}.")
    nn = _neighbors_for(samples, train, num_neighbors, neighbors)
    d = nn.distances[:, :num_neighbors]
    return _safe_ratio(d[:, 0], alpha * d.mean(axis=1))


class MemorizationReport(NamedTuple):
    """Per-sample memorization scores of a generated set against its training set.

    Attributes:
      neighbors: The ``k = max(2, num_neighbors)`` nearest training rows of each sample.
      gu_ratio: ``(N,)`` ``l2(NN1) / l2(NN2)``.
      memorized: ``(N,)`` bool, ``gu_ratio < gu_threshold``.
      fraction_memorized: Mean of ``memorized``.
      carlini_ratio: ``(N,)`` calibrated distance (see :func:`carlini_ratio`).
      carlini_flagged: ``(N,)`` bool, ``carlini_ratio < carlini_threshold``, or ``None``
        when no threshold was given.
    """

    neighbors: NearestNeighbors
    gu_ratio: np.ndarray
    memorized: np.ndarray
    fraction_memorized: float
    carlini_ratio: np.ndarray
    carlini_flagged: np.ndarray | None


def memorization_report(
    samples: Any,
    train: Any,
    *,
    num_neighbors: int = 50,
    alpha: float = 0.5,
    gu_threshold: float = GU_THRESHOLD,
    carlini_threshold: float | None = None,
    query_chunk: int = 1024,
    ref_chunk: int = 8192,
) -> MemorizationReport:
    """Runs one nearest-neighbour search and both ratio tests on it.

    Args:
      samples: ``(N, ...)`` generated samples.
      train: ``(M, ...)`` training set with ``M >= 2``; ``num_neighbors`` is clamped to
        ``M``.
      num_neighbors: Neighbourhood size of the Carlini ratio.
      alpha: Scale of the Carlini ratio.
      gu_threshold: Threshold of the Gu ratio test.
      carlini_threshold: Optional threshold on the Carlini ratio.
      query_chunk: Queries per compiled call.
      ref_chunk: Reference rows per scan step.

    Returns:
      :class:`MemorizationReport`.
    """
    n_train = int(np.shape(train)[0])
    if n_train < 2:
        raise ValueError(f"The training set needs at least 2 rows, got {n_train}.")
    n = min(int(num_neighbors), n_train)
    nn = nearest_neighbors(samples, train, max(2, n), query_chunk=query_chunk, ref_chunk=ref_chunk)
    gu = gu_ratio(samples, neighbors=nn)
    carlini = carlini_ratio(samples, num_neighbors=n, alpha=alpha, neighbors=nn)
    memorized = gu < gu_threshold
    flagged = None if carlini_threshold is None else carlini < carlini_threshold
    return MemorizationReport(nn, gu, memorized, float(np.mean(memorized)), carlini, flagged)


class NNDistanceDistribution(NamedTuple):
    """Nearest-training-neighbour distances of generated and of held-out samples.

    Attributes:
      generated: ``(N,)`` float64 l2 distance of each generated sample to the training set.
      heldout: ``(M,)`` float64 l2 distance of each held-out real sample to the training set.
      summary: Scalars: ``{generated,heldout}_{mean,median,p05}``, ``median_ratio``
        (generated / held-out median), ``frac_below_heldout_p01`` (fraction of generated
        distances below the 1st percentile of held-out ones; about 0.01 without
        memorization) and ``auc`` (probability that a generated distance is smaller than
        a held-out one, ties counted half; 0.5 when the two match, near 1 for copies).
    """

    generated: np.ndarray
    heldout: np.ndarray
    summary: dict[str, float]


def nn_distance_distribution(
    generated: Any,
    heldout: Any,
    train: Any,
    *,
    query_chunk: int = 1024,
    ref_chunk: int = 8192,
) -> NNDistanceDistribution:
    """Compares NN1 distances to ``train`` of generated samples and of held-out real data.

    Args:
      generated: ``(N, ...)`` generated samples.
      heldout: ``(M, ...)`` real samples not used in training.
      train: ``(K, ...)`` the training set.
      query_chunk: Queries per compiled call.
      ref_chunk: Reference rows per scan step.

    Returns:
      :class:`NNDistanceDistribution`.
    """
    kw = {"query_chunk": query_chunk, "ref_chunk": ref_chunk}
    g = nearest_neighbors(generated, train, 1, **kw).distances[:, 0]
    h = nearest_neighbors(heldout, train, 1, **kw).distances[:, 0]
    hs = np.sort(h)
    right = np.searchsorted(hs, g, side="right")
    left = np.searchsorted(hs, g, side="left")
    auc = float(np.mean((hs.size - right) + 0.5 * (right - left)) / hs.size)
    summary = {
        "generated_mean": float(g.mean()),
        "generated_median": float(np.median(g)),
        "generated_p05": float(np.quantile(g, 0.05)),
        "heldout_mean": float(h.mean()),
        "heldout_median": float(np.median(h)),
        "heldout_p05": float(np.quantile(h, 0.05)),
        "median_ratio": float(np.median(g) / max(np.median(h), 1e-300)),
        "frac_below_heldout_p01": float(np.mean(g < np.quantile(h, 0.01))),
        "auc": auc,
    }
    return NNDistanceDistribution(g, h, summary)


def _as_display(images: Any, name: str, value_range: Sequence[float]) -> np.ndarray:
    arr = np.asarray(images, np.float64)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(
            f"{name} must be images (N, H, W) or (N, H, W, 1|3) for a gallery, got shape "
            f"{np.shape(images)}."
        )
    lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}.")
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def save_nearest_neighbor_gallery(
    path: str | os.PathLike[str],
    samples: Any,
    train: Any,
    neighbors: NearestNeighbors | None = None,
    *,
    num_pairs: int = 16,
    ncols: int = 4,
    order: Any = None,
    value_range: Sequence[float] = (-1.0, 1.0),
    title: str | None = None,
) -> np.ndarray:
    """Writes a PNG of (generated sample, nearest training image) pairs, closest first.

    Args:
      path: Destination PNG.
      samples: ``(N, H, W[, C])`` generated images, ``C`` in {1, 3}.
      train: ``(M, H, W[, C])`` training images.
      neighbors: Precomputed :func:`nearest_neighbors` of ``samples`` in ``train``
        (computed with ``k=1`` when omitted).
      num_pairs: How many pairs to show (at most ``N``).
      ncols: Pairs per row.
      order: Optional ``(N,)`` score; pairs are shown by ascending score (e.g. the Gu
        ratio). Default: the NN1 distance.
      value_range: Pixel value range mapped to black..white.
      title: Optional figure title.

    Returns:
      The indices of the samples shown, in display order.
    """
    from matplotlib.figure import Figure

    s_img = _as_display(samples, "samples", value_range)
    t_img = _as_display(train, "train", value_range)
    if neighbors is None:
        neighbors = nearest_neighbors(samples, train, 1)
    n = s_img.shape[0]
    if neighbors.indices.shape[0] != n:
        raise ValueError(
            f"neighbors is for {neighbors.indices.shape[0]} samples, but {n} were given."
        )
    if num_pairs < 1 or ncols < 1:
        raise ValueError(f"num_pairs and ncols must be positive, got {num_pairs=}, {ncols=}.")
    score = neighbors.distances[:, 0] if order is None else np.asarray(order, np.float64)
    if score.shape != (n,):
        raise ValueError(f"order must have shape ({n},), got {score.shape}.")
    shown = np.argsort(score, kind="stable")[: min(num_pairs, n)]
    ncols = min(ncols, shown.size)
    nrows = -(-shown.size // ncols)
    fig = Figure(figsize=(2.4 * ncols, 1.45 * nrows + (0.4 if title else 0.0)), dpi=100)
    gray = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0, "interpolation": "nearest"}
    for slot, i in enumerate(shown):
        row, col = divmod(slot, ncols)
        j = int(neighbors.indices[i, 0])
        for side, (img, label) in enumerate([(s_img[i], f"sample {i}"), (t_img[j], f"train {j}")]):
            ax = fig.add_subplot(nrows, 2 * ncols, row * 2 * ncols + 2 * col + side + 1)
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, **gray)
            ax.set_xticks([])
            ax.set_yticks([])
            text = f"{label}\nd={neighbors.distances[i, 0]:.3g}" if side == 0 else label
            ax.set_title(text, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    write_figure_atomic(fig, path, format="png")
    return shown
