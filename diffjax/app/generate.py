"""Sampling from a trained UNet: a sampler spec, guidance, one jitted scan.

``generate`` is jitted once per (model, sampler, step count, batch shape, guided or
not); the guidance scale, guidance rescale, guidance interval, eta, labels and key are
traced arguments, so sweeping them never recompiles.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_choice, check_int
from diffjax.app import builders
from diffjax.app.sampler_specs import (
    PIXEL_DATA_RANGE,
    SamplerSpec,
    check_num_steps,
    default_clip_x0,
    parse_sampler,
)
from diffjax.consistency import ConsistencyParameterization, consistency_denoiser
from diffjax.guidance import classifier_free_guidance
from diffjax.nn import UNet
from diffjax.samplers import Sampler, sample
from diffjax.samplers.driver import concrete_value
from diffjax.schedules import DiscreteSchedule


def make_sampler(
    sampler: str | SamplerSpec,
    schedule: DiscreteSchedule,
    num_steps: int,
    *,
    eta: float | jax.Array = 0.0,
    clip_x0: float | None = 1.0,
) -> Sampler:
    """``parse_sampler(sampler).build(schedule, num_steps, ...)``: a sampler by name.

    See :class:`~diffjax.app.sampler_specs.SamplerSpec` for the names, grids and options.
    """
    return parse_sampler(sampler).build(schedule, num_steps, eta=eta, clip_x0=clip_x0)


def parse_guidance_interval(text: str | None) -> tuple[float, float] | None:
    """Parses ``'LO,HI'`` (model timesteps) into ``(lo, hi)``; ``None`` stays ``None``.

    Raises:
      ValueError: naming ``--guidance-interval`` unless it is two numbers with
        ``lo <= hi``.
    """
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(
            f"--guidance-interval={text!r} must be two comma-separated numbers LO,HI "
            "(model timesteps)"
        ) from None
    if not lo <= hi:
        raise ValueError(f"--guidance-interval={text!r} needs LO <= HI")
    return lo, hi


def check_guidance_supported(model: UNet, p_uncond: float) -> None:
    """Raises ValueError when a model cannot do classifier-free guidance."""
    if model.num_classes is None:
        raise ValueError(
            "classifier-free guidance needs a class-conditional model with a null class; "
            "this model is unconditional"
        )
    if p_uncond <= 0:
        raise ValueError(
            "classifier-free guidance needs a model trained with conditioning dropout "
            f"(diffusion.p_uncond > 0); this model was trained with p_uncond={p_uncond}, "
            "so its null class was never learned"
        )


def check_guidance_scale(guidance_scale: Any) -> None:
    """Checks a concrete guidance scale (a traced one passes).

    Raises:
      ValueError: naming ``guidance_scale`` unless it is a finite scalar.
    """
    scale = concrete_value(guidance_scale)
    if scale is None:
        return
    try:
        finite = scale.ndim == 0 and math.isfinite(float(scale))
    except (TypeError, ValueError):
        finite = False
    if not finite:
        raise ValueError(
            f"guidance_scale must be a finite number, got {guidance_scale=!r} (None runs "
            "the conditional model without guidance)"
        )


def check_labels(labels: Any, num_classes: int | None) -> np.ndarray | None:
    """Validates requested class labels (concrete values) against the model.

    Returns:
      The labels as int32, or ``None`` for an unconditional model.

    Raises:
      ValueError: for labels given to an unconditional model, none given to a
        conditional one, an empty array (no samples requested), or labels that are not
        a 1-D integer array in ``[0, num_classes)``.
    """
    if num_classes is None:
        if labels is not None:
            raise ValueError("labels given to an unconditional model")
        return None
    if labels is None:
        raise ValueError(f"a class-conditional model needs labels in [0, {num_classes})")
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError(
            f"labels is empty (shape {labels.shape}): no samples requested; give at least one "
            f"class label in [0, {num_classes})"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype}{labels.shape}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(f"labels {sorted(set(bad.tolist()))} out of range [0, {num_classes})")
    return labels.astype(np.int32)


class _StaticSchedule:
    """A schedule as a static jit argument, hashed and compared by its values.

    Samplers build their time grids from concrete schedule values (DPM-Solver-fast's
    log-SNR grid needs them on the host), so the schedule enters ``_generate`` as a
    compile-time constant; equal schedules share one compiled function.
    """

    def __init__(self, schedule: DiscreteSchedule):
        self.schedule = schedule
        self._key = np.asarray(schedule.alphas_cumprod).tobytes()

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _StaticSchedule) and other._key == self._key


STATIC_ARGNAMES = (
    "static_schedule", "model", "prediction_type", "sampler", "num_steps", "guided",
    "clip_x0", "image_shape", "batch_size", "consistency", "decoder_model", "decoder_scale",
)
"""The arguments of :func:`_generate_fn` that are static under ``jit``; the others
(parameters, labels, key, guidance scale, rescale and interval, eta) are traced."""


def _generate_fn(
    params: Any,
    labels: jax.Array | None,
    key: jax.Array,
    guidance_scale: jax.Array,
    guidance_rescale: jax.Array,
    guidance_interval: jax.Array,
    eta: jax.Array,
    *,
    static_schedule: _StaticSchedule,
    model: UNet,
    prediction_type: str,
    sampler: SamplerSpec,
    num_steps: int,
    guided: bool,
    clip_x0: float | None,
    image_shape: tuple[int, ...],
    batch_size: int,
    consistency: ConsistencyParameterization | None,
    decoder_params: Any = None,
    decoder_model: Any = None,
    decoder_scale: float = 1.0,
) -> jax.Array:
    schedule = static_schedule.schedule
    denoise = builders.build_denoiser(model, params, schedule, prediction_type)
    if consistency is not None:
        denoise = consistency_denoiser(denoise, schedule, consistency)
    if guided:
        denoise = classifier_free_guidance(
            denoise,
            guidance_scale,
            jnp.full_like(labels, model.num_classes),
            rescale=guidance_rescale,
            interval=(guidance_interval[0], guidance_interval[1]),
            schedule=schedule,
        )
    sigma_range = None
    if consistency is not None:
        sigma_range = (consistency.sigma_min, consistency.sigma_max)
    built = sampler.build(schedule, num_steps, eta=eta, clip_x0=clip_x0, sigma_range=sigma_range)
    noise_key, sample_key = jax.random.split(key)
    x_T = jax.random.normal(noise_key, (batch_size, *image_shape), jnp.float32)
    x = sample(built, denoise, x_T, sample_key, cond=labels)
    if decoder_model is not None:  # latent diffusion: D(x_0 / s)
        x = decoder_model.apply({"params": decoder_params}, x / decoder_scale,
                                method=decoder_model.decode)
    return x


_generate = jax.jit(_generate_fn, static_argnames=STATIC_ARGNAMES)


def generate(
    model: UNet,
    params: Any,
    schedule: DiscreteSchedule,
    *,
    prediction_type: str,
    image_shape: tuple[int, ...],
    key: jax.Array,
    labels: Any = None,
    num_samples: int | None = None,
    sampler: str | SamplerSpec = "ddim",
    num_steps: int = 50,
    guidance_scale: float | None = None,
    guidance_rescale: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    eta: float = 0.0,
    clip_x0: float | str | None = "auto",
    data_range: tuple[float, float] | None = PIXEL_DATA_RANGE,
    p_uncond: float = 0.1,
    consistency: ConsistencyParameterization | None = None,
    decoder: Any = None,
) -> jax.Array:
    """Samples images from a trained UNet.

    Args:
      model: the UNet.
      params: its (EMA) parameters.
      schedule: the discrete schedule it was trained with.
      prediction_type: 'eps', 'x0' or 'v', as trained.
      image_shape: (H, W, C).
      key: PRNG key for x_T and any sampler noise.
      labels: class labels (B,) for a conditional model.
      num_samples: batch size of an unconditional model (ignored when labels given).
      sampler: a :class:`~diffjax.app.sampler_specs.SamplerSpec` or a sampler name
        (``'dpm++2m@logsnr'``), parsed once.
      num_steps: number of denoising steps (static; sets the compiled loop length).
      guidance_scale: classifier-free guidance weight w; guided eps =
        (1 + w) eps_cond - w eps_uncond. None runs the conditional model alone (one
        network call per step); any number, 0 included, runs the batched guided path,
        and changing it does not recompile.
      guidance_rescale: guidance rescale factor in [0, 1] (Lin et al. 2024; 0 is plain
        guidance); needs ``guidance_scale``. Traced: changing it does not recompile.
      guidance_interval: ``(t_lo, t_hi)`` in model timesteps: guidance applies only
        where ``t_lo <= t <= t_hi`` (Kynkaanniemi et al. 2024), the conditional model
        elsewhere; needs ``guidance_scale``. Traced (None is the whole range).
      eta: DDIM stochasticity (0 = deterministic).
      clip_x0: clip the predicted x0 to [-c, c] (every sampler that forms x0); None
        to disable; 'auto' follows the model's data range (:func:`default_clip_x0`).
      data_range: the range of the data the model was trained on: pixels in [-1, 1]
        (so 'auto' clips at 1.0), or None for unbounded (latent) data (never clipped).
      p_uncond: the conditioning dropout the model was trained with (for the check).
      consistency: a consistency model's parameterization
        (:func:`~diffjax.app.builders.consistency_parameterization` of its config): the
        network is then the consistency function ``f``
        (:func:`~diffjax.consistency.consistency_denoiser`), sampled with ``'cm'``
        (multistep consistency sampling) or any other sampler; None for a diffusion
        model.
      decoder: a latent diffusion run's :class:`~diffjax.app.latent.LatentSpace`: the
        UNet samples latents of ``image_shape`` (the latent shape), which are decoded
        to images ``D(x_0 / s)`` in the same compiled function; latents are never
        clipped (``data_range`` is then None). None for pixel diffusion.

    Returns:
      float32 images (B, H, W, C).

    Raises:
      ValueError: before anything is compiled, for an unknown sampler, ``num_steps``
        that is not an int ``>= 1``, an ``eta`` that is negative, non-finite or nonzero
        for a sampler other than DDIM, a non-finite ``guidance_scale``, a
        ``guidance_rescale`` outside ``[0, 1]`` (NaN included), a malformed
        ``guidance_interval``, guidance refinements without a ``guidance_scale``, bad
        or empty labels, a bad ``num_samples``, or a model that cannot be guided.
    """
    spec = parse_sampler(sampler)
    num_steps = check_num_steps(num_steps)
    if decoder is not None:
        data_range = None  # latents are unbounded
    spec.check_eta(eta)
    if isinstance(clip_x0, str):
        check_choice("clip_x0", clip_x0, ("auto",))
        clip_x0 = default_clip_x0(data_range)
    labels = check_labels(labels, model.num_classes)
    guided = guidance_scale is not None
    if guided:
        check_guidance_scale(guidance_scale)
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale must lie in [0, 1], got {guidance_rescale=}")
    if guided:
        check_guidance_supported(model, p_uncond)
    elif guidance_rescale != 0.0 or guidance_interval is not None:
        raise ValueError(
            "guidance_rescale and guidance_interval refine classifier-free guidance; "
            "give a guidance_scale too"
        )
    lo, hi = (-np.inf, np.inf) if guidance_interval is None else guidance_interval
    if not lo <= hi:
        raise ValueError(f"guidance_interval must have t_lo <= t_hi, got {guidance_interval=}")
    if labels is not None:
        batch_size = len(labels)
    else:
        try:
            batch_size = check_int("num_samples", num_samples, minimum=1)
        except ValueError:
            raise ValueError(
                f"num_samples={num_samples!r} must be an int >= 1 for an unconditional model"
            ) from None
    return _generate(
        params,
        None if labels is None else jnp.asarray(labels),
        key,
        jnp.float32(0.0 if guidance_scale is None else guidance_scale),
        jnp.float32(guidance_rescale),
        jnp.asarray([lo, hi], jnp.float32),
        jnp.float32(eta),
        static_schedule=_StaticSchedule(schedule),
        model=model,
        prediction_type=prediction_type,
        sampler=spec,
        num_steps=num_steps,
        guided=guided,
        clip_x0=clip_x0,
        image_shape=tuple(image_shape),
        batch_size=batch_size,
        consistency=consistency,
        decoder_params=None if decoder is None else decoder.params,
        decoder_model=None if decoder is None else decoder.model,
        decoder_scale=1.0 if decoder is None else float(decoder.scaling_factor),
    )
