"""DPM-Solver and DPM-Solver++: exponential-integrator ODE solvers (singlestep).

The diffusion ODE in log-SNR time ``lambda = log(alpha / sigma)`` (half of
:meth:`log_snr`) has an exactly integrable linear part. With ``h = lambda_t - lambda_s``
one step from ``s`` to ``t`` of order ``k`` reads, for noise prediction
(DPM-Solver, Lu et al. 2022, Eq. 3.7)

    x_t = (alpha_t / alpha_s) x_s - sigma_t sum_n phi_{n+1}(h) h^n eps^(n)(s)

and for data prediction (DPM-Solver++, Lu et al. 2023, Eq. 9) the same with
``alpha <-> sigma``, ``h -> -h`` and ``eps -> x0``. Here ``phi_1(u) = e^u - 1``,
``phi_2(u) = phi_1(u) / u - 1`` and ``phi_3(u) = phi_2(u) / u - 1/2`` (the official
code's ``phi`` functions, up to sign conventions). The derivatives are replaced by
finite differences of model outputs: at intermediate points of the same step
(*singlestep*, this module) or at previous grid points (*multistep*,
:mod:`diffjax.samplers.multistep`).

Singlestep solvers (:func:`dpm_solver_singlestep`) place their intermediate
evaluations at ``lambda_s + r h`` mapped back to model time with
``schedule.t_from_log_snr`` (Lu et al. 2022, Algorithms 1 and 2): ``r1 = 1/2`` for
DPM-Solver-2 ("midpoint") and ``r1 = 1/3, r2 = 2/3`` for DPM-Solver-3. A step of order
``k`` costs ``k`` network evaluations. :func:`dpm_solver_fast` is DPM-Solver-fast: for a
budget of ``nfe`` evaluations it takes ``K = nfe // 3 + 1`` logSNR-uniform steps mixing
orders 3, 2 and 1 (:func:`dpm_solver_fast_orders`, as in the official code).

Per-step orders are static; a grid that mixes orders dispatches with ``lax.switch`` on
the step index, so only the chosen order is computed. The state is float32 (the dtype of
``x_T`` promoted to at least float32).

Final target. The grid's last entry is where the last step lands. ``sigma_min`` targets
(``t = 0`` for a :class:`~diffjax.schedules.DiscreteSchedule`, ``t_min`` for a
continuous one) work for every solver. A clean target with ``sigma = 0`` (``t = -1``
discrete) has ``lambda = +inf``: only a first-order *data-prediction* step is defined
there (it returns ``alpha_t x0``), so DPM-Solver++ takes a first-order last step and the
noise-prediction solvers raise a ``ValueError``.

References:
  Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver: A Fast ODE Solver for Diffusion
  Probabilistic Model Sampling in Around 10 Steps", NeurIPS 2022.
  Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of
  Diffusion Probabilistic Models", 2023.
  Saharia et al., "Photorealistic Text-to-Image Diffusion Models with Deep Language
  Understanding" (Imagen), 2022, Sec. 2.3 (dynamic thresholding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.parameterization import DenoiseFn, expand_to
from diffjax.samplers.driver import Sampler, check_timesteps, concrete_value, state_dtype
from diffjax.schedules import DiscreteSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "DPM_SOLVER_ALGORITHMS",
    "DPM_SOLVER_TYPES",
    "DynamicThresholding",
    "SinglestepState",
    "dpm_solver_fast",
    "dpm_solver_fast_orders",
    "dpm_solver_fast_timesteps",
    "dpm_solver_singlestep",
    "dynamic_threshold",
]

DPM_SOLVER_ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver++")
"""``'dpmsolver'``: noise prediction; ``'dpmsolver++'``: data prediction;
``'sde-dpmsolver++'``: the stochastic data-prediction solver (multistep only)."""

DPM_SOLVER_TYPES = ("midpoint", "heun")
"""How second-order steps weight the first difference (diffusers' names):
``'midpoint'`` is the official code's ``'dpmsolver'`` and ``'heun'`` its ``'taylor'``."""


# --------------------------------------------------------------------------------------
# Dynamic thresholding.
# --------------------------------------------------------------------------------------


class DynamicThresholding(NamedTuple):
    """Dynamic thresholding of the data prediction (Saharia et al., 2022).

    Attributes:
      ratio: percentile of ``|x0|`` (per example) that sets the threshold ``s``.
      max_value: upper bound on ``s``: ``s = min(max(percentile, 1), max_value)``, as in
        diffusers. ``max_value = 1`` is plain clipping to ``[-1, 1]``; ``max_value < 1``
        fixes ``s = max_value``; Imagen's unbounded rule is ``max_value = inf``.
    """

    ratio: float = 0.995
    max_value: float = 1.0


def dynamic_threshold(x0: ArrayLike, ratio: float = 0.995, max_value: float = 1.0) -> Array:
    """Clips ``x0`` to ``[-s, s]`` and divides by ``s``, per example.

    ``s = min(max(quantile(|x0|, ratio), 1), max_value)`` over all non-batch axes (so
    ``s = max_value`` when ``max_value <= 1``, as with ``torch.clamp`` in diffusers). With
    a static ``max_value <= 1`` the quantile cannot change ``s`` and is not computed (it
    sorts every example: 1.3% of a sampling loop on the digits UNet).

    Args:
      x0: batch-first data prediction.
      ratio: the percentile, in ``(0, 1]``.
      max_value: the largest allowed ``s`` (``> 0``).

    Returns:
      The thresholded ``x0`` (same shape and dtype).
    """
    x0 = jnp.asarray(x0)
    if isinstance(max_value, (int, float)) and max_value <= 1.0:
        s = jnp.asarray(max_value, x0.dtype)
        return jnp.clip(x0, -s, s) / s
    s = jnp.quantile(jnp.abs(x0.reshape(x0.shape[0], -1)), ratio, axis=1)
    s = expand_to(jnp.minimum(jnp.maximum(s, 1.0), max_value), x0).astype(x0.dtype)
    return jnp.clip(x0, -s, s) / s


# --------------------------------------------------------------------------------------
# Shared checks and building blocks (also used by the multistep solvers).
# --------------------------------------------------------------------------------------


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {name}={value!r}; expected one of {list(allowed)}")
    return value


def _check_thresholding(
    thresholding: DynamicThresholding | None, algorithm: str
) -> DynamicThresholding | None:
    if thresholding is None:
        return None
    if not isinstance(thresholding, DynamicThresholding):
        raise ValueError(
            f"thresholding must be a DynamicThresholding or None, got {thresholding=!r}"
        )
    if algorithm == "dpmsolver":
        raise ValueError(
            "thresholding applies to data prediction only; use algorithm='dpmsolver++' "
            f"(got {algorithm=!r})"
        )
    if not 0.0 < float(thresholding.ratio) <= 1.0:
        raise ValueError(f"thresholding.ratio must be in (0, 1], got {thresholding.ratio=}")
    if not float(thresholding.max_value) > 0.0:
        raise ValueError(f"thresholding.max_value must be > 0, got {thresholding.max_value=}")
    return thresholding


def _sigma_is_zero(schedule: Any, t: float) -> bool:
    """Whether ``sigma(t) == 0`` (a clean target), decided at trace time."""
    with jax.ensure_compile_time_eval():
        try:
            value = concrete_value(schedule.sigma(jnp.float32(t)))
        except jax.errors.ConcretizationTypeError:  # pragma: no cover - defensive
            value = None
    if value is not None:
        return bool(np.all(value == 0.0))
    # A schedule whose parameters are traced: fall back on the known clean points.
    if isinstance(schedule, DiscreteSchedule):
        return t <= schedule.t_min
    return t <= 0.0


def check_dpm_grid(schedule: Any, timesteps: ArrayLike, algorithm: str) -> tuple[np.ndarray, bool]:
    """Validates a DPM-Solver grid; returns it (float64) and whether its target is clean.

    Args:
      schedule: the noise schedule.
      timesteps: static, strictly decreasing grid of ``num_steps + 1`` model times.
      algorithm: one of :data:`DPM_SOLVER_ALGORITHMS`.

    Returns:
      ``(grid, clean_target)`` where ``clean_target`` says ``sigma(grid[-1]) == 0``.

    Raises:
      ValueError: for a bad grid, a repeated time, or a clean target with a
        noise-prediction solver.
    """
    ts = check_timesteps(schedule, timesteps)
    if np.any(np.diff(ts) >= 0):
        raise ValueError(f"DPM-Solver timesteps must be strictly decreasing, got {ts}")
    clean = _sigma_is_zero(schedule, float(ts[-1]))
    if clean and algorithm == "dpmsolver":
        raise ValueError(
            "a noise-prediction solver (algorithm='dpmsolver') cannot step to sigma = 0 "
            f"(timesteps[-1]={ts[-1]:g}): lambda is infinite there. End the grid at "
            "sigma_min (t = 0 for a discrete schedule, t_min for a continuous one) or use "
            "algorithm='dpmsolver++'"
        )
    return ts, clean


class Marginal(NamedTuple):
    """``alpha``, ``sigma`` and ``lambda = log(alpha / sigma)`` at one model time."""

    alpha: Array
    sigma: Array
    lam: Array


def marginal(schedule: Any, t: ArrayLike, dtype: Any) -> Marginal:
    """The schedule's ``alpha, sigma, lambda`` at ``t``, cast to ``dtype``."""
    return Marginal(
        alpha=jnp.asarray(schedule.alpha(t), dtype),
        sigma=jnp.asarray(schedule.sigma(t), dtype),
        lam=jnp.asarray(0.5 * schedule.log_snr(t), dtype),
    )


def phi1(u: Array) -> Array:
    """``e^u - 1``."""
    return jnp.expm1(u)


def phi2(u: Array) -> Array:
    """``(e^u - 1) / u - 1``."""
    return jnp.expm1(u) / u - 1.0


def phi3(u: Array) -> Array:
    """``phi2(u) / u - 1/2``."""
    return phi2(u) / u - 0.5


def exponential_step(data: bool, m_s: Marginal, m_t: Marginal) -> tuple[Array, Array, Array]:
    """Coefficients of the exact linear part of a step from ``s`` to ``t``.

    A step of any order is ``scale * x_s - coef * (phi1(u) D0 + ...)``.

    Returns:
      ``(scale, coef, u)``: ``(alpha_t / alpha_s, sigma_t, h)`` for noise prediction and
      ``(sigma_t / sigma_s, alpha_t, -h)`` for data prediction, ``h = lambda_t - lambda_s``.
    """
    h = m_t.lam - m_s.lam
    if data:
        return m_t.sigma / m_s.sigma, m_t.alpha, -h
    return m_t.alpha / m_s.alpha, m_t.sigma, h


def model_output_fn(
    denoise_fn: DenoiseFn,
    cond: Any,
    data: bool,
    thresholding: DynamicThresholding | None,
    dtype: Any,
) -> Callable[[Array, Array], Array]:
    """``fn(x, t)``: the denoiser's ``x0`` (thresholded if asked) or ``eps``, in ``dtype``."""

    def fn(x: Array, t: Array) -> Array:
        out = denoise_fn(x, t, cond)
        if not data:
            return jnp.asarray(out.eps, dtype)
        x0 = jnp.asarray(out.x0, dtype)
        if thresholding is not None:
            x0 = dynamic_threshold(x0, thresholding.ratio, thresholding.max_value)
        return x0

    return fn


class StepContext(NamedTuple):
    """What every DPM-Solver-family step starts from.

    Attributes:
      grid: the time grid in the state's dtype.
      s: the step's start time ``grid[i]``.
      t: its end time ``grid[i + 1]``.
      m_s: the marginal at ``s``.
      m_t: the marginal at ``t``.
      model: ``model(x, time)``, the model output the solver works with.
    """

    grid: Array
    s: Array
    t: Array
    m_s: Marginal
    m_t: Marginal
    model: Callable[[Array, Array], Array]


def step_context(
    schedule: Any,
    timesteps: np.ndarray,
    step_index: Array,
    dtype: Any,
    denoise_fn: DenoiseFn,
    cond: Any,
    data: bool,
    thresholding: DynamicThresholding | None,
) -> StepContext:
    """The grid, the step's two times with their marginals, and the model-output function."""
    grid = jnp.asarray(timesteps, dtype)
    s, t = grid[step_index], grid[step_index + 1]
    return StepContext(
        grid=grid,
        s=s,
        t=t,
        m_s=marginal(schedule, s, dtype),
        m_t=marginal(schedule, t, dtype),
        model=model_output_fn(denoise_fn, cond, data, thresholding, dtype),
    )


def dispatch(
    orders: Sequence[int], step_index: Array, branches: dict[int, Callable[[], Array]]
) -> Array:
    """Runs ``branches[orders[step_index]]()``, computing only that branch.

    The order is looked up statically when it is constant or ``step_index`` is concrete
    (eager stepping); otherwise ``lax.switch`` dispatches over the orders that occur.
    """
    used = sorted(set(orders))
    if len(used) == 1:
        return branches[used[0]]()
    index = concrete_value(step_index)
    if index is not None:
        return branches[orders[int(index)]]()
    table = np.asarray([used.index(o) for o in orders], np.int32)
    return jax.lax.switch(jnp.asarray(table)[step_index], [branches[o] for o in used])


# --------------------------------------------------------------------------------------
# Singlestep solvers.
# --------------------------------------------------------------------------------------


class SinglestepState(NamedTuple):
    """Singlestep DPM-Solver state: the current sample (float32)."""

    x: Array


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {name}={value!r}")
    return int(value)


def _singlestep_orders(order: int | Sequence[int], num_steps: int) -> tuple[int, ...]:
    if isinstance(order, int | np.integer) and not isinstance(order, bool):
        orders = (int(order),) * num_steps
    elif isinstance(order, Sequence | np.ndarray) and not isinstance(order, str):
        orders = tuple(order.tolist() if isinstance(order, np.ndarray) else order)
        if len(orders) != num_steps:
            raise ValueError(
                f"order must be an int or one order per step ({num_steps}), got {order=}"
            )
    else:
        raise ValueError(f"order must be an int or a sequence of ints, got {order=!r}")
    for o in orders:
        if isinstance(o, bool) or not isinstance(o, int | np.integer) or o not in (1, 2, 3):
            raise ValueError(f"singlestep DPM-Solver supports order 1, 2 or 3, got {order=}")
    return tuple(int(o) for o in orders)


def dpm_solver_singlestep(
    schedule: Any,
    timesteps: ArrayLike,
    order: int | Sequence[int] = 2,
    *,
    algorithm: str = "dpmsolver++",
    solver_type: str = "midpoint",
    r1: float = 0.5,
    thresholding: DynamicThresholding | None = None,
) -> Sampler:
    """Builds a singlestep DPM-Solver (noise prediction) or DPM-Solver++ (data prediction).

    Order 1 is DDIM. Order 2 is DPM-Solver-2 (Lu et al. 2022, Algorithm 1) with its
    intermediate point at ``lambda_s + r1 h`` (``r1 = 1/2``: the midpoint rule), or
    DPM-Solver++(2S) for data prediction. Order 3 is DPM-Solver-3 (Algorithm 2) with
    ``r1 = 1/3, r2 = 2/3``. A step of order ``k`` costs ``k`` network evaluations.

    Example (DPM-Solver-3, 3 x 4 = 12 evaluations, on a discrete schedule)::

        grid = with_final_timestep(log_snr_uniform_timesteps(schedule, 4), final=0)
        sampler = dpm_solver_singlestep(schedule, grid, order=3, algorithm="dpmsolver")

    Args:
      schedule: noise schedule with ``alpha``, ``sigma``, ``log_snr`` and
        ``t_from_log_snr``.
      timesteps: static, strictly decreasing grid of ``num_steps + 1`` model times; the
        steps go from ``timesteps[i]`` to ``timesteps[i + 1]``.
      order: 1, 2 or 3, or one order per step (e.g. :func:`dpm_solver_fast_orders`).
      algorithm: ``'dpmsolver'`` (noise prediction) or ``'dpmsolver++'`` (data
        prediction).
      solver_type: ``'midpoint'`` or ``'heun'`` (the official code's ``'dpmsolver'`` and
        ``'taylor'``): how the second- and third-order steps combine their evaluations.
      r1: position of the intermediate point of second-order steps, in ``(0, 1)``.
      thresholding: dynamic thresholding of the data prediction (``'dpmsolver++'`` only).

    Returns:
      A :class:`~diffjax.samplers.driver.Sampler` with ``num_steps = len(timesteps) - 1``.

    Raises:
      ValueError: for an unknown option, an unsupported order, a bad grid, or a
        noise-prediction solver whose grid ends at ``sigma = 0``. A data-prediction solver
        always takes a first-order last step onto ``sigma = 0``.
    """
    algorithm = _check_choice("algorithm", algorithm, DPM_SOLVER_ALGORITHMS[:2])
    solver_type = _check_choice("solver_type", solver_type, DPM_SOLVER_TYPES)
    thresholding = _check_thresholding(thresholding, algorithm)
    if not 0.0 < float(r1) < 1.0:
        raise ValueError(f"r1 must be in (0, 1), got {r1=}")
    r1 = float(r1)
    ts, clean = check_dpm_grid(schedule, timesteps, algorithm)
    num_steps = int(ts.shape[0] - 1)
    orders = list(_singlestep_orders(order, num_steps))
    if clean:
        orders[-1] = 1  # only a first-order data-prediction step reaches sigma = 0
    data = algorithm == "dpmsolver++"
    heun = solver_type == "heun"

    def init(x_T: ArrayLike) -> SinglestepState:
        return SinglestepState(x=jnp.asarray(x_T, state_dtype(x_T)))

    def step(
        denoise_fn: DenoiseFn, state: SinglestepState, step_index: Array, key: Array, cond: Any
    ) -> SinglestepState:
        del key  # deterministic
        x = state.x
        dtype = x.dtype
        _, s, _, m_s, m_t, model = step_context(
            schedule, ts, step_index, dtype, denoise_fn, cond, data, thresholding
        )
        d0 = model(x, s)
        scale, coef, u = exponential_step(data, m_s, m_t)
        h = m_t.lam - m_s.lam

        def intermediate(r: float) -> tuple[Array, Marginal]:
            t_r = jnp.asarray(schedule.t_from_log_snr(2.0 * (m_s.lam + r * h)), dtype)
            return t_r, marginal(schedule, t_r, dtype)

        def first() -> Array:
            return scale * x - coef * phi1(u) * d0

        def second() -> Array:
            t_1, m_1 = intermediate(r1)
            scale_1, coef_1, _ = exponential_step(data, m_s, m_1)
            u_1 = r1 * u  # nominal lambda step, as in the official code
            x_1 = scale_1 * x - coef_1 * phi1(u_1) * d0
            d1 = (model(x_1, t_1) - d0) / r1
            weight = phi2(u) if heun else 0.5 * phi1(u)
            return scale * x - coef * (phi1(u) * d0 + weight * d1)

        def third() -> Array:
            ra, rb = 1.0 / 3.0, 2.0 / 3.0
            t_a, m_a = intermediate(ra)
            scale_a, coef_a, _ = exponential_step(data, m_s, m_a)
            x_a = scale_a * x - coef_a * phi1(ra * u) * d0
            d1_a = (model(x_a, t_a) - d0) / ra
            t_b, m_b = intermediate(rb)
            scale_b, coef_b, _ = exponential_step(data, m_s, m_b)
            u_b = rb * u
            x_b = scale_b * x - coef_b * (phi1(u_b) * d0 + rb * phi2(u_b) * d1_a)
            d1_b = (model(x_b, t_b) - d0) / rb
            if not heun:  # Algorithm 2: only the second evaluation enters the update
                return scale * x - coef * (phi1(u) * d0 + phi2(u) * d1_b)
            d1 = (rb * d1_a - ra * d1_b) / (rb - ra)
            d2 = 2.0 * (d1_b - d1_a) / (rb - ra)
            return scale * x - coef * (phi1(u) * d0 + phi2(u) * d1 + phi3(u) * d2)

        x_t = dispatch(orders, step_index, {1: first, 2: second, 3: third})
        return SinglestepState(x=x_t.astype(dtype))

    def finalize(state: SinglestepState) -> Array:
        return state.x

    return Sampler(
        num_steps=num_steps, init=init, step=step, finalize=finalize, schedule=schedule
    )


# --------------------------------------------------------------------------------------
# DPM-Solver-fast.
# --------------------------------------------------------------------------------------


def dpm_solver_fast_orders(nfe: int, order: int = 3) -> tuple[int, ...]:
    """Per-step orders of DPM-Solver-fast for a budget of ``nfe`` network evaluations.

    Order 3 (Lu et al. 2022, Sec. 3.4): ``K = nfe // 3 + 1`` steps; ``nfe % 3 == 0``:
    ``K - 2`` third-order steps then one second- and one first-order step; ``== 1``:
    ``K - 1`` third-order then one first-order; ``== 2``: ``K - 1`` third-order then one
    second-order. Order 2: ``nfe // 2`` second-order steps, plus a first-order one if
    ``nfe`` is odd. Order 1: ``nfe`` first-order steps. The orders sum to ``nfe``.

    Args:
      nfe: number of network evaluations, ``>= order``.
      order: the highest order, 1, 2 or 3.

    Returns:
      The tuple of per-step orders.

    Raises:
      ValueError: for an unsupported ``order`` or ``nfe < order``.
    """
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver-fast supports order 1, 2 or 3, got {order=!r}")
    nfe = _check_int("nfe", nfe, 1)
    if nfe < order:
        raise ValueError(f"nfe={nfe} is too small for order={order}: need nfe >= order")
    if order == 3:
        k, rem = nfe // 3 + 1, nfe % 3
        if rem == 0:
            return (3,) * (k - 2) + (2, 1)
        return (3,) * (k - 1) + ((1,) if rem == 1 else (2,))
    if order == 2:
        return (2,) * (nfe // 2) + ((1,) if nfe % 2 else ())
    return (1,) * nfe


def sampling_time_range(schedule: Any) -> tuple[float, float]:
    """``(t_start, t_end)``: a schedule's noisiest time and its smallest with ``sigma > 0``.

    ``(T - 1, 0)`` for a :class:`~diffjax.schedules.DiscreteSchedule` (``t = 0`` is
    DPM-Solver's ``t = 1 / N``), ``(t_max, t_min)`` for a continuous one.
    """
    if isinstance(schedule, DiscreteSchedule):
        return schedule.t_max, 0.0
    return float(getattr(schedule, "t_max", 1.0)), float(schedule.t_min)


def dpm_solver_fast_timesteps(
    schedule: Any, num_steps: int, t_start: float | None = None, t_end: float | None = None
) -> np.ndarray:
    """A grid of ``num_steps + 1`` model times uniform in log-SNR, ``t_start`` to ``t_end``.

    Args:
      schedule: a concrete (not traced) noise schedule.
      num_steps: number of steps.
      t_start: first time (default: the schedule's ``t_max``, ``T - 1`` when discrete).
      t_end: target time (default: ``0`` for a discrete schedule, else ``t_min``); must
        have ``sigma > 0``.

    Returns:
      float64 array of shape ``(num_steps + 1,)``, exact at both ends.

    Raises:
      ValueError: if ``t_end`` is a clean point, or the grid is not decreasing.
    """
    num_steps = _check_int("num_steps", num_steps, 1)
    default_start, default_end = sampling_time_range(schedule)
    t_start = default_start if t_start is None else float(t_start)
    t_end = default_end if t_end is None else float(t_end)
    if _sigma_is_zero(schedule, t_end):
        raise ValueError(
            f"t_end={t_end:g} has sigma = 0 (infinite log-SNR); a logSNR-uniform grid must "
            "end at sigma_min. Build the grid by hand to target sigma = 0."
        )
    with jax.ensure_compile_time_eval():
        snr = concrete_value(schedule.log_snr(jnp.asarray([t_start, t_end])))
        if snr is None:
            raise ValueError("dpm_solver_fast_timesteps needs a concrete schedule")
        lam = np.linspace(float(snr[0]), float(snr[1]), num_steps + 1)
        ts = np.array(schedule.t_from_log_snr(jnp.asarray(lam)), np.float64)
    ts[0], ts[-1] = t_start, t_end
    if np.any(np.diff(ts) >= 0):
        raise ValueError(f"{num_steps=} merges grid points (t_start={t_start}, t_end={t_end})")
    return ts


def dpm_solver_fast(
    schedule: Any,
    nfe: int,
    *,
    order: int = 3,
    algorithm: str = "dpmsolver",
    solver_type: str = "midpoint",
    t_start: float | None = None,
    t_end: float | None = None,
    thresholding: DynamicThresholding | None = None,
) -> Sampler:
    """DPM-Solver-fast (Lu et al. 2022, Sec. 3.4): ``nfe`` evaluations, logSNR-uniform steps.

    The orders come from :func:`dpm_solver_fast_orders` and the outer grid of
    ``len(orders) + 1`` times from :func:`dpm_solver_fast_timesteps`. For another grid,
    pass the orders to :func:`dpm_solver_singlestep` directly.

    Args:
      schedule: a concrete noise schedule.
      nfe: number of network evaluations (``>= order``).
      order: the highest order (3 is the paper's DPM-Solver-fast).
      algorithm: ``'dpmsolver'`` (the paper's) or ``'dpmsolver++'``.
      solver_type: ``'midpoint'`` or ``'heun'``.
      t_start: first time (default: the schedule's last time).
      t_end: target time (default: ``sigma_min``).
      thresholding: dynamic thresholding (``'dpmsolver++'`` only).

    Returns:
      A :class:`~diffjax.samplers.driver.Sampler` whose ``num_steps`` is the number of
      outer steps ``K``.
    """
    orders = dpm_solver_fast_orders(nfe, order)
    grid = dpm_solver_fast_timesteps(schedule, len(orders), t_start, t_end)
    return dpm_solver_singlestep(
        schedule,
        grid,
        orders,
        algorithm=algorithm,
        solver_type=solver_type,
        thresholding=thresholding,
    )
