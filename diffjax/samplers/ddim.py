"""DDIM: deterministic (eta = 0) and stochastic (eta > 0) implicit sampling.

One step from ``t`` to ``s`` (Song et al., 2021, Eq. 12 and 16), with
``(eps, x0) = denoise(x_t, t)``:

    std   = eta * (sigma_s / sigma_t) * sqrt(1 - alpha_t**2 / alpha_s**2)
    x_s   = alpha_s x0 + sqrt(sigma_s**2 - std**2) eps + std z,   z ~ N(0, I).

``eta = 1`` is DDPM's ancestral step with the posterior variance ("beta tilde").
With ``thresholding`` set (:class:`~diffjax.samplers.exponential.StaticThresholding`
clips ``x0`` to ``[-m, m]``, diffusers' ``clip_sample``), ``eps`` is recomputed from the
thresholded ``x0`` unless ``recompute_eps_after_clip=False`` (diffusers' default
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
    concrete_value,
    state_dtype,
    transition_beta,
)
from diffjax.samplers.exponential import (
    DynamicThresholding,
    StaticThresholding,
    apply_thresholding,
    check_thresholding,
)
from diffjax.schedules import VPSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = ["DDIMState", "ddim"]


class DDIMState(NamedTuple):
    """DDIM state: the current sample (float32)."""

    x: Array


def denoise_at_step(
    denoise_fn: DenoiseFn,
    x: Array,
    timesteps: np.ndarray,
    step_index: Array,
    cond: Any,
    thresholding: StaticThresholding | DynamicThresholding | None,
) -> tuple[Array, Array, Denoised]:
    """The step's times and the denoiser's output, shared by DDIM and DDPM.

    Returns:
      ``(t, t_prev, Denoised(eps, x0))`` with ``t = timesteps[i]``,
      ``t_prev = timesteps[i + 1]``, the outputs in ``x``'s dtype and ``x0`` thresholded
      when ``thresholding`` is set (``eps`` as the network gave it).
    """
    grid = jnp.asarray(timesteps, x.dtype)
    t, t_prev = grid[step_index], grid[step_index + 1]
    out = denoise_fn(x, t, cond)
    x0 = apply_thresholding(jnp.asarray(out.x0, x.dtype), thresholding)
    return t, t_prev, Denoised(eps=jnp.asarray(out.eps, x.dtype), x0=x0)


def ddim(
    schedule: VPSchedule,
    timesteps: ArrayLike,
    eta: ArrayLike = 0.0,
    thresholding: StaticThresholding | DynamicThresholding | None = None,
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
      thresholding: ``StaticThresholding(m)`` clips the ``x0`` estimate to ``[-m, m]``;
        ``DynamicThresholding`` is Imagen's; ``None`` (the default) does not clip.
      recompute_eps_after_clip: after thresholding, recompute ``eps = (x_t - alpha_t x0) /
        sigma_t`` from the clipped ``x0`` so the step stays consistent with ``x_t`` (as
        the DDPM posterior mean does). This is what makes clipping safe under strong
        classifier-free guidance. ``False`` keeps the network's eps, which is
        diffusers' default (``use_clipped_model_output=False``) and its test values.

    Returns:
      A :class:`~diffjax.samplers.driver.Sampler` with ``nfe = num_steps`` and
      ``order = 1`` (``None`` for a concrete ``eta > 0``; a traced ``eta`` declares 1,
      which holds where it is 0).

    Raises:
      ValueError: for a bad grid, a negative concrete ``eta``, or a bad ``thresholding``
        (a non-positive ``max_value``).
    """
    ts = check_timesteps(schedule, timesteps)
    thresholding = check_thresholding(thresholding)
    deterministic = check_nonnegative_scalar("eta", eta)
    # A traced eta is declared first order: the order holds where it is 0.
    stochastic = not deterministic and concrete_value(eta) is not None

    def init(x_T: ArrayLike) -> DDIMState:
        return DDIMState(x=jnp.asarray(x_T, state_dtype(x_T)))

    def step(
        denoise_fn: DenoiseFn, state: DDIMState, step_index: Array, key: Array, cond: Any
    ) -> DDIMState:
        dtype = state.x.dtype
        t, t_prev, out = denoise_at_step(
            denoise_fn, state.x, ts, step_index, cond, thresholding
        )
        eps, x0 = out
        if thresholding is not None and recompute_eps_after_clip:
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

    steps = int(ts.shape[0] - 1)
    return Sampler(
        num_steps=steps, init=init, step=step, finalize=finalize, schedule=schedule,
        nfe=steps, order=None if stochastic else 1, init_at=lambda x, _: init(x),
    )
