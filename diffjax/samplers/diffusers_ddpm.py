"""diffusers' ``DDPMScheduler`` and ``LCMScheduler`` step loops, exactly.

Both step from the predicted ``x0`` (:func:`~diffjax.samplers.diffusers_compat.predicted_x0`,
clipped or thresholded as the config says) with tables computed in float32 as diffusers
computes them:

* **DDPM** (Ho et al. 2020, Eq. 7): from ``t`` to the next grid time ``s`` (``-1`` after
  the last, where ``alpha_bar = 1``), ``beta = 1 - a_t / a_s`` and
  ``x_s = sqrt(a_s) beta / (1 - a_t) x0 + sqrt(a_t / a_s) (1 - a_s) / (1 - a_t) x_t
  + std z`` with the posterior ``var = (1 - a_s) / (1 - a_t) beta`` (clamped at 1e-20):
  ``std = sqrt(var)`` (``fixed_small``), ``exp(log(var) / 2)`` (``fixed_small_log``) or
  ``sqrt(beta)`` (``fixed_large``); no noise where ``t = 0``. This is diffusers' grid
  (``leading`` / ``trailing`` / ``linspace``, skipping steps when ``n < T``); diffjax's
  own :func:`~diffjax.samplers.ddpm` stays the default elsewhere.
* **LCM** (Luo et al. 2023, Eq. 9): the consistency function ``f(x, t) = c_skip(t) x +
  c_out(t) x0`` with ``c_skip = s_d^2 / ((10 t)^2 + s_d^2)``, ``c_out = 10 t /
  sqrt((10 t)^2 + s_d^2)`` (``sigma_data = 0.5``, ``timestep_scaling = 10``), then
  re-noised to the next grid time, ``x_s = sqrt(a_s) f + sqrt(1 - a_s) z``, except on the
  last step, which returns ``f``. The grid takes ``n`` of the ``original_inference_steps``
  distillation timesteps ``k * T / N - 1``. LCM checkpoints also take a guidance
  embedding (``time_cond_proj_dim``): :func:`guidance_scale_embedding` is diffusers'
  ``get_guidance_scale_embedding`` of ``w = guidance_scale - 1``.

References:
  Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
  Luo, Tan, Huang, Li & Zhao, "Latent Consistency Models", 2023.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.parameterization import check_prediction_type
from diffjax.samplers.diffusers_compat import (
    DiffusersDDIMState,
    DiffusersLoop,
    NoiseFn,
    alpha_bar_noise_coeffs,
    check_num_steps,
    default_noise,
    diffusers_ddim_timesteps,
    noise_coeffs_table,
    table_alphas_cumprod,
    txt2img_factory,
    x0_clipping,
    x0_update_loop,
)
from diffjax.schedules import DiscreteSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "DIFFUSERS_DDPM_VARIANCES",
    "DiffusersDDPMState",
    "diffusers_ddpm",
    "diffusers_ddpm_loop",
    "guidance_scale_embedding",
    "lcm",
    "lcm_loop",
    "lcm_timesteps",
]

DIFFUSERS_DDPM_VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large")
_F32 = np.float32


DiffusersDDPMState = DiffusersDDIMState  # the DDPM and LCM loops' state: the sample


def _x0_loop(
    schedule: DiscreteSchedule, ts: np.ndarray, ac: np.ndarray, prediction_type: str,
    clip: Any, update: Any, noise_fn: NoiseFn | None,
) -> DiffusersLoop:
    """:func:`x0_update_loop` on diffusers' float32 ``alpha_bar``, drawing noise each call."""
    a_t = ac[ts]
    return x0_update_loop(
        schedule, ts, np.sqrt(a_t), np.sqrt(_F32(1) - a_t), prediction_type, clip, update,
        noise_fn=default_noise if noise_fn is None else noise_fn,
        noise_coeffs=noise_coeffs_table(len(ts), *alpha_bar_noise_coeffs(ac, ts).T),
        order=None,
    )


