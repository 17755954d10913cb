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

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import is_int
from diffjax.parameterization import DenoiseFn, denoiser_schedule
from diffjax.schedules import DiscreteSchedule, VPSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
SamplerState = Any

__all__ = [
    "Sampler",
    "check_denoised",
    "check_same_schedule",
    "check_timesteps",
    "ode_step",
    "sample",
    "schedule_mismatch",
    "transition_beta",
]


class Sampler(NamedTuple):
    """A sampler as a bundle of pure functions (optax style).

    Attributes:
      num_steps: number of ``step`` calls (static).
      init: ``init(x_T) -> state``.
      step: ``step(denoise_fn, state, step_index, key, cond) -> state``; ``step_index``
        is a traced int32 scalar in ``[0, num_steps)``.
      finalize: ``finalize(state) -> x``.
      schedule: the noise schedule the sampler was built for (every factory in
        :mod:`diffjax.samplers` sets it), or ``None`` for a hand-written sampler.
        :func:`sample` refuses a denoiser that records a different schedule.
      nfe: network evaluations one :func:`sample` run makes (per sample; static), set
        by every factory; ``None`` for a hand-written sampler.
      order: the global convergence order of the method on the probability-flow ODE
        (the error falls as ``num_steps ** -order`` on grids ending at sigma > 0), or
        ``None`` for a stochastic sampler; tests/test_sampler_order.py measures it.
      init_at: ``init_at(x, step_index) -> state``, the state of a sample ``x`` that
        stands at grid point ``step_index`` (may be traced), for the one-step methods
        whose state is the sample alone (DDIM, singlestep DPM-Solver, EDM Heun);
        ``None`` for methods whose state carries history (multistep solvers). With it
        :func:`ode_step` takes one step from any grid point.
    """

    num_steps: int
    init: Callable[[Array], SamplerState]
    step: Callable[[DenoiseFn, SamplerState, Array, Array, Any], SamplerState]
    finalize: Callable[[SamplerState], Array]
    schedule: VPSchedule | None = None
    nfe: int | None = None
    order: int | None = None
    init_at: Callable[[Array, Array], SamplerState] | None = None


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
      ValueError: naming ``name`` for a concrete non-scalar, non-numeric, non-finite or
        negative value.
    """
    v = concrete_value(value)
    if v is None:
        return False
    if v.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {v.shape}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number >= 0, got {name}={value!r}") from None
    if not (math.isfinite(f) and f >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {name}={f!r}")
    return f == 0.0


def state_dtype(x: ArrayLike) -> Any:
    """float32, or float64 for float64 input (never narrower than float32)."""
    return jnp.promote_types(jnp.asarray(x).dtype, jnp.float32)


def check_denoised(
    out: Any, name: str = "denoise_fn", shape: Sequence[int] | None = None
) -> Any:
    """Returns ``out`` if it is a denoiser output of the right shape, else raises.

    Samplers consume :class:`~diffjax.parameterization.Denoised`; a raw network output
    (an array of eps, x0 or v) cannot be interpreted without knowing its prediction type,
    so it is refused at trace time instead of being silently read as the wrong quantity.
    With ``shape`` (the shape of the ``x`` the denoiser was called on), ``eps`` and
    ``x0`` must have exactly that shape: an output that merely broadcasts against ``x``
    (say, one without the batch axis) would give every sample the same prediction.
    Shapes are static, so this is a trace-time check.

    Args:
      out: what the denoiser returned.
      name: how to name the denoiser in the error.
      shape: the expected shape of ``out.eps`` and ``out.x0``; ``None`` skips the check.

    Returns:
      ``out``, unchanged.

    Raises:
      TypeError: naming ``name`` and the fix (``make_denoiser``) when ``out`` is not a
        ``Denoised``.
      ValueError: naming ``name``, the expected and the actual shape when ``eps`` or
        ``x0`` does not have the shape of ``x``.
    """
    if not (hasattr(out, "eps") and hasattr(out, "x0")):
        got_shape = getattr(out, "shape", None)
        got = (
            f"an array of shape {tuple(got_shape)}"
            if got_shape is not None
            else type(out).__name__
        )
        raise TypeError(
            f"{name} must return Denoised(eps, x0), got {got}: samplers never see the raw "
            "network. Wrap an eps, x0 or v network with "
            "diffjax.make_denoiser(model_fn, schedule, prediction_type)"
        )
    if shape is not None:
        expected = tuple(shape)
        for field in ("eps", "x0"):
            actual = tuple(jnp.shape(getattr(out, field)))
            if actual != expected:
                raise ValueError(
                    f"{name} returned Denoised.{field} of shape {actual}, but it was called "
                    f"on x of shape {expected}: eps and x0 must have exactly the shape of x "
                    "(batch axis included; an output that only broadcasts would make every "
                    "sample alike)"
                )
    return out


def _field_values(schedule: VPSchedule) -> list[tuple[str, Any]] | None:
    """A schedule's defining values as ``(name, value)`` pairs, or None if unknown."""
    if dataclasses.is_dataclass(schedule) and not isinstance(schedule, type):
        return [(f.name, getattr(schedule, f.name)) for f in dataclasses.fields(schedule)]
    return None


