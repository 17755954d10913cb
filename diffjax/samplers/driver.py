"""The sampler interface and the single ``lax.scan`` driver that runs any sampler.

A sampler is an optax-style bundle of pure functions (:class:`Sampler`):

* ``init(x_T) -> state`` (float32 pytree),
* ``step(denoise_fn, state, step_index, key, cond) -> state``,
* ``finalize(state) -> x``.

Its time grid lives in its closure (static length ``num_steps``), so the driver only
scans over step indices; everything else (eta, guidance scale, keys, conditioning)
may be traced and never forces a recompile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.parameterization import DenoiseFn
from diffjax.schedules import DiscreteSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
SamplerState = Any

__all__ = ["Sampler", "check_denoised", "check_timesteps", "sample", "transition_beta"]


class Sampler(NamedTuple):
    """A sampler as a bundle of pure functions (optax style).

    Attributes:
      num_steps: number of ``step`` calls (static).
      init: ``init(x_T) -> state``.
      step: ``step(denoise_fn, state, step_index, key, cond) -> state``; ``step_index``
        is a traced int32 scalar in ``[0, num_steps)``.
      finalize: ``finalize(state) -> x``.
    """

    num_steps: int
    init: Callable[[Array], SamplerState]
    step: Callable[[DenoiseFn, SamplerState, Array, Array, Any], SamplerState]
    finalize: Callable[[SamplerState], Array]


def concrete_value(x: Any) -> np.ndarray | None:
    """Returns ``x`` as a NumPy array if it is concrete, ``None`` if it is traced."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_nonnegative_scalar(name: str, value: Any) -> bool:
    """Checks a scalar option that may be traced (``eta``, ``S_churn``) when it is concrete.

    Returns:
      Whether ``value`` is a concrete zero (the sampler can then skip its noise).

    Raises:
      ValueError: naming ``name`` for a concrete non-scalar or negative value.
    """
    v = concrete_value(value)
    if v is None:
        return False
    if v.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {v.shape}")
    if not v >= 0:
        raise ValueError(f"{name} must be >= 0, got {name}={float(v)!r}")
    return float(v) == 0.0


def state_dtype(x: ArrayLike) -> Any:
    """float32, or float64 for float64 input (never narrower than float32)."""
    return jnp.promote_types(jnp.asarray(x).dtype, jnp.float32)


def check_denoised(out: Any, name: str = "denoise_fn") -> Any:
    """Returns ``out`` if it is a denoiser output (has ``eps`` and ``x0``), else raises.

    Samplers consume :class:`~diffjax.parameterization.Denoised`; a raw network output
    (an array of eps, x0 or v) cannot be interpreted without knowing its prediction type,
    so it is refused at trace time instead of being silently read as the wrong quantity.

    Raises:
      TypeError: naming ``name`` and the fix (``make_denoiser``).
    """
    if hasattr(out, "eps") and hasattr(out, "x0"):
        return out
    shape = getattr(out, "shape", None)
    got = f"an array of shape {tuple(shape)}" if shape is not None else type(out).__name__
    raise TypeError(
        f"{name} must return Denoised(eps, x0), got {got}: samplers never see the raw "
        "network. Wrap an eps, x0 or v network with "
        "diffjax.make_denoiser(model_fn, schedule, prediction_type)"
    )


def transition_beta(schedule: Any, t: ArrayLike, t_prev: ArrayLike) -> Array:
    """``1 - alpha_bar(t) / alpha_bar(t_prev)``, the effective beta of a (skipped) step.

    Computed as ``-expm1(2 (log alpha_t - log alpha_prev))`` so that small betas keep
    their relative precision in float32.
    """
    return -jnp.expm1(2.0 * (schedule.log_alpha(t) - schedule.log_alpha(t_prev)))


