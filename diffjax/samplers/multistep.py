"""Multistep DPM-Solver and DPM-Solver++ (2M, 3M) and SDE-DPM-Solver++(2M).

A multistep solver evaluates the network once per step and estimates derivatives from
the model outputs of previous steps, kept in a fixed-size buffer in the scan carry
(:class:`MultistepState`: the last ``order - 1`` outputs and their ``lambda``, newest
first). With ``h = lambda_t - lambda_s0``, ``h_k = lambda_{s_k} - lambda_{s_{k+1}}`` and
``r_k = h_k / h`` (Lu et al. 2023, Algorithm 2; DPM-Solver's
``multistep_dpm_solver_{second,third}_update``):

    D1 = (m0 - m1) / r0                                             (order 2)
    x_t = scale x_s - coef (phi1(u) m0 + w D1),     w = phi1(u) / 2 ("midpoint")
                                                      | phi2(u)     ("heun")
    D1_0 = (m0 - m1) / r0,  D1_1 = (m1 - m2) / r1                   (order 3)
    D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1) / (r0 + r1)
    x_t = scale x_s - coef (phi1(u) m0 + phi2(u) D1 + 2 phi3(u) D2)

where ``(scale, coef, u)`` is ``(alpha_t / alpha_s, sigma_t, h)`` for noise prediction
and ``(sigma_t / sigma_s, alpha_t, -h)`` for data prediction. SDE-DPM-Solver++ (Lu et al.
2023, App. B; diffusers' ``'sde-dpmsolver++'``) uses ``scale = (sigma_t / sigma_s)
e^{-h}``, ``u = -2h`` and adds ``sigma_t sqrt(1 - e^{-2h}) z`` with ``z`` drawn from the
step's key.

Third order. ``D1`` estimates ``h m'`` and ``D2`` estimates ``h^2 m'' / 2`` (both to
``O(h^3)``), while the Taylor expansion of the exact solution weights ``h^2 m''`` by
``phi3(u)``: the second difference therefore needs the weight ``2 phi3(u)``. The official
DPM-Solver code, diffusers and k-diffusion all use ``phi3(u) D2``, half the Taylor
weight, which leaves an ``O(h^3)`` local error: their 3M is globally *second* order
(measured: slope 2.0 on exact Gaussian data, where this module's 3M shows 3 or more).
``third_order='reference'`` reproduces their update (and declares ``order = 2``);
``'taylor'`` (the default) is the full Taylor weight.

Warm-up is static: step ``i`` uses order ``min(order, i + 1)`` (and, where the
``lower_order_final`` rule applies, ``min(order, num_steps - i)``), and a mixed table
dispatches with ``lax.switch`` on the step index, so only one order is ever computed per
step. The shared kernel is :mod:`diffjax.samplers.exponential`.

References:
  Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver: A Fast ODE Solver for Diffusion
  Probabilistic Model Sampling in Around 10 Steps", NeurIPS 2022, App. B.
  Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of
  Diffusion Probabilistic Models", 2023.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from diffjax._checks import check_choice
from diffjax.parameterization import DenoiseFn
from diffjax.samplers.driver import Sampler, state_dtype
from diffjax.samplers.exponential import (
    DPM_SOLVER_TYPES,
    DynamicThresholding,
    StaticThresholding,
    check_exponential_grid,
    check_multistep_order,
    check_prediction,
    check_thresholding,
    dispatch,
    exponential_step,
    multistep_orders,
    phi1,
    phi2,
    phi3,
    step_context,
)
from diffjax.schedules import VPSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = ["THIRD_ORDER_UPDATES", "MultistepState", "dpm_solver_multistep"]

THIRD_ORDER_UPDATES = ("taylor", "reference")
"""The third-order multistep update: ``'taylor'`` weights the second difference by
``2 phi3`` (globally third order); ``'reference'`` by ``phi3``, as the official
DPM-Solver code, diffusers and k-diffusion do (globally second order)."""


class MultistepState(NamedTuple):
    """Multistep DPM-Solver state.

    Attributes:
      x: the current sample (float32).
      model_outputs: the previous ``order - 1`` model outputs (``eps`` or ``x0``),
        newest first, shape ``(order - 1, *x.shape)``.
      lambdas: their ``lambda = log(alpha / sigma)``, shape ``(order - 1,)``.
    """

    x: Array
    model_outputs: Array
    lambdas: Array


def dpm_solver_multistep(
    schedule: VPSchedule,
    timesteps: ArrayLike,
    order: int = 2,
    *,
    prediction: str = "data",
    sde: bool = False,
    solver_type: str = "midpoint",
    lower_order_final: str = "below_15_steps",
    thresholding: StaticThresholding | DynamicThresholding | None = None,
    third_order: str = "taylor",
) -> Sampler:
    """Builds a multistep DPM-Solver: one network evaluation per step.

    ``prediction='data', order=2`` is DPM-Solver++(2M), the recommended solver for
    guided sampling; ``order=3`` is 3M; ``prediction='noise'`` is the noise-prediction
    multistep DPM-Solver; ``sde=True`` (orders 1, 2, data prediction) is
    SDE-DPM-Solver++(2M), which draws fresh noise from the key given to ``step``.

    Example (diffusers' ``DPMSolverMultistepScheduler`` defaults, 20 steps)::

        grid = with_final_timestep(linspace_timesteps(1000, 20), final=0)
        sampler = dpm_solver_multistep(schedule, grid)

    Args:
      schedule: noise schedule with ``alpha``, ``sigma`` and ``log_snr``.
      timesteps: static, strictly decreasing grid of ``num_steps + 1`` model times. End
        it at ``sigma_min`` (``final=0`` on a discrete schedule, diffusers'
        ``final_sigmas_type='sigma_min'``) or, for data prediction, at ``sigma = 0``
        (``final=-1``, ``final_sigmas_type='zero'``; the last step is then first order).
      order: 1, 2 or 3 (1 or 2 with ``sde``); needs ``num_steps >= order``.
      prediction: ``'data'`` (DPM-Solver++) or ``'noise'`` (DPM-Solver).
      sde: SDE-DPM-Solver++ (needs ``prediction='data'``).
      solver_type: ``'midpoint'`` or ``'heun'`` (second-order steps only).
      lower_order_final: when to use orders ``min(order, num_steps - i)`` at the end
        (stabilizes few-step sampling): ``'always'``, ``'never'`` or
        ``'below_15_steps'`` (the default, diffusers' rule).
      thresholding: static or dynamic thresholding of the data prediction (not for
        ``prediction='noise'``); ``None`` (the default) does not clip.
      third_order: ``'taylor'`` (the default) or ``'reference'``, the third-order update
        of the official code, diffusers and k-diffusion (second difference weighted by
        ``phi3`` instead of ``2 phi3``; only globally second order). For bit-level
        comparisons with those libraries.

    Returns:
      A :class:`~diffjax.samplers.driver.Sampler` with ``nfe = num_steps`` and
      ``order`` the method's order (2 for ``third_order='reference'`` at order 3;
      ``None`` with ``sde``).

    Raises:
      ValueError: for an unknown option, an unsupported order, too few steps for the
        order, a bad grid, or a noise-prediction solver whose grid ends at ``sigma = 0``.
    """
    prediction = check_prediction(prediction)
    if not isinstance(sde, bool):
        raise ValueError(f"sde must be a bool, got {sde=!r}")
    if sde and prediction != "data":
        raise ValueError(
            f"sde=True is SDE-DPM-Solver++: it needs prediction='data', got {prediction=!r}"
        )
    solver_type = check_choice("solver_type", solver_type, DPM_SOLVER_TYPES)
    thresholding = check_thresholding(thresholding, prediction)
    third_order = check_choice("third_order", third_order, THIRD_ORDER_UPDATES)
    ts, clean = check_exponential_grid(schedule, timesteps, prediction)
    num_steps = int(ts.shape[0] - 1)
    method = "multistep SDE-DPM-Solver++" if sde else f"multistep prediction={prediction!r}"
    order = check_multistep_order(method, order, (1, 2) if sde else (1, 2, 3), num_steps)
    orders = multistep_orders(order, num_steps, lower_order_final, clean)
    heun = solver_type == "heun"
    history = order - 1
    d2_weight = 1.0 if third_order == "reference" else 2.0

    def init(x_T: ArrayLike) -> MultistepState:
        dtype = state_dtype(x_T)
        x = jnp.asarray(x_T, dtype)
        return MultistepState(
            x=x,
            model_outputs=jnp.zeros((history, *x.shape), dtype),
            lambdas=jnp.zeros((history,), dtype),
        )

    def step(
        denoise_fn: DenoiseFn, state: MultistepState, step_index: Array, key: Array, cond: Any
    ) -> MultistepState:
        x = state.x
        dtype = x.dtype
        _, s, _, m_s, m_t, model = step_context(
            schedule, ts, step_index, dtype, denoise_fn, cond, prediction, thresholding
        )
        m0 = model(x, s)
        h = m_t.lam - m_s.lam
        scale, coef, u = exponential_step(prediction, m_s, m_t)
        if sde:
            scale, u = scale * jnp.exp(-h), -2.0 * h
            z = jax.random.normal(key, x.shape, dtype)
            noise = m_t.sigma * jnp.sqrt(-jnp.expm1(-2.0 * h)) * z
        else:
            noise = jnp.zeros((), dtype)
        prev = state.model_outputs
        lams = state.lambdas

        def first() -> Array:
            return scale * x - coef * phi1(u) * m0

        def second() -> Array:
            r0 = (m_s.lam - lams[0]) / h
            d1 = (m0 - prev[0]) / r0
            weight = phi2(u) if heun else 0.5 * phi1(u)
            return scale * x - coef * (phi1(u) * m0 + weight * d1)

        def third() -> Array:
            r0 = (m_s.lam - lams[0]) / h
            r1 = (lams[0] - lams[1]) / h
            d1_0 = (m0 - prev[0]) / r0
            d1_1 = (prev[0] - prev[1]) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            return scale * x - coef * (phi1(u) * m0 + phi2(u) * d1 + d2_weight * phi3(u) * d2)

        x_t = dispatch(orders, step_index, {1: first, 2: second, 3: third}) + noise
        if history:
            prev = jnp.concatenate([m0[None], prev[:-1]], axis=0)
            lams = jnp.concatenate([m_s.lam[None], lams[:-1]], axis=0)
        return MultistepState(x=x_t.astype(dtype), model_outputs=prev, lambdas=lams)

    def finalize(state: MultistepState) -> Array:
        return state.x

    return Sampler(
        num_steps=num_steps, init=init, step=step, finalize=finalize, schedule=schedule,
        nfe=num_steps,
        order=None if sde else 2 if third_order == "reference" and order == 3 else order,
    )
