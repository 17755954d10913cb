"""Builds the library's objects from a run config: the schedule, the networks, the denoiser.

The networks are the UNet and the KL autoencoder; the consistency parameterization and
objective too.

This is the one place where config strings (schedule names, dtypes) become objects;
the library below it takes plain values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from diffjax._checks import check_choice
from diffjax.consistency import ConsistencyParameterization, dimension_matched_sigma_max
from diffjax.nn import UNet
from diffjax.nn.autoencoder import AutoencoderKL, AutoencoderKLConfig
from diffjax.parameterization import make_denoiser
from diffjax.schedules import DiscreteSchedule, make_schedule

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The schedules built from ``diffusion.beta_start`` and ``diffusion.beta_end``.
BETA_RANGE_SCHEDULES = ("linear", "scaled_linear")


def build_schedule(diffusion: ml_collections.ConfigDict) -> DiscreteSchedule:
    """The discrete noise schedule of ``config.diffusion``."""
    kwargs = {}
    if diffusion.schedule in BETA_RANGE_SCHEDULES:
        kwargs = {"beta_start": diffusion.beta_start, "beta_end": diffusion.beta_end}
    return make_schedule(diffusion.schedule, diffusion.num_timesteps, **kwargs)


def build_unet(model: ml_collections.ConfigDict, num_classes: int | None) -> UNet:
    """The UNet of ``config.model``; class-conditional (with a null class) if asked.

    Args:
      model: the ``config.model`` section.
      num_classes: the dataset's number of classes (ignored when the config asks for
        an unconditional model).
    """
    check_choice("model.dtype", model.dtype, tuple(DTYPES))
    return UNet(
        base_channels=model.base_channels,
        channel_mults=tuple(model.channel_mults),
        num_res_blocks=model.num_res_blocks,
        attention_resolutions=tuple(model.attention_resolutions),
        dropout=model.dropout,
        num_heads=model.num_heads,
        num_classes=num_classes if model.class_conditional else None,
        dtype=DTYPES[model.dtype],
        scale_shift_norm=model.scale_shift_norm,
        remat=model.remat,
    )


def autoencoder_config(
    section: ml_collections.ConfigDict, image_channels: int
) -> AutoencoderKLConfig:
    """The :class:`~diffjax.nn.AutoencoderKLConfig` of ``config.autoencoder``."""
    return AutoencoderKLConfig(
        in_channels=image_channels,
        out_channels=image_channels,
        block_out_channels=tuple(section.block_out_channels),
        layers_per_block=section.layers_per_block,
        latent_channels=section.latent_channels,
        norm_num_groups=section.norm_num_groups,
        mid_block_add_attention=section.mid_block_attention,
    )


def build_model(
    config: ml_collections.ConfigDict, num_classes: int | None, image_shape: tuple[int, ...]
) -> UNet | AutoencoderKL:
    """The network a run of ``config.task`` trains: the UNet, or the KL autoencoder."""
    check_choice("task", config.task, ("diffusion", "autoencoder"))
    if config.task == "autoencoder":
        return AutoencoderKL(autoencoder_config(config.autoencoder, int(image_shape[-1])))
    return build_unet(config.model, num_classes)


def init_params(model: UNet | AutoencoderKL, key: jax.Array, image_shape: tuple[int, ...]) -> Any:
    """Initialises the network's parameters for images of ``image_shape`` (H, W, C)."""
    x = jnp.zeros((1, *image_shape), jnp.float32)
    if isinstance(model, AutoencoderKL):
        return model.init({"params": key}, x)["params"]
    t = jnp.zeros((1,), jnp.float32)
    labels = None if model.num_classes is None else jnp.zeros((1,), jnp.int32)
    return model.init({"params": key}, x, t, labels, train=False)["params"]


def inference_model_fn(model: UNet, params: Any) -> Callable[..., jax.Array]:
    """``fn(x, t, labels) -> raw output`` of the UNet in inference mode (no dropout)."""

    def model_fn(x: jax.Array, t: jax.Array, labels: Any) -> jax.Array:
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
        return model.apply({"params": params}, x, t, labels, train=False)

    return model_fn


def build_denoiser(
    model: UNet, params: Any, schedule: DiscreteSchedule, prediction_type: str
) -> Callable:
    """The sampler-facing denoiser ``fn(x, t, labels) -> Denoised`` of a trained UNet."""
    return make_denoiser(inference_model_fn(model, params), schedule, prediction_type)


def consistency_parameterization(
    config: ml_collections.ConfigDict,
    schedule: DiscreteSchedule,
    image_shape: tuple[int, ...],
) -> ConsistencyParameterization | None:
    """The consistency model's boundary and data scale, or None for a diffusion run.

    ``consistency.sigma_max = 0`` is :func:`~diffjax.consistency.dimension_matched_sigma_max`
    of ``image_shape``.
    """
    if not config.consistency.method:
        return None
    sigma_max = config.consistency.sigma_max or dimension_matched_sigma_max(image_shape)
    return ConsistencyParameterization.for_schedule(
        schedule, sigma_data=config.consistency.sigma_data, sigma_max=sigma_max
    )


def consistency_objective(
    config: ml_collections.ConfigDict, schedule: DiscreteSchedule, image_shape: tuple[int, ...]
) -> Any:
    """The :class:`~diffjax.training.consistency_step.ConsistencyObjective` of a run."""
    from diffjax.training.consistency_step import ConsistencyObjective

    c = config.consistency
    stage_steps = c.ect_stage_steps or max(1, config.training.num_steps // 8)
    return ConsistencyObjective(
        method=c.method,
        param=consistency_parameterization(config, schedule, image_shape),
        distance=c.distance,
        huber_c=c.huber_c,
        weighting=c.weighting,
        num_scales=c.num_scales,
        rho=c.rho,
        target_ema=c.target_ema if c.method == "cd" else 0.0,
        p_mean=c.p_mean,
        p_std=c.p_std,
        total_steps=config.training.num_steps,
        s0=c.s0,
        s1=c.s1,
        ect_q=c.ect_q,
        ect_k=c.ect_k,
        ect_b=c.ect_b,
        ect_stage_steps=stage_steps,
        teacher_sampler=c.teacher_sampler,
        guidance_scale=c.guidance_scale,
    )
