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

The shared kernel (marginals, phi functions, the exact linear part, thresholding, grid
checks, order dispatch) lives in :mod:`diffjax.samplers.exponential`.

Final target. The grid's last entry is where the last step lands. ``sigma_min`` targets
(the schedule's ``t_min_noise``: ``t = 0`` for a
:class:`~diffjax.schedules.DiscreteSchedule`, ``eps`` for a continuous one) work for
every solver. A clean target (the schedule's ``t_clean``, ``sigma = 0``) has
``lambda = +inf``: only a first-order *data-prediction* step is defined there (it returns
``alpha_t x0``), so DPM-Solver++ takes a first-order last step and the noise-prediction
solvers raise a ``ValueError``.

References:
  Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver: A Fast ODE Solver for Diffusion
  Probabilistic Model Sampling in Around 10 Steps", NeurIPS 2022.
  Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of
  Diffusion Probabilistic Models", 2023.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_choice, check_int, is_int
from diffjax.parameterization import DenoiseFn
from diffjax.samplers.driver import Sampler, concrete_value, state_dtype
from diffjax.samplers.exponential import (
    DPM_SOLVER_TYPES,
    Marginal,
    Thresholding,
    check_exponential_grid,
    check_prediction,
    check_thresholding,
    dispatch,
    exponential_step,
    global_order,
    marginal,
    phi1,
    phi2,
    phi3,
    sampling_time_range,
    sigma_is_zero,
    step_context,
)
from diffjax.schedules import VPSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "SinglestepState",
    "dpm_solver_fast",
    "dpm_solver_fast_orders",
    "dpm_solver_fast_timesteps",
    "dpm_solver_singlestep",
]

# --------------------------------------------------------------------------------------
# Singlestep solvers.
# --------------------------------------------------------------------------------------


class SinglestepState(NamedTuple):
    """Singlestep DPM-Solver state: the current sample (float32)."""

    x: Array


def _singlestep_orders(order: int | Sequence[int], num_steps: int) -> tuple[int, ...]:
    if is_int(order):
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
        if not is_int(o) or o not in (1, 2, 3):
            raise ValueError(f"singlestep DPM-Solver supports order 1, 2 or 3, got {order=}")
    return tuple(int(o) for o in orders)


def dpm_solver_singlestep(
    schedule: VPSchedule,
    timesteps: ArrayLike,
    order: int | Sequence[int] = 2,
    *,
    prediction: str = "data",
    solver_type: str = "midpoint",
    r1: float = 0.5,
    thresholding: Thresholding | None = None,
) -> Sampler:
    """Builds a singlestep DPM-Solver (noise prediction) or DPM-Solver++ (data prediction).

    Order 1 is DDIM. Order 2 is DPM-Solver-2 (Lu et al. 2022, Algorithm 1) with its
    intermediate point at ``lambda_s + r1 h`` (``r1 = 1/2``: the midpoint rule), or
    DPM-Solver++(2S) for data prediction. Order 3 is DPM-Solver-3 (Algorithm 2) with
    ``r1 = 1/3, r2 = 2/3``. A step of order ``k`` costs ``k`` network evaluations.

    Example (DPM-Solver-3, 3 x 4 = 12 evaluations, on a discrete schedule)::

        grid = with_final_timestep(log_snr_uniform_timesteps(schedule, 4), final=0)
        sampler = dpm_solver_singlestep(schedule, grid, order=3, prediction="noise")

    Args:
      schedule: noise schedule with ``alpha``, ``sigma``, ``log_snr`` and
        ``t_from_log_snr``.
      timesteps: static, strictly decreasing grid of ``num_steps + 1`` model times; the
        steps go from ``timesteps[i]`` to ``timesteps[i + 1]``.
      order: 1, 2 or 3, or one order per step (e.g. :func:`dpm_solver_fast_orders`).
      prediction: ``'data'`` (DPM-Solver++) or ``'noise'`` (DPM-Solver).
      solver_type: ``'midpoint'`` or ``'heun'`` (the official code's ``'dpmsolver'`` and
        ``'taylor'``): how the second- and third-order steps combine their evaluations.
      r1: position of the intermediate point of second-order steps, in ``(0, 1)``.
      thresholding: static or dynamic thresholding of the data prediction
        (``prediction='data'`` only); ``None`` (the default) does not clip.

    Returns:
      A :class:`~diffjax.samplers.driver.Sampler` with ``num_steps = len(timesteps) - 1``,
      ``nfe = sum(orders)`` (``k`` per order-``k`` step; a last step onto ``sigma = 0`` is
      first order) and ``order``, the global order of the order table asked for
      (:func:`~diffjax.samplers.exponential.global_order`: ``order`` itself for one
      order). The order describes convergence on grids ending at ``sigma > 0``; the
      first-order step onto a clean target, shared by every data-prediction solver, is
      not counted (its error depends on where it starts, not on the step count).

    Raises:
      ValueError: for an unknown option, an unsupported order, a bad grid, or a
        noise-prediction solver whose grid ends at ``sigma = 0``. A data-prediction solver
        always takes a first-order last step onto ``sigma = 0``.
    """
    prediction = check_prediction(prediction)
    solver_type = check_choice("solver_type", solver_type, DPM_SOLVER_TYPES)
    thresholding = check_thresholding(thresholding, prediction)
    if not 0.0 < float(r1) < 1.0:
        raise ValueError(f"r1 must be in (0, 1), got {r1=}")
    r1 = float(r1)
    ts, clean = check_exponential_grid(schedule, timesteps, prediction)
    num_steps = int(ts.shape[0] - 1)
    orders = list(_singlestep_orders(order, num_steps))
    method_order = global_order(orders)  # of the table asked for (see Returns)
    if clean:
        orders[-1] = 1  # only a first-order data-prediction step reaches sigma = 0
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
            schedule, ts, step_index, dtype, denoise_fn, cond, prediction, thresholding
        )
        d0 = model(x, s)
        scale, coef, u = exponential_step(prediction, m_s, m_t)
        h = m_t.lam - m_s.lam

        def intermediate(r: float) -> tuple[Array, Marginal]:
            t_r = jnp.asarray(schedule.t_from_log_snr(2.0 * (m_s.lam + r * h)), dtype)
            return t_r, marginal(schedule, t_r, dtype)

        def first() -> Array:
            return scale * x - coef * phi1(u) * d0

        def second() -> Array:
            t_1, m_1 = intermediate(r1)
            scale_1, coef_1, _ = exponential_step(prediction, m_s, m_1)
            u_1 = r1 * u  # nominal lambda step, as in the official code
            x_1 = scale_1 * x - coef_1 * phi1(u_1) * d0
            d1 = (model(x_1, t_1) - d0) / r1
            weight = phi2(u) if heun else 0.5 * phi1(u)
            return scale * x - coef * (phi1(u) * d0 + weight * d1)

        def third() -> Array:
            ra, rb = 1.0 / 3.0, 2.0 / 3.0
            t_a, m_a = intermediate(ra)
            scale_a, coef_a, _ = exponential_step(prediction, m_s, m_a)
            x_a = scale_a * x - coef_a * phi1(ra * u) * d0
            d1_a = (model(x_a, t_a) - d0) / ra
            t_b, m_b = intermediate(rb)
            scale_b, coef_b, _ = exponential_step(prediction, m_s, m_b)
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
        num_steps=num_steps, init=init, step=step, finalize=finalize, schedule=schedule,
        nfe=sum(orders), order=method_order, init_at=lambda x, _: init(x),
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
    if not is_int(order) or order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver-fast supports order 1, 2 or 3, got {order=!r}")
    nfe = check_int("nfe", nfe, minimum=1)
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


