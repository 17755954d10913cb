"""The EDM Heun sampler (Karras et al. 2022) with Karras sigmas, for VP-trained models.

EDM writes the probability-flow ODE in the noise level ``sigma`` of the variance-exploding
variable ``x_edm = x / alpha``: ``dx_edm / dsigma = (x_edm - D(x_edm; sigma)) / sigma``,
with ``D`` the denoiser (Karras et al. Eq. 1 and 3 with ``s(t) = 1``, ``sigma(t) = t``).
A VP model (``x_t = alpha(t) x0 + sigma_vp(t) eps``) gives that denoiser exactly through
the change of variables

    sigma_edm(t) = sigma_vp(t) / alpha(t),   x_t = alpha(t) x_edm,
    D(x_edm; sigma) = x0-prediction of the model at (alpha(t) x_edm, t),

where ``t`` solves ``sigma_edm(t) = sigma``, i.e. ``log_snr(t) = -2 log sigma``; it is
found with ``schedule.t_from_log_snr``: exact for continuous schedules, and for a
:class:`~diffjax.schedules.DiscreteSchedule` the interpolated (fractional) time of its
piecewise-linear ``log alpha_bar`` -- the same interpolation its ``alpha(t)`` and
``sigma(t)`` use, so input scaling and network time always agree. (k-diffusion's
``DiscreteSchedule`` interpolates ``log sigma_edm`` linearly instead; both agree at
integer timesteps, and neither rounds to the nearest one.) On a discrete schedule, noise
levels beyond its range (churn above ``sigma_max``) clamp to its ends, as in k-diffusion.

One step from ``sigma_i`` to ``sigma_{i+1}`` is Algorithm 2 of Karras et al.: optional
churn raises the noise to ``sigma_hat = sigma_i (1 + gamma_i)`` with
``gamma_i = min(S_churn / N, sqrt(2) - 1)`` for ``S_tmin <= sigma_i <= S_tmax`` by adding
``sqrt(sigma_hat^2 - sigma_i^2) S_noise z``; then an Euler step, corrected by Heun's
trapezoid rule unless ``sigma_{i+1} = 0`` (Algorithm 1 line 9): ``N`` steps down to
``sigma = 0`` cost ``2 N - 1`` network evaluations. ``S_churn = 0`` (the default) is the
deterministic Algorithm 1.

The state is the VP sample's EDM form ``x_edm`` with its current scale ``alpha``, so the
driver's ``x_T`` (a VP sample at ``sigma_max``) enters as ``x_T / alpha`` and every
trajectory entry is a VP sample ``alpha x_edm``.

References:
  Karras, Aittala, Aila & Laine, "Elucidating the Design Space of Diffusion-Based
  Generative Models", NeurIPS 2022, Algorithms 1 and 2, Eq. 5 (the sigma grid).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_int
from diffjax.parameterization import DenoiseFn
from diffjax.samplers.driver import (
    Sampler,
    check_nonnegative_scalar,
    concrete_value,
    state_dtype,
)
from diffjax.samplers.exponential import dispatch, sampling_time_range
from diffjax.schedules import VPSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = ["EDMState", "edm_heun", "edm_sigma_range", "karras_interpolate", "karras_sigmas"]


class EDMState(NamedTuple):
    """EDM sampler state.

    Attributes:
      x: the sample in EDM form, ``x_edm = x_vp / alpha`` (float32).
      alpha: the VP scale ``1 / sqrt(1 + sigma^2)`` of the current noise level.
    """

    x: Array
    alpha: Array


def karras_interpolate(
    ramp: ArrayLike, sigma_min: float, sigma_max: float, rho: float = 7.0
) -> ArrayLike:
    """``(sigma_max^(1/rho) + ramp (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`` (Eq. 5).

    ``ramp = 0`` is ``sigma_max`` and ``ramp = 1`` is ``sigma_min``; NumPy in, NumPy out,
    and traced ``ramp`` works too (the levels of consistency training's curriculum).
    """
    lo, hi = float(sigma_min) ** (1.0 / rho), float(sigma_max) ** (1.0 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def karras_sigmas(
    num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0
) -> np.ndarray:
    """Karras et al.'s noise levels (Eq. 5) followed by the final ``0``.

    ``sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
    for ``i = 0..N-1`` (k-diffusion's ``get_sigmas_karras``).

    Args:
      num_steps: ``N``, the number of nonzero noise levels (sampler steps), ``>= 1``.
      sigma_min: the last nonzero level (``> 0``).
      sigma_max: the first level (``>= sigma_min``).
      rho: the warping exponent (7 in the paper).

    Returns:
      float64 array of shape ``(N + 1,)``, decreasing, ending in 0.

    Raises:
      ValueError: for a bad argument.
    """
    num_steps = check_int("num_steps", num_steps, minimum=1)
    if not 0.0 < float(sigma_min) <= float(sigma_max) < math.inf:
        raise ValueError(f"need 0 < sigma_min <= sigma_max < inf, got {sigma_min=}, {sigma_max=}")
    if not float(rho) > 0.0:
        raise ValueError(f"rho must be > 0, got {rho=}")
    ramp = np.linspace(0.0, 1.0, int(num_steps))
    return np.append(karras_interpolate(ramp, sigma_min, sigma_max, rho), 0.0)


def edm_sigma_range(schedule: VPSchedule) -> tuple[float, float]:
    """``(sigma_min, sigma_max)`` of a VP schedule in EDM units, ``sigma_vp / alpha``.

    The ends are the schedule's sampling range: ``t = 0`` and ``T - 1`` for a
    :class:`~diffjax.schedules.DiscreteSchedule` (k-diffusion's ``sigmas[0]`` and
    ``sigmas[-1]``), ``t_min_noise`` and ``t_max`` for a continuous one.
    """
    t_hi, t_lo = sampling_time_range(schedule)
    with jax.ensure_compile_time_eval():
        log_snr = concrete_value(schedule.log_snr(jnp.asarray([t_lo, t_hi])))
    if log_snr is None:
        raise ValueError("edm_sigma_range needs a concrete (not traced) schedule")
    sigmas = np.exp(-0.5 * np.asarray(log_snr, np.float64))
    return float(sigmas[0]), float(sigmas[1])


def _check_sigmas(sigmas: ArrayLike) -> np.ndarray:
    sig = concrete_value(sigmas)
    if sig is None:
        raise ValueError("sigmas must be static (NumPy), not a traced array")
    sig = np.asarray(sig, np.float64)
    if sig.ndim != 1 or sig.shape[0] < 2:
        raise ValueError(
            f"sigmas must be 1-D with num_steps + 1 >= 2 entries (e.g. karras_sigmas(...)), "
            f"got shape {sig.shape}"
        )
    if not np.all(np.isfinite(sig)) or np.any(sig[:-1] <= 0.0) or sig[-1] < 0.0:
        raise ValueError(f"sigmas must be finite, positive and end at >= 0, got {sig}")
    if np.any(np.diff(sig) >= 0.0):
        raise ValueError(f"sigmas must be strictly decreasing, got {sig}")
    return sig


def edm_heun(
    schedule: VPSchedule,
    sigmas: ArrayLike,
    *,
    s_churn: ArrayLike = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Sampler:
    """Builds the EDM Heun sampler (Karras et al. 2022, Algorithms 1 and 2).

    Example (18 Karras steps over a discrete schedule's range, 35 evaluations)::

        sigmas = karras_sigmas(18, *edm_sigma_range(schedule))
        sampler = edm_heun(schedule, sigmas)

    Args:
      schedule: a VP noise schedule with ``alpha``, ``log_snr`` and ``t_from_log_snr``.
      sigmas: static, strictly decreasing EDM noise levels, ``num_steps + 1`` of them,
        e.g. :func:`karras_sigmas`. A final ``0`` makes the last step Euler's.
      s_churn: ``S_churn`` (``>= 0``; 0 is deterministic); may be traced. When it is
        not a concrete 0, each step draws noise from its key.
      s_tmin: churn applies only for ``s_tmin <= sigma_i <= s_tmax``.
      s_tmax: see ``s_tmin``.
      s_noise: ``S_noise``, the scale of the churn noise.

    Returns:
      A :class:`~diffjax.samplers.driver.Sampler` with ``num_steps = len(sigmas) - 1``;
      it evaluates the network ``2 num_steps - 1`` times when ``sigmas`` ends at 0.

    Raises:
      ValueError: for a bad grid or option.
    """
    sig = _check_sigmas(sigmas)
    num_steps = int(sig.shape[0] - 1)
    deterministic = check_nonnegative_scalar("s_churn", s_churn)
    if not float(s_tmin) <= float(s_tmax):
        raise ValueError(f"need s_tmin <= s_tmax, got {s_tmin=}, {s_tmax=}")
    if not float(s_noise) >= 0.0:
        raise ValueError(f"s_noise must be >= 0, got {s_noise=}")
    churn_mask = ((sig[:-1] >= s_tmin) & (sig[:-1] <= s_tmax)).astype(np.float64)
    kinds = tuple(2 if s > 0.0 else 1 for s in sig[1:])  # 2: Heun, 1: Euler onto sigma = 0

    def init_at(x: ArrayLike, step_index: ArrayLike) -> EDMState:
        dtype = state_dtype(x)
        alpha = jax.lax.rsqrt(1.0 + jnp.asarray(sig, dtype)[step_index] ** 2)
        return EDMState(x=jnp.asarray(x, dtype) / alpha, alpha=alpha)

    def init(x_T: ArrayLike) -> EDMState:
        dtype = state_dtype(x_T)
        alpha = jnp.asarray(1.0 / math.sqrt(1.0 + sig[0] ** 2), dtype)
        return EDMState(x=jnp.asarray(x_T, dtype) / alpha, alpha=alpha)

    def step(
        denoise_fn: DenoiseFn, state: EDMState, step_index: Array, key: Array, cond: Any
    ) -> EDMState:
        x = state.x
        dtype = x.dtype

        def denoise(x_edm: Array, sigma: Array) -> Array:
            t = jnp.asarray(schedule.t_from_log_snr(-2.0 * jnp.log(sigma)), dtype)
            alpha = jnp.asarray(schedule.alpha(t), dtype)
            return jnp.asarray(denoise_fn(alpha * x_edm, t, cond).x0, dtype)

        grid = jnp.asarray(sig, dtype)
        sigma, sigma_next = grid[step_index], grid[step_index + 1]
        if deterministic:
            sigma_hat = sigma
        else:
            gamma = jnp.minimum(jnp.asarray(s_churn, dtype) / num_steps, math.sqrt(2.0) - 1.0)
            sigma_hat = sigma * (1.0 + gamma * jnp.asarray(churn_mask, dtype)[step_index])
            z = jax.random.normal(key, x.shape, dtype)
            x = x + jnp.sqrt(sigma_hat**2 - sigma**2) * s_noise * z
        d = (x - denoise(x, sigma_hat)) / sigma_hat
        dt = sigma_next - sigma_hat
        x_euler = x + d * dt

        def heun() -> Array:
            d_next = (x_euler - denoise(x_euler, sigma_next)) / sigma_next
            return x + 0.5 * (d + d_next) * dt

        x_next = dispatch(kinds, step_index, {1: lambda: x_euler, 2: heun})
        alpha_next = jax.lax.rsqrt(1.0 + sigma_next**2)
        return EDMState(x=x_next.astype(dtype), alpha=alpha_next.astype(dtype))

    def finalize(state: EDMState) -> Array:
        return state.alpha * state.x

    return Sampler(
        num_steps=num_steps, init=init, step=step, finalize=finalize, schedule=schedule,
        nfe=sum(kinds), order=2 if deterministic else None, init_at=init_at,
    )
