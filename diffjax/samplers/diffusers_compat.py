"""Shared pieces of the diffusers-exact samplers, and diffusers' DDIM step loop.

The samplers in :mod:`diffjax.samplers.pndm`, :mod:`diffjax.samplers.euler`,
:mod:`diffjax.samplers.diffusers_multistep` (DPM-Solver, UniPC),
:mod:`diffjax.samplers.diffusers_ddpm` (DDPM, LCM) and this module reproduce diffusers'
scheduler classes step for step (``set_timesteps``,
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

**Loops and start points (txt2img / img2img).** Every diffusers-exact factory is built
on a :class:`DiffusersLoop`: the full ``set_timesteps`` loop with its start left open.
Its ``step(denoise_fn, state, i, j, key, cond)`` makes call ``i`` of the full loop (the
tables: timesteps, sigmas, coefficients, ``step_index``) as the ``j``-th call since the
start (the counters and history a fresh diffusers scheduler keeps: PNDM's ``counter`` and
``ets``, LMS's ``derivatives``, the multistep ``lower_order_nums``; the ``step_index``
passed to ``noise_fn``). :func:`loop_sampler` runs it from call 0 with ``j = i`` and
``x_T * init_noise_sigma`` (txt2img); :func:`img2img_sampler` runs diffusers'
``StableDiffusionImg2ImgPipeline`` loop::

    init_timestep = min(int(n * strength), n);  t_start = n - init_timestep
    timesteps = scheduler.timesteps[t_start * scheduler.order:]   # order = 1 here
    scheduler.set_begin_index(t_start)                            # where it exists
    latents = scheduler.add_noise(image_latents, noise, timesteps[:1])

with the full loop's static length: calls before ``t_start`` are skipped by
``lax.cond`` on the scalar ``i >= t_start`` (no network call), so ``strength`` may be
traced and every strength shares one compilation (``jax.vmap`` over ``strength`` turns
the cond into a select that runs every call). ``add_noise(image_latents, noise)`` is
``a x0 + b noise`` with the class's own ``(a, b)`` at ``t_start`` (``(1, sigma)`` for the
sigma-space classes, ``(sqrt(alpha_bar), sqrt(1 - alpha_bar))`` for the others); its
result is the sampler's ``x_T`` and ``init`` does not rescale it. A strength below
``1 / n`` leaves no call (diffusers fails there; PNDM, whose loop has ``n + 1`` calls,
still makes one): every call is skipped and ``add_noise`` returns the image latents.
A traced strength is float32: ``int(n * strength)`` is evaluated for the shortest
decimal that prints as that float32 (:func:`strength_thresholds`), so ``0.7`` and
``0.57`` give diffusers' 7 of 10 and 56 of 100 steps though ``float32(0.7) * 10 < 7``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import is_int
from diffjax.parameterization import Denoised, DenoiseFn, check_prediction_type
from diffjax.samplers.driver import Sampler, check_nonnegative_scalar, concrete_value, state_dtype
from diffjax.samplers.exponential import dynamic_threshold
from diffjax.schedules import DiscreteSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
NoiseFn = Callable[[Array, Array, tuple[int, ...], Any], Array]

__all__ = [
    "DIFFUSERS_SPACINGS",
    "SIGMA_SCHEDULES",
    "DiffusersDDIMState",
    "DiffusersLoop",
    "NoiseFn",
    "alpha_bar_noise_coeffs",
    "convert_sigmas",
    "default_noise",
    "diffusers_ddim",
    "diffusers_ddim_loop",
    "diffusers_ddim_timesteps",
    "img2img_sampler",
    "img2img_start",
    "loop_sampler",
    "noise_coeffs_table",
    "predicted_x0",
    "raw_model_output",
    "replay_noise",
    "sigma_to_t",
    "strength_thresholds",
    "table_alphas_cumprod",
    "txt2img_factory",
    "x0_clipping",
    "x0_update_loop",
]

DIFFUSERS_SPACINGS = ("leading", "trailing", "linspace")
SIGMA_SCHEDULES = (None, "karras", "exponential")


def default_noise(key: Array, step_index: Array, shape: tuple[int, ...], dtype: Any) -> Array:
    """The default ``noise_fn``: ``jax.random.normal(key, shape, dtype)`` (the step's key)."""
    del step_index
    return jax.random.normal(key, shape, dtype)


def replay_noise(noise: ArrayLike) -> NoiseFn:
    """A ``noise_fn`` that returns recorded noise: ``noise[step_index]``.

    Use it to replay the noise another implementation drew (diffusers' Euler ancestral
    draws one ``randn_tensor`` per step), so the two runs can be compared exactly.
    ``step_index`` counts the calls since the start (img2img: the draws of the sliced
    loop, in diffusers' order).

    Args:
      noise: shape ``(num_steps, *x.shape)``, one draw per call made.

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
    if not is_int(num_steps):
        raise TypeError(f"num_steps must be an int, got {num_steps!r}")
    if not 1 <= int(num_steps) <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    return int(num_steps)


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Diffusers' ``_sigma_to_t``: the fractional timestep of ``sigma`` (log-linear)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * high_idx).reshape(sigma.shape)


def convert_sigmas(kind: str, sigma_min: float, sigma_max: float, num: int) -> np.ndarray:
    """Diffusers' ``_convert_to_karras``, ``_convert_to_exponential`` or ``_convert_to_lu``.

    Karras: ``rho = 7`` (Karras et al. 2022, Eq. 5); exponential: log-linear; ``'lu'``
    (Lu et al.'s uniform-lambda grid): linear between the two ends it is given (diffusers
    passes ``log sigma``). Float64, from ``sigma_max`` down to ``sigma_min``.
    """
    ramp = np.linspace(0, 1, num)
    if kind == "karras":
        rho = 7.0
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        return (hi + ramp * (lo - hi)) ** rho
    if kind == "lu":
        return sigma_max + ramp * (sigma_min - sigma_max)
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num))


class DiffusersLoop(NamedTuple):
    """A diffusers scheduler's full ``set_timesteps`` loop, its start point left open.

    Attributes:
      num_steps: calls of the full loop (``len(scheduler.timesteps)``; static).
      num_inference_steps: diffusers' ``n``, the one ``strength`` is applied to.
      init: ``init(x) -> state``: the state before the first call from the sample ``x``,
        unscaled.
      step: ``step(denoise_fn, state, i, j, key, cond) -> state``: call ``i`` of the full
        loop made as the ``j``-th call since the start (``0 <= j <= i``; both traced
        int32).
      finalize: ``finalize(state) -> x``.
      schedule: the denoiser's schedule.
      init_noise_sigma: diffusers' ``init_noise_sigma`` (float32; txt2img only).
      noise_coeffs: float32 ``(n + 1, 2)``: row ``t_start`` holds ``add_noise``'s
        ``(a, b)``, ``x = a x0 + b noise`` (``(1, 0)`` where no call is left).
      order: the txt2img sampler's ``Sampler.order``.
    """

    num_steps: int
    num_inference_steps: int
    init: Callable[[Array], Any]
    step: Callable[[DenoiseFn, Any, Array, Array, Array, Any], Any]
    finalize: Callable[[Any], Array]
    schedule: DiscreteSchedule
    init_noise_sigma: np.float32
    noise_coeffs: np.ndarray
    order: int | None


def noise_coeffs_table(
    num_steps: int, signal: ArrayLike, noise: ArrayLike, num_calls: int | None = None
) -> np.ndarray:
    """``add_noise``'s float32 ``(a, b)`` per ``t_start``, padded with ``(1, 0)``.

    Args:
      num_steps: ``n``; the table has ``n + 1`` rows (``t_start = 0 .. n``).
      signal: ``a`` at the loop's calls ``0, 1, ...`` (at least ``min(n + 1, calls)``).
      noise: ``b`` at the same calls.
      num_calls: calls of the full loop (default ``n``): rows from it on get ``(1, 0)``.
    """
    calls = num_steps if num_calls is None else num_calls
    rows = np.tile(np.array([1.0, 0.0], np.float32), (num_steps + 1, 1))
    k = min(num_steps + 1, calls)
    rows[:k, 0] = np.asarray(signal, np.float32)[:k]
    rows[:k, 1] = np.asarray(noise, np.float32)[:k]
    return rows


def alpha_bar_noise_coeffs(alphas_cumprod: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
    """``(sqrt(alpha_bar[t]), sqrt(1 - alpha_bar[t]))``, float32, shape ``(len(t), 2)``.

    As ``add_noise`` of DDPM, DDIM, PNDM and LCM computes them
    (``alphas_cumprod.to(float32)[t] ** 0.5``).
    """
    ac = np.asarray(alphas_cumprod, np.float32)[np.asarray(timesteps, np.int64)]
    return np.stack([np.sqrt(ac), np.sqrt(np.float32(1) - ac)], axis=-1)


def _cast_like(new: Any, old: Any) -> Any:
    return jax.tree_util.tree_map(lambda a, b: jnp.asarray(a, jnp.result_type(b)), new, old)


def loop_sampler(loop: DiffusersLoop) -> Sampler:
    """The txt2img Sampler of a loop: every call, ``j = i``, ``x_T * init_noise_sigma``."""

    def init(x_T: ArrayLike) -> Any:
        x = jnp.asarray(x_T, state_dtype(x_T))
        return loop.init(x * jnp.asarray(loop.init_noise_sigma, x.dtype))

    def step(denoise_fn: DenoiseFn, state: Any, i: Array, key: Array, cond: Any) -> Any:
        return loop.step(denoise_fn, state, i, i, key, cond)

    return Sampler(
        num_steps=loop.num_steps, init=init, step=step, finalize=loop.finalize,
        schedule=loop.schedule, nfe=loop.num_steps, order=loop.order,
    )


def txt2img_factory(
    loop_fn: Callable[..., DiffusersLoop], name: str, scheduler_class: str
) -> Callable[..., Sampler]:
    """The txt2img Sampler factory of a loop builder: ``loop_sampler(loop_fn(...))``.

    Args:
      loop_fn: ``loop_fn(schedule, num_steps, **options) -> DiffusersLoop``.
      name: the factory's ``__name__``.
      scheduler_class: the diffusers class, for the docstring.
    """

    def factory(schedule: DiscreteSchedule, num_steps: int, **options: Any) -> Sampler:
        return loop_sampler(loop_fn(schedule, num_steps, **options))

    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = loop_fn.__module__
    factory.__doc__ = (
        f"Diffusers' ``{scheduler_class}`` as a txt2img Sampler (``x_T`` unit noise).\n\n"
        f"``loop_sampler({loop_fn.__name__}(schedule, num_steps, **options))``; ``nfe`` counts "
        f"the network calls. See :func:`{loop_fn.__name__}` for the options.\n"
    )
    return factory


def _shortest_float32(value: np.float32) -> float:
    """The shortest decimal that rounds to ``value`` in float32, as a Python float."""
    return float(np.format_float_positional(np.float32(value), unique=True))


def _init_timestep(num_steps: int, strength: float) -> int:
    return min(int(num_steps * strength), num_steps)


def strength_thresholds(num_steps: int) -> np.ndarray:
    """float32 thresholds ``th`` with ``init_timestep = sum(strength >= th)`` for float32.

    ``th[k - 1]`` is the smallest float32 ``s`` for which diffusers'
    ``min(int(n * s'), n) >= k``, ``s'`` the shortest decimal printing as ``s``.
    """
    n = int(num_steps)
    out = np.empty(n, np.float32)
    for k in range(1, n + 1):
        s = np.float32(k / n)
        while s > 0 and _init_timestep(n, _shortest_float32(np.nextafter(s, np.float32(0)))) >= k:
            s = np.nextafter(s, np.float32(0))
        while _init_timestep(n, _shortest_float32(s)) < k:
            s = np.nextafter(s, np.float32(2))
        out[k - 1] = s
    return out


def img2img_start(num_steps: int, strength: Any) -> int | Array:
    """Diffusers' ``t_start = n - min(int(n * strength), n)``: an int, or traced int32.

    A Python (float64) strength is used as is; a float32 one (traced or not) as the
    shortest decimal that prints as it (:func:`strength_thresholds`).

    Raises:
      ValueError: for a concrete strength that is not a finite scalar in ``[0, 1]``
        (a traced one is clipped to ``[0, 1]``).
    """
    n = int(num_steps)
    value = concrete_value(strength)
    if value is not None:
        if value.ndim != 0 or value.dtype.kind not in "biuf" or not np.isfinite(value):
            raise ValueError(f"strength must be a finite scalar in [0, 1], got {strength!r}")
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got strength={float(value)!r}")
        if value.dtype == np.float32:
            return n - _init_timestep(n, _shortest_float32(value))
        return n - _init_timestep(n, float(value))
    s = jnp.clip(jnp.asarray(strength, jnp.float32), 0.0, 1.0)
    above = s[..., None] >= jnp.asarray(strength_thresholds(n))
    return n - jnp.sum(above.astype(jnp.int32), axis=-1)


def img2img_sampler(
    loop: DiffusersLoop, strength: Any
) -> tuple[Sampler, Callable[[ArrayLike, ArrayLike], Array]]:
    """The img2img Sampler of a loop and its start point ``add_noise``.

    Args:
      loop: the class's :class:`DiffusersLoop`.
      strength: diffusers' ``strength`` in ``[0, 1]`` (may be traced).

    Returns:
      ``(sampler, add_noise)``: ``add_noise(image_latents, noise)`` is the sampler's
      ``x_T`` (diffusers' ``scheduler.add_noise(latents, noise, timesteps[:1])``); the
      sampler has the full loop's ``num_steps``, skips the calls before ``t_start`` and
      starts its counters there. ``nfe`` is the calls it makes for a concrete strength,
      the full loop's for a traced one (an upper bound); ``order`` is ``None``.
    """
    t_start = img2img_start(loop.num_inference_steps, strength)
    coeffs = jnp.asarray(loop.noise_coeffs)
    nfe = max(loop.num_steps - t_start, 0) if isinstance(t_start, int) else loop.num_steps

    def add_noise(image_latents: ArrayLike, noise: ArrayLike) -> Array:
        x0 = jnp.asarray(image_latents, state_dtype(image_latents))
        z = jnp.asarray(noise, x0.dtype)
        if x0.shape != z.shape:
            raise ValueError(
                f"add_noise: image_latents have shape {x0.shape} but noise has {z.shape}"
            )
        a, b = coeffs[t_start, 0].astype(x0.dtype), coeffs[t_start, 1].astype(x0.dtype)
        return a * x0 + b * z

    def init(x_start: ArrayLike) -> Any:
        return loop.init(jnp.asarray(x_start, state_dtype(x_start)))

    def step(denoise_fn: DenoiseFn, state: Any, i: Array, key: Array, cond: Any) -> Any:
        j = i - t_start
        if isinstance(t_start, int) and t_start == 0:
            return loop.step(denoise_fn, state, i, i, key, cond)

        def run(s: Any) -> Any:
            return _cast_like(loop.step(denoise_fn, s, i, jnp.maximum(j, 0), key, cond), s)

        return jax.lax.cond(j >= 0, run, lambda s: s, state)

    sampler = Sampler(
        num_steps=loop.num_steps, init=init, step=step, finalize=loop.finalize,
        schedule=loop.schedule, nfe=nfe, order=None,
    )
    return sampler, add_noise


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
    """Diffusers' ``_threshold_sample``: :func:`~diffjax.samplers.exponential.dynamic_threshold`.

    Per sample, ``s = clip(quantile(|x0|, ratio), 1, max_value)``, then ``x0 = clip(x0,
    -s, s) / s`` (quantile with linear interpolation over all non-batch entries).
    """
    return dynamic_threshold(x0, ratio, max_value)


def predicted_x0(
    raw: Array, x: Array, sqrt_a: Array, sqrt_b: Array, prediction_type: str
) -> tuple[Array, Array]:
    """``(x0, eps)`` from the raw output as DDIM, DDPM and LCM form them.

    ``sqrt_a = sqrt(alpha_bar_t)``, ``sqrt_b = sqrt(1 - alpha_bar_t)`` (diffusers' float32
    values): eps ``x0 = (x - sqrt_b eps) / sqrt_a``; x0 ``eps = (x - sqrt_a x0) / sqrt_b``;
    v ``x0 = sqrt_a x - sqrt_b v``, ``eps = sqrt_a v + sqrt_b x``.
    """
    if prediction_type == "eps":
        return (x - sqrt_b * raw) / sqrt_a, raw
    if prediction_type == "x0":
        return raw, (x - sqrt_a * raw) / sqrt_b
    return sqrt_a * x - sqrt_b * raw, sqrt_a * raw + sqrt_b * x


def x0_clipping(
    thresholding: bool, ratio: float, max_value: float, clip_sample: bool, clip_range: float
) -> Callable[[Array], Array]:
    """Diffusers' ``x0`` post-processing: thresholding, else ``clip_sample``, else none."""
    if thresholding:
        return lambda x0: diffusers_threshold(x0, ratio, max_value)
    if clip_sample:
        return lambda x0: jnp.clip(x0, -clip_range, clip_range)
    return lambda x0: x0


X0Update = Callable[[Array, Array, Array, Array, "Array | None"], Array]


def x0_update_loop(
    schedule: DiscreteSchedule,
    timesteps: np.ndarray,
    sqrt_alpha: np.ndarray,
    sqrt_one_minus_alpha: np.ndarray,
    prediction_type: str,
    clip: Callable[[Array], Array],
    update: X0Update,
    *,
    noise_fn: NoiseFn | None,
    noise_coeffs: np.ndarray,
    order: int | None,
) -> DiffusersLoop:
    """A loop whose call ``i`` steps from diffusers' float32 ``x0`` (DDIM, DDPM, LCM).

    The call evaluates the network at ``timesteps[i]``, converts its output to ``(x0,
    eps)`` with ``sqrt(alpha_bar)`` and ``sqrt(1 - alpha_bar)`` from the tables
    (:func:`predicted_x0`), applies ``clip`` to ``x0`` and returns ``update(x0, eps, x,
    i, z)`` (``z`` the step's ``noise_fn`` draw, ``None`` without ``noise_fn``).

    Args:
      schedule: the denoiser's schedule.
      timesteps: the loop's integer timesteps, one per call.
      sqrt_alpha: ``sqrt(alpha_bar[t])`` per call, as the scheduler computes it.
      sqrt_one_minus_alpha: ``sqrt(1 - alpha_bar[t])`` per call.
      prediction_type: ``'eps'``, ``'x0'`` or ``'v'``.
      clip: diffusers' ``x0`` post-processing (:func:`x0_clipping`).
      update: the scheduler's step from the clipped ``x0``.
      noise_fn: the step noise, or ``None`` for a deterministic loop.
      noise_coeffs: ``add_noise``'s table (:func:`noise_coeffs_table`).
      order: the txt2img sampler's order.
    """
    f32 = lambda v: jnp.asarray(np.asarray(v), jnp.float32)  # noqa: E731
    t_tab, sa, sb = f32(timesteps), f32(sqrt_alpha), f32(sqrt_one_minus_alpha)

    def step(
        denoise_fn: DenoiseFn, state: DiffusersDDIMState, i: Array, j: Array, key: Array,
        cond: Any,
    ) -> DiffusersDDIMState:
        x = state.x
        dtype = x.dtype
        t = t_tab[i]
        raw = raw_model_output(denoise_fn(x, t, cond), x, t, schedule, prediction_type)
        x0, eps = predicted_x0(raw, x, sa[i].astype(dtype), sb[i].astype(dtype),
                               prediction_type)
        z = None if noise_fn is None else noise_fn(key, j, x.shape, dtype)
        return DiffusersDDIMState(x=update(clip(x0), eps, x, i, z).astype(dtype))

    n = len(timesteps)
    return DiffusersLoop(
        num_steps=n, num_inference_steps=n, init=DiffusersDDIMState, step=step,
        finalize=lambda s: s.x, schedule=schedule, init_noise_sigma=np.float32(1),
        noise_coeffs=noise_coeffs, order=order,
    )


def diffusers_ddim_loop(
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
    """Diffusers' ``DDIMScheduler`` step loop (Song et al. 2021, Eq. 12).

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
      noise_fn: ``noise_fn(key, step_index, shape, dtype)`` for ``eta > 0``, with
        ``step_index`` the calls since the start (default :func:`default_noise`;
        :func:`replay_noise` feeds recorded noise).

    Returns:
      A :class:`DiffusersLoop` of ``num_steps`` calls; its txt2img sampler has
      ``order = 1`` (``None`` for a concrete ``eta > 0``).
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
    clip = x0_clipping(thresholding, dynamic_thresholding_ratio, sample_max_value, clip_sample,
                       clip_sample_range)
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    sa_t, sb_t = np.sqrt(a_t), np.sqrt(1.0 - a_t)
    sa_s, one_m_as, var_tab = f32(np.sqrt(a_s)), f32(1.0 - a_s), f32(variance)
    sa_tab, sb_tab = f32(sa_t), f32(sb_t)

    def update(x0: Array, eps: Array, x: Array, i: Array, z: Array | None) -> Array:
        dtype = x.dtype
        std = jnp.asarray(eta, dtype) * jnp.sqrt(var_tab[i].astype(dtype))
        if use_clipped_model_output:
            eps = (x - sa_tab[i].astype(dtype) * x0) / sb_tab[i].astype(dtype)
        direction = jnp.sqrt(jnp.maximum(one_m_as[i].astype(dtype) - std**2, 0.0)) * eps
        x_prev = sa_s[i].astype(dtype) * x0 + direction
        return x_prev if z is None else x_prev + std * z

    return x0_update_loop(
        schedule, ts, sa_t, sb_t, prediction_type, clip, update,
        noise_fn=None if deterministic else noise_fn,
        noise_coeffs=noise_coeffs_table(num_steps, *alpha_bar_noise_coeffs(ac, ts).T),
        order=None if stochastic else 1,
    )


diffusers_ddim = txt2img_factory(diffusers_ddim_loop, "diffusers_ddim", "DDIMScheduler")
