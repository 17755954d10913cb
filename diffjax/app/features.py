"""Feature extractors for FID / KID / precision-recall, image checks and cached references.

A :class:`FeatureExtractor` maps a batch of images on the data scale ``[-1, 1]`` to
feature vectors. Two kinds exist:

- ``"<dataset>-classifier"`` (:func:`classifier_extractor`): the penultimate layer of the
  small CNN of :mod:`diffjax.networks.classifier` trained on the dataset. It works offline,
  with no Inception weights, and is the default for the bundled datasets. Its numbers
  are comparable only with numbers from the same classifier (the same weights file).
- ``"inception-pool3"`` (:func:`inception_extractor`): the 2048-d pool3 features of the
  FID InceptionV3, from converted weights the user supplies.

Every number computed on features carries the sample count ``N`` and the feature name
(:func:`metric_label`, e.g. ``"FID@500 (digits-classifier features)"``): FID is biased
upward at small ``N`` and is not comparable across feature extractors.

The statistics of the reference (training) set are computed once and cached
(:func:`load_or_compute_reference`) as a pytorch-fid style ``.npz``: ``mu`` and ``sigma``,
plus ``num_images``, ``feature``, a ``fingerprint`` of the extractor's weights (a cache
computed with other weights is recomputed) and ``features``, a fixed subset of the
reference features for KID and precision/recall.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from diffjax._checks import is_int
from diffjax.files import write_npz_atomic
from diffjax.metrics.fid import compute_statistics, load_statistics
from diffjax.networks.classifier import ClassifierParams, classifier_features
from diffjax.networks.inception import FEATURE_DIM, inception_features, load_inception_weights

__all__ = [
    "FeatureExtractor",
    "ReferenceSet",
    "check_enough_samples",
    "check_images",
    "classifier_extractor",
    "inception_extractor",
    "load_or_compute_reference",
    "metric_label",
    "tree_fingerprint",
]

INCEPTION_FEATURE_NAME = "inception-pool3"
DEFAULT_MAX_REFERENCE_FEATURES = 10_000
_RANGE_TOLERANCE = 1e-2


class FeatureExtractor(NamedTuple):
    """A named image embedding.

    Attributes:
      name: What the features are, e.g. ``"digits-classifier"``; it goes into every
        reported number's label and the reference cache's file name.
      dim: Feature dimension ``d``.
      fn: ``fn(images) -> (N, d)`` float32 numpy features of ``(N, H, W, C)`` images on
        ``[-1, 1]`` (batched and jitted once per batch shape inside).
      fingerprint: A digest of the weights; a cached reference made with other weights is
        recomputed.
    """

    name: str
    dim: int
    fn: Callable[[np.ndarray], np.ndarray]
    fingerprint: str


def tree_fingerprint(tree: Any) -> str:
    """A short hex digest of a pytree's leaves (paths, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arr = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}{arr.shape}{arr.dtype}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()[:16]


def classifier_extractor(
    clf: ClassifierParams, name: str, *, batch_size: int = 1024
) -> FeatureExtractor:
    """The penultimate-layer features of a trained classifier as a :class:`FeatureExtractor`.

    Args:
      clf: The trained classifier.
      name: Feature name, conventionally ``"<dataset>-classifier"``.
      batch_size: Images per compiled call.

    Returns:
      The extractor (``dim = clf.hidden``).
    """

    def fn(images: np.ndarray) -> np.ndarray:
        return classifier_features(clf, images, batch_size=batch_size)

    return FeatureExtractor(name, int(clf.hidden), fn, tree_fingerprint(clf.params))