def dpm_solver_fast_timesteps(
    schedule: VPSchedule, num_steps: int, t_start: float | None = None, t_end: float | None = None
) -> np.ndarray:
    """A grid of ``num_steps + 1`` model times uniform in log-SNR, ``t_start`` to ``t_end``.

    Args:
      schedule: a concrete (not traced) noise schedule.
      num_steps: number of steps.
      t_start: first time (default: the schedule's ``t_max``, ``T - 1`` when discrete).
      t_end: target time (default: the schedule's ``t_min_noise``, ``0`` when discrete);
        must have ``sigma > 0``.

    Returns:
      float64 array of shape ``(num_steps + 1,)``, exact at both ends.

    Raises:
      ValueError: if ``t_end`` is a clean point, or the grid is not decreasing.
    """
    num_steps = check_int("num_steps", num_steps, minimum=1)
    default_start, default_end = sampling_time_range(schedule)
    t_start = default_start if t_start is None else float(t_start)
    t_end = default_end if t_end is None else float(t_end)
    if sigma_is_zero(schedule, t_end):
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
    schedule: VPSchedule,
    nfe: int,
    *,
    order: int = 3,
    prediction: str = "noise",
    solver_type: str = "midpoint",
    t_start: float | None = None,
    t_end: float | None = None,
    thresholding: Thresholding | None = None,
) -> Sampler:
    """DPM-Solver-fast (Lu et al. 2022, Sec. 3.4): ``nfe`` evaluations, logSNR-uniform steps.

    The orders come from :func:`dpm_solver_fast_orders` and the outer grid of
    ``len(orders) + 1`` times from :func:`dpm_solver_fast_timesteps`. For another grid,
    pass the orders to :func:`dpm_solver_singlestep` directly.

    Args:
      schedule: a concrete noise schedule.
      nfe: number of network evaluations (``>= order``).
      order: the highest order (3 is the paper's DPM-Solver-fast).
      prediction: ``'noise'`` (the paper's) or ``'data'``.
      solver_type: ``'midpoint'`` or ``'heun'``.
      t_start: first time (default: the schedule's last time).
      t_end: target time (default: ``sigma_min``).
      thresholding: static or dynamic thresholding (``prediction='data'`` only).

    Returns:
      A :class:`~diffjax.samplers.driver.Sampler` whose ``num_steps`` is the number of
      outer steps ``K`` and whose ``nfe`` is the budget ``nfe``.
    """
    orders = dpm_solver_fast_orders(nfe, order)
    grid = dpm_solver_fast_timesteps(schedule, len(orders), t_start, t_end)
    return dpm_solver_singlestep(
        schedule,
        grid,
        orders,
        prediction=prediction,
        solver_type=solver_type,
        thresholding=thresholding,
    )
