"""DDPM ancestral sampling, on the full grid or a skipped one.

One step from ``t`` to ``s < t`` samples the Gaussian posterior
``q(x_s | x_t, x0)`` with ``x0`` replaced by the model's estimate (Ho et al., 2020,
Eq. 6-7; for skipped grids, Nichol & Dhariwal, 2021, Sec. 4), writing
``beta = 1 - alpha_bar_t / alpha_bar_s``:

    mean = sqrt(alpha_bar_s) beta / (1 - alpha_bar_t) x0
         + sqrt(1 - beta) (1 - alpha_bar_s) / (1 - alpha_bar_t) x_t
    var  = beta (1 - alpha_bar_s) / (1 - alpha_bar_t)     ("beta_tilde", posterior)
         | beta                                           ("beta", Ho et al.'s sigma^2 = beta)

No noise is added on a step that lands on the clean point (``sigma_s = 0``), so the
last step returns the posterior mean (which is then ``x0``), as in Ho et al. and
diffusers. With ``thresholding`` set, the ``x0`` estimate is thresholded (e.g. clipped,
:class:`~diffjax.samplers.exponential.StaticThresholding`) before the mean is formed.

References:
  Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
  Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models", ICML 2021.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from diffjax._checks import check_choice
from diffjax.parameterization import DenoiseFn
from diffjax.samplers.ddim import denoise_at_step
from diffjax.samplers.driver import Sampler, check_timesteps, state_dtype, transition_beta
from diffjax.samplers.exponential import (
    DynamicThresholding,
    StaticThresholding,
    check_thresholding,
)
from diffjax.schedules import VPSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = ["DDPM_VARIANCES", "DDPMState", "ddpm"]

DDPM_VARIANCES = ("beta_tilde", "beta")


class DDPMState(NamedTuple):
    """DDPM state: the current sample (float32)."""

    x: Array


def ddpm(
    schedule: VPSchedule,
    timesteps: ArrayLike,
    variance: str = "beta_tilde",
    thresholding: StaticThresholding | DynamicThresholding | None = None,
) -> Sampler:
    """Builds a DDPM ancestral sampler.

    Args:
      schedule: noise schedule with ``alpha(t)`` and ``sigma(t)``.
      timesteps: static grid of ``num_steps + 1`` non-increasing model times, e.g.
        ``[T-1, T-2, ..., 0, -1]`` for the full DDPM chain.
      variance: ``'beta_tilde'`` (posterior variance, the lower bound) or ``'beta'``
        (the upper bound, Ho et al. Sec. 3.2).
      thresholding: ``StaticThresholding(m)`` clips the ``x0`` estimate to ``[-m, m]``;
        ``None`` (the default) does not clip.

    Returns:
      A :class:`~diffjax.samplers.driver.Sampler` with ``nfe = num_steps`` and
      ``order = None`` (stochastic).

    Raises:
      ValueError: for a bad grid or an unknown ``variance``.
    """
    ts = check_timesteps(schedule, timesteps)
    variance = check_choice("variance", variance, DDPM_VARIANCES)
    thresholding = check_thresholding(thresholding)

    def init(x_T: ArrayLike) -> DDPMState:
        return DDPMState(x=jnp.asarray(x_T, state_dtype(x_T)))

    def step(
        denoise_fn: DenoiseFn, state: DDPMState, step_index: Array, key: Array, cond: Any
    ) -> DDPMState:
        dtype = state.x.dtype
        t, t_prev, (_, x0) = denoise_at_step(
            denoise_fn, state.x, ts, step_index, cond, thresholding
        )
        alpha_t, sigma_t = schedule.alpha(t), schedule.sigma(t)
        alpha_p, sigma_p = schedule.alpha(t_prev), schedule.sigma(t_prev)
        ratio = alpha_t / alpha_p  # sqrt(1 - beta)
        beta = jnp.clip(transition_beta(schedule, t, t_prev), 0.0, 1.0)
        mean = (alpha_p * beta / sigma_t**2) * x0 + (ratio * sigma_p**2 / sigma_t**2) * state.x
        var = beta * sigma_p**2 / sigma_t**2 if variance == "beta_tilde" else beta
        var = jnp.where(sigma_p > 0.0, var, 0.0)
        noise = jax.random.normal(key, x0.shape, dtype)
        return DDPMState(x=(mean + jnp.sqrt(var) * noise).astype(dtype))

    def finalize(state: DDPMState) -> Array:
        return state.x

    steps = int(ts.shape[0] - 1)
    return Sampler(
        num_steps=steps, init=init, step=step, finalize=finalize, schedule=schedule,
        nfe=steps, order=None,
    )
