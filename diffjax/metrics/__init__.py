"""Sample-quality metric formulas: FID, KID, PRDC, memorization, PSNR, the Pareto frontier.

They take features (arrays); the networks that compute features (the FID InceptionV3,
the digits classifier, CLIP) are in :mod:`diffjax.networks`, and feature caching,
sweeps and reports in :mod:`diffjax.app`.
"""

from diffjax.metrics.fid import (
    FeatureStatistics,
    compute_statistics,
    fid_from_features,
    fid_to_reference,
    frechet_distance,
    init_statistics,
    load_statistics,
    save_statistics,
)
from diffjax.metrics.kid import KIDResult, kernel_inception_distance, polynomial_mmd2_unbiased
from diffjax.metrics.memorization import (
    GU_THRESHOLD,
    MemorizationReport,
    NearestNeighbors,
    NNDistanceDistribution,
    carlini_ratio,
    gu_ratio,
    memorization_report,
    nearest_neighbors,
    nn_distance_distribution,
    save_nearest_neighbor_gallery,
)
from diffjax.metrics.pareto import (
    best_per_nfe,
    mark_pareto,
    pareto_front,
)
from diffjax.metrics.prdc import (
    DensityCoverage,
    PrecisionRecall,
    density_coverage,
    knn_radii,
    precision_recall,
)
from diffjax.metrics.reconstruction import psnr

__all__ = [
    "GU_THRESHOLD",
    "DensityCoverage",
    "FeatureStatistics",
    "KIDResult",
    "MemorizationReport",
    "NNDistanceDistribution",
    "NearestNeighbors",
    "PrecisionRecall",
    "best_per_nfe",
    "carlini_ratio",
    "compute_statistics",
    "density_coverage",
    "fid_from_features",
    "fid_to_reference",
    "frechet_distance",
    "gu_ratio",
    "init_statistics",
    "kernel_inception_distance",
    "knn_radii",
    "load_statistics",
    "mark_pareto",
    "memorization_report",
    "nearest_neighbors",
    "nn_distance_distribution",
    "pareto_front",
    "polynomial_mmd2_unbiased",
    "precision_recall",
    "psnr",
    "save_nearest_neighbor_gallery",
    "save_statistics",
]
