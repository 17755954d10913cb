"""diffjax: diffusion models in JAX/Flax.

Primitives, pure functions of arrays and pytrees:

* VP noise schedules, discrete and continuous, under one contract
  (:class:`VPSchedule`), and timestep grids (:mod:`diffjax.schedules`:
  :func:`make_schedule`, :class:`DiscreteSchedule`, :class:`LinearVPSchedule`,
  :class:`CosineVPSchedule`);
* eps / x0 / v parameterizations and the denoiser wrapper (:func:`make_denoiser`);
  classifier-free guidance (:func:`classifier_free_guidance`);
* the training objective: :func:`diffusion_loss` with uniform or Min-SNR weighting and
  conditioning dropout (:func:`drop_labels`), and the jitted, data-parallel train step
  (:mod:`diffjax.training`: :func:`make_train_step`, :class:`TrainState`);
* samplers, each a :class:`Sampler` that :func:`sample` runs in one ``lax.scan`` and that
  declares its network-evaluation count and order: :func:`ddpm`, :func:`ddim` (and
  :func:`ddim_inversion`), DPM-Solver and DPM-Solver++ (:func:`dpm_solver_singlestep`,
  :func:`dpm_solver_multistep`, :func:`dpm_solver_fast`), :func:`unipc` and
  :func:`edm_heun` (with :func:`karras_sigmas`); x0 clipping by
  :class:`StaticThresholding` or :class:`DynamicThresholding`;
* consistency models (:mod:`diffjax.consistency`: the parameterization, CD / iCT / ECT
  levels and losses; :mod:`diffjax.training.consistency_step`; sampled by
  :func:`diffjax.samplers.consistency_multistep`);
* the ADM-style :class:`UNet` (:mod:`diffjax.nn`), evaluation networks (FID InceptionV3,
  CLIP, a digits classifier: :mod:`diffjax.networks`), metric formulas (FID, KID,
  precision/recall, density/coverage, memorization: :mod:`diffjax.metrics`) and the
  input pipeline (:mod:`diffjax.data`).

Applications (:mod:`diffjax.app`), which take a config, a workdir or a sampler name:
:func:`train` (the loop, with verified checkpoints) and :func:`load_trained`;
:func:`generate`, which takes a :class:`SamplerSpec` or a name such as
``'dpm++2m@logsnr'`` (:func:`parse_sampler`, :mod:`diffjax.app.sampler_specs`);
evaluation, sweeps and the ``diffjax`` command (``python -m diffjax.app.cli``). Names are
imported on first use.
"""

from typing import TYPE_CHECKING

from diffjax._lazy import lazy_attributes

if TYPE_CHECKING:  # the names, for type checkers and IDEs
    from diffjax.app.builders import build_denoiser, build_schedule, build_unet, init_params
    from diffjax.app.config import apply_overrides, base_config, digits_config, load_config
    from diffjax.app.generate import generate, make_sampler
    from diffjax.app.sampler_specs import SamplerSpec, parse_sampler
    from diffjax.app.train import load_trained, train
    from diffjax.guidance import classifier_free_guidance
    from diffjax.losses import diffusion_loss, drop_labels, loss_weight
    from diffjax.nn import UNet
    from diffjax.parameterization import (
        Denoised,
        eps_to_x0,
        make_denoiser,
        training_target,
        v_to_eps,
        v_to_x0,
        x0_eps_to_v,
        x0_to_eps,
    )
    from diffjax.samplers import (
        DynamicThresholding,
        Sampler,
        StaticThresholding,
        ddim,
        ddim_inversion,
        ddpm,
        dpm_solver_fast,
        dpm_solver_multistep,
        dpm_solver_singlestep,
        edm_heun,
        edm_sigma_range,
        karras_sigmas,
        sample,
        unipc,
    )
    from diffjax.schedules import (
        CosineVPSchedule,
        DiscreteSchedule,
        LinearVPSchedule,
        VPSchedule,
        cosine_betas,
        leading_timesteps,
        linear_betas,
        linspace_timesteps,
        log_snr_uniform_timesteps,
        make_schedule,
        quadratic_timesteps,
        scaled_linear_betas,
        trailing_timesteps,
        with_final_timestep,
    )
    from diffjax.training import TrainState, make_train_step

