"""DDIM inversion: encode data ``x0`` into the noise ``x_T`` that deterministic DDIM decodes.

Deterministic DDIM (eta = 0) is a first-order solver of the probability-flow ODE, so it
can be run the other way, from the clean point up to ``T``. Its step from ``t`` down to
``s`` is ``x_s = alpha_s x0_hat + sigma_s eps`` with ``eps = eps(x_t, t)`` and
``x0_hat = (x_t - sigma_t eps) / alpha_t`` (Song et al., 2021, Eq. 12 with
``sigma = 0``). Solving it for ``x_t`` needs ``eps(x_t, t)``, which depends on the
unknown ``x_t``; DDIM inversion takes ``eps(x_s, t)`` instead, the denoiser evaluated at
the *target* time on the current point, which makes the step explicit:

    eps     = eps(x_s, t)
    x0_hat  = (x_s - sigma_s eps) / alpha_s
    x_t     = alpha_t x0_hat + sigma_t eps.

The step's error is second order in its length, so the reconstruction error
``decode(invert(x0)) - x0`` of a ``num_steps`` inversion and decoding vanishes at first
order as the steps grow (``tests/test_inversion.py`` measures it on Gaussian data with
the exact denoiser). The first step leaves the clean point ``t = -1`` (``alpha = 1``,
``sigma = 0``), where no network evaluation exists; evaluating at the target time is what
makes it possible. This is the update of diffusers' ``DDIMInverseScheduler`` (without
its x0 clipping, which would make the map non-invertible).

The inverter is a :class:`~diffjax.samplers.driver.Sampler`, run by the same
``lax.scan`` driver as every sampler: ``sample(ddim_inversion(schedule, grid), denoise,
x0, key, cond)`` returns ``x_T``, and ``sample(ddim(schedule, grid), denoise, x_T, key,
cond)`` decodes it with the same grid.

References:
  Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021, Sec. 4.3 and 5.4
  (encoding from x0 to x_T).
  Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021,
  App. F (reversing the DDIM ODE).
  Mokady, Hertz, Aberman, Pritch & Cohen-Or, "Null-text Inversion for Editing Real Images
  using Guided Diffusion Models", CVPR 2023, Sec. 3 (the approximation above, and why it
  degrades under strong classifier-free guidance).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from diffjax.parameterization import DenoiseFn
from diffjax.samplers.driver import Sampler, check_timesteps, state_dtype
from diffjax.schedules import VPSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = ["DDIMInversionState", "ddim_inversion"]


class DDIMInversionState(NamedTuple):
    """DDIM inversion state: the current latent (float32, or float64 for float64 input)."""

    x: Array


def ddim_inversion(schedule: VPSchedule, timesteps: ArrayLike) -> Sampler:
    """Builds the DDIM inverter for a sampling grid: data ``x0`` in, noise ``x_T`` out.

    Args:
      schedule: noise schedule with ``alpha(t)`` and ``sigma(t)``.
      timesteps: the *sampling* grid of the DDIM run that should decode the result: a
        static, non-increasing array of ``num_steps + 1`` model times, e.g.
        ``[999, 899, ..., 99, -1]`` (``diffjax.app.sampler_specs.sampling_timesteps``). The
        inverter walks it backwards, from ``timesteps[-1]`` (where the input lives, the
        clean point ``-1`` for data) up to ``timesteps[0]``, evaluating the denoiser once
        per step at the step's target time ``timesteps[:-1]`` (the times DDIM evaluates).

    Returns:
      A :class:`~diffjax.samplers.driver.Sampler`; run it with
      :func:`~diffjax.samplers.sample` on ``x0`` (the key is unused: inversion is
      deterministic).

    Raises:
      ValueError: for a traced, increasing, too short or out-of-range grid.
    """
    ts = check_timesteps(schedule, timesteps)
    # Step i goes from rev[i] up to rev[i + 1].
    rev = ts[::-1].copy()

    def init(x0: ArrayLike) -> DDIMInversionState:
        return DDIMInversionState(x=jnp.asarray(x0, state_dtype(x0)))

    def step(
        denoise_fn: DenoiseFn,
        state: DDIMInversionState,
        step_index: Array,
        key: Array,
        cond: Any,
    ) -> DDIMInversionState:
        del key
        x = state.x
        grid = jnp.asarray(rev, x.dtype)
        s, t = grid[step_index], grid[step_index + 1]
        eps = jnp.asarray(denoise_fn(x, t, cond).eps, x.dtype)
        x0_hat = (x - schedule.sigma(s) * eps) / schedule.alpha(s)
        return DDIMInversionState(x=schedule.alpha(t) * x0_hat + schedule.sigma(t) * eps)

    def finalize(state: DDIMInversionState) -> Array:
        return state.x

    steps = int(ts.shape[0] - 1)
    return Sampler(
        num_steps=steps, init=init, step=step, finalize=finalize, schedule=schedule,
        nfe=steps, order=1,
    )
