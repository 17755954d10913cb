"""Multistep consistency sampling (Song et al. 2023, Algorithm 1) as a diffjax sampler.

With a consistency model ``f`` (its denoiser's ``x0`` is ``f``:
:func:`diffjax.consistency.consistency_denoiser`), one evaluation at the largest noise
level gives a sample, ``x_0 = f(x_T, sigma_max)``; each further step re-noises the
estimate to a smaller level ``tau_n`` and maps it back,

    x = x_0 + sqrt(tau_n^2 - sigma_min^2) z,    x_0 = f(x, tau_n),

in EDM units (``sigma = sigma_t / alpha_t``, ``x = x_t / alpha_t``; the network sees the VP
sample ``alpha x``). The levels ``tau_1 > ... > tau_{N-1}`` are the argument ``sigmas``; the
first evaluation is at the model's ``sigma_max`` (:func:`consistency_sigma_range`), on the
driver's ``x_T ~ N(0, I)``.
``N`` steps cost ``N`` network evaluations; the sampler is stochastic (fresh ``z`` per step
from the step's key).

References:
  Song, Dhariwal, Chen & Sutskever, "Consistency Models", ICML 2023, Algorithm 1 and
  Sec. 6 (the 2-step point found by search on CIFAR-10 is 0.821, also iCT's and ECT's).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_int
from diffjax.parameterization import DenoiseFn
from diffjax.samplers.driver import Sampler, concrete_value, state_dtype
from diffjax.samplers.edm import edm_sigma_range
from diffjax.samplers.exponential import Thresholding, apply_thresholding, check_thresholding
from diffjax.schedules import VPSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "DEFAULT_SIGMA_MAX",
    "TWO_STEP_LEVEL",
    "ConsistencyState",
    "consistency_multistep",
    "consistency_sigma_range",
    "default_consistency_levels",
]

TWO_STEP_LEVEL = 0.821
"""The re-noising level of 2-step sampling in the CM, iCT and ECT papers (CIFAR-10)."""

DEFAULT_SIGMA_MAX = 80.0
"""The largest level of the papers' consistency models (EDM's ``sigma_max``)."""


def consistency_sigma_range(
    schedule: VPSchedule, sigma_max: float | None = DEFAULT_SIGMA_MAX
) -> tuple[float, float]:
    """``(sigma_min, sigma_max)`` of a consistency model on a VP schedule (EDM units).

    ``sigma_min`` is the schedule's smallest sampled level; ``sigma_max`` the given one
    (80 by default, the papers'), capped at the schedule's largest (157 for DDPM's linear
    betas), or the schedule's largest for ``None``. Why not always the largest: a network
    that predicts eps gives ``f ~ x - sigma eps_hat`` there, so its error is multiplied
    by ``sigma``; and the noised data at ``sigma`` is indistinguishable from pure noise
    long before 157 (the KL between ``p_data * N(0, sigma^2 I)`` and ``N(0, sigma^2 I)``
    is about ``d sigma_data^2 / (2 sigma^2)``: 0.06 nats for CIFAR-10 at 80).
    """
    lo, hi = edm_sigma_range(schedule)
    return lo, hi if sigma_max is None else min(float(sigma_max), hi)


class ConsistencyState(NamedTuple):
    """State of multistep consistency sampling.

    Attributes:
      x: the VP sample of the first evaluation (``x_T``); later steps re-noise ``x0``.
      x0: the latest estimate of the clean sample (float32); ``x_T`` before the first
        step.
    """

    x: Array
    x0: Array


def default_consistency_levels(num_steps: int, level: float = TWO_STEP_LEVEL) -> np.ndarray:
    """The re-noising levels of ``num_steps`` steps: ``num_steps - 1`` of them, decreasing.

    One step: none. Two: ``level`` (the papers' 0.821, :data:`TWO_STEP_LEVEL`, by
    default). More: log-spaced from ``level (N - 1)`` down to ``level / (N - 1)``, around
    the 2-step point as the papers' searched points are. ``experiments/consistency_levels.py``
    sweeps the 2-step level (1.5 is better than 0.821 on the digits).
    """
    num_steps = check_int("num_steps", num_steps, minimum=1)
    if not (math.isfinite(float(level)) and float(level) > 0):
        raise ValueError(f"level must be a finite number > 0, got {level!r}")
    if num_steps == 1:
        return np.zeros((0,), np.float64)
    m = num_steps - 1
    return np.geomspace(float(level) * m, float(level) / m, m)


def _level_times(schedule: VPSchedule, sigmas: np.ndarray) -> np.ndarray:
    with jax.ensure_compile_time_eval():
        t = concrete_value(schedule.t_from_log_snr(jnp.asarray(-2.0 * np.log(sigmas))))
    if t is None:
        raise ValueError("consistency_multistep needs a concrete (not traced) schedule")
    return np.asarray(t, np.float64)


def consistency_multistep(
    schedule: VPSchedule,
    num_steps: int | None = None,
    *,
    sigmas: ArrayLike | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    level: float = TWO_STEP_LEVEL,
    thresholding: Thresholding | None = None,
) -> Sampler:
    """Builds multistep consistency sampling (Algorithm 1 of Song et al. 2023).

    Example (2 steps through the papers' level 0.821)::

        sampler = consistency_multistep(schedule, 2)
        x = sample(sampler, consistency_denoiser(denoise, schedule, param), x_T, key, labels)

    Args:
      schedule: the VP schedule of the consistency model.
      num_steps: the number of evaluations ``N``; with ``sigmas=None`` the levels are
        :func:`default_consistency_levels` around ``level``, clipped into the range.
      sigmas: the static re-noising levels ``tau_1 > ... > tau_{N-1}`` in EDM units,
        strictly decreasing and strictly inside the schedule's range ``(sigma_min,
        sigma_max)``; ``N = len(sigmas) + 1``. An empty sequence is one-step sampling.
      sigma_min: the model's boundary (its ``ConsistencyParameterization.sigma_min``);
        by default the schedule's smallest level, as
        :meth:`~diffjax.consistency.ConsistencyParameterization.for_schedule` sets it.
      sigma_max: the model's largest level, where the first evaluation takes the
        driver's ``x_T ~ N(0, I)`` as its VP sample (the VP marginal there,
        ``alpha (x_0 + sigma_max z)``, is ``z`` up to ``1 / sigma_max``); by default
        :func:`consistency_sigma_range`'s (80, or the schedule's largest if smaller).
      level: the 2-step level the default levels are spread around (ignored with
        ``sigmas``).
      thresholding: applied to every estimate ``f`` before it is re-noised and to the
        result (``StaticThresholding(1.0)`` keeps pixel samples in [-1, 1]); ``None``
        (the default) does not clip.

    Returns:
      A :class:`~diffjax.samplers.driver.Sampler` with ``nfe = num_steps``, stochastic
      (``order=None``).

    Raises:
      ValueError: naming ``num_steps`` or ``sigmas``: a step count below 1, a count that
        disagrees with ``sigmas``, levels that are traced, not 1-D, not strictly
        decreasing, or outside the schedule's range.
    """
    thresholding = check_thresholding(thresholding)
    lo, top = consistency_sigma_range(schedule, None)
    hi = consistency_sigma_range(schedule)[1] if sigma_max is None else float(sigma_max)
    if not lo * (1 - 1e-6) <= hi <= top * (1 + 1e-6):
        raise ValueError(
            f"sigma_max={sigma_max!r} lies outside the schedule's noise levels [{lo:.6g}, "
            f"{top:.6g}] (EDM units)"
        )
    boundary = lo if sigma_min is None else float(sigma_min)
    if not 0.0 < boundary < hi:
        raise ValueError(f"sigma_min={sigma_min!r} must lie in (0, sigma_max={hi:.6g})")
    if sigmas is None:
        if num_steps is None:
            raise ValueError("give num_steps or sigmas")
        levels = default_consistency_levels(num_steps, level)
        levels = np.clip(levels, boundary * (1 + 1e-3), hi * (1 - 1e-3))
    else:
        value = concrete_value(sigmas)
        if value is None:
            raise ValueError("sigmas must be static (NumPy), not a traced array")
        levels = np.asarray(value, np.float64)
        if levels.ndim != 1:
            raise ValueError(
                f"sigmas must be 1-D (the re-noising levels), got shape {levels.shape}"
            )
        if num_steps is not None:
            num_steps = check_int("num_steps", num_steps, minimum=1)
            if num_steps != levels.shape[0] + 1:
                raise ValueError(
                    f"num_steps={num_steps} disagrees with sigmas: {levels.shape[0]} levels make "
                    f"{levels.shape[0] + 1} steps"
                )
        if not np.all(np.isfinite(levels)) or np.any(levels <= boundary) or np.any(levels >= hi):
            raise ValueError(
                f"sigmas must lie strictly inside the schedule's noise levels ({boundary:.6g}, "
                f"{hi:.6g}) (EDM units), got {levels}"
            )
        if np.any(np.diff(levels) >= 0.0):
            raise ValueError(f"sigmas must be strictly decreasing, got {levels}")
    steps = int(levels.shape[0] + 1)
    first = schedule.t_max if hi >= top else _level_times(schedule, np.asarray([hi]))[0]
    times = np.concatenate([[float(first)], _level_times(schedule, levels)])
    noise_scale = np.concatenate([[0.0], np.sqrt(levels**2 - boundary**2)])

    def init(x_T: ArrayLike) -> ConsistencyState:
        x = jnp.asarray(x_T, state_dtype(x_T))
        return ConsistencyState(x=x, x0=x)  # before any step the sample is x_T itself

    def step(
        denoise_fn: DenoiseFn, state: ConsistencyState, step_index: Array, key: Array, cond: Any
    ) -> ConsistencyState:
        dtype = state.x.dtype
        t = jnp.asarray(times, dtype)[step_index]
        z = jax.random.normal(key, state.x.shape, dtype)
        renoised = schedule.alpha(t) * (state.x0 + jnp.asarray(noise_scale, dtype)[step_index] * z)
        x = jnp.where(step_index == 0, state.x, renoised.astype(dtype))
        x0 = apply_thresholding(jnp.asarray(denoise_fn(x, t, cond).x0, dtype), thresholding)
        return ConsistencyState(x=state.x, x0=x0)

    def finalize(state: ConsistencyState) -> Array:
        return state.x0

    return Sampler(
        num_steps=steps, init=init, step=step, finalize=finalize, schedule=schedule,
        nfe=steps, order=None,
    )
