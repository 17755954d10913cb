"""Evaluating a trained workdir: sample quality, class fidelity, speed, and Pareto sweeps.

``evaluate(workdir, sampler, num_steps, guidance_scale, num_samples)`` samples the model
and reports, against the training set:

- FID@N on the chosen features (``"classifier"``: the penultimate layer of a small CNN
  trained on the dataset, offline; ``"inception"``: FID InceptionV3 pool3 from weights
  the user supplies), always labelled with N and the feature name;
- KID (mean and standard deviation over random subsets), precision/recall (k = 3) and
  density/coverage (k = 5), on the same features;
- for class-conditional models, the fraction of samples the evaluation classifier
  assigns to the requested class;
- seconds per image: the wall-clock of sampling measured after compilation (compile
  time reported separately).

The evaluation classifier and the reference statistics are made once and cached in
``workdir/eval/`` (the classifier from a fixed seed, so ``diffjax evaluate``,
``diffjax pareto`` and ``diffjax demo`` share the same one).

``run_pareto_sweep`` / ``pareto_sweep`` evaluate samplers x NFE x guidance scales,
write CSV/JSON after every point, mark the Pareto-optimal points and plot them
(:mod:`diffjax.metrics.pareto`).
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from diffjax.app import builders
from diffjax.app.features import (
    INCEPTION_FEATURE_NAME,
    FeatureExtractor,
    ReferenceSet,
    check_enough_samples,
    check_images,
    classifier_extractor,
    inception_extractor,
    load_or_compute_reference,
    metric_label,
)
from diffjax.app.generate import generate
from diffjax.app.latent import LatentSpace, load_latent_space
from diffjax.app.reports import (
    format_pareto_table,
    plot_quality_vs_nfe,
    plot_quality_vs_seconds,
    write_rows,
)
from diffjax.app.sampler_specs import SamplerSpec, parse_sampler
from diffjax.app.train import first_images, load_trained, load_training_data
from diffjax.data import load_dataset
from diffjax.files import write_text_atomic
from diffjax.metrics.fid import compute_statistics, frechet_distance, load_statistics
from diffjax.metrics.kid import kernel_inception_distance
from diffjax.metrics.pareto import mark_pareto
from diffjax.metrics.prdc import density_coverage, precision_recall
from diffjax.networks.classifier import (
    ClassifierParams,
    class_agreement,
    load_classifier,
    save_classifier,
    train_classifier,
)
from diffjax.networks.inception import FEATURE_DIM
from diffjax.nn import UNet
from diffjax.schedules import DiscreteSchedule

__all__ = [
    "CLASSIFIER_DATASETS",
    "FEATURE_KINDS",
    "EvalContext",
    "check_nfe",
    "check_num_samples",
    "check_sweep",
    "default_guidance",
    "evaluate",
    "evaluate_sampler",
    "evaluate_samples",
    "evaluation_classifier",
    "feature_extractor",
    "format_evaluation",
    "load_evaluation_context",
    "machine_description",
    "pareto_sweep",
    "run_pareto_sweep",
]

EVAL_DIR = "eval"
CLASSIFIER_DATASETS = ("digits", "fashion_mnist")
"""Datasets with an offline classifier feature extractor (same recipe for each)."""
FEATURE_KINDS = ("classifier", "inception")
PR_K = 3
DC_K = 5


# --------------------------------------------------------------------------------------
# Sweep arguments.

def check_nfe(nfe: int) -> None:
    """Refuses an NFE budget below 1 (:func:`run_pareto_sweep`)."""
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe=}")


def check_sweep(
    samplers: Sequence[str | SamplerSpec],
    nfes: Sequence[int],
    guidance_scales: Sequence[float | None] = (None,),
) -> None:
    """Refuses an empty sweep or an NFE budget below 1 (see :func:`run_pareto_sweep`).

    Needs nothing loaded, so that a command can refuse its arguments before
    :func:`load_evaluation_context` trains or caches anything in the workdir.
    """
    if not samplers or not nfes or not guidance_scales:
        raise ValueError(f"empty sweep: {samplers=}, {nfes=}, {guidance_scales=}")
    for nfe in nfes:
        check_nfe(int(nfe))


# --------------------------------------------------------------------------------------
# Classifier, features and the reference set.


def check_num_samples(num_samples: int, features: str = "classifier") -> None:
    """Refuses an N too small for the metrics, before any feature extractor is loaded.

    The check :func:`evaluate_sampler` and :func:`run_pareto_sweep` make on the loaded
    context, run on the feature kind alone, so that a command can refuse ``num_samples``
    before :func:`load_evaluation_context` trains or caches anything in the workdir.

    Args:
      num_samples: N.
      features: ``'classifier'`` or ``'inception'`` (names the features in the message).

    Raises:
      ValueError: If ``num_samples`` is too few (see ``check_enough_samples``).
    """
    if features == "inception":
        check_enough_samples(num_samples, FEATURE_DIM, INCEPTION_FEATURE_NAME, k=DC_K)
    else:
        check_enough_samples(num_samples, None, features, k=DC_K)


def _eval_dir(workdir: str) -> str:
    return os.path.join(workdir, EVAL_DIR)


def _check_classifier_dataset(dataset: str) -> None:
    if dataset not in CLASSIFIER_DATASETS:
        raise ValueError(
            f"no classifier feature extractor exists for dataset {dataset!r}: classifier "
            f"features exist for {CLASSIFIER_DATASETS}. Use features='inception' with "
            "Inception weights (--features inception --inception-weights PATH)."
        )


def evaluation_classifier(
    workdir: str, config: ml_collections.ConfigDict, *, seed: int = 0
) -> tuple[ClassifierParams, str]:
    """Loads the workdir's evaluation classifier, training and saving it the first time.

    The classifier is :func:`diffjax.networks.classifier.train_classifier` with its
    default recipe on the run's training data, from ``jax.random.key(seed)``; it is
    saved to ``workdir/eval/<dataset>_classifier.msgpack`` (written atomically) and
    reused by every later evaluation, so their numbers share one feature space.

    Args:
      workdir: The training workdir.
      config: Its config (``config.data`` names the dataset).
      seed: Training seed, used only when the file does not exist.

    Returns:
      ``(classifier, path)``.

    Raises:
      ValueError: If the dataset has no classifier recipe (see ``CLASSIFIER_DATASETS``).
    """
    dataset = str(config.data.name)
    _check_classifier_dataset(dataset)
    path = os.path.join(_eval_dir(workdir), f"{dataset}_classifier.msgpack")
    if os.path.isfile(path):
        return load_classifier(path), path
    kwargs = {"path": config.data.path} if config.data.path else {}
    data = load_dataset(dataset, split=str(config.data.split), **kwargs)
    clf = train_classifier(data, key=jax.random.key(seed))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_classifier(path, clf)  # atomic
    return clf, path


def feature_extractor(
    kind: str,
    dataset: str,
    *,
    classifier: ClassifierParams | None = None,
    inception_weights: str | None = None,
) -> FeatureExtractor:
    """The feature extractor named ``kind`` for ``dataset``.

    Args:
      kind: ``'classifier'`` (needs ``classifier``) or ``'inception'``.
      dataset: The dataset name (names the classifier features, e.g. ``digits-classifier``).
      classifier: The evaluation classifier, for ``kind='classifier'``.
      inception_weights: Converted FID Inception weights; default
        ``$DIFFJAX_INCEPTION_WEIGHTS``.

    Raises:
      ValueError: For an unknown kind or a dataset without a classifier.
      FileNotFoundError: For ``'inception'`` without a weights file.
    """
    if kind == "classifier":
        _check_classifier_dataset(dataset)
        if classifier is None:
            raise ValueError("features='classifier' needs the evaluation classifier")
        return classifier_extractor(classifier, f"{dataset}-classifier")
    if kind == "inception":
        return inception_extractor(inception_weights)
    raise ValueError(f"unknown features={kind!r}; expected one of {FEATURE_KINDS}")


class EvalContext(NamedTuple):
    """Everything an evaluation of one trained workdir needs, loaded once.

    Attributes:
      workdir: The training workdir.
      config: Its config.
      model: The UNet.
      params: Its EMA parameters.
      image_shape: ``(H, W, C)``.
      schedule: The diffusion schedule.
      extractor: The feature extractor.
      reference: Statistics and a feature subset of the training set.
      reference_description: E.g. ``"digits train split, N=1438"``.
      classifier: The evaluation classifier (None when the dataset has none).
      latent: A latent run's latent space (its samples are decoded); None for pixels.
    """

    workdir: str
    config: ml_collections.ConfigDict
    model: UNet
    params: Any
    image_shape: tuple[int, int, int]
    schedule: DiscreteSchedule
    extractor: FeatureExtractor
    reference: ReferenceSet
    reference_description: str
    classifier: ClassifierParams | None
    latent: LatentSpace | None = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """What the UNet samples: the latent shape of a latent run, else ``image_shape``."""
        return self.image_shape if self.latent is None else self.latent.latent_shape


def load_evaluation_context(
    workdir: str,
    *,
    step: int | None = None,
    features: str = "classifier",
    inception_weights: str | None = None,
    seed: int = 0,
) -> EvalContext:
    """Loads a trained workdir, its evaluation classifier, features and reference statistics.

    Args:
      workdir: The training workdir.
      step: Checkpoint step (default: the latest).
      features: ``'classifier'`` or ``'inception'``.
      inception_weights: Weights for ``'inception'`` (default ``$DIFFJAX_INCEPTION_WEIGHTS``).
      seed: Seed of the evaluation classifier's training (first use only) and of the
        reference feature subset.

    Returns:
      The :class:`EvalContext`.
    """
    if features not in FEATURE_KINDS:
        raise ValueError(f"unknown features={features!r}; expected one of {FEATURE_KINDS}")
    config, model, params, info = load_trained(workdir, step)
    dataset = str(config.data.name)
    if features == "classifier":
        _check_classifier_dataset(dataset)
    extractor = None
    if features == "inception":  # fail on missing weights before training anything
        extractor = feature_extractor("inception", dataset, inception_weights=inception_weights)
    classifier = None
    if dataset in CLASSIFIER_DATASETS:
        classifier, _ = evaluation_classifier(workdir, config, seed=seed)
    if extractor is None:
        extractor = feature_extractor("classifier", dataset, classifier=classifier)
    split = str(config.data.split)
    cache = os.path.join(_eval_dir(workdir), f"reference_{dataset}_{split}_{extractor.name}.npz")
    reference = load_or_compute_reference(
        cache, extractor, lambda: _training_images(config), seed=seed
    )
    return EvalContext(
        workdir=workdir,
        config=config,
        model=model,
        params=params,
        image_shape=tuple(int(d) for d in info["image_shape"]),
        schedule=builders.build_schedule(config.diffusion),
        extractor=extractor,
        reference=reference,
        reference_description=f"{dataset} {split} split, N={reference.num_images}",
        classifier=classifier,
        latent=load_latent_space(config, info),
    )


def _training_images(config: ml_collections.ConfigDict) -> np.ndarray:
    """All images of the run's training split, decoded, ``(N, H, W, C)`` on ``[-1, 1]``."""
    source = load_training_data(config)
    return first_images(source, source.num_examples)


