"""diffusers ``scheduler_config.json`` -> a diffusers-exact diffjax Sampler.

A Stable Diffusion folder's ``scheduler/scheduler_config.json`` names a diffusers scheduler
class and its options. :func:`sampler_from_scheduler_config` maps it onto the diffjax
sampler that reproduces that class's step loop (``set_timesteps``, ``scale_model_input``,
``step``) to float32 round-off, and :func:`schedule_from_scheduler_config` gives the
:class:`~diffjax.schedules.DiscreteSchedule` to build the denoiser with::

    schedule = schedule_from_scheduler_config(config)
    denoise = make_denoiser(unet_fn, schedule, prediction_type_from_scheduler_config(config))
    sampler = sampler_from_scheduler_config(config, num_steps=25)
    latents = sample(sampler, denoise, jax.random.normal(key, shape), key, cond)

Supported classes (:data:`SUPPORTED_SCHEDULERS`), each reproducing diffusers' loop to
float32 round-off (tests/test_diffusers_schedulers.py):

* PNDMScheduler (PLMS; PRK warm-up), DDIMScheduler, DDPMScheduler (fixed_small,
  fixed_small_log, fixed_large) -- :mod:`diffjax.samplers.pndm`,
  :mod:`diffjax.samplers.diffusers_compat`, :mod:`diffjax.samplers.diffusers_ddpm`;
* EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, LMSDiscreteScheduler --
  :mod:`diffjax.samplers.euler`;
* DPMSolverMultistepScheduler (dpmsolver++, dpmsolver, sde-dpmsolver++; orders 1-3;
  Karras / exponential / Lu sigmas), DPMSolverSinglestepScheduler,
  UniPCMultistepScheduler (bh1 / bh2, corrector, ``disable_corrector``) --
  :mod:`diffjax.samplers.diffusers_multistep`;
* LCMScheduler -- :mod:`diffjax.samplers.diffusers_ddpm` (with
  :func:`~diffjax.samplers.diffusers_ddpm.guidance_scale_embedding` for the UNet's
  ``timestep_cond``).

Each entry of the table :data:`_SCHEDULERS` lists the config keys its builder reads
(with that class's defaults) and the keys diffjax does not implement with their neutral
values (``use_beta_sigmas``, ``use_flow_sigmas``, ``use_dynamic_shifting``, learned
``variance_type``, UniPC's ``solver_p``, Euler's ``interpolation_type='log_linear'``...);
a config setting such a key to anything else is refused, naming the key. Keys a class
does not know are ignored with a warning, as diffusers' ``from_config`` ignores them.

``x_T`` is unit Gaussian noise for every class: the sigma-space samplers multiply it by
diffusers' ``init_noise_sigma`` themselves.

img2img (diffusers' ``StableDiffusionImg2ImgPipeline``):
:func:`img2img_sampler_from_scheduler_config` returns the sampler and its start point::

    sampler, add_noise = img2img_sampler_from_scheduler_config(config, 25, strength)
    latents = sample(sampler, denoise, add_noise(image_latents, noise), key, cond)

``add_noise`` is the class's own ``scheduler.add_noise`` at the first of the last
``min(int(n * strength), n)`` steps, and the sampler skips the earlier calls with no
network call; ``strength`` may be traced (one compilation for every strength), and the
counters and history of the multistep classes start at the first call made, as a fresh
diffusers scheduler's do after ``set_begin_index``. Details (a strength below ``1 / n``,
float32 strengths) in :mod:`diffjax.samplers.diffusers_compat`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from diffjax.samplers.diffusers_compat import (
    DiffusersLoop,
    NoiseFn,
    diffusers_ddim_loop,
    img2img_sampler,
    loop_sampler,
)
from diffjax.samplers.diffusers_ddpm import diffusers_ddpm_loop, lcm_loop
from diffjax.samplers.diffusers_multistep import (
    diffusers_dpm_multistep_loop,
    diffusers_dpm_singlestep_loop,
    diffusers_unipc_loop,
)
from diffjax.samplers.driver import Sampler
from diffjax.samplers.euler import (
    euler_ancestral_discrete_loop,
    euler_discrete_loop,
    lms_discrete_loop,
)
from diffjax.samplers.pndm import pndm_loop
from diffjax.schedules import DiscreteSchedule

__all__ = [
    "SUPPORTED_SCHEDULERS",
    "diffusers_alphas_cumprod",
    "img2img_sampler_from_scheduler_config",
    "load_scheduler_config",
    "loop_from_scheduler_config",
    "prediction_type_from_scheduler_config",
    "sampler_from_scheduler_config",
    "schedule_from_scheduler_config",
]

_PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# diffusers' __init__ defaults shared by every supported class.
_SCHEDULE_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "rescale_betas_zero_snr": False,
    "prediction_type": "epsilon",
}


def load_scheduler_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a ``scheduler_config.json`` (a file, or the folder holding it).

    Raises:
      FileNotFoundError: naming the missing file and its path.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "scheduler_config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"scheduler config not found: {path}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# Classes whose __init__ defaults differ from _SCHEDULE_DEFAULTS.
_CLASS_SCHEDULE_DEFAULTS: dict[str, dict[str, Any]] = {
    "LCMScheduler": {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"},
}


def _get(config: Mapping[str, Any], key: str) -> Any:
    defaults = _CLASS_SCHEDULE_DEFAULTS.get(config.get("_class_name"), {})
    return config.get(key, defaults.get(key, _SCHEDULE_DEFAULTS[key]))


def _betas_for_alpha_bar(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Diffusers' ``betas_for_alpha_bar`` (cosine, Nichol & Dhariwal Eq. 17), float32."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return np.asarray(betas, np.float32)


def _linspace32(start: float, end: float, num: int) -> np.ndarray:
    """``torch.linspace(start, end, num, dtype=float32)`` bit for bit.

    torch steps from both ends with a float32 step and fused multiply-adds (one rounding
    of ``start + step * i``, which float64 arithmetic reproduces exactly here).
    """
    if num == 1:
        return np.asarray([start], np.float32)
    step = np.float64(np.float32((end - start) / (num - 1)))
    i = np.arange(num, dtype=np.float64)
    lo = np.float64(np.float32(start)) + step * i
    hi = np.float64(np.float32(end)) - step * (num - 1 - i)
    return np.where(i < num // 2, lo, hi).astype(np.float32)


def _cumprod32(values: np.ndarray) -> np.ndarray:
    """``torch.cumprod`` of float32 on CPU: accumulated in float64, rounded to float32."""
    return np.cumprod(values.astype(np.float64)).astype(np.float32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Diffusers' ``rescale_zero_terminal_snr`` (Lin et al. 2024, Alg. 1), float32."""
    alphas_bar_sqrt = np.sqrt(_cumprod32(np.float32(1) - betas))
    first, last = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (np.float32(1) - alphas).astype(np.float32)


