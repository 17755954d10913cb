"""Sampling from a trained UNet: pick a sampler by name, add guidance, run the scan.

``generate`` is jitted once per (model, sampler, step count, batch shape); the
guidance scale, eta, labels and key are traced arguments, so sweeping them never
recompiles.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from diffjax.guidance import classifier_free_guidance
from diffjax.schedules import DiscreteSchedule, trailing_timesteps

from diffjax import builders
from diffjax.nn import UNet
from diffjax.samplers import ddim, ddpm, sample

SAMPLER_NAMES = ("ddim", "ddpm", "ddpm_beta")


def sampling_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """Trailing grid of ``num_steps`` model times ending in the clean point t = -1."""
    return np.append(trailing_timesteps(num_timesteps, num_steps), -1)


def make_sampler(
    name: str,
    schedule: DiscreteSchedule,
    num_steps: int,
    *,
    eta: float | jax.Array = 0.0,
    clip_x0: float | None = 1.0,
) -> Any:
    """Builds a sampler by name: 'ddim' (with eta), 'ddpm' (beta-tilde) or 'ddpm_beta'."""
    if name not in SAMPLER_NAMES:
        raise ValueError(f"sampler={name!r}; expected one of {SAMPLER_NAMES}")
    timesteps = sampling_timesteps(schedule.num_timesteps, num_steps)
    if name == "ddim":
        return ddim(schedule, timesteps, eta=eta, clip_x0=clip_x0)
    variance = "beta_tilde" if name == "ddpm" else "beta"
    return ddpm(schedule, timesteps, variance=variance, clip_x0=clip_x0)


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


def check_labels(labels: Any, num_classes: int | None) -> np.ndarray | None:
    """Validates requested class labels (concrete values) against the model."""
    if num_classes is None:
        if labels is not None:
            raise ValueError("labels given to an unconditional model")
        return None
    if labels is None:
        raise ValueError(f"a class-conditional model needs labels in [0, {num_classes})")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype}{labels.shape}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(f"labels {sorted(set(bad.tolist()))} out of range [0, {num_classes})")
    return labels.astype(np.int32)


@functools.partial(
    jax.jit,
    static_argnames=(
        "model", "prediction_type", "sampler_name", "num_steps", "guided", "clip_x0",
        "image_shape", "batch_size",
    ),
)
def _generate(
    params: Any,
    schedule: DiscreteSchedule,
    labels: jax.Array | None,
    key: jax.Array,
    guidance_scale: jax.Array,
    eta: jax.Array,
    *,
    model: UNet,
    prediction_type: str,
    sampler_name: str,
    num_steps: int,
    guided: bool,
    clip_x0: float | None,
    image_shape: tuple[int, ...],
    batch_size: int,
) -> jax.Array:
    denoise = builders.build_denoiser(model, params, schedule, prediction_type)
    if guided:
        denoise = classifier_free_guidance(
            denoise, guidance_scale, jnp.full_like(labels, model.num_classes)
        )
    sampler = make_sampler(sampler_name, schedule, num_steps, eta=eta, clip_x0=clip_x0)
    noise_key, sample_key = jax.random.split(key)
    x_T = jax.random.normal(noise_key, (batch_size, *image_shape), jnp.float32)
    return sample(sampler, denoise, x_T, sample_key, cond=labels)


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
    sampler: str = "ddim",
    num_steps: int = 50,
    guidance_scale: float | None = None,
    eta: float = 0.0,
    clip_x0: float | None = 1.0,
    p_uncond: float = 0.1,
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
      sampler: 'ddim', 'ddpm' or 'ddpm_beta'.
      num_steps: number of denoising steps (static; sets the compiled loop length).
      guidance_scale: classifier-free guidance weight w; guided eps =
        (1 + w) eps_cond - w eps_uncond. None runs the conditional model alone (one
        network call per step); any number, 0 included, runs the batched guided path,
        and changing it does not recompile.
      eta: DDIM stochasticity (0 = deterministic).
      clip_x0: clip the predicted x0 to [-c, c]; None to disable.
      p_uncond: the conditioning dropout the model was trained with (for the check).

    Returns:
      float32 images (B, H, W, C).
    """
    labels = check_labels(labels, model.num_classes)
    guided = guidance_scale is not None
    if guided:
        check_guidance_supported(model, p_uncond)
    if labels is not None:
        batch_size = len(labels)
    elif num_samples is None or num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r} must be >= 1 for an unconditional model")
    else:
        batch_size = int(num_samples)
    return _generate(
        params,
        schedule,
        None if labels is None else jnp.asarray(labels),
        key,
        jnp.float32(0.0 if guidance_scale is None else guidance_scale),
        jnp.float32(eta),
        model=model,
        prediction_type=prediction_type,
        sampler_name=sampler,
        num_steps=num_steps,
        guided=guided,
        clip_x0=clip_x0,
        image_shape=tuple(image_shape),
        batch_size=batch_size,
    )