def diffusers_ddpm_loop(
    schedule: DiscreteSchedule,
    num_steps: int,
    *,
    alphas_cumprod: ArrayLike | None = None,
    variance_type: str = "fixed_small",
    timestep_spacing: str = "leading",
    steps_offset: int = 0,
    prediction_type: str = "eps",
    clip_sample: bool = True,
    clip_sample_range: float = 1.0,
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    noise_fn: NoiseFn | None = None,
) -> DiffusersLoop:
    """Diffusers' ``DDPMScheduler`` loop (ancestral sampling on diffusers' grid).

    Args:
      schedule: the denoiser's schedule.
      num_steps: ``num_inference_steps``.
      alphas_cumprod: diffusers' float32 table (``None``: the schedule's).
      variance_type: one of :data:`DIFFUSERS_DDPM_VARIANCES` (``learned`` variances need
        the network's variance channels, which a denoiser does not return).
      timestep_spacing: ``'leading'``, ``'trailing'`` or ``'linspace'``.
      steps_offset: added to the ``leading`` grid.
      prediction_type: ``'eps'``, ``'v'`` or ``'x0'``.
      clip_sample: clip ``x0`` to ``[-clip_sample_range, clip_sample_range]``.
      clip_sample_range: see ``clip_sample``.
      thresholding: diffusers' dynamic thresholding (takes precedence over clipping).
      dynamic_thresholding_ratio: its quantile.
      sample_max_value: its largest threshold.
      noise_fn: ``noise_fn(key, step_index, shape, dtype)`` (``step_index`` the calls
        since the start; default :func:`~diffjax.samplers.diffusers_compat.default_noise`).

    Returns:
      A :class:`~diffjax.samplers.diffusers_compat.DiffusersLoop` of ``num_steps`` calls.
    """
    check_prediction_type(prediction_type)
    if variance_type not in DIFFUSERS_DDPM_VARIANCES:
        raise ValueError(
            f"variance_type={variance_type!r} is not supported; expected one of "
            f"{list(DIFFUSERS_DDPM_VARIANCES)}"
        )
    ac = table_alphas_cumprod(schedule, alphas_cumprod)
    T = ac.shape[0]
    n = check_num_steps(num_steps, T)
    ts = diffusers_ddim_timesteps(T, n, timestep_spacing, steps_offset)
    if ts.max() > T - 1 or ts.min() < 0:
        raise ValueError(f"steps_offset={steps_offset} puts DDPM timesteps outside [0, {T - 1}]")
    prev = np.concatenate([ts[1:], [-1]])
    a_t = ac[ts]
    a_s = np.where(prev >= 0, ac[np.clip(prev, 0, T - 1)], _F32(1)).astype(_F32)
    b_t, b_s = _F32(1) - a_t, _F32(1) - a_s
    cur_alpha = (a_t / a_s).astype(_F32)
    beta = (_F32(1) - cur_alpha).astype(_F32)
    c_x0 = (np.sqrt(a_s) * beta / b_t).astype(_F32)
    c_x = (np.sqrt(cur_alpha) * b_s / b_t).astype(_F32)
    var = np.maximum((b_s / b_t * beta).astype(_F32), _F32(1e-20))
    std = {"fixed_small": np.sqrt(var), "fixed_large": np.sqrt(beta),
           "fixed_small_log": np.exp(_F32(0.5) * np.log(var))}[variance_type]
    std = np.where(ts > 0, std, 0.0)
    tabs = {k: jnp.asarray(v, jnp.float32) for k, v in
            {"c_x0": c_x0, "c_x": c_x, "std": std}.items()}

    def update(x0: Array, eps: Array, x: Array, i: Array, z: Array) -> Array:
        dtype = x.dtype
        mean = tabs["c_x0"][i].astype(dtype) * x0 + tabs["c_x"][i].astype(dtype) * x
        return mean + tabs["std"][i].astype(dtype) * z

    clip = x0_clipping(thresholding, dynamic_thresholding_ratio, sample_max_value, clip_sample,
                       clip_sample_range)
    return _x0_loop(schedule, ts, ac, prediction_type, clip, update, noise_fn)


