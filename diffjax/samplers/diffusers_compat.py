"""Shared pieces of the diffusers-exact samplers, and diffusers' DDIM step loop.

The samplers in :mod:`diffjax.samplers.pndm`, :mod:`diffjax.samplers.euler` and this
module reproduce diffusers' scheduler classes step for step (``set_timesteps``,
``scale_model_input``, ``step``), so that a diffjax run equals a diffusers pipeline run
to float32 round-off. Three choices make that exact:

* **diffusers' own tables.** Every coefficient is computed (in float64, from the float32
  ``alphas_cumprod`` table diffusers builds; see
  :func:`diffjax.stable_diffusion.schedulers.diffusers_alphas_cumprod`) as the class
  computes it, not from the interpolated :class:`~diffjax.schedules.DiscreteSchedule`.
  That table may end in ``alpha_bar = 0`` (``rescale_betas_zero_snr``), which a
  ``DiscreteSchedule`` cannot hold; the schedule the denoiser uses then ends at
  ``2**-24`` (as diffusers' Euler does), and the sampler still uses the exact ``0``.
* **The raw network output.** diffusers converts the network output with its own
  ``sigma`` (for Euler, interpolated linearly in sigma at fractional timesteps, where
  ``DiscreteSchedule`` interpolates ``log alpha_bar``). :func:`raw_model_output`
  recovers the raw output from the denoiser's ``Denoised(eps, x0)`` (exactly for eps and
  x0 networks; ``v = alpha eps - sigma x0`` to round-off for v networks) so the
  sampler can apply diffusers' formula.
* **The same noise.** Stochastic steps draw their noise through a ``noise_fn(key,
  step_index, shape, dtype)``; the default is ``jax.random.normal(key, shape, dtype)``,
  and :func:`replay_noise` feeds recorded noise (e.g. what diffusers drew).

diffusers' DDIM (:func:`diffusers_ddim`) differs from :func:`diffjax.samplers.ddim` in
its step target ``t - T // n`` (the next grid time only for ``leading`` spacing; with
``trailing`` or ``linspace`` spacing and ``T % n != 0`` the two differ), in the
``alpha_bar_prev`` of the last step (``set_alpha_to_one``) and in its thresholding.
diffjax's :func:`~diffjax.samplers.ddim` stays the default elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.parameterization import Denoised, DenoiseFn, check_prediction_type
from diffjax.samplers.driver import Sampler, check_nonnegative_scalar, concrete_value, state_dtype
from diffjax.schedules import DiscreteSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
NoiseFn = Callable[[Array, Array, tuple[int, ...], Any], Array]

__all__ = [
    "DIFFUSERS_SPACINGS",
    "DiffusersDDIMState",
    "NoiseFn",
    "default_noise",
    "diffusers_ddim",
    "diffusers_ddim_timesteps",
    "raw_model_output",
    "replay_noise",
    "table_alphas_cumprod",
]

DIFFUSERS_SPACINGS = ("leading", "trailing", "linspace")


def default_noise(key: Array, step_index: Array, shape: tuple[int, ...], dtype: Any) -> Array:
    """The default ``noise_fn``: ``jax.random.normal(key, shape, dtype)`` (the step's key)."""
    del step_index
    return jax.random.normal(key, shape, dtype)


def replay_noise(noise: ArrayLike) -> NoiseFn:
    """A ``noise_fn`` that returns recorded noise: ``noise[step_index]``.

    Use it to replay the noise another implementation drew (diffusers' Euler ancestral
    draws one ``randn_tensor`` per step), so the two runs can be compared exactly.

    Args:
      noise: shape ``(num_steps, *x.shape)``, one draw per sampler step.

    Returns:
      ``noise_fn(key, step_index, shape, dtype)``; it raises at trace time if ``shape``
      is not ``noise.shape[1:]``.
    """
    table = jnp.asarray(noise)

    def noise_fn(key: Array, step_index: Array, shape: tuple[int, ...], dtype: Any) -> Array:
        del key
        if tuple(table.shape[1:]) != tuple(shape):
            raise ValueError(
                f"replay_noise holds noise of shape {tuple(table.shape[1:])} per step, but the "
                f"sampler needs {tuple(shape)}"
            )
        return jnp.asarray(table[step_index], dtype)

    return noise_fn


def raw_model_output(
    out: Denoised, x: Array, t: Array, schedule: DiscreteSchedule, prediction_type: str
) -> Array:
    """The network's raw output recovered from a denoiser's ``Denoised(eps, x0)``.

    :func:`~diffjax.parameterization.make_denoiser` returns ``eps`` unchanged for an eps
    network and ``x0`` unchanged for an x0 network; for a v network it forms ``eps =
    sigma x + alpha v`` and ``x0 = alpha x - sigma v``, so ``v = alpha eps - sigma x0``
    (``alpha**2 + sigma**2 = 1``; float32 round-off).

    Args:
      out: the denoiser's output at ``(x, t)``.
      x: the denoiser's input (the VP-space sample the network saw).
      t: the model time it was called at (scalar).
      schedule: the schedule the denoiser converts with.
      prediction_type: ``'eps'``, ``'x0'`` or ``'v'``.

    Returns:
      The raw output in ``x``'s dtype.
    """
    dtype = x.dtype
    if prediction_type == "eps":
        return jnp.asarray(out.eps, dtype)
    if prediction_type == "x0":
        return jnp.asarray(out.x0, dtype)
    t32 = jnp.asarray(t, jnp.float32)
    alpha = schedule.alpha(t32).astype(dtype)
    sigma = schedule.sigma(t32).astype(dtype)
    return alpha * jnp.asarray(out.eps, dtype) - sigma * jnp.asarray(out.x0, dtype)


def table_alphas_cumprod(
    schedule: DiscreteSchedule, alphas_cumprod: ArrayLike | None
) -> np.ndarray:
    """The float32 ``alpha_bar`` table a diffusers-exact sampler computes with.

    Args:
      schedule: the denoiser's schedule.
      alphas_cumprod: diffusers' own table (``None``: the schedule's), shape ``(T,)``.

    Raises:
      ValueError: if the table's length is not the schedule's ``num_timesteps``.
    """
    if alphas_cumprod is None:
        return np.asarray(schedule.alphas_cumprod, np.float32)
    table = np.asarray(alphas_cumprod, np.float32)
    if table.shape != (schedule.num_timesteps,):
        raise ValueError(
            f"alphas_cumprod has shape {table.shape}, the schedule has "
            f"{schedule.num_timesteps} timesteps"
        )
    return table


def check_spacing(timestep_spacing: str) -> str:
    """Returns ``timestep_spacing`` or raises naming it and the supported ones."""
    if timestep_spacing not in DIFFUSERS_SPACINGS:
        raise ValueError(
            f"timestep_spacing={timestep_spacing!r} is not supported; expected one of "
            f"{list(DIFFUSERS_SPACINGS)}"
        )
    return timestep_spacing


def check_num_steps(num_steps: Any, num_timesteps: int) -> int:
    """A step count in ``[1, num_timesteps]``."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise TypeError(f"num_steps must be an int, got {num_steps!r}")
    if not 1 <= int(num_steps) <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    return int(num_steps)


def diffusers_ddim_timesteps(
    num_timesteps: int, num_steps: int, timestep_spacing: str = "leading", steps_offset: int = 0
) -> np.ndarray:
    """``DDIMScheduler.set_timesteps``'s grid (int64, decreasing), as diffusers computes it.

    * ``linspace``: ``round(linspace(0, T - 1, n))`` reversed;
    * ``leading``: ``arange(n) * (T // n) + steps_offset`` reversed;
    * ``trailing``: ``round(arange(T, 0, -T / n)) - 1``.
    """
    check_spacing(timestep_spacing)
    T, n = num_timesteps, num_steps
    if timestep_spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    if timestep_spacing == "leading":
        ratio = T // n
        return (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64) + int(steps_offset)
    return np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1


class DiffusersDDIMState(NamedTuple):
    """State of :func:`diffusers_ddim`: the current sample (float32)."""

    x: Array


def diffusers_threshold(x0: Array, ratio: float, max_value: float) -> Array:
    """Diffusers' ``_threshold_sample`` (Imagen's dynamic thresholding as diffusers does it).

    Per sample, ``s = clip(quantile(|x0|, ratio), 1, max_value)``, then ``x0 = clip(x0,
    -s, s) / s`` (quantile with linear interpolation over all non-batch entries).
    """
    flat = x0.reshape(x0.shape[0], -1)
    s = jnp.quantile(jnp.abs(flat), ratio, axis=1)
    s = jnp.clip(s, 1.0, max_value)[:, None]
    return (jnp.clip(flat, -s, s) / s).reshape(x0.shape)


def diffusers_ddim(
    schedule: DiscreteSchedule,
    num_steps: int,
    *,
    alphas_cumprod: ArrayLike | None = None,
    eta: ArrayLike = 0.0,
    timestep_spacing: str = "leading",
    steps_offset: int = 0,
    set_alpha_to_one: bool = True,
    prediction_type: str = "eps",
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    use_clipped_model_output: bool = False,
    noise_fn: NoiseFn | None = None,
) -> Sampler:
    """Diffusers' ``DDIMScheduler`` step loop (Song et al. 2021, Eq. 12) as a Sampler.

    Step ``i`` evaluates the network at ``t = timesteps[i]`` and lands on ``s = t - T // n``
    (diffusers' target; not the next grid time when the spacing is ``trailing`` or
    ``linspace`` and ``T % n != 0``), with ``a_t = alpha_bar[t]``, ``a_s = alpha_bar[s]``
    (``final_alpha_cumprod`` for ``s < 0``: ``1`` with ``set_alpha_to_one``, else
    ``alpha_bar[0]``)::

        x0    = (x - sqrt(1 - a_t) eps) / sqrt(a_t)       (clipped / thresholded)
        var   = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s),   std = eta sqrt(var)
        x_s   = sqrt(a_s) x0 + sqrt(1 - a_s - std**2) eps + std z.

    Args:
      schedule: the denoiser's schedule (recorded for :func:`~diffjax.samplers.sample`).
      num_steps: diffusers' ``num_inference_steps``.
      alphas_cumprod: diffusers' float32 table (``None``: the schedule's); may end in 0
        (``rescale_betas_zero_snr``; use a v network).
      eta: DDIM's stochasticity (may be traced; checked ``>= 0`` when concrete).
      timestep_spacing: ``'leading'``, ``'trailing'`` or ``'linspace'``.
      steps_offset: added to the ``leading`` grid.
      set_alpha_to_one: the last step's ``a_s`` is 1 (else ``alpha_bar[0]``).
      prediction_type: the network's, ``'eps'``, ``'x0'`` or ``'v'``.
      clip_sample: clip ``x0`` to ``[-clip_sample_range, clip_sample_range]``.
      clip_sample_range: see ``clip_sample``.
      thresholding: diffusers' dynamic thresholding (takes precedence over clipping).
      dynamic_thresholding_ratio: its quantile.
      sample_max_value: its largest threshold.
      use_clipped_model_output: recompute ``eps`` from the clipped ``x0``.
      noise_fn: ``noise_fn(key, step_index, shape, dtype)`` for ``eta > 0``
        (default :func:`default_noise`; :func:`replay_noise` feeds recorded noise).

    Returns:
      A Sampler with ``nfe = num_steps``, ``order = 1`` (``None`` for a concrete
      ``eta > 0``).
    """
    check_prediction_type(prediction_type)
    ac = table_alphas_cumprod(schedule, alphas_cumprod).astype(np.float64)
    T = ac.shape[0]
    num_steps = check_num_steps(num_steps, T)
    ts = diffusers_ddim_timesteps(T, num_steps, timestep_spacing, steps_offset)
    if ts.max() > T - 1 or ts.min() < 0:
        raise ValueError(f"steps_offset={steps_offset} puts DDIM timesteps outside [0, {T - 1}]")
    prev = ts - T // num_steps
    final = 1.0 if set_alpha_to_one else ac[0]
    a_t = ac[ts]
    a_s = np.where(prev >= 0, ac[np.clip(prev, 0, T - 1)], final)
    variance = (1.0 - a_s) / (1.0 - a_t) * (1.0 - a_t / a_s)
    deterministic = check_nonnegative_scalar("eta", eta)
    stochastic = not deterministic and concrete_value(eta) is not None
    noise_fn = default_noise if noise_fn is None else noise_fn
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    t_tab, sa_t, sb_t = f32(ts), f32(np.sqrt(a_t)), f32(np.sqrt(1.0 - a_t))
    sa_s, one_m_as, var_tab = f32(np.sqrt(a_s)), f32(1.0 - a_s), f32(variance)

    def init(x_T: ArrayLike) -> DiffusersDDIMState:
        return DiffusersDDIMState(x=jnp.asarray(x_T, state_dtype(x_T)))

    def step(
        denoise_fn: DenoiseFn, state: DiffusersDDIMState, i: Array, key: Array, cond: Any
    ) -> DiffusersDDIMState:
        x = state.x
        dtype = x.dtype
        t = t_tab[i]
        raw = raw_model_output(denoise_fn(x, t, cond), x, t, schedule, prediction_type)
        at, bt = sa_t[i].astype(dtype), sb_t[i].astype(dtype)
        if prediction_type == "eps":
            x0, eps = (x - bt * raw) / at, raw
        elif prediction_type == "x0":
            x0, eps = raw, (x - at * raw) / bt
        else:
            x0, eps = at * x - bt * raw, at * raw + bt * x
        if thresholding:
            x0 = diffusers_threshold(x0, dynamic_thresholding_ratio, sample_max_value)
        elif clip_sample:
            x0 = jnp.clip(x0, -clip_sample_range, clip_sample_range)
        std = jnp.asarray(eta, dtype) * jnp.sqrt(var_tab[i].astype(dtype))
        if use_clipped_model_output:
            eps = (x - at * x0) / bt
        direction = jnp.sqrt(jnp.maximum(one_m_as[i].astype(dtype) - std**2, 0.0)) * eps
        x_prev = sa_s[i].astype(dtype) * x0 + direction
        if not deterministic:
            x_prev = x_prev + std * noise_fn(key, i, x.shape, dtype)
        return DiffusersDDIMState(x=x_prev.astype(dtype))

    return Sampler(
        num_steps=num_steps, init=init, step=step, finalize=lambda s: s.x, schedule=schedule,
        nfe=num_steps, order=None if stochastic else 1,
    )
