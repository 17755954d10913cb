"""Euler, Euler ancestral and LMS in sigma space, exactly as diffusers' schedulers run them.

diffusers' ``EulerDiscreteScheduler``, ``EulerAncestralDiscreteScheduler`` and
``LMSDiscreteScheduler`` (k-diffusion's samplers, Karras et al. 2022) integrate the
probability-flow ODE ``dx/dsigma = (x - x0(x, sigma)) / sigma`` of the variance-exploding
sample ``x = x_vp / alpha = x_vp sqrt(1 + sigma**2)``, ``sigma = sqrt((1 - a) / a)``
(``a = alpha_bar``). The network sees the input scaled back to VP,
``x / sqrt(sigma**2 + 1)`` (``scale_model_input``), at the model timestep diffusers
passes (fractional with ``linspace`` spacing or Karras/exponential sigmas; those are
passed to the denoiser unchanged). The state is diffusers' ``sample``: the txt2img
sampler's ``init`` multiplies unit noise by ``init_noise_sigma`` (``sigma_max``, or
``sqrt(sigma_max**2 + 1)`` for ``leading`` spacing; img2img starts from ``x0 + sigma
noise`` unscaled, see :func:`~diffjax.samplers.diffusers_compat.img2img_sampler`) and
``finalize`` returns the sample at the last sigma (0, or ``sigma_min`` with
``final_sigmas_type='sigma_min'``). Each class is a ``*_loop`` builder
(:class:`~diffjax.samplers.diffusers_compat.DiffusersLoop`) and its txt2img Sampler.

With ``d_i = (x_i - x0_i) / sigma_i``:

* Euler: ``x_{i+1} = x_i + d_i (sigma_{i+1} - sigma_i)``.
* Euler ancestral: ``sigma_up = sqrt(sigma_{i+1}**2 (sigma_i**2 - sigma_{i+1}**2) /
  sigma_i**2)``, ``sigma_down = sqrt(sigma_{i+1}**2 - sigma_up**2)`` and
  ``x_{i+1} = x_i + d_i (sigma_down - sigma_i) + sigma_up z``. ``sigma_up**2`` is the
  DDPM posterior variance of ``q(x_{i+1} | x_i, x_0)`` in sigma space (the VP one
  divided by ``alpha_bar_{i+1}``).
* LMS (linear multistep, order ``k = min(i + 1, 4)``): ``x_{i+1} = x_i + sum_j c_ij
  d_{i-j}`` with ``c_ij = int_{sigma_i}^{sigma_{i+1}} prod_{m != j, m < k} (s -
  sigma_{i-m}) / (sigma_{i-j} - sigma_{i-m}) ds``, the integral of a cubic at most;
  Gauss-Legendre with 4 nodes is exact for it (diffusers uses ``scipy.integrate.quad``).

References:
  Karras, Aittala, Aila & Laine, "Elucidating the Design Space of Diffusion-Based
  Generative Models", NeurIPS 2022 (Eq. 5 and the sigma grid, Eq. 269).
  Crowson, k-diffusion (``sample_euler``, ``sample_euler_ancestral``, ``sample_lms``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.parameterization import DenoiseFn, check_prediction_type
from diffjax.samplers.diffusers_compat import (
    SIGMA_SCHEDULES,
    DiffusersLoop,
    NoiseFn,
    check_num_steps,
    check_spacing,
    convert_sigmas,
    default_noise,
    noise_coeffs_table,
    raw_model_output,
    sigma_to_t,
    table_alphas_cumprod,
    txt2img_factory,
)
from diffjax.schedules import DiscreteSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "SIGMA_SCHEDULES",
    "EulerState",
    "LMSState",
    "ancestral_sigmas",
    "diffusers_sigmas",
    "euler_ancestral_discrete",
    "euler_ancestral_discrete_loop",
    "euler_discrete",
    "euler_discrete_loop",
    "lms_coefficients",
    "lms_discrete",
    "lms_discrete_loop",
]

_LMS_ORDER = 4


class EulerState(NamedTuple):
    """Euler / Euler ancestral state: diffusers' ``sample`` (sigma space, float32)."""

    x: Array