def lcm_timesteps(
    num_timesteps: int, num_steps: int, original_inference_steps: int = 50
) -> np.ndarray:
    """``LCMScheduler.set_timesteps``: ``n`` of the distillation grid ``k * T // N - 1``.

    Raises:
      ValueError: if ``num_steps > original_inference_steps`` or the latter exceeds ``T``.
    """
    T, n, N = int(num_timesteps), int(num_steps), int(original_inference_steps)
    if N > T:
        raise ValueError(f"original_inference_steps={N} cannot exceed num_train_timesteps={T}")
    if not 1 <= n <= N:
        raise ValueError(
            f"LCMScheduler needs 1 <= num_steps <= original_inference_steps={N}, got {n}"
        )
    origin = (np.arange(1, N + 1) * (T // N) - 1)[::-1]
    idx = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
    return origin[idx].astype(np.int64)


def lcm_loop(
    schedule: DiscreteSchedule,
    num_steps: int,
    *,
    alphas_cumprod: ArrayLike | None = None,
    original_inference_steps: int = 50,
    timestep_scaling: float = 10.0,
    set_alpha_to_one: bool = True,
    prediction_type: str = "eps",
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    noise_fn: NoiseFn | None = None,
) -> DiffusersLoop:
    """Diffusers' ``LCMScheduler`` loop (multistep consistency sampling).

    Args:
      schedule: the denoiser's schedule.
      num_steps: ``num_inference_steps`` (at most ``original_inference_steps``).
      alphas_cumprod: diffusers' float32 table (``None``: the schedule's).
      original_inference_steps: the distillation grid's size ``N``.
      timestep_scaling: the boundary condition's time scale (diffusers: 10).
      set_alpha_to_one: ``final_alpha_cumprod`` for a negative target (never reached on
        diffusers' grid, kept for the config).
      prediction_type: ``'eps'``, ``'v'`` or ``'x0'``.
      clip_sample: clip ``x0``.
      clip_sample_range: see ``clip_sample``.
      thresholding: diffusers' dynamic thresholding.
      dynamic_thresholding_ratio: its quantile.
      sample_max_value: its largest threshold.
      noise_fn: the re-noising draws (``step_index`` the calls since the start).

    Returns:
      A :class:`~diffjax.samplers.diffusers_compat.DiffusersLoop` of ``num_steps`` calls;
      the last step (by the full grid's index) returns the consistency function.
    """
    check_prediction_type(prediction_type)
    ac = table_alphas_cumprod(schedule, alphas_cumprod)
    T = ac.shape[0]
    ts = lcm_timesteps(T, num_steps, original_inference_steps)
    n = len(ts)
    prev = np.concatenate([ts[1:], ts[-1:]])
    final = _F32(1) if set_alpha_to_one else ac[0]
    a_s = np.where(prev >= 0, ac[np.clip(prev, 0, T - 1)], final).astype(_F32)
    scaled = ts.astype(np.float64) * float(timestep_scaling)
    c_skip = 0.25 / (scaled**2 + 0.25)
    c_out = scaled / np.sqrt(scaled**2 + 0.25)
    last = np.arange(n) == n - 1
    tabs = {k: jnp.asarray(np.asarray(v), jnp.float32) for k, v in {
        "c_skip": c_skip, "c_out": c_out, "renoise": ~last,
        "sa_s": np.sqrt(a_s), "sb_s": np.sqrt(_F32(1) - a_s)}.items()}

    def update(x0: Array, eps: Array, x: Array, i: Array, z: Array) -> Array:
        dtype = x.dtype
        denoised = tabs["c_out"][i].astype(dtype) * x0 + tabs["c_skip"][i].astype(dtype) * x
        noisy = tabs["sa_s"][i].astype(dtype) * denoised + tabs["sb_s"][i].astype(dtype) * z
        return jnp.where(tabs["renoise"][i] > 0, noisy, denoised)

    clip = x0_clipping(thresholding, dynamic_thresholding_ratio, sample_max_value, clip_sample,
                       clip_sample_range)
    return _x0_loop(schedule, ts, ac, prediction_type, clip, update, noise_fn)


def guidance_scale_embedding(
    guidance_scale: ArrayLike, embedding_dim: int, dtype: Any = jnp.float32
) -> Array:
    """Diffusers' ``get_guidance_scale_embedding`` of ``w = guidance_scale - 1``.

    The LCM UNet's ``timestep_cond`` (``time_cond_proj_dim`` wide): ``w' = 1000 w``,
    ``[sin(w' f), cos(w' f)]`` with ``f_k = exp(-k log(10000) / (d/2 - 1))`` (zero padded
    for odd ``d``).

    Args:
      guidance_scale: shape ``(batch,)`` (or scalar; may be traced).
      embedding_dim: the UNet's ``time_cond_proj_dim``.
      dtype: the embedding's dtype.

    Returns:
      ``(batch, embedding_dim)``.
    """
    w = (jnp.atleast_1d(jnp.asarray(guidance_scale, jnp.float32)) - 1.0) * 1000.0
    half = embedding_dim // 2
    freq = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(jnp.log(10000.0) / (half - 1)))
    emb = w[:, None] * freq[None, :]
    emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=1)
    if embedding_dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(dtype)


diffusers_ddpm = txt2img_factory(diffusers_ddpm_loop, "diffusers_ddpm", "DDPMScheduler")


lcm = txt2img_factory(lcm_loop, "lcm", "LCMScheduler")