def diffusers_alphas_cumprod(config: Mapping[str, Any]) -> np.ndarray:
    """The float32 ``alphas_cumprod`` diffusers builds from a scheduler config.

    ``trained_betas``, or ``linear`` / ``scaled_linear`` (linear in ``sqrt(beta)``) /
    ``squaredcos_cap_v2`` betas, optionally ``rescale_betas_zero_snr`` (then the table
    ends in exactly 0), and ``alpha_bar = cumprod(1 - beta)``, all in float32 as torch
    computes them.

    Raises:
      ValueError: naming ``beta_schedule`` for an unknown one, or a bad ``trained_betas``.
    """
    T = int(_get(config, "num_train_timesteps"))
    trained = _get(config, "trained_betas")
    schedule = _get(config, "beta_schedule")
    start, end = float(_get(config, "beta_start")), float(_get(config, "beta_end"))
    if trained is not None:
        betas = np.asarray(trained, np.float32)
        if betas.shape != (T,):
            raise ValueError(
                f"trained_betas has shape {betas.shape}, expected ({T},) (num_train_timesteps)"
            )
    elif schedule == "linear":
        betas = _linspace32(start, end, T)
    elif schedule == "scaled_linear":
        betas = _linspace32(start**0.5, end**0.5, T) ** 2
    elif schedule == "squaredcos_cap_v2":
        betas = _betas_for_alpha_bar(T)
    else:
        raise ValueError(
            f"beta_schedule={schedule!r} is not supported; expected one of {list(_BETA_SCHEDULES)}"
        )
    if _get(config, "rescale_betas_zero_snr"):
        betas = _rescale_zero_terminal_snr(betas)
    return _cumprod32(np.float32(1) - betas.astype(np.float32))