def default_guidance(ctx: EvalContext) -> float | None:
    """The run's ``sampling.guidance_scale`` for a guidable model, else None (no guidance)."""
    guidable = ctx.model.num_classes is not None and float(ctx.config.diffusion.p_uncond) > 0
    return float(ctx.config.sampling.guidance_scale) if guidable else None


# --------------------------------------------------------------------------------------
# Metrics of a set of samples.


def evaluate_samples(
    samples: Any,
    labels: Any,
    *,
    image_shape: Sequence[int],
    extractor: FeatureExtractor,
    reference: ReferenceSet,
    classifier: ClassifierParams | None = None,
    reference_stats: str | None = None,
    reference_description: str = "",
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """FID@N, KID, precision/recall, density/coverage and class agreement of ``samples``.

    Args:
      samples: ``(N, H, W, C)`` images on ``[-1, 1]`` (NHWC; checked).
      labels: ``(N,)`` requested classes (None for an unconditional model).
      image_shape: The expected ``(H, W, C)``.
      extractor: The feature extractor (the reference must come from the same one).
      reference: The reference set (:func:`load_evaluation_context` makes it).
      classifier: The evaluation classifier, for class agreement (needs ``labels``).
      reference_stats: Optional pytorch-fid ``.npz`` (``mu``, ``sigma``) to compute FID
        against instead of ``reference``'s statistics (its dimension must match).
      reference_description: What the reference is, stored in the result.
      kid_subsets: Number of KID subsets.
      kid_subset_size: KID subset size (clamped to the set sizes).
      seed: Seed of the KID subsets and of the real subset of the k-NN metrics.

    Returns:
      A flat dict; ``fid_label`` etc. give each number's N and features.

    Raises:
      ValueError: On images in the wrong layout or range, too few samples for the
        covariance / k-NN metrics, or a reference of another feature dimension.
    """
    images = check_images(samples, image_shape, "samples")
    n = images.shape[0]
    check_enough_samples(n, extractor.dim, extractor.name, k=DC_K)
    if reference.feature_name != extractor.name or reference.mu.shape[0] != extractor.dim:
        raise ValueError(
            f"the reference statistics are of {reference.mu.shape[0]}-d "
            f"{reference.feature_name!r} features but the extractor gives {extractor.dim}-d "
            f"{extractor.name!r} features."
        )
    feats = np.asarray(extractor.fn(images), np.float64)
    mu, sigma = compute_statistics(feats)
    if reference_stats is not None:
        mu_ref, sigma_ref = load_statistics(reference_stats, dim=extractor.dim)
        fid_reference = os.fspath(reference_stats)
    else:
        mu_ref, sigma_ref = reference.mu, reference.sigma
        fid_reference = reference_description
    fid = frechet_distance(mu, sigma, mu_ref, sigma_ref)
    kid = kernel_inception_distance(
        feats, reference.features, num_subsets=kid_subsets, subset_size=kid_subset_size,
        seed=seed,
    )
    m = min(n, reference.features.shape[0])
    real = reference.features[np.random.default_rng(seed).choice(
        reference.features.shape[0], m, replace=False
    )]
    pr = precision_recall(real, feats, k=PR_K)
    dc = density_coverage(real, feats, k=DC_K)
    agreement = None
    if classifier is not None and labels is not None:
        agreement = class_agreement(classifier, images, np.asarray(labels))
    name = extractor.name
    return {
        "features": name,
        "feature_dim": extractor.dim,
        "num_samples": n,
        "fid": fid,
        "fid_label": metric_label("FID", n, name),
        "fid_reference": fid_reference,
        "kid_mean": kid.mean,
        "kid_std": kid.std,
        "kid_label": metric_label("KID", n, name),
        "kid_num_subsets": int(kid_subsets),
        "kid_subset_size": kid.subset_size,
        "precision": pr.precision,
        "recall": pr.recall,
        "density": dc.density,
        "coverage": dc.coverage,
        "prdc_label": f"k-NN metrics (precision/recall k={PR_K}, density/coverage k={DC_K}) "
        f"of N={n} samples vs {m} real, {name} features",
        "class_agreement": agreement,
    }


# --------------------------------------------------------------------------------------
# Sampling with timing.


class SampleTiming(NamedTuple):
    """Wall-clock of sampling.

    Attributes:
      seconds_per_image: Sampling time per image over the batches after the first
        (compiled; guidance's doubled batch included).
      compile_seconds: First batch's time minus a compiled batch's mean time (tracing and
        compilation, or loading from the persistent compilation cache).
      num_batches: Batches sampled.
      batch_size: Images per batch.
    """

    seconds_per_image: float
    compile_seconds: float
    num_batches: int
    batch_size: int


def sample_timed(
    ctx: EvalContext,
    sampler: str | SamplerSpec,
    num_steps: int,
    guidance_scale: float | None,
    num_samples: int,
    *,
    seed: int = 0,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray | None, SampleTiming]:
    """Samples ``num_samples`` images in at least two equal batches and times them.

    Batches have one shape (the last is filled up and trimmed), so there is one
    compilation; the first batch pays it, the others give the steady time per image.
    Conditional models get balanced labels ``i % num_classes``. Batch ``i`` uses
    ``fold_in(key(seed), i)``, so equal seeds give equal noise for every sampler.

    Returns:
      ``(images, labels, timing)``; images are raw sampler outputs (not clipped).
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 to time sampling, got {num_samples=}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size=}")
    num_batches = max(2, math.ceil(num_samples / batch_size))
    per_batch = math.ceil(num_samples / num_batches)
    total = num_batches * per_batch
    conditional = ctx.model.num_classes is not None
    all_labels = None
    if conditional:
        all_labels = (np.arange(total) % ctx.model.num_classes).astype(np.int32)
    base = jax.random.key(seed)
    keys = [jax.random.fold_in(base, i) for i in range(num_batches)]
    times, out = [], []
    for i, key in enumerate(keys):
        labels = None if all_labels is None else all_labels[i * per_batch : (i + 1) * per_batch]
        start = time.perf_counter()
        x = generate(
            ctx.model, ctx.params, ctx.schedule,
            prediction_type=ctx.config.diffusion.prediction_type,
            image_shape=ctx.sample_shape,
            key=key,
            labels=labels,
            num_samples=per_batch,
            sampler=sampler,
            num_steps=int(num_steps),
            guidance_scale=guidance_scale,
            p_uncond=float(ctx.config.diffusion.p_uncond),
            consistency=builders.consistency_parameterization(
                ctx.config, ctx.schedule, ctx.image_shape
            ),
            decoder=ctx.latent,
        )
        out.append(np.asarray(jax.block_until_ready(x)))
        times.append(time.perf_counter() - start)
    steady = float(np.mean(times[1:]))
    timing = SampleTiming(
        seconds_per_image=steady / per_batch,
        compile_seconds=max(times[0] - steady, 0.0),
        num_batches=num_batches,
        batch_size=per_batch,
    )
    images = np.concatenate(out)[:num_samples]
    labels = None if all_labels is None else all_labels[:num_samples]
    return images, labels, timing


def _nan_metrics(ctx: EvalContext, n: int, reason: str) -> dict[str, Any]:
    name = ctx.extractor.name
    return {
        "features": name, "feature_dim": ctx.extractor.dim, "num_samples": n,
        "fid": math.nan, "fid_label": metric_label("FID", n, name),
        "fid_reference": ctx.reference_description,
        "kid_mean": math.nan, "kid_std": math.nan, "kid_label": metric_label("KID", n, name),
        "precision": math.nan, "recall": math.nan, "density": math.nan, "coverage": math.nan,
        "class_agreement": None, "error": reason,
    }


def evaluate_sampler(
    ctx: EvalContext,
    sampler: str | SamplerSpec = "ddim",
    num_steps: int = 50,
    guidance_scale: float | None = None,
    num_samples: int = 500,
    *,
    seed: int = 0,
    batch_size: int = 256,
    reference_stats: str | None = None,
    kid_subsets: int = 100,
) -> dict[str, Any]:
    """Samples the context's model and evaluates the samples (see :func:`evaluate`).

    Samples are clipped to ``[-1, 1]`` before feature extraction, as images saved to
    disk would be. A run with non-finite samples (a diverging sampler) is reported with
    NaN metrics and an ``error`` entry instead of raising, so that a sweep goes on.
    """
    spec = parse_sampler(sampler)
    check_enough_samples(num_samples, ctx.extractor.dim, ctx.extractor.name, k=DC_K)
    images, labels, timing = sample_timed(
        ctx, spec, num_steps, guidance_scale, num_samples, seed=seed, batch_size=batch_size
    )
    finite = np.all(np.isfinite(images.reshape(num_samples, -1)), axis=1)
    nonfinite = int(num_samples - finite.sum())
    head = {
        "sampler": str(spec),
        "num_steps": int(num_steps),
        "nfe": spec.nfe(int(num_steps)),
        "guidance_scale": guidance_scale,
        "seed": int(seed),
    }
    if nonfinite:
        metrics = _nan_metrics(ctx, num_samples, f"{nonfinite} samples are NaN or inf")
    else:
        metrics = evaluate_samples(
            np.clip(images, -1.0, 1.0),
            labels,
            image_shape=ctx.image_shape,
            extractor=ctx.extractor,
            reference=ctx.reference,
            classifier=ctx.classifier,
            reference_stats=reference_stats,
            reference_description=ctx.reference_description,
            kid_subsets=kid_subsets,
            seed=seed,
        )
    return {
        **head,
        **metrics,
        "num_nonfinite": nonfinite,
        "seconds_per_image": timing.seconds_per_image,
        "compile_seconds": timing.compile_seconds,
        "timing_batches": f"{timing.num_batches} x {timing.batch_size}",
        "device": str(jax.devices()[0].device_kind),
    }


def evaluate(
    workdir: str,
    sampler: str | SamplerSpec = "ddim",
    num_steps: int = 50,
    guidance_scale: float | None = None,
    num_samples: int = 500,
    *,
    features: str = "classifier",
    inception_weights: str | None = None,
    step: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    reference_stats: str | None = None,
) -> dict[str, Any]:
    """Evaluates one sampler configuration of a trained workdir.

    Args:
      workdir: The training workdir.
      sampler: A :class:`~diffjax.app.sampler_specs.SamplerSpec` or a sampler name.
      num_steps: Its ``num_steps`` (the NFE budget for ``'dpm-fast'``).
      guidance_scale: Classifier-free guidance ``w``; None samples without guidance.
      num_samples: N, the number of samples (>= 6; hundreds or more for stable numbers).
      features: ``'classifier'`` (offline) or ``'inception'``.
      inception_weights: Converted FID Inception weights (``'inception'`` only).
      step: Checkpoint step (default: the latest).
      seed: Sampling seed.
      batch_size: Largest sampling batch.
      reference_stats: A pytorch-fid ``.npz`` to take FID against instead of the cached
        training-set statistics.

    Returns:
      A flat dict: ``fid``, ``kid_mean``, ``kid_std``, ``precision``, ``recall``,
      ``density``, ``coverage``, ``class_agreement`` (None if unconditional),
      ``seconds_per_image``, ``compile_seconds``, ``nfe``, labels with N and features.
    """
    ctx = load_evaluation_context(
        workdir, step=step, features=features, inception_weights=inception_weights
    )
    return evaluate_sampler(
        ctx, sampler, num_steps, guidance_scale, num_samples,
        seed=seed, batch_size=batch_size, reference_stats=reference_stats,
    )


def format_evaluation(result: dict[str, Any]) -> str:
    """A plain-text table of an :func:`evaluate` result."""
    def num(key: str, spec: str) -> str:
        v = result.get(key)
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    w = result.get("guidance_scale")
    kid = "-"
    if not math.isnan(result["kid_mean"]):
        kid = f"{result['kid_mean']:.4g} ± {result['kid_std']:.2g} (std over " \
              f"{result['kid_num_subsets']} subsets of {result['kid_subset_size']})"
    rows = [
        ("sampler", f"{result['sampler']}, {result['num_steps']} steps "
                    f"(NFE {result['nfe']}), guidance {'none' if w is None else f'{w:g}'}"),
        (result["fid_label"], num("fid", ".3f") + f"  (vs {result['fid_reference']})"),
        (result["kid_label"], kid),
        (f"precision / recall (k={PR_K})", f"{num('precision', '.3f')} / {num('recall', '.3f')}"),
        (f"density / coverage (k={DC_K})", f"{num('density', '.3f')} / {num('coverage', '.3f')}"),
    ]
    if result.get("class_agreement") is not None:
        rows.append(("class agreement", f"{result['class_agreement']:.1%}"))
    rows += [
        ("seconds per image", num("seconds_per_image", ".3g")
         + f"  (after compilation; {result['timing_batches']} batches, {result['device']})"),
        ("compile seconds", num("compile_seconds", ".1f")),
    ]
    if result.get("error"):
        rows.append(("error", str(result["error"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# --------------------------------------------------------------------------------------
# Pareto sweep.


def run_pareto_sweep(
    ctx: EvalContext,
    *,
    samplers: Sequence[str | SamplerSpec],
    nfes: Sequence[int],
    guidance_scales: Sequence[float | None],
    num_samples: int,
    out_dir: str,
    seed: int = 0,
    batch_size: int = 256,
    kid_subsets: int = 100,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Evaluates every (sampler, NFE, guidance) point; writes CSV/JSON after each, then plots.

    For each sampler and requested NFE the step count is the largest whose NFE does
    not exceed the request (``SamplerSpec.steps_for_nfe``, in closed form; the row keeps
    both ``nfe_target`` and the actual ``nfe``); points a sampler cannot reach are
    skipped and listed in ``pareto.json`` under ``skipped``. All points share the
    sampling seed (the same initial noise). The Pareto-optimal points on (NFE, FID) and
    (seconds per image, FID) are marked, and ``pareto_nfe.png`` / ``pareto_seconds.png`` drawn.

    Args:
      ctx: From :func:`load_evaluation_context`.
      samplers: Sampler names or specs.
      nfes: Requested network-evaluation budgets.
      guidance_scales: Guidance scales (None: unguided).
      num_samples: N per point.
      out_dir: Output folder for ``pareto.csv``, ``pareto.json`` and the PNGs.
      seed: Sampling seed.
      batch_size: Largest sampling batch.
      kid_subsets: Number of KID subsets.
      progress: Show a tqdm progress bar.
      meta: Extra fields for ``pareto.json`` (command, machine).

    Returns:
      The rows.
    """
    from tqdm.auto import tqdm

    check_sweep(samplers, nfes, guidance_scales)
    check_enough_samples(num_samples, ctx.extractor.dim, ctx.extractor.name, k=DC_K)
    specs = [parse_sampler(name) for name in samplers]  # unknown names fail before any work
    points, skipped = [], []
    for spec in specs:
        for nfe in nfes:
            found = spec.steps_for_nfe(int(nfe), ctx.schedule.num_timesteps)
            if found is None:
                skipped.append(f"{spec} at NFE {nfe}: no step count fits")
                continue
            points += [(spec, int(nfe), found[0], w) for w in guidance_scales]
    label = metric_label("FID", num_samples, ctx.extractor.name)
    info = {
        "workdir": os.path.abspath(ctx.workdir),
        "fid_label": label,
        "reference": ctx.reference_description,
        "num_samples": int(num_samples),
        "seed": int(seed),
        "machine": machine_description(),
        **(meta or {}),
        "skipped": skipped,
    }
    rows: list[dict[str, Any]] = []
    bar = tqdm(points, desc="pareto sweep", unit="point", disable=not progress)
    for spec, nfe, steps, w in bar:
        bar.set_postfix_str(f"{spec} NFE {nfe} w={w}")
        row = evaluate_sampler(
            ctx, spec, steps, w, num_samples,
            seed=seed, batch_size=batch_size, kid_subsets=kid_subsets,
        )
        row["nfe_target"] = nfe
        rows.append(row)
        mark_pareto(rows)
        write_rows(out_dir, rows, meta=info)
    bar.close()
    if rows:
        title = f"reference: {ctx.reference_description}"
        plot_quality_vs_nfe(rows, os.path.join(out_dir, "pareto_nfe.png"),
                            quality_label=label, title=title)
        plot_quality_vs_seconds(rows, os.path.join(out_dir, "pareto_seconds.png"),
                                quality_label=label, title=title)
        write_text_atomic(os.path.join(out_dir, "pareto.md"), format_pareto_table(rows, label))
    return rows


def pareto_sweep(
    workdir: str,
    *,
    samplers: Sequence[str | SamplerSpec],
    nfes: Sequence[int],
    guidance_scales: Sequence[float | None],
    num_samples: int = 500,
    out_dir: str | None = None,
    features: str = "classifier",
    inception_weights: str | None = None,
    step: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Loads ``workdir`` and runs :func:`run_pareto_sweep`.

    The output goes to ``out_dir``, by default ``workdir/eval/pareto``; the other
    arguments are those of :func:`load_evaluation_context` and :func:`run_pareto_sweep`.
    """
    ctx = load_evaluation_context(
        workdir, step=step, features=features, inception_weights=inception_weights
    )
    return run_pareto_sweep(
        ctx,
        samplers=samplers,
        nfes=nfes,
        guidance_scales=guidance_scales,
        num_samples=num_samples,
        out_dir=out_dir or os.path.join(_eval_dir(workdir), "pareto"),
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        meta=meta,
    )


def machine_description() -> str:
    """E.g. ``"cpu x2 (2 cores), Linux x86_64, jax 0.10.2"``: where timings were measured."""
    devices = jax.devices()
    return (
        f"{devices[0].platform} x{len(devices)} ({devices[0].device_kind}), "
        f"{os.cpu_count()} CPU cores, {platform.system()} {platform.machine()}, "
        f"jax {jax.__version__}"
    )