class LMSState(NamedTuple):
    """LMS state: the sample and the last four derivatives (newest first)."""

    x: Array
    derivatives: Array


def _spaced_timesteps(T: int, n: int, spacing: str, steps_offset: int) -> np.ndarray:
    """The float32 grid of the sigma-space classes' ``set_timesteps`` (decreasing)."""
    check_spacing(spacing)
    if spacing == "linspace":
        return np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ratio = T // n
        ts = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.float32)
        return ts + np.float32(steps_offset)
    return np.arange(T, 0, -T / n).round().copy().astype(np.float32) - np.float32(1)


def diffusers_sigmas(
    alphas_cumprod: ArrayLike,
    num_steps: int,
    *,
    timestep_spacing: str = "linspace",
    steps_offset: int = 0,
    sigma_schedule: str | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    final_sigmas_type: str = "zero",
) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """The model timesteps, sigmas and ``init_noise_sigma`` of the sigma-space classes.

    Mirrors ``set_timesteps`` of diffusers' Euler, Euler ancestral and LMS (with
    ``interpolation_type='linear'``): ``sigma(t) = sqrt((1 - a_t) / a_t)`` interpolated
    linearly at the spaced timesteps; Karras (``rho = 7``) or exponential sigmas between
    ``sigma_min`` and ``sigma_max`` (default: the interpolated ends) mapped back to
    fractional timesteps by log-linear interpolation; a final sigma of 0 or, with
    ``final_sigmas_type='sigma_min'``, ``sigma(0)``.

    Args:
      alphas_cumprod: diffusers' float32 ``alpha_bar`` table, shape ``(T,)``.
      num_steps: ``num_inference_steps``.
      timestep_spacing: ``'linspace'``, ``'leading'`` or ``'trailing'``.
      steps_offset: added to the ``leading`` grid.
      sigma_schedule: ``None``, ``'karras'`` or ``'exponential'``.
      sigma_min: Karras/exponential lower end (``None``: the interpolated one).
      sigma_max: their upper end.
      final_sigmas_type: ``'zero'`` or ``'sigma_min'``.

    Returns:
      ``(timesteps, sigmas, init_noise_sigma)``: float32 ``(n,)`` model timesteps,
      float32 ``(n + 1,)`` sigmas and the float32 initial noise scale.
    """
    if sigma_schedule not in SIGMA_SCHEDULES:
        raise ValueError(
            f"sigma_schedule={sigma_schedule!r} is not supported; expected one of "
            f"{list(SIGMA_SCHEDULES)}"
        )
    if final_sigmas_type not in ("zero", "sigma_min"):
        raise ValueError(
            f"final_sigmas_type must be 'zero' or 'sigma_min', got {final_sigmas_type!r}"
        )
    ac = np.asarray(alphas_cumprod, np.float32)
    T = ac.shape[0]
    n = check_num_steps(num_steps, T)
    timesteps = _spaced_timesteps(T, n, timestep_spacing, steps_offset)
    if timesteps.max() > T - 1 or timesteps.min() < 0:
        raise ValueError(f"steps_offset={steps_offset} puts timesteps outside [0, {T - 1}]")
    table = np.sqrt((np.float32(1) - ac) / ac)
    log_sigmas = np.log(table)
    sigmas = np.interp(timesteps, np.arange(0, T), table)
    if sigma_schedule is not None:
        lo = float(sigmas[-1]) if sigma_min is None else float(sigma_min)
        hi = float(sigmas[0]) if sigma_max is None else float(sigma_max)
        sigmas = convert_sigmas(sigma_schedule, lo, hi, n)
        timesteps = sigma_to_t(sigmas, log_sigmas)
    last = table[0] if final_sigmas_type == "sigma_min" else 0.0
    sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
    max_sigma = sigmas.max()
    if timestep_spacing in ("linspace", "trailing"):
        init_sigma = np.float32(max_sigma)
    else:
        init_sigma = np.sqrt(max_sigma * max_sigma + np.float32(1))
    return timesteps.astype(np.float32), sigmas, np.float32(init_sigma)