# Public names and the modules that define them. They are imported on first use, so
# `import diffjax` (or `diffjax.app.cli`, or one submodule) stays cheap and loads neither
# JAX nor orbax and grain until a name needs them.
_LAZY = {
    "build_denoiser": "diffjax.app.builders",
    "build_schedule": "diffjax.app.builders",
    "build_unet": "diffjax.app.builders",
    "init_params": "diffjax.app.builders",
    "apply_overrides": "diffjax.app.config",
    "base_config": "diffjax.app.config",
    "digits_config": "diffjax.app.config",
    "load_config": "diffjax.app.config",
    "generate": "diffjax.app.generate",
    "SamplerSpec": "diffjax.app.sampler_specs",
    "parse_sampler": "diffjax.app.sampler_specs",
    "make_sampler": "diffjax.app.generate",
    "classifier_free_guidance": "diffjax.guidance",
    "diffusion_loss": "diffjax.losses",
    "drop_labels": "diffjax.losses",
    "loss_weight": "diffjax.losses",
    "UNet": "diffjax.nn",
    "Denoised": "diffjax.parameterization",
    "eps_to_x0": "diffjax.parameterization",
    "make_denoiser": "diffjax.parameterization",
    "training_target": "diffjax.parameterization",
    "v_to_eps": "diffjax.parameterization",
    "v_to_x0": "diffjax.parameterization",
    "x0_eps_to_v": "diffjax.parameterization",
    "x0_to_eps": "diffjax.parameterization",
    "DynamicThresholding": "diffjax.samplers",
    "StaticThresholding": "diffjax.samplers",
    "Sampler": "diffjax.samplers",
    "ddim": "diffjax.samplers",
    "ddim_inversion": "diffjax.samplers",
    "ddpm": "diffjax.samplers",
    "dpm_solver_fast": "diffjax.samplers",
    "dpm_solver_multistep": "diffjax.samplers",
    "dpm_solver_singlestep": "diffjax.samplers",
    "edm_heun": "diffjax.samplers",
    "edm_sigma_range": "diffjax.samplers",
    "karras_sigmas": "diffjax.samplers",
    "sample": "diffjax.samplers",
    "unipc": "diffjax.samplers",
    "CosineVPSchedule": "diffjax.schedules",
    "DiscreteSchedule": "diffjax.schedules",
    "VPSchedule": "diffjax.schedules",
    "LinearVPSchedule": "diffjax.schedules",
    "cosine_betas": "diffjax.schedules",
    "leading_timesteps": "diffjax.schedules",
    "linear_betas": "diffjax.schedules",
    "linspace_timesteps": "diffjax.schedules",
    "log_snr_uniform_timesteps": "diffjax.schedules",
    "make_schedule": "diffjax.schedules",
    "quadratic_timesteps": "diffjax.schedules",
    "scaled_linear_betas": "diffjax.schedules",
    "trailing_timesteps": "diffjax.schedules",
    "with_final_timestep": "diffjax.schedules",
    "TrainState": "diffjax.training",
    "load_trained": "diffjax.app.train",
    "make_train_step": "diffjax.training",
    "train": "diffjax.app.train",
}


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)


__version__ = "0.1.0"

__all__ = [
    "CosineVPSchedule",
    "Denoised",
    "DiscreteSchedule",
    "DynamicThresholding",
    "LinearVPSchedule",
    "Sampler",
    "SamplerSpec",
    "StaticThresholding",
    "TrainState",
    "UNet",
    "VPSchedule",
    "apply_overrides",
    "base_config",
    "build_denoiser",
    "build_schedule",
    "build_unet",
    "classifier_free_guidance",
    "cosine_betas",
    "ddim",
    "ddim_inversion",
    "ddpm",
    "diffusion_loss",
    "digits_config",
    "dpm_solver_fast",
    "dpm_solver_multistep",
    "dpm_solver_singlestep",
    "drop_labels",
    "edm_heun",
    "edm_sigma_range",
    "eps_to_x0",
    "generate",
    "init_params",
    "karras_sigmas",
    "leading_timesteps",
    "linear_betas",
    "linspace_timesteps",
    "load_config",
    "load_trained",
    "log_snr_uniform_timesteps",
    "loss_weight",
    "make_denoiser",
    "make_sampler",
    "make_schedule",
    "make_train_step",
    "parse_sampler",
    "quadratic_timesteps",
    "sample",
    "scaled_linear_betas",
    "trailing_timesteps",
    "train",
    "training_target",
    "unipc",
    "v_to_eps",
    "v_to_x0",
    "with_final_timestep",
    "x0_eps_to_v",
    "x0_to_eps",
]