def check_timesteps(schedule: Any, timesteps: ArrayLike) -> np.ndarray:
    """Validates a sampler time grid and returns it as float64 NumPy.

    The grid holds ``num_steps + 1`` non-increasing model times: the model is evaluated
    at ``timesteps[:-1]`` and the last entry is where the final step lands. For a
    :class:`~diffjax.schedules.DiscreteSchedule` evaluation times must lie in
    ``[0, T-1]`` and the target in ``[-1, T-1]``; for a continuous schedule all times
    lie in ``[0, t_max]`` and evaluation times are positive.

    Args:
      schedule: the noise schedule.
      timesteps: the grid (static).

    Returns:
      The grid as a float64 array.

    Raises:
      ValueError: if the grid is traced, not 1-D, shorter than 2, increasing, or out
        of range.
    """
    ts = concrete_value(timesteps)
    if ts is None:
        raise ValueError("timesteps must be static (NumPy), not a traced array")
    ts = ts.astype(np.float64)
    if ts.ndim != 1:
        raise ValueError(f"timesteps must be 1-D, got shape {ts.shape}")
    if ts.shape[0] < 2:
        raise ValueError(
            "timesteps must have length num_steps + 1 >= 2 (evaluation times plus the final "
            f"target, e.g. with_final_timestep(grid)), got length {ts.shape[0]}"
        )
    if not np.all(np.isfinite(ts)):
        raise ValueError(f"timesteps must be finite, got {ts}")
    if np.any(np.diff(ts) > 0):
        raise ValueError(f"timesteps must be non-increasing, got {ts}")
    if isinstance(schedule, DiscreteSchedule):
        T = schedule.num_timesteps
        if ts[0] > T - 1:
            raise ValueError(f"timesteps exceed the schedule's last timestep {T - 1}: {ts}")
        if ts[-2] < 0 or ts[-1] < -1:
            raise ValueError(f"evaluation timesteps must be >= 0 and the target >= -1, got {ts}")
    else:
        t_max = float(getattr(schedule, "t_max", 1.0))
        if ts[0] > t_max + 1e-6 or ts[-2] <= 0 or ts[-1] < 0:
            raise ValueError(f"timesteps must lie in (0, {t_max}] (target in [0, {t_max}])")
    return ts


def sample(
    sampler: Sampler,
    denoise_fn: DenoiseFn,
    x_T: ArrayLike,
    key: Array,
    cond: Any = None,
    return_trajectory: bool = False,
) -> Array | tuple[Array, Array]:
    """Runs a sampler with one ``lax.scan`` over its step indices.

    The key for step ``i`` is ``jax.random.fold_in(key, i)``. The state is float32 (or
    float64 for a float64 ``x_T`` under ``jax_enable_x64``; never narrower than float32,
    whatever the network's dtype).
    ``jax.vmap`` over ``key`` (and ``x_T``) works.

    Args:
      sampler: a :class:`Sampler`.
      denoise_fn: ``denoise_fn(x, t, cond) -> Denoised`` (see
        :func:`diffjax.parameterization.make_denoiser`).
      x_T: the initial noise, batch-first.
      key: PRNG key for stochastic samplers.
      cond: conditioning passed unchanged to ``denoise_fn`` (may be traced).
      return_trajectory: also return the ``num_steps + 1`` intermediate outputs.

    Returns:
      The final sample, or ``(sample, trajectory)`` with ``trajectory`` of shape
      ``(num_steps + 1, *x_T.shape)`` (``trajectory[0]`` is ``finalize(init(x_T))``).
    """
    num_steps = sampler.num_steps
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
        raise TypeError(f"sampler.num_steps must be a static int, got {num_steps!r}")
    if num_steps < 1:
        raise ValueError(f"sampler.num_steps must be >= 1, got {num_steps}")
    x_T = jnp.asarray(x_T, state_dtype(x_T))
    state = sampler.init(x_T)
    raw_fn = denoise_fn

    def denoise_fn(x: Array, t: ArrayLike, cond: Any) -> Any:
        return check_denoised(raw_fn(x, t, cond))

    def body(state: SamplerState, i: Array) -> tuple[SamplerState, Array | None]:
        new_state = sampler.step(denoise_fn, state, i, jax.random.fold_in(key, i), cond)
        new_state = jax.tree_util.tree_map(
            lambda new, old: jnp.asarray(new, jnp.result_type(old)), new_state, state
        )
        return new_state, (sampler.finalize(new_state) if return_trajectory else None)

    first = sampler.finalize(state) if return_trajectory else None
    state, traj = jax.lax.scan(body, state, jnp.arange(num_steps, dtype=jnp.int32))
    x = sampler.finalize(state)
    if return_trajectory:
        return x, jnp.concatenate([first[None], traj], axis=0)
    return x