def schedule_from_scheduler_config(config: Mapping[str, Any]) -> DiscreteSchedule:
    """The denoiser's :class:`~diffjax.schedules.DiscreteSchedule` for a scheduler config.

    It holds diffusers' float32 ``alphas_cumprod``; a terminal ``alpha_bar = 0``
    (``rescale_betas_zero_snr``), which a ``DiscreteSchedule`` cannot hold, becomes
    ``2**-24`` as diffusers' Euler classes set it (the samplers still use the exact 0).
    """
    ac = diffusers_alphas_cumprod(config).astype(np.float64)
    ac[-1] = max(ac[-1], 2.0**-24)
    return DiscreteSchedule.from_alphas_cumprod(ac)


def prediction_type_from_scheduler_config(config: Mapping[str, Any]) -> str:
    """Diffusers' ``prediction_type`` as diffjax's (``'eps'``, ``'v'`` or ``'x0'``).

    Raises:
      ValueError: naming the value and the supported ones.
    """
    value = _get(config, "prediction_type")
    if value not in _PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type={value!r} is not supported; expected one of {list(_PREDICTION_TYPES)}"
        )
    return _PREDICTION_TYPES[value]


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One scheduler class of the table.

    Its builder, the keys it reads (with diffusers' defaults for that class), and the keys
    diffjax does not implement, with the neutral value each must have.
    """

    build: Callable[..., DiffusersLoop]
    keys: Mapping[str, Any]
    unsupported: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# Classes that set a zero terminal alpha_bar to 2**-24 (their sigmas would be infinite).
_CLAMP_ZERO_SNR = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                   "DPMSolverMultistepScheduler", "UniPCMultistepScheduler")


def _common(config: Mapping[str, Any], opts: Mapping[str, Any]) -> dict[str, Any]:
    table = diffusers_alphas_cumprod(config)
    if config.get("_class_name") in _CLAMP_ZERO_SNR and _get(config, "rescale_betas_zero_snr"):
        table[-1] = np.float32(2.0**-24)
    return {
        "schedule": schedule_from_scheduler_config(config),
        "alphas_cumprod": table,
        "prediction_type": prediction_type_from_scheduler_config(config),
        "timestep_spacing": opts.get("timestep_spacing", "linspace"),
        "steps_offset": int(opts.get("steps_offset", 0)),
    }


def _build_pndm(config, opts, num_steps, eta, noise_fn) -> DiffusersLoop:
    del eta, noise_fn
    return pndm_loop(
        num_steps=num_steps, skip_prk_steps=bool(opts["skip_prk_steps"]),
        set_alpha_to_one=bool(opts["set_alpha_to_one"]), **_common(config, opts),
    )


def _build_ddim(config, opts, num_steps, eta, noise_fn) -> DiffusersLoop:
    return diffusers_ddim_loop(
        num_steps=num_steps, eta=eta, set_alpha_to_one=bool(opts["set_alpha_to_one"]),
        clip_sample=bool(opts["clip_sample"]), clip_sample_range=float(opts["clip_sample_range"]),
        thresholding=bool(opts["thresholding"]),
        dynamic_thresholding_ratio=float(opts["dynamic_thresholding_ratio"]),
        sample_max_value=float(opts["sample_max_value"]), noise_fn=noise_fn,
        **_common(config, opts),
    )


def _sigma_schedule(opts: Mapping[str, Any]) -> str | None:
    karras, expo = bool(opts.get("use_karras_sigmas")), bool(opts.get("use_exponential_sigmas"))
    if karras and expo:
        raise ValueError("use_karras_sigmas and use_exponential_sigmas cannot both be set")
    return "karras" if karras else "exponential" if expo else None


def _build_euler(config, opts, num_steps, eta, noise_fn) -> DiffusersLoop:
    del eta, noise_fn
    return euler_discrete_loop(
        num_steps=num_steps, sigma_schedule=_sigma_schedule(opts), sigma_min=opts["sigma_min"],
        sigma_max=opts["sigma_max"], final_sigmas_type=opts["final_sigmas_type"],
        **_common(config, opts),
    )


def _build_euler_ancestral(config, opts, num_steps, eta, noise_fn) -> DiffusersLoop:
    del eta
    return euler_ancestral_discrete_loop(
        num_steps=num_steps, noise_fn=noise_fn, **_common(config, opts)
    )


def _build_lms(config, opts, num_steps, eta, noise_fn) -> DiffusersLoop:
    del eta, noise_fn
    return lms_discrete_loop(num_steps=num_steps, sigma_schedule=_sigma_schedule(opts),
                             **_common(config, opts))


def _sigma_schedule_dpm(opts: Mapping[str, Any]) -> str | None:
    chosen = [name for key, name in (("use_karras_sigmas", "karras"),
                                     ("use_exponential_sigmas", "exponential"),
                                     ("use_lu_lambdas", "lu")) if opts.get(key)]
    if len(chosen) > 1:
        raise ValueError(f"only one of use_karras_sigmas, use_exponential_sigmas, "
                         f"use_lu_lambdas can be set, got {chosen}")
    return chosen[0] if chosen else None


def _dpm_options(config, opts) -> dict[str, Any]:
    """The options both DPM-Solver classes share.

    With diffusers' renames: ``deis`` -> ``dpmsolver++``, UniPC's solver types ->
    ``midpoint``.
    """
    algorithm = opts["algorithm_type"]
    algorithm = "dpmsolver++" if algorithm == "deis" else algorithm
    solver_type = opts["solver_type"]
    solver_type = "midpoint" if solver_type in ("logrho", "bh1", "bh2") else solver_type
    common = _common(config, opts)
    del common["timestep_spacing"], common["steps_offset"]
    return {
        **common, "solver_order": int(opts["solver_order"]), "algorithm_type": algorithm,
        "solver_type": solver_type, "lower_order_final": bool(opts["lower_order_final"]),
        "sigma_schedule": _sigma_schedule_dpm(opts),
        "final_sigmas_type": opts["final_sigmas_type"],
        "lambda_min_clipped": float(opts["lambda_min_clipped"]),
        "thresholding": bool(opts["thresholding"]),
        "dynamic_thresholding_ratio": float(opts["dynamic_thresholding_ratio"]),
        "sample_max_value": float(opts["sample_max_value"]),
    }


def _build_dpm_multistep(config, opts, num_steps, eta, noise_fn) -> DiffusersLoop:
    del eta
    return diffusers_dpm_multistep_loop(
        num_steps=num_steps, euler_at_final=bool(opts["euler_at_final"]),
        timestep_spacing=opts["timestep_spacing"], steps_offset=int(opts["steps_offset"]),
        round_fractional=_get(config, "beta_schedule") != "squaredcos_cap_v2",
        noise_fn=noise_fn, **_dpm_options(config, opts),
    )


def _build_dpm_singlestep(config, opts, num_steps, eta, noise_fn) -> DiffusersLoop:
    del eta
    options = _dpm_options(config, opts)
    if options["sigma_schedule"] == "lu":
        raise ValueError("DPMSolverSinglestepScheduler has no use_lu_lambdas")
    return diffusers_dpm_singlestep_loop(num_steps=num_steps, noise_fn=noise_fn, **options)


def _build_unipc(config, opts, num_steps, eta, noise_fn) -> DiffusersLoop:
    del eta, noise_fn
    return diffusers_unipc_loop(
        num_steps=num_steps, solver_order=int(opts["solver_order"]),
        predict_x0=bool(opts["predict_x0"]), solver_type=opts["solver_type"],
        lower_order_final=bool(opts["lower_order_final"]),
        disable_corrector=tuple(opts["disable_corrector"] or ()),
        sigma_schedule=_sigma_schedule(opts), sigma_min=opts["sigma_min"],
        sigma_max=opts["sigma_max"], final_sigmas_type=opts["final_sigmas_type"],
        thresholding=bool(opts["thresholding"]),
        dynamic_thresholding_ratio=float(opts["dynamic_thresholding_ratio"]),
        sample_max_value=float(opts["sample_max_value"]), **_common(config, opts),
    )


def _x0_options(opts) -> dict[str, Any]:
    return {
        "clip_sample": bool(opts["clip_sample"]),
        "clip_sample_range": float(opts["clip_sample_range"]),
        "thresholding": bool(opts["thresholding"]),
        "dynamic_thresholding_ratio": float(opts["dynamic_thresholding_ratio"]),
        "sample_max_value": float(opts["sample_max_value"]),
    }


def _build_ddpm(config, opts, num_steps, eta, noise_fn) -> DiffusersLoop:
    del eta
    return diffusers_ddpm_loop(num_steps=num_steps, variance_type=opts["variance_type"],
                               noise_fn=noise_fn, **_x0_options(opts), **_common(config, opts))


def _build_lcm(config, opts, num_steps, eta, noise_fn) -> DiffusersLoop:
    del eta
    common = _common(config, opts)
    del common["timestep_spacing"], common["steps_offset"]  # LCM's grid reads neither
    return lcm_loop(
        num_steps=num_steps, original_inference_steps=int(opts["original_inference_steps"]),
        timestep_scaling=float(opts["timestep_scaling"]),
        set_alpha_to_one=bool(opts["set_alpha_to_one"]), noise_fn=noise_fn,
        **_x0_options(opts), **common,
    )


_THRESHOLD_KEYS = {"thresholding": False, "dynamic_thresholding_ratio": 0.995,
                   "sample_max_value": 1.0}
_DPM_KEYS = {
    **_THRESHOLD_KEYS, "solver_order": 2, "algorithm_type": "dpmsolver++",
    "solver_type": "midpoint", "use_karras_sigmas": False, "use_exponential_sigmas": False,
    "final_sigmas_type": "zero", "lambda_min_clipped": -math.inf, "flow_shift": 1.0,
    "time_shift_type": "exponential",
}
_FLOW_UNSUPPORTED = {"use_beta_sigmas": False, "use_flow_sigmas": False,
                     "use_dynamic_shifting": False}

_SCHEDULERS: dict[str, _Entry] = {
    "PNDMScheduler": _Entry(
        _build_pndm,
        {"skip_prk_steps": False, "set_alpha_to_one": False, "timestep_spacing": "leading",
         "steps_offset": 0},
    ),
    "DDIMScheduler": _Entry(
        _build_ddim,
        {"clip_sample": True, "set_alpha_to_one": True, "steps_offset": 0,
         "thresholding": False, "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0,
         "sample_max_value": 1.0, "timestep_spacing": "leading"},
    ),
    "EulerDiscreteScheduler": _Entry(
        _build_euler,
        {"use_karras_sigmas": False, "use_exponential_sigmas": False, "sigma_min": None,
         "sigma_max": None, "timestep_spacing": "linspace", "steps_offset": 0,
         "final_sigmas_type": "zero"},
        {"interpolation_type": "linear", "use_beta_sigmas": False, "timestep_type": "discrete"},
    ),
    "EulerAncestralDiscreteScheduler": _Entry(
        _build_euler_ancestral, {"timestep_spacing": "linspace", "steps_offset": 0},
    ),
    "LMSDiscreteScheduler": _Entry(
        _build_lms,
        {"use_karras_sigmas": False, "use_exponential_sigmas": False,
         "timestep_spacing": "linspace", "steps_offset": 0},
        {"use_beta_sigmas": False},
    ),
    "DDPMScheduler": _Entry(
        _build_ddpm,
        {**_THRESHOLD_KEYS, "variance_type": "fixed_small", "clip_sample": True,
         "clip_sample_range": 1.0, "timestep_spacing": "leading", "steps_offset": 0},
    ),
    "LCMScheduler": _Entry(
        _build_lcm,
        {**_THRESHOLD_KEYS, "original_inference_steps": 50, "clip_sample": False,
         "clip_sample_range": 1.0, "set_alpha_to_one": True, "steps_offset": 0,
         "timestep_spacing": "leading", "timestep_scaling": 10.0},
    ),
    "DPMSolverMultistepScheduler": _Entry(
        _build_dpm_multistep,
        {**_DPM_KEYS, "lower_order_final": True, "euler_at_final": False,
         "use_lu_lambdas": False, "timestep_spacing": "linspace", "steps_offset": 0},
        {**_FLOW_UNSUPPORTED, "variance_type": None},
    ),
    "DPMSolverSinglestepScheduler": _Entry(
        _build_dpm_singlestep,
        {**_DPM_KEYS, "lower_order_final": False},
        {**_FLOW_UNSUPPORTED, "variance_type": None},
    ),
    "UniPCMultistepScheduler": _Entry(
        _build_unipc,
        {**_THRESHOLD_KEYS, "solver_order": 2, "predict_x0": True, "solver_type": "bh2",
         "lower_order_final": True, "disable_corrector": [], "use_karras_sigmas": False,
         "use_exponential_sigmas": False, "timestep_spacing": "linspace", "steps_offset": 0,
         "final_sigmas_type": "zero", "sigma_min": None, "sigma_max": None,
         "flow_shift": 1.0, "time_shift_type": "exponential"},
        {**_FLOW_UNSUPPORTED, "solver_p": None, "shift_terminal": None},
    ),
}
SUPPORTED_SCHEDULERS = tuple(_SCHEDULERS)
# Keys a class does not read but that do not change its math.
_IGNORED = {"_class_name", "_diffusers_version", "_use_default_values"}


def loop_from_scheduler_config(
    config: Mapping[str, Any],
    num_steps: int,
    *,
    eta: Any = 0.0,
    noise_fn: NoiseFn | None = None,
) -> DiffusersLoop:
    """The diffusers-exact loop of a ``scheduler_config.json``.

    A :class:`~diffjax.samplers.diffusers_compat.DiffusersLoop`, the full loop with its
    start left open; the arguments and errors are :func:`sampler_from_scheduler_config`'s.
    """
    name = config.get("_class_name")
    if name not in _SCHEDULERS:
        raise ValueError(
            f"scheduler class {name!r} is not supported; supported classes: "
            f"{list(SUPPORTED_SCHEDULERS)}"
        )
    entry = _SCHEDULERS[name]
    for key, neutral in entry.unsupported.items():
        if key in config and config[key] != neutral:
            raise ValueError(
                f"{name}: config key {key}={config[key]!r} is not supported by diffjax (only "
                f"{key}={neutral!r})"
            )
    known = set(_SCHEDULE_DEFAULTS) | set(entry.keys) | set(entry.unsupported) | _IGNORED
    unknown = sorted(set(config) - known)
    if unknown:
        warnings.warn(
            f"{name}: config keys {unknown} are not used by this class and are ignored "
            "(as diffusers' from_config ignores them)",
            stacklevel=3,
        )
    opts = {key: config.get(key, default) for key, default in entry.keys.items()}
    return entry.build(config, opts, num_steps, eta, noise_fn)


def sampler_from_scheduler_config(
    config: Mapping[str, Any],
    num_steps: int,
    *,
    eta: Any = 0.0,
    noise_fn: NoiseFn | None = None,
) -> Sampler:
    """The diffusers-exact diffjax Sampler (txt2img) for a ``scheduler_config.json``.

    Args:
      config: the parsed config (``_class_name`` and the class's options; absent options
        take diffusers' defaults for that class).
      num_steps: diffusers' ``num_inference_steps``. PNDM's sampler runs one step per
        network call (``num_steps + 1`` with ``skip_prk_steps``, ``num_steps + 9``
        without); ``Sampler.nfe`` always counts the calls.
      eta: DDIM's stochasticity (diffusers' ``eta`` pipeline argument; may be traced;
        other classes ignore it).
      noise_fn: where stochastic steps take their noise (DDIM with ``eta > 0``, Euler
        ancestral); see :func:`diffjax.samplers.diffusers_compat.replay_noise`.

    Returns:
      A :class:`~diffjax.samplers.Sampler` built for
      :func:`schedule_from_scheduler_config` ``(config)``; ``x_T`` is unit noise.

    Raises:
      ValueError: for an unsupported ``_class_name`` (naming it and listing the supported
        classes), an option diffjax does not implement (naming the key and its value), or
        a bad option value.
    """
    return loop_sampler(loop_from_scheduler_config(config, num_steps, eta=eta, noise_fn=noise_fn))


def img2img_sampler_from_scheduler_config(
    config: Mapping[str, Any],
    num_steps: int,
    strength: Any,
    *,
    eta: Any = 0.0,
    noise_fn: NoiseFn | None = None,
) -> tuple[Sampler, Callable[[Any, Any], Any]]:
    """The diffusers-exact img2img Sampler and its start point for a scheduler config.

    diffusers' ``StableDiffusionImg2ImgPipeline``: the last ``min(int(num_steps *
    strength), num_steps)`` steps of the ``num_steps``-step loop, from
    ``scheduler.add_noise(image_latents, noise, timesteps[t_start])``; see
    :func:`diffjax.samplers.diffusers_compat.img2img_sampler`::

        sampler, add_noise = img2img_sampler_from_scheduler_config(config, 25, strength)
        latents = sample(sampler, denoise, add_noise(image_latents, noise), key, cond)

    Args:
      config: as for :func:`sampler_from_scheduler_config`.
      num_steps: diffusers' ``num_inference_steps`` (before ``strength``).
      strength: in ``[0, 1]``; may be traced (every strength shares one compilation).
      eta: as for :func:`sampler_from_scheduler_config`.
      noise_fn: as for :func:`sampler_from_scheduler_config` (its ``step_index`` counts
        the calls since the start, as diffusers draws them).

    Returns:
      ``(sampler, add_noise)``: ``add_noise(image_latents, noise) -> x_start`` is the
      ``x_T`` to pass to :func:`~diffjax.samplers.sample` (``init`` does not rescale it);
      the sampler keeps the full loop's static ``num_steps`` and skips (with no network
      call) the calls before the start.

    Raises:
      ValueError: as :func:`sampler_from_scheduler_config`, or a concrete ``strength``
        outside ``[0, 1]``.
    """
    loop = loop_from_scheduler_config(config, num_steps, eta=eta, noise_fn=noise_fn)
    return img2img_sampler(loop, strength)
