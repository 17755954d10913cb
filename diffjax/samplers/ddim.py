"""DDIM: deterministic (eta = 0) and stochastic (eta > 0) implicit sampling.

One step from ``t`` to ``s`` (Song et al., 2021, Eq. 12 and 16), with
``(eps, x0) = denoise(x_t, t)``:

    std   = eta * (sigma_s / sigma_t) * sqrt(1 - alpha_t**2 / alpha_s**2)
    x_s   = alpha_s x0 + sqrt(sigma_s**2 - std**2) eps + std z,   z ~ N(0, I).

``eta = 1`` is DDPM's ancestral step with the posterior variance ("beta tilde").
If ``clip_x0`` is set, ``x0`` is clipped to ``[-clip_x0, clip_x0]`` while ``eps`` is
*not* recomputed from the clipped ``x0`` (diffusers' default
``use_clipped_model_output=False``).

References:
  Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.parameterization import Denoised, DenoiseFn
from diffjax.samplers.driver import (
    Sampler,
    check_nonnegative_scalar,
    check_timesteps,
    state_dtype,
    transition_beta,
)

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = ["DDIMState", "ddim"]


class DDIMState(NamedTuple):
    """DDIM state: the current sample (float32)."""

    x: Array


def _check_clip(clip_x0: float | None) -> float | None:
    if clip_x0 is None:
        return None
    if not float(clip_x0) > 0.0:
        raise ValueError(f"clip_x0 must be positive or None, got {clip_x0=}")
    return float(clip_x0)


def denoise_at_step(
    denoise_fn: DenoiseFn,
    x: Array,
    timesteps: np.ndarray,
    step_index: Array,
    cond: Any,
    clip_x0: float | None,
) -> tuple[Array, Array, Denoised]:
    """The step's times and the denoiser's output, shared by DDIM and DDPM.

    Returns:
      ``(t, t_prev, Denoised(eps, x0))`` with ``t = timesteps[i]``,
      ``t_prev = timesteps[i + 1]``, the outputs in ``x``'s dtype and ``x0`` clipped to
      ``[-clip_x0, clip_x0]`` when ``clip_x0`` is set (``eps`` as the network gave it).
    """
    grid = jnp.asarray(timesteps, x.dtype)
    t, t_prev = grid[step_index], grid[step_index + 1]
    out = denoise_fn(x, t, cond)
    x0 = jnp.asarray(out.x0, x.dtype)
    if clip_x0 is not None:
        x0 = jnp.clip(x0, -clip_x0, clip_x0)
    return t, t_prev, Denoised(eps=jnp.asarray(out.eps, x.dtype), x0=x0)


def ddim(
    schedule: Any,
    timesteps: ArrayLike,
    eta: ArrayLike = 0.0,
    clip_x0: float | None = None,
    recompute_eps_after_clip: bool = True,
) -> Sampler:
    """Builds a DDIM sampler.

    Args:
      schedule: noise schedule with ``alpha(t)`` and ``sigma(t)``.
      timesteps: static grid of ``num_steps + 1`` non-increasing model times; the model
        is evaluated at ``timesteps[:-1]``. E.g. diffusers' 10-step leading DDIM with
        ``set_alpha_to_one=True`` is ``[900, 800, ..., 0, -1]`` and with
        ``set_alpha_to_one=False`` it is ``[900, 800, ..., 0, 0]``.
      eta: stochasticity (0 = deterministic DDIM, 1 = DDPM posterior variance); may be
        a traced scalar. Checked ``>= 0`` when concrete.
      clip_x0: if set, clip the ``x0`` estimate to ``[-clip_x0, clip_x0]``.
      recompute_eps_after_clip: after clipping, recompute ``eps = (x_t - alpha_t x0) /
        sigma_t`` from the clipped ``x0`` so the step stays consistent with ``x_t`` (as
        the DDPM posterior mean does). This is what makes clipping safe under strong
        classifier-free guidance. ``False`` keeps the network's eps, which is
        diffusers' default (``use_clipped_model_output=False``) and its test values.

    Returns:
      A :class:`~diffjax.samplers.driver.Sampler`.

    Raises:
      ValueError: for a bad grid, a negative concrete ``eta``, or non-positive clip.
    """
    ts = check_timesteps(schedule, timesteps)
    clip_x0 = _check_clip(clip_x0)
    deterministic = check_nonnegative_scalar("eta", eta)

    def init(x_T: ArrayLike) -> DDIMState:
        return DDIMState(x=jnp.asarray(x_T, state_dtype(x_T)))

    def step(
        denoise_fn: DenoiseFn, state: DDIMState, step_index: Array, key: Array, cond: Any
    ) -> DDIMState:
        dtype = state.x.dtype
        t, t_prev, out = denoise_at_step(denoise_fn, state.x, ts, step_index, cond, clip_x0)
        eps, x0 = out
        if clip_x0 is not None and recompute_eps_after_clip:
            eps = (state.x - schedule.alpha(t) * x0) / schedule.sigma(t)
        alpha_p, sigma_p = schedule.alpha(t_prev), schedule.sigma(t_prev)
        x_prev = alpha_p * x0
        if deterministic:
            x_prev = x_prev + sigma_p * eps
        else:
            beta = jnp.clip(transition_beta(schedule, t, t_prev), 0.0, 1.0)
            std = jnp.asarray(eta, dtype) * sigma_p / schedule.sigma(t) * jnp.sqrt(beta)
            direction = jnp.sqrt(jnp.maximum(sigma_p**2 - std**2, 0.0))
            noise = jax.random.normal(key, x0.shape, dtype)
            x_prev = x_prev + direction * eps + std * noise
        return DDIMState(x=x_prev.astype(dtype))

    def finalize(state: DDIMState) -> Array:
        return state.x

    return Sampler(
        num_steps=int(ts.shape[0] - 1), init=init, step=step, finalize=finalize, schedule=schedule
    )
