"""The exponential-integrator kernel of DPM-Solver(++), UniPC and EDM, and x0 thresholding.

The diffusion ODE in log-SNR time ``lambda = log(alpha / sigma)`` (half of
:meth:`log_snr`) has an exactly integrable linear part. With ``h = lambda_t - lambda_s``
a step from ``s`` to ``t`` reads, for noise prediction (DPM-Solver, Lu et al. 2022,
Eq. 3.7)

    x_t = (alpha_t / alpha_s) x_s - sigma_t sum_n phi_{n+1}(h) h^n eps^(n)(s)

and for data prediction (DPM-Solver++, Lu et al. 2023, Eq. 9) the same with
``alpha <-> sigma``, ``h -> -h`` and ``eps -> x0``, where ``phi_1(u) = e^u - 1``,
``phi_2(u) = phi_1(u) / u - 1`` and ``phi_3(u) = phi_2(u) / u - 1/2``. This module holds
what every such solver shares: the marginals ``(alpha, sigma, lambda)``
(:func:`marginal`), the phi functions, the exact linear part (:func:`exponential_step`),
the model output a solver works with (:func:`model_output_fn`), a step's context
(:func:`step_context`), the static order tables and their dispatch (:func:`dispatch`),
the grid checks, and the one meaning of x0 thresholding shared with DDIM and DDPM
(:class:`StaticThresholding`, :class:`DynamicThresholding`).

A clean target (``sigma = 0``, ``t = -1`` on a discrete schedule) has ``lambda = +inf``:
only a first-order data-prediction step is defined there (it returns ``alpha_t x0``), so
data-prediction solvers take a first-order last step onto it and noise-prediction
solvers refuse it (:func:`check_exponential_grid`).

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

from diffjax._checks import check_choice, is_int
from diffjax.parameterization import DenoiseFn, expand_to
from diffjax.samplers.driver import check_timesteps, concrete_value
from diffjax.schedules import VPSchedule

Array = jax.Array

ArrayLike = jax.typing.ArrayLike

__all__ = [
    "DPM_SOLVER_TYPES",
    "LOWER_ORDER_FINAL_RULES",
    "PREDICTIONS",
    "DynamicThresholding",
    "Marginal",
    "StaticThresholding",
    "StepContext",
    "Thresholding",
    "apply_thresholding",
    "check_exponential_grid",
    "check_multistep_order",
    "check_prediction",
    "check_thresholding",
    "dispatch",
    "dynamic_threshold",
    "exponential_step",
    "global_order",
    "lower_order_final_applies",
    "marginal",
    "model_output_fn",
    "multistep_orders",
    "phi1",
    "phi2",
    "phi3",
    "sampling_time_range",
    "sigma_is_zero",
    "step_context",
]

PREDICTIONS = ("data", "noise")
"""What an exponential integrator extrapolates: ``'data'`` (``x0``, DPM-Solver++ and
UniPC's default) or ``'noise'`` (``eps``, the original DPM-Solver)."""

LOWER_ORDER_FINAL_RULES = ("always", "never", "below_15_steps")
"""When a multistep solver ends with lower orders ``min(order, num_steps - i)``:
``'always'`` (diffusers' UniPC rule), ``'never'``, or ``'below_15_steps'`` (diffusers'
``DPMSolverMultistepScheduler`` rule: only when ``num_steps < 15``)."""

DPM_SOLVER_TYPES = ("midpoint", "heun")
"""How second-order steps weight the first difference (diffusers' names):
``'midpoint'`` is the official code's ``'dpmsolver'`` and ``'heun'`` its ``'taylor'``."""

LOWER_ORDER_FINAL_STEPS = 15
"""The step count below which ``'below_15_steps'`` lowers the final orders."""


# --------------------------------------------------------------------------------------
# Thresholding of the data prediction.
# --------------------------------------------------------------------------------------


class StaticThresholding(NamedTuple):
    """Clips ``x0`` to ``[-max_value, max_value]`` (diffusers' ``clip_sample``).

    Attributes:
      max_value: the bound (``> 0``).
    """

    max_value: float = 1.0

    def apply(self, x0: ArrayLike) -> Array:
        """``clip(x0, -max_value, max_value)`` (same shape and dtype)."""
        x0 = jnp.asarray(x0)
        m = jnp.asarray(self.max_value, x0.dtype)
        return jnp.clip(x0, -m, m)


class DynamicThresholding(NamedTuple):
    """Dynamic thresholding of the data prediction (Saharia et al., 2022).

    ``x0`` is clipped to ``[-s, s]`` and divided by ``s`` (diffusers' ``thresholding``).

    Attributes:
      ratio: percentile of ``|x0|`` (per example) that sets the threshold ``s``.
      max_value: upper bound on ``s``: ``s = min(max(percentile, 1), max_value)``, as in
        diffusers. ``max_value = 1`` is plain clipping to ``[-1, 1]`` (exactly
        ``StaticThresholding(1.0)``); ``max_value < 1`` fixes ``s = max_value`` (clip and
        rescale); Imagen's unbounded rule is ``max_value = inf``.
    """

    ratio: float = 0.995
    max_value: float = 1.0

    def apply(self, x0: ArrayLike) -> Array:
        """``x0`` thresholded per example (:func:`dynamic_threshold`)."""
        return dynamic_threshold(x0, self.ratio, self.max_value)


Thresholding = StaticThresholding | DynamicThresholding
"""Either thresholding rule (the type of every sampler's ``thresholding`` option)."""


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


def apply_thresholding(x0: Array, thresholding: Thresholding | None) -> Array:
    """``thresholding.apply(x0)``, or ``x0`` as is for ``None``."""
    return x0 if thresholding is None else thresholding.apply(x0)


def check_thresholding(
    thresholding: Any, prediction: str = "data"
) -> StaticThresholding | DynamicThresholding | None:
    """Validates a thresholding option.

    Args:
      thresholding: ``None``, a :class:`StaticThresholding` or a
        :class:`DynamicThresholding`.
      prediction: the solver's prediction type; thresholding needs ``'data'``.

    Returns:
      ``thresholding``, unchanged.

    Raises:
      ValueError: naming ``thresholding`` for another type, a noise-prediction solver,
        a ratio outside ``(0, 1]`` or a non-positive ``max_value``.
    """
    if thresholding is None:
        return None
    if not isinstance(thresholding, StaticThresholding | DynamicThresholding):
        raise ValueError(
            "thresholding must be a StaticThresholding, a DynamicThresholding or None, got "
            f"{thresholding=!r}"
        )
    if prediction != "data":
        raise ValueError(
            "thresholding applies to data prediction only; use prediction='data' "
            f"(got {prediction=!r})"
        )
    if isinstance(thresholding, DynamicThresholding) and not 0.0 < float(thresholding.ratio) <= 1.0:
        raise ValueError(f"thresholding.ratio must be in (0, 1], got {thresholding.ratio=}")
    if not float(thresholding.max_value) > 0.0:
        raise ValueError(f"thresholding.max_value must be > 0, got {thresholding.max_value=}")
    return thresholding


# --------------------------------------------------------------------------------------
# Options and grids.
# --------------------------------------------------------------------------------------


def check_prediction(prediction: Any) -> str:
    """Returns ``prediction`` if it is one of :data:`PREDICTIONS`, else raises."""
    return check_choice("prediction", prediction, PREDICTIONS)


def lower_order_final_applies(rule: Any, num_steps: int) -> bool:
    """Whether a rule of :data:`LOWER_ORDER_FINAL_RULES` lowers the final orders.

    Raises:
      ValueError: naming ``lower_order_final`` for an unknown rule.
    """
    rule = check_choice("lower_order_final", rule, LOWER_ORDER_FINAL_RULES)
    if rule == "below_15_steps":
        return num_steps < LOWER_ORDER_FINAL_STEPS
    return rule == "always"


def sigma_is_zero(schedule: VPSchedule, t: float) -> bool:
    """Whether ``sigma(t) == 0`` (a clean target), decided at trace time."""
    with jax.ensure_compile_time_eval():
        try:
            value = concrete_value(schedule.sigma(jnp.float32(t)))
        except jax.errors.ConcretizationTypeError:  # pragma: no cover - defensive
            value = None
    if value is not None:
        return bool(np.all(value == 0.0))
    # A schedule whose parameters are traced: fall back on its clean point.
    return t <= schedule.t_clean


def sampling_time_range(schedule: VPSchedule) -> tuple[float, float]:
    """``(t_start, t_end)``: a schedule's noisiest time and its smallest with ``sigma > 0``.

    ``(t_max, t_min_noise)``: ``(T - 1, 0)`` for a
    :class:`~diffjax.schedules.DiscreteSchedule` (``t = 0`` is DPM-Solver's
    ``t = 1 / N``), ``(t_max, eps)`` for a continuous one.
    """
    return float(schedule.t_max), float(schedule.t_min_noise)


def check_exponential_grid(
    schedule: VPSchedule, timesteps: ArrayLike, prediction: str
) -> tuple[np.ndarray, bool]:
    """Validates an exponential-integrator grid: returns it and whether its end is clean.

    Args:
      schedule: the noise schedule.
      timesteps: static, strictly decreasing grid of ``num_steps + 1`` model times.
      prediction: one of :data:`PREDICTIONS`.

    Returns:
      ``(grid, clean_target)`` where ``clean_target`` says ``sigma(grid[-1]) == 0``.

    Raises:
      ValueError: for a bad grid, a repeated time, or a clean target with a
        noise-prediction solver.
    """
    ts = check_timesteps(schedule, timesteps)
    if np.any(np.diff(ts) >= 0):
        raise ValueError(f"DPM-Solver timesteps must be strictly decreasing, got {ts}")
    clean = sigma_is_zero(schedule, float(ts[-1]))
    if clean and prediction == "noise":
        raise ValueError(
            "a noise-prediction solver (prediction='noise') cannot step to sigma = 0 "
            f"(timesteps[-1]={ts[-1]:g}): lambda is infinite there. End the grid at "
            "sigma_min (the schedule's t_min_noise: t = 0 for a discrete schedule) or use "
            "prediction='data'"
        )
    return ts, clean


# --------------------------------------------------------------------------------------
# The exponential integrator.
# --------------------------------------------------------------------------------------


class Marginal(NamedTuple):
    """``alpha``, ``sigma`` and ``lambda = log(alpha / sigma)`` at one model time."""

    alpha: Array
    sigma: Array
    lam: Array


def marginal(schedule: VPSchedule, t: ArrayLike, dtype: Any) -> Marginal:
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


def exponential_step(
    prediction: str, m_s: Marginal, m_t: Marginal
) -> tuple[Array, Array, Array]:
    """Coefficients of the exact linear part of a step from ``s`` to ``t``.

    A step of any order is ``scale * x_s - coef * (phi1(u) D0 + ...)``: the variation of
    constants formula of Lu et al. 2022, Eq. 3.7 (noise prediction) and Lu et al. 2023,
    Eq. 9 (data prediction), whose ``n = 0`` term alone is DDIM.

    Returns:
      ``(scale, coef, u)``: ``(alpha_t / alpha_s, sigma_t, h)`` for noise prediction and
      ``(sigma_t / sigma_s, alpha_t, -h)`` for data prediction, ``h = lambda_t - lambda_s``.
    """
    h = m_t.lam - m_s.lam
    if prediction == "data":
        return m_t.sigma / m_s.sigma, m_t.alpha, -h
    return m_t.alpha / m_s.alpha, m_t.sigma, h


def model_output_fn(
    denoise_fn: DenoiseFn,
    cond: Any,
    prediction: str,
    thresholding: Thresholding | None,
    dtype: Any,
) -> Callable[[Array, Array], Array]:
    """``fn(x, t)``: the denoiser's ``x0`` (thresholded if asked) or ``eps``, in ``dtype``."""

    def fn(x: Array, t: Array) -> Array:
        out = denoise_fn(x, t, cond)
        if prediction == "noise":
            return jnp.asarray(out.eps, dtype)
        return apply_thresholding(jnp.asarray(out.x0, dtype), thresholding)

    return fn


class StepContext(NamedTuple):
    """What every exponential-integrator step starts from.

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
    schedule: VPSchedule,
    timesteps: np.ndarray,
    step_index: Array,
    dtype: Any,
    denoise_fn: DenoiseFn,
    cond: Any,
    prediction: str,
    thresholding: Thresholding | None,
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
        model=model_output_fn(denoise_fn, cond, prediction, thresholding, dtype),
    )


# --------------------------------------------------------------------------------------
# Static order tables.
# --------------------------------------------------------------------------------------


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


def multistep_orders(
    order: int, num_steps: int, lower_order_final: str, clean_target: bool = False
) -> tuple[int, ...]:
    """The static order of each multistep step (warm-up and final steps).

    Step ``i`` uses ``min(order, i + 1)`` (warm-up) and, where ``lower_order_final``
    applies (:func:`lower_order_final_applies`), also ``min(order, num_steps - i)``.

    Args:
      order: the solver order.
      num_steps: number of steps.
      lower_order_final: one of :data:`LOWER_ORDER_FINAL_RULES`.
      clean_target: the last step lands on ``sigma = 0`` and must be first order.

    Returns:
      ``num_steps`` orders.
    """
    orders = [min(order, i + 1) for i in range(num_steps)]
    if lower_order_final_applies(lower_order_final, num_steps):
        orders = [min(o, num_steps - i) for i, o in enumerate(orders)]
    if clean_target:
        orders[-1] = 1
    return tuple(orders)


def check_multistep_order(
    method: str, order: Any, supported: Sequence[int], num_steps: int
) -> int:
    """Validates a multistep solver's order against its method and step count.

    Args:
      method: the solver's name, for the message.
      order: the requested order.
      supported: the orders the method implements.
      num_steps: ``len(timesteps) - 1``.

    Returns:
      ``order`` as an int.

    Raises:
      ValueError: for an unsupported order or ``num_steps < order``.
    """
    if not is_int(order) or order not in supported:
        raise ValueError(f"{method} supports order in {list(supported)}, got {order=!r}")
    if num_steps < order:
        raise ValueError(
            f"num_steps={num_steps} (len(timesteps) - 1) is too small for {order=}: a "
            "multistep solver needs num_steps >= order"
        )
    return int(order)


def global_order(orders: Sequence[int]) -> int:
    """The global order of a static per-step order table as its step count grows.

    The bulk of steps of order ``p = max(orders)`` contributes ``O(h^p)``; a bounded
    number of lower-order steps (warm-up, lower-order final steps) of order ``q``
    contributes ``O(h^(q + 1))`` each. The result is ``min(p, q_min + 1)``.
    """
    return min(max(orders), min(orders) + 1)