def _value_mismatch(field: str, a: Any, b: Any, names: tuple[str, str]) -> str | None:
    """Describes how two concrete field values differ; None if equal or not comparable."""
    try:
        va, vb = concrete_value(a), concrete_value(b)
    except (TypeError, ValueError):
        return None  # not array-like: not compared
    if va is None or vb is None:
        return None  # traced: cannot tell here
    na, nb = names
    if va.shape != vb.shape:
        return f"{field} differs (shape {va.shape} for the {na}, {vb.shape} for the {nb})"
    try:
        numeric = va.dtype.kind in "fc" and vb.dtype.kind in "fc"
        equal = bool(np.array_equal(va, vb, equal_nan=numeric))
    except (TypeError, ValueError):
        return None
    if equal:
        return None
    if va.ndim == 0:
        return f"{field} differs ({va.item()!r} for the {na}, {vb.item()!r} for the {nb})"
    detail = f"in {int(np.count_nonzero(va != vb))} of {va.size} entries"
    if va.dtype.kind in "biuf" and vb.dtype.kind in "biuf":
        diff = np.abs(va.astype(np.float64) - vb.astype(np.float64))
        detail += f", max |difference| {float(np.nanmax(diff)):.3g}"
    return f"{field} differs ({detail})"


def schedule_mismatch(
    a: VPSchedule | None,
    b: VPSchedule | None,
    names: tuple[str, str] = ("sampler", "denoise_fn"),
) -> str | None:
    """How two noise schedules differ by value, or ``None`` if they match or are unknown.

    Schedules are compared by class and then, for dataclass schedules (every schedule
    in :mod:`diffjax.schedules`), field by field: arrays such as
    ``DiscreteSchedule.alphas_cumprod`` with ``np.array_equal``, static fields such as
    ``LinearVPSchedule.beta_max`` by value. Two distinct but equal-valued schedule
    objects match. Fields that are traced (a schedule passed through ``jax.jit`` as an
    argument) cannot be compared and are skipped, as are schedules of another
    structure of the same class.

    Args:
      a: a schedule, or ``None`` (unknown).
      b: another schedule, or ``None``.
      names: how to name the owners of ``a`` and ``b`` in the description.

    Returns:
      A description such as ``'alphas_cumprod differs (in 3 of 20 entries, ...)'``, or
      ``None``.
    """
    if a is None or b is None or a is b:
        return None
    na, nb = names
    if type(a) is not type(b):
        return (
            f"the schedule class differs ({type(a).__name__} for the {na}, "
            f"{type(b).__name__} for the {nb})"
        )
    fields_a, fields_b = _field_values(a), _field_values(b)
    if fields_a is None or fields_b is None:
        return None
    for (field, va), (_, vb) in zip(fields_a, fields_b, strict=True):
        problem = _value_mismatch(field, va, vb, names)
        if problem is not None:
            return problem
    return None


_SAME_SCHEDULE_FIX = (
    "build both from the same schedule: make_denoiser(model_fn, schedule, prediction_type) "
    "and the sampler factory's schedule argument"
)


def check_same_schedule(
    expected: VPSchedule | None,
    actual: VPSchedule | None,
    names: tuple[str, str] = ("sampler", "denoise_fn"),
    fix: str = _SAME_SCHEDULE_FIX,
) -> None:
    """Raises if two known schedules differ by value (see :func:`schedule_mismatch`).

    Args:
      expected: the schedule one side was built for (``None``: unknown, no check).
      actual: the schedule the other side was built for (``None``: unknown).
      names: how to name the two sides in the error.
      fix: what to do about it, appended to the error.

    Raises:
      ValueError: naming both sides, what differs and ``fix``.
    """
    problem = schedule_mismatch(expected, actual, names)
    if problem is not None:
        na, nb = names
        raise ValueError(
            f"the {na} and the {nb} were built for different noise schedules: {problem}; "
            f"{fix}"
        )


def transition_beta(schedule: VPSchedule, t: ArrayLike, t_prev: ArrayLike) -> Array:
    """``1 - alpha_bar(t) / alpha_bar(t_prev)``, the effective beta of a (skipped) step.

    Computed as ``-expm1(2 (log alpha_t - log alpha_prev))`` so that small betas keep
    their relative precision in float32.
    """
    return -jnp.expm1(2.0 * (schedule.log_alpha(t) - schedule.log_alpha(t_prev)))