def ancestral_sigmas(sigma_from: ArrayLike, sigma_to: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``(sigma_up, sigma_down)`` of an ancestral step (k-diffusion, eta = 1).

    ``sigma_up**2 = sigma_to**2 (sigma_from**2 - sigma_to**2) / sigma_from**2`` and
    ``sigma_down = sqrt(sigma_to**2 - sigma_up**2)``, in float32 as diffusers computes
    them.
    """
    s_from = np.asarray(sigma_from, np.float32)
    s_to = np.asarray(sigma_to, np.float32)
    up = np.sqrt(s_to**2 * (s_from**2 - s_to**2) / s_from**2)
    down = np.sqrt(s_to**2 - up**2)
    return up.astype(np.float32), down.astype(np.float32)


def lms_coefficients(sigmas: ArrayLike, order: int = _LMS_ORDER) -> np.ndarray:
    """LMS's integrated Lagrange coefficients, ``(n, order)`` (newest derivative first).

    Row ``i`` holds ``c_ij`` for ``j < min(i + 1, order)`` (zeros after), computed with
    4-node Gauss-Legendre quadrature in float64, exact for these polynomials of degree
    ``< order <= 4``.
    """
    s = np.asarray(sigmas, np.float64)
    n = s.shape[0] - 1
    nodes, weights = np.polynomial.legendre.leggauss(4)
    coeffs = np.zeros((n, order))
    for i in range(n):
        k = min(i + 1, order)
        a, b = s[i], s[i + 1]
        tau = 0.5 * (b - a) * nodes + 0.5 * (a + b)
        for j in range(k):
            basis = np.ones_like(tau)
            for m in range(k):
                if m != j:
                    basis = basis * (tau - s[i - m]) / (s[i - j] - s[i - m])
            coeffs[i, j] = 0.5 * (b - a) * np.sum(weights * basis)
    return coeffs


def _setup(
    schedule: DiscreteSchedule,
    num_steps: int,
    alphas_cumprod: ArrayLike | None,
    prediction_type: str,
    **sigma_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray, np.float32]:
    check_prediction_type(prediction_type)
    ac = table_alphas_cumprod(schedule, alphas_cumprod)
    return diffusers_sigmas(ac, num_steps, **sigma_kwargs)


def _derivative(
    denoise_fn: DenoiseFn,
    x: Array,
    i: Array,
    cond: Any,
    tabs: dict[str, Array],
    schedule: DiscreteSchedule,
    prediction_type: str,
) -> Array:
    """``(x - x0) / sigma`` at step ``i``, with ``x0`` formed as diffusers forms it."""
    dtype = x.dtype
    sigma, c = tabs["sigma"][i].astype(dtype), tabs["c_in"][i].astype(dtype)
    t = tabs["t"][i]
    x_in = x / c
    raw = raw_model_output(denoise_fn(x_in, t, cond), x_in, t, schedule, prediction_type)
    if prediction_type == "eps":
        x0 = x - sigma * raw
    elif prediction_type == "v":
        x0 = raw * (-sigma / c) + x / (sigma * sigma + 1)
    else:
        x0 = raw
    return (x - x0) / sigma


def _tables(timesteps: np.ndarray, sigmas: np.ndarray) -> dict[str, Array]:
    s = sigmas.astype(np.float32)
    c_in = np.sqrt(s[:-1] * s[:-1] + np.float32(1))
    return {
        "t": jnp.asarray(timesteps, jnp.float32),
        "sigma": jnp.asarray(s[:-1]),
        "sigma_next": jnp.asarray(s[1:]),
        "c_in": jnp.asarray(c_in),
    }


def _sigma_loop(
    step: Any, init: Any, schedule: DiscreteSchedule, sigmas: np.ndarray,
    init_sigma: np.float32, order: int | None,
) -> DiffusersLoop:
    """A sigma-space class's loop: ``add_noise`` is ``x0 + sigma[t_start] noise``."""
    n = int(sigmas.shape[0]) - 1
    return DiffusersLoop(
        num_steps=n, num_inference_steps=n, init=init, step=step, finalize=lambda s: s.x,
        schedule=schedule, init_noise_sigma=init_sigma,
        noise_coeffs=noise_coeffs_table(n, np.ones(n, np.float32), sigmas[:-1]), order=order,
    )


def euler_discrete_loop(
    schedule: DiscreteSchedule,
    num_steps: int,
    *,
    alphas_cumprod: ArrayLike | None = None,
    timestep_spacing: str = "linspace",
    steps_offset: int = 0,
    sigma_schedule: str | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    final_sigmas_type: str = "zero",
    prediction_type: str = "eps",
) -> DiffusersLoop:
    """Diffusers' ``EulerDiscreteScheduler`` loop (``s_churn = 0``).

    Args:
      schedule: the denoiser's schedule (recorded for :func:`~diffjax.samplers.sample`).
      num_steps: ``num_inference_steps``.
      alphas_cumprod: diffusers' float32 table (``None``: the schedule's).
      timestep_spacing: ``'linspace'``, ``'leading'`` or ``'trailing'``.
      steps_offset: added to the ``leading`` grid.
      sigma_schedule: ``None``, ``'karras'`` (diffusers' ``use_karras_sigmas``) or
        ``'exponential'`` (``use_exponential_sigmas``).
      sigma_min: their lower end (``None``: the interpolated one).
      sigma_max: their upper end.
      final_sigmas_type: ``'zero'`` or ``'sigma_min'`` (see :func:`diffusers_sigmas`).
      prediction_type: ``'eps'``, ``'v'`` or ``'x0'``.

    Returns:
      A :class:`~diffjax.samplers.diffusers_compat.DiffusersLoop` of ``num_steps`` calls.
    """
    timesteps, sigmas, init_sigma = _setup(
        schedule, num_steps, alphas_cumprod, prediction_type, timestep_spacing=timestep_spacing,
        steps_offset=steps_offset, sigma_schedule=sigma_schedule, sigma_min=sigma_min,
        sigma_max=sigma_max, final_sigmas_type=final_sigmas_type,
    )
    tabs = _tables(timesteps, sigmas)

    def step(
        denoise_fn: DenoiseFn, state: EulerState, i: Array, j: Array, key: Array, cond: Any
    ) -> EulerState:
        del j, key
        x = state.x
        d = _derivative(denoise_fn, x, i, cond, tabs, schedule, prediction_type)
        dt = tabs["sigma_next"][i].astype(x.dtype) - tabs["sigma"][i].astype(x.dtype)
        return EulerState(x=(x + d * dt).astype(x.dtype))

    return _sigma_loop(step, EulerState, schedule, sigmas, init_sigma, order=1)


def euler_ancestral_discrete_loop(
    schedule: DiscreteSchedule,
    num_steps: int,
    *,
    alphas_cumprod: ArrayLike | None = None,
    timestep_spacing: str = "linspace",
    steps_offset: int = 0,
    prediction_type: str = "eps",
    noise_fn: NoiseFn | None = None,
) -> DiffusersLoop:
    """Diffusers' ``EulerAncestralDiscreteScheduler`` loop.

    Args:
      schedule: the denoiser's schedule.
      num_steps: ``num_inference_steps``.
      alphas_cumprod: diffusers' float32 table (``None``: the schedule's).
      timestep_spacing: ``'linspace'``, ``'leading'`` or ``'trailing'``.
      steps_offset: added to the ``leading`` grid.
      prediction_type: ``'eps'`` or ``'v'`` (diffusers refuses x0 networks here).
      noise_fn: ``noise_fn(key, step_index, shape, dtype)``, the step's ``z``
        (``step_index`` counts the calls since the start; default ``jax.random.normal``
        with the step's key; :func:`~diffjax.samplers.diffusers_compat.replay_noise`
        replays diffusers' draws).

    Returns:
      A :class:`~diffjax.samplers.diffusers_compat.DiffusersLoop` of ``num_steps`` calls.
    """
    if prediction_type == "x0":
        raise ValueError(
            "EulerAncestralDiscreteScheduler supports prediction_type 'epsilon' and "
            "'v_prediction', not 'sample'"
        )
    timesteps, sigmas, init_sigma = _setup(
        schedule, num_steps, alphas_cumprod, prediction_type, timestep_spacing=timestep_spacing,
        steps_offset=steps_offset,
    )
    tabs = _tables(timesteps, sigmas)
    up, down = ancestral_sigmas(sigmas[:-1], sigmas[1:])
    tabs["up"], tabs["down"] = jnp.asarray(up), jnp.asarray(down)
    noise_fn = default_noise if noise_fn is None else noise_fn

    def step(
        denoise_fn: DenoiseFn, state: EulerState, i: Array, j: Array, key: Array, cond: Any
    ) -> EulerState:
        x = state.x
        dtype = x.dtype
        d = _derivative(denoise_fn, x, i, cond, tabs, schedule, prediction_type)
        x_new = x + d * (tabs["down"][i].astype(dtype) - tabs["sigma"][i].astype(dtype))
        x_new = x_new + noise_fn(key, j, x.shape, dtype) * tabs["up"][i].astype(dtype)
        return EulerState(x=x_new.astype(dtype))

    return _sigma_loop(step, EulerState, schedule, sigmas, init_sigma, order=None)


def lms_discrete_loop(
    schedule: DiscreteSchedule,
    num_steps: int,
    *,
    alphas_cumprod: ArrayLike | None = None,
    timestep_spacing: str = "linspace",
    steps_offset: int = 0,
    sigma_schedule: str | None = None,
    prediction_type: str = "eps",
    order: int = _LMS_ORDER,
) -> DiffusersLoop:
    """Diffusers' ``LMSDiscreteScheduler`` loop (order 4 by default).

    Step ``i`` uses the coefficients of order ``min(i + 1, order)`` at the absolute
    ``step_index`` and the derivatives stored since the start (diffusers' ``zip``
    over the shorter list: a fresh scheduler's missing derivatives count as zero).

    Args:
      schedule: the denoiser's schedule.
      num_steps: ``num_inference_steps``.
      alphas_cumprod: diffusers' float32 table (``None``: the schedule's).
      timestep_spacing: ``'linspace'``, ``'leading'`` or ``'trailing'``.
      steps_offset: added to the ``leading`` grid.
      sigma_schedule: ``None``, ``'karras'`` or ``'exponential'``.
      prediction_type: ``'eps'``, ``'v'`` or ``'x0'``.
      order: the multistep order (diffusers' ``step(order=4)``), 1 to 4.

    Returns:
      A :class:`~diffjax.samplers.diffusers_compat.DiffusersLoop` of ``num_steps`` calls.
    """
    if not 1 <= int(order) <= _LMS_ORDER:
        raise ValueError(f"LMS order must be in [1, {_LMS_ORDER}], got {order}")
    timesteps, sigmas, init_sigma = _setup(
        schedule, num_steps, alphas_cumprod, prediction_type, timestep_spacing=timestep_spacing,
        steps_offset=steps_offset, sigma_schedule=sigma_schedule,
    )
    tabs = _tables(timesteps, sigmas)
    coeffs = np.zeros((len(timesteps), _LMS_ORDER))
    coeffs[:, :order] = lms_coefficients(sigmas, int(order))
    tabs["coeffs"] = jnp.asarray(coeffs, jnp.float32)

    def init(x: Array) -> LMSState:
        return LMSState(x=x, derivatives=jnp.zeros((_LMS_ORDER, *x.shape), x.dtype))

    def step(
        denoise_fn: DenoiseFn, state: LMSState, i: Array, j: Array, key: Array, cond: Any
    ) -> LMSState:
        del j, key
        x = state.x
        d = _derivative(denoise_fn, x, i, cond, tabs, schedule, prediction_type)
        ders = jnp.concatenate([d[None], state.derivatives[:-1]])
        x_new = x + jnp.tensordot(tabs["coeffs"][i].astype(x.dtype), ders, axes=1)
        return LMSState(x=x_new.astype(x.dtype), derivatives=ders)

    return _sigma_loop(step, init, schedule, sigmas, init_sigma, order=None)


euler_discrete = txt2img_factory(euler_discrete_loop, "euler_discrete", "EulerDiscreteScheduler")


euler_ancestral_discrete = txt2img_factory(
    euler_ancestral_discrete_loop, "euler_ancestral_discrete", "EulerAncestralDiscreteScheduler"
)


lms_discrete = txt2img_factory(lms_discrete_loop, "lms_discrete", "LMSDiscreteScheduler")