def inception_extractor(
    weights: str | os.PathLike[str] | None = None, *, batch_size: int = 50
) -> FeatureExtractor:
    """The FID InceptionV3 pool3 features (2048-d) as a :class:`FeatureExtractor`.

    Images are resized to 299x299 (bilinear, no antialias) and grey images repeated to
    RGB, as pytorch-fid does (:func:`diffjax.networks.inception.preprocess_images`).

    Args:
      weights: Converted weights ``.npz``; default ``$DIFFJAX_INCEPTION_WEIGHTS``.
      batch_size: Images per compiled call.

    Returns:
      The extractor.

    Raises:
      FileNotFoundError: If no weights path is given or set, or the file is missing
        (nothing is downloaded).
    """
    variables = load_inception_weights(weights)

    def fn(images: np.ndarray) -> np.ndarray:
        return inception_features(variables, images, batch_size=batch_size)

    return FeatureExtractor(
        INCEPTION_FEATURE_NAME, FEATURE_DIM, fn, tree_fingerprint(variables)
    )


def metric_label(metric: str, n: int, feature_name: str) -> str:
    """``"FID@500 (digits-classifier features)"``: a metric name with its N and features."""
    return f"{metric}@{int(n)} ({feature_name} features)"


def check_images(images: Any, image_shape: Sequence[int], name: str = "images") -> np.ndarray:
    """Checks that ``images`` are NHWC float images on ``[-1, 1]``; returns them as float32.

    Args:
      images: ``(N, H, W, C)`` array.
      image_shape: The expected ``(H, W, C)``.
      name: The argument's name, for messages.

    Returns:
      ``images`` as a float32 numpy array.

    Raises:
      ValueError: On another layout (NCHW gets a transpose hint), integer pixels, values
        outside ``[-1, 1]`` or a set with no negative value (``[0, 1]`` data; diffjax
        data and samples live on ``[-1, 1]``), or non-finite values.
    """
    image_shape = tuple(int(d) for d in image_shape)
    arr = np.asarray(images)
    if arr.ndim != 4:
        raise ValueError(
            f"{name} must be a batch of NHWC images (N, *{image_shape}), got shape {arr.shape}."
        )
    if arr.shape[1:] != image_shape:
        h, w, c = image_shape
        hint = (
            "; it looks like NCHW: transpose with x.transpose(0, 2, 3, 1)"
            if arr.shape[1:] == (c, h, w)
            else ""
        )
        raise ValueError(
            f"{name} must have shape (N, *{image_shape}) (NHWC), got {arr.shape}{hint}."
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty.")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"{name} has dtype {arr.dtype}; expected float images on [-1, 1] "
            "(map uint8 pixels with x / 127.5 - 1)."
        )
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.all(np.isfinite(arr.reshape(arr.shape[0], -1)), axis=1)))
        raise ValueError(f"{name}: {bad} of {arr.shape[0]} images hold NaN or inf values.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1.0 - _RANGE_TOLERANCE or hi > 1.0 + _RANGE_TOLERANCE:
        raise ValueError(
            f"{name} must lie on [-1, 1] (the data scale of diffjax), got values in "
            f"[{lo:.4g}, {hi:.4g}]. Map [0, 255] pixels with x / 127.5 - 1 and [0, 1] "
            "images with 2 x - 1; clip generated samples to [-1, 1]."
        )
    if lo >= 0.0:
        raise ValueError(
            f"{name} has no negative value (range [{lo:.4g}, {hi:.4g}]): it looks like "
            "[0, 1] data, but diffjax data and samples live on [-1, 1]; map it with 2 x - 1."
        )
    return arr


def check_enough_samples(n: int, dim: int | None, feature_name: str, *, k: int = 5) -> None:
    """Refuses sample counts too small for a covariance or the k-NN metrics.

    Args:
      n: Number of generated samples.
      dim: Feature dimension; None when it is not known yet (checks before the feature
        extractor is loaded: the count needed does not depend on it).
      feature_name: Feature name, for the message.
      k: Largest neighbour rank used (density/coverage use 5).

    Raises:
      ValueError: If ``n < max(2, k + 1)``; the message names N and the feature dimension.
    """
    need = max(2, int(k) + 1)
    if not is_int(n) or n < need:
        features = f"{feature_name} features" if dim is None else f"{dim}-d {feature_name} features"
        d = "d, the feature dimension," if dim is None else f"d = {dim}"
        raise ValueError(
            f"num_samples={n!r} is too few: the covariance of {features} "
            f"needs N >= 2 samples (N > {d} for a full-rank estimate; FID is biased "
            f"upward at small N) and the k-NN metrics need N > k = {k}; use at least {need}, "
            "preferably hundreds or more."
        )


class ReferenceSet(NamedTuple):
    """Feature statistics of the reference (real) images.

    Attributes:
      mu: ``(d,)`` float64 mean of all reference features.
      sigma: ``(d, d)`` float64 covariance (``ddof=1``).
      num_images: Number of reference images the statistics come from.
      features: ``(M, d)`` float32 features of a fixed subset (``M <= num_images``), for
        KID and precision/recall/density/coverage.
      feature_name: The extractor's name.
    """

    mu: np.ndarray
    sigma: np.ndarray
    num_images: int
    features: np.ndarray
    feature_name: str


def _read_cached(path: str, extractor: FeatureExtractor) -> ReferenceSet | None:
    """The cached reference at ``path`` if it was made by this extractor, else None."""
    if not os.path.isfile(path):
        return None
    mu, sigma = load_statistics(path, dim=extractor.dim)
    with np.load(path, allow_pickle=False) as data:
        meta = {k: data[k] for k in ("num_images", "feature", "fingerprint", "features")
                if k in data.files}
    if len(meta) < 4 or str(meta["fingerprint"]) != extractor.fingerprint:
        return None
    if str(meta["feature"]) != extractor.name:
        raise ValueError(
            f"{path} holds statistics of {str(meta['feature'])!r} features, not "
            f"{extractor.name!r}; delete it or use another path."
        )
    return ReferenceSet(mu, sigma, int(meta["num_images"]), meta["features"], extractor.name)


def load_or_compute_reference(
    path: str | os.PathLike[str],
    extractor: FeatureExtractor,
    load_images: Callable[[], np.ndarray],
    *,
    max_features: int = DEFAULT_MAX_REFERENCE_FEATURES,
    seed: int = 0,
) -> ReferenceSet:
    """Reads the cached reference statistics at ``path``, or computes and caches them.

    The cache is recomputed when it was made by an extractor with other weights (its
    ``fingerprint`` differs). A file for another feature dimension is refused.

    Args:
      path: The cache ``.npz`` (pytorch-fid layout plus metadata, see the module doc).
      extractor: The feature extractor.
      load_images: Returns the ``(N, H, W, C)`` reference images on ``[-1, 1]``; called only
        when the cache is missing or stale.
      max_features: Size of the stored feature subset used by KID and the k-NN metrics.
      seed: Seed of that subset.

    Returns:
      The :class:`ReferenceSet`.

    Raises:
      ValueError: If the file's feature dimension differs from ``extractor.dim``, or it
        holds another feature name.
    """
    path = os.fspath(path)
    cached = _read_cached(path, extractor)
    if cached is not None:
        return cached
    images = np.asarray(load_images())
    check_images(images, images.shape[1:], "reference images")
    feats = np.asarray(extractor.fn(images), np.float32)
    if feats.shape != (images.shape[0], extractor.dim):
        raise ValueError(
            f"feature extractor {extractor.name!r} returned shape {feats.shape}, expected "
            f"({images.shape[0]}, {extractor.dim})."
        )
    mu, sigma = compute_statistics(feats)
    m = min(int(max_features), feats.shape[0])
    subset = np.sort(np.random.default_rng(seed).choice(feats.shape[0], m, replace=False))
    write_npz_atomic(
        path,
        mu=mu,
        sigma=sigma,
        num_images=np.int64(feats.shape[0]),
        feature=np.array(extractor.name),
        fingerprint=np.array(extractor.fingerprint),
        features=feats[subset],
    )
    return ReferenceSet(mu, sigma, int(feats.shape[0]), feats[subset], extractor.name)