def check_timesteps(schedule: VPSchedule, timesteps: ArrayLike) -> np.ndarray:
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
    t_max, t_clean = float(schedule.t_max), float(schedule.t_clean)
    if isinstance(schedule, DiscreteSchedule):
        # A discrete model is evaluated only from its first training timestep on.
        t_noise = float(schedule.t_min_noise)
        if ts[0] > t_max:
            raise ValueError(f"timesteps exceed the schedule's last timestep {t_max:g}: {ts}")
        if ts[-2] < t_noise or ts[-1] < t_clean:
            raise ValueError(
                f"evaluation timesteps must be >= {t_noise:g} and the target >= {t_clean:g}, "
                f"got {ts}"
            )
    else:
        if ts[0] > t_max + 1e-6 or ts[-2] <= t_clean or ts[-1] < t_clean:
            raise ValueError(
                f"timesteps must lie in ({t_clean:g}, {t_max}] (target in [{t_clean:g}, {t_max}])"
            )
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

    Raises:
      TypeError: for a non-int ``sampler.num_steps`` or a denoiser that does not
        return ``Denoised``.
      ValueError: for ``sampler.num_steps < 1``, a denoiser output whose ``eps`` or
        ``x0`` does not have the shape of ``x``, or a sampler and a denoiser that record
        different schedules (``sampler.schedule`` and the schedule of
        :func:`~diffjax.parameterization.make_denoiser`; a plain function records none).
    """
    num_steps = sampler.num_steps
    if not is_int(num_steps):
        raise TypeError(f"sampler.num_steps must be a static int, got {num_steps!r}")
    if num_steps < 1:
        raise ValueError(f"sampler.num_steps must be >= 1, got {num_steps}")
    check_same_schedule(getattr(sampler, "schedule", None), denoiser_schedule(denoise_fn))
    x_T = jnp.asarray(x_T, state_dtype(x_T))
    state = sampler.init(x_T)
    raw_fn = denoise_fn

    def denoise_fn(x: Array, t: ArrayLike, cond: Any) -> Any:
        return check_denoised(raw_fn(x, t, cond), shape=jnp.shape(x))

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


def ode_step(
    sampler: Sampler,
    denoise_fn: DenoiseFn,
    x: ArrayLike,
    step_index: ArrayLike,
    key: Array,
    cond: Any = None,
) -> Array:
    """One step of a one-step sampler from grid point ``step_index[i]`` per example ``i``.

    Example ``i`` of ``x`` stands at the sampler's grid point ``step_index[i]``; the
    result is where ``sampler.step`` takes it, grid point ``step_index[i] + 1``. This is
    the teacher's ODE step of consistency distillation (one diffjax sampler step, not a
    copy of it): the step runs per example under ``jax.vmap`` (the network then sees the
    whole batch at once).

    Args:
      sampler: a sampler with ``init_at`` (DDIM, singlestep DPM-Solver, EDM Heun).
      denoise_fn: ``denoise_fn(x, t, cond) -> Denoised``.
      x: batch-first samples.
      step_index: int ``(B,)`` grid indices in ``[0, num_steps)`` (may be traced).
      key: one PRNG key (example ``i`` gets ``fold_in(key, i)``) or one per example,
        shape ``(B,)`` (so an example's step does not depend on its place in a batch).
      cond: per-example conditioning (batch-first leaves) or ``None``.

    Returns:
      The samples one step later, in the state dtype.

    Raises:
      ValueError: for a sampler without ``init_at`` or a ``step_index`` that is not one
        index per example.
    """
    if getattr(sampler, "init_at", None) is None:
        raise ValueError(
            "ode_step needs a one-step sampler (one with init_at: ddim, "
            "dpm_solver_singlestep, edm_heun); a multistep solver's state carries history"
        )
    check_same_schedule(getattr(sampler, "schedule", None), denoiser_schedule(denoise_fn))
    x = jnp.asarray(x, state_dtype(x))
    step_index = jnp.asarray(step_index, jnp.int32)
    if step_index.shape != (x.shape[0],):
        raise ValueError(
            f"step_index must hold one grid index per example, shape ({x.shape[0]},), "
            f"got {step_index.shape}"
        )

    def one(x_i: Array, i: Array, k: Array, c: Any) -> Array:
        def denoise(xb: Array, t: ArrayLike, cb: Any) -> Any:
            return check_denoised(denoise_fn(xb, t, cb), shape=jnp.shape(xb))

        c1 = None if c is None else jax.tree.map(lambda leaf: leaf[None], c)
        state = sampler.init_at(x_i[None], i)
        return sampler.finalize(sampler.step(denoise, state, i, k, c1))[0]

    if key.shape == (x.shape[0],):
        keys = key
    elif key.shape == ():
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(x.shape[0]))
    else:
        raise ValueError(f"key must be one key or one per example ({x.shape[0]},), got {key.shape}")
    cond_axis = None if cond is None else 0
    return jax.vmap(one, in_axes=(0, 0, 0, cond_axis))(x, step_index, keys, cond)
