"""diffusers' DPM-Solver (multistep, singlestep) and UniPC step loops, exactly.

``DPMSolverMultistepScheduler``, ``DPMSolverSinglestepScheduler`` and
``UniPCMultistepScheduler`` all work in log-SNR time ``lambda = log(alpha / sigma)`` on
their own sigma grid (``sigma = sqrt((1 - a) / a)`` at the grid's timesteps, or Karras,
exponential or Lu's uniform-lambda sigmas, then a final ``0`` or ``sigma_min``), with
``alpha = 1 / sqrt(sigma**2 + 1)``, ``sigma_t = sigma alpha`` in float32 as diffusers
computes them. Every update is linear in the sample, the converted model outputs
(``x0`` for ``dpmsolver++`` / ``predict_x0``, ``eps`` for ``dpmsolver``) and, for
``sde-dpmsolver++``, the step's noise; the coefficients depend only on the grid (step
index ``i``) and the order used. So one kernel serves the three classes
(:func:`linear_multistep_loop`): per step,

1. ``m = convert(model output)`` with ``alpha, sigma`` at ``sigmas[i]`` (and diffusers'
   dynamic thresholding of ``x0``);
2. UniPC only: the corrector UniC of order ``c``, ``x = a last + b m + sum_k c_k m_k``
   (``last`` the previous step's sample, ``m_k`` the previous outputs);
3. the predictor of order ``p``, ``x' = a base + sum_k d_k m_k + e z`` where ``base`` is
   the sample (multistep) or the sample at the start of the current singlestep group.

The coefficient tables are built at trace time in numpy from diffusers' float32
``lambda`` (Lu et al. 2022 Eq. 3.7 / Lu et al. 2023 Algorithm 2 for DPM-Solver(++),
Eq. 8 of Zhao et al. 2023 with ``B(h) = h`` (bh1) or ``e^h - 1`` (bh2) for UniPC, whose
``rhos`` solve diffusers' Vandermonde system), so a run equals diffusers' to float32
round-off. The order used follows the calls since the start (``j``), as a fresh
scheduler's ``lower_order_nums`` and ``model_outputs`` do: ``p = min(cap_i, j + 1)``
with ``cap_i`` diffusers' rule (``lower_order_final`` below 15 steps, ``euler_at_final``,
``final_sigmas_type='zero'`` for multistep DPM; ``order_list`` for singlestep;
``min(order, n - i)`` for UniPC), and UniPC's corrector has the previous step's order.

diffjax's own :func:`~diffjax.samplers.dpm_solver_multistep` and
:func:`~diffjax.samplers.unipc` stay the defaults elsewhere: they take any grid and
compute ``lambda`` from the denoiser's schedule; they differ from diffusers in the grid
(diffusers' spacings and float32 sigma table) and, for 3M, in the third-order weight.

References:
  Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver" (NeurIPS 2022) and "DPM-Solver++" (2023).
  Zhao, Bai, Rao, Zhou & Lu, "UniPC: A Unified Predictor-Corrector Framework for Fast
  Sampling of Diffusion Models", NeurIPS 2023.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.parameterization import DenoiseFn, check_prediction_type
from diffjax.samplers.diffusers_compat import (
    DiffusersLoop,
    NoiseFn,
    check_num_steps,
    check_spacing,
    convert_sigmas,
    default_noise,
    diffusers_threshold,
    noise_coeffs_table,
    raw_model_output,
    sigma_to_t,
    table_alphas_cumprod,
    txt2img_factory,
)
from diffjax.samplers.exponential import LOWER_ORDER_FINAL_STEPS
from diffjax.schedules import DiscreteSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "DPM_ALGORITHMS",
    "DPM_SIGMA_SCHEDULES",
    "LinearMultistepState",
    "diffusers_dpm_grid",
    "diffusers_dpm_multistep",
    "diffusers_dpm_multistep_loop",
    "diffusers_dpm_singlestep",
    "diffusers_dpm_singlestep_loop",
    "diffusers_unipc",
    "diffusers_unipc_loop",
    "linear_multistep_loop",
    "singlestep_order_list",
]

DPM_ALGORITHMS = ("dpmsolver++", "dpmsolver", "sde-dpmsolver++")
DPM_SIGMA_SCHEDULES = (None, "karras", "exponential", "lu")
_F32 = np.float32


class LinearMultistepState(NamedTuple):
    """State of the linear multistep kernel (float32).

    Attributes:
      x: the sample.
      outputs: the previous converted model outputs, newest first, ``(H, *x.shape)``.
      base: the singlestep group's start sample (singlestep) or the previous step's
        sample before its predictor (UniPC's ``last_sample``).
    """

    x: Array
    outputs: Array
    base: Array


# --------------------------------------------------------------------------------------
# Grids.
# --------------------------------------------------------------------------------------


def _alpha_sigma_lambda(sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Diffusers' ``_sigma_to_alpha_sigma_t`` and ``lambda`` in float32 (``inf`` at 0)."""
    s = np.asarray(sigmas, _F32)
    alpha = (_F32(1) / np.sqrt(s * s + _F32(1))).astype(_F32)
    sigma_t = (s * alpha).astype(_F32)
    with np.errstate(divide="ignore"):
        lam = (np.log(alpha) - np.log(sigma_t)).astype(_F32)
    return alpha, sigma_t, lam


def _lambda_clip_index(ac: np.ndarray, lambda_min_clipped: float) -> int:
    """``searchsorted(flip(lambda_t), lambda_min_clipped)`` on diffusers' float32 table."""
    with np.errstate(divide="ignore"):
        lam = np.log(np.sqrt(ac)) - np.log(np.sqrt(_F32(1) - ac))
    return int(np.searchsorted(lam[::-1].astype(_F32), _F32(lambda_min_clipped), side="left"))


def diffusers_dpm_grid(
    alphas_cumprod: ArrayLike,
    num_steps: int,
    *,
    family: str = "multistep",
    timestep_spacing: str = "linspace",
    steps_offset: int = 0,
    sigma_schedule: str | None = None,
    final_sigmas_type: str = "zero",
    lambda_min_clipped: float = -math.inf,
    round_fractional: bool = True,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``set_timesteps`` of diffusers' DPM-Solver / UniPC classes: model times and sigmas.

    Args:
      alphas_cumprod: diffusers' float32 ``alpha_bar`` table, ``(T,)``.
      num_steps: ``num_inference_steps``.
      family: ``'multistep'`` (DPMSolverMultistep), ``'singlestep'`` (linspace only) or
        ``'unipc'`` (no ``lambda_min_clipped``; Karras/exponential ``sigma_min`` final
        sigma is the last schedule sigma).
      timestep_spacing: ``'linspace'``, ``'leading'`` or ``'trailing'``.
      steps_offset: added to the ``leading`` grid.
      sigma_schedule: ``None``, ``'karras'``, ``'exponential'`` or ``'lu'`` (multistep).
      final_sigmas_type: ``'zero'`` or ``'sigma_min'``.
      lambda_min_clipped: diffusers' option (multistep, singlestep).
      round_fractional: round Karras/Lu timesteps (diffusers does unless the betas are
        ``squaredcos_cap_v2``, for multistep DPM only).
      sigma_min: UniPC's Karras/exponential lower end (``None``: the table's).
      sigma_max: its upper end.

    Returns:
      ``(timesteps, sigmas)``: int64 ``(n,)`` model times (fractional ones truncated, as
      diffusers' ``torch.int64`` cast does) and float32 ``(n + 1,)`` sigmas.
    """
    if sigma_schedule not in DPM_SIGMA_SCHEDULES:
        raise ValueError(
            f"sigma_schedule={sigma_schedule!r} is not supported; expected one of "
            f"{list(DPM_SIGMA_SCHEDULES)}"
        )
    if final_sigmas_type not in ("zero", "sigma_min"):
        raise ValueError(
            f"final_sigmas_type must be 'zero' or 'sigma_min', got {final_sigmas_type!r}"
        )
    ac = np.asarray(alphas_cumprod, _F32)
    T = ac.shape[0]
    n = check_num_steps(num_steps, T)
    check_spacing(timestep_spacing)
    clipped = 0 if family == "unipc" else _lambda_clip_index(ac, lambda_min_clipped)
    last = T - clipped
    if family == "singlestep" or timestep_spacing == "linspace":
        end = (T - 1 - clipped) if family == "singlestep" else last - 1
        ts = np.linspace(0, end, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    elif timestep_spacing == "leading":
        ratio = last // (n + 1)
        ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
        ts = ts + int(steps_offset)
    else:
        ts = np.arange(last, 0, -T / n).round().copy().astype(np.int64) - 1
    with np.errstate(divide="ignore"):
        table = np.sqrt((_F32(1) - ac) / ac).astype(_F32)
        log_sigmas = np.log(table)
    if sigma_schedule is None:
        sigmas = np.interp(ts, np.arange(0, T), table)
    elif sigma_schedule == "lu":
        lams = log_sigmas[::-1]
        sigmas = np.exp(convert_sigmas("lu", float(lams[-1]), float(lams[0]), n))
    else:
        lo = float(table[0]) if sigma_min is None else float(sigma_min)
        hi = float(table[-1]) if sigma_max is None else float(sigma_max)
        sigmas = convert_sigmas(sigma_schedule, lo, hi, n)
    if sigma_schedule is not None:
        t = sigma_to_t(sigmas, log_sigmas)
        rounds = sigma_schedule in ("karras", "lu") and (round_fractional or family != "multistep")
        ts = (t.round() if rounds else t).astype(np.int64)
    if final_sigmas_type == "zero":
        last_sigma = 0.0
    elif family == "unipc" and sigma_schedule is not None:
        last_sigma = sigmas[-1]
    else:
        last_sigma = table[0]
    sigmas = np.concatenate([sigmas, [last_sigma]]).astype(_F32)
    if ts.min() < 0 or ts.max() > T - 1:
        raise ValueError(
            f"timesteps {ts.tolist()} (timestep_spacing={timestep_spacing!r}, "
            f"steps_offset={steps_offset}) leave [0, {T - 1}]"
        )
    return ts, sigmas


# --------------------------------------------------------------------------------------
# The kernel.
# --------------------------------------------------------------------------------------


class _Tables(NamedTuple):
    """The static tables of :func:`linear_multistep_loop` (numpy)."""

    pred: np.ndarray  # (n, P, H + 4): [x, base, m, out_0..out_{H-1}, z] per (i, order - 1)
    pred_cap: np.ndarray  # (n,) int: the largest predictor order at step i
    corr: np.ndarray | None  # (n, C + 1, H + 4): row 0 is "no corrector"
    corr_cap: np.ndarray | None  # (n,) int: the largest corrector order at step i
    singlestep: bool  # base := x where the predictor order is 1 (else base := x always)


def _convert(
    raw: Array, x: Array, alpha: Array, sigma: Array, prediction_type: str, to_data: bool,
    threshold: Any,
) -> Array:
    """Diffusers' ``convert_model_output``: ``x0`` (data) or ``eps`` (noise) at ``sigma``."""
    if to_data:
        if prediction_type == "eps":
            out = (x - sigma * raw) / alpha
        elif prediction_type == "v":
            out = alpha * x - sigma * raw
        else:
            out = raw
        return out if threshold is None else threshold(out)
    if prediction_type == "eps":
        eps = raw
    elif prediction_type == "v":
        eps = alpha * raw + sigma * x
    else:
        eps = (x - alpha * raw) / sigma
    if threshold is None:
        return eps
    x0 = threshold((x - sigma * eps) / alpha)
    return (x - alpha * x0) / sigma


def linear_multistep_loop(
    schedule: DiscreteSchedule,
    timesteps: np.ndarray,
    sigmas: np.ndarray,
    tables: _Tables,
    *,
    prediction_type: str,
    to_data: bool,
    threshold: Any = None,
    noise_fn: NoiseFn | None = None,
    order: int | None = None,
) -> DiffusersLoop:
    """The shared kernel: convert, (correct), predict with static coefficient tables.

    Args:
      schedule: the denoiser's schedule.
      timesteps: int ``(n,)`` model times.
      sigmas: float32 ``(n + 1,)`` sigmas (``add_noise`` uses ``sigmas[t_start]``).
      tables: the coefficients (see :class:`_Tables`).
      prediction_type: the network's, ``'eps'``, ``'v'`` or ``'x0'``.
      to_data: the outputs are ``x0`` (else ``eps``).
      threshold: ``x0 -> x0`` (diffusers' thresholding) or ``None``.
      noise_fn: the SDE noise (``None``: no noise term).
      order: the txt2img sampler's ``Sampler.order``.
    """
    n = int(timesteps.shape[0])
    hist = tables.pred.shape[2] - 4
    alpha, sigma_t, _ = _alpha_sigma_lambda(sigmas)
    f32 = lambda v: jnp.asarray(np.asarray(v), jnp.float32)  # noqa: E731
    t_tab, a_tab, s_tab = f32(timesteps), f32(alpha[:-1]), f32(sigma_t[:-1])
    pred, pred_cap = f32(np.nan_to_num(tables.pred)), jnp.asarray(tables.pred_cap, jnp.int32)
    corr = None if tables.corr is None else f32(np.nan_to_num(tables.corr))
    corr_cap = None if tables.corr_cap is None else jnp.asarray(tables.corr_cap, jnp.int32)
    stochastic = noise_fn is not None

    def init(x: Array) -> LinearMultistepState:
        return LinearMultistepState(x=x, outputs=jnp.zeros((hist, *x.shape), x.dtype), base=x)

    def combine(coeffs: Array, terms: Sequence[Array | None]) -> Array:
        total = None
        for k, term in enumerate(terms):
            if term is None:
                continue
            part = coeffs[k] * term
            total = part if total is None else total + part
        return total

    def step(
        denoise_fn: DenoiseFn, state: LinearMultistepState, i: Array, j: Array, key: Array,
        cond: Any,
    ) -> LinearMultistepState:
        x = state.x
        dtype = x.dtype
        t = t_tab[i]
        raw = raw_model_output(denoise_fn(x, t, cond), x, t, schedule, prediction_type)
        m = _convert(raw, x, a_tab[i].astype(dtype), s_tab[i].astype(dtype), prediction_type,
                     to_data, threshold)
        outs = [state.outputs[k] for k in range(hist)]
        if corr is not None:
            c = jnp.minimum(corr_cap[i], j)
            x = combine(corr[i, c].astype(dtype), [x, state.base, m, *outs, None])
        p = jnp.minimum(pred_cap[i], j + 1)
        base = jnp.where(p == 1, x, state.base) if tables.singlestep else x
        z = noise_fn(key, j, x.shape, dtype) if stochastic else None
        x_new = combine(pred[i, p - 1].astype(dtype), [x, base, m, *outs, z])
        outputs = jnp.concatenate([m[None], state.outputs[:-1]]) if hist else state.outputs
        return LinearMultistepState(x=x_new.astype(dtype), outputs=outputs, base=base)

    a_all, s_all, _ = _alpha_sigma_lambda(sigmas)
    return DiffusersLoop(
        num_steps=n, num_inference_steps=n, init=init, step=step, finalize=lambda s: s.x,
        schedule=schedule, init_noise_sigma=_F32(1),
        noise_coeffs=noise_coeffs_table(n, a_all[:n], s_all[:n]),
        order=None if stochastic else order,
    )


# --------------------------------------------------------------------------------------
# DPM-Solver coefficients (in float32 as diffusers evaluates them, then expanded).
# --------------------------------------------------------------------------------------


def _dpm_coeffs(
    algorithm: str, solver_type: str, order: int, alpha: np.ndarray, sigma: np.ndarray,
    lam: np.ndarray, t: int, s: Sequence[int], singlestep: bool,
) -> tuple[float, np.ndarray, float]:
    """One DPM-Solver update as ``(c_sample, c_outputs, c_noise)``.

    ``c_outputs[k]`` weighs the output ``m_k`` (``m_0`` the newest); ``s`` lists the
    indices of ``sigma`` at ``m_0, m_1, ...`` (multistep: ``i, i-1, i-2``; singlestep
    the same, with the update taken from the oldest, the group's start).
    """
    sde = algorithm == "sde-dpmsolver++"
    data = algorithm != "dpmsolver"
    ref = s[order - 1] if singlestep else s[0]
    lam_t, lam_r = lam[t], lam[ref]
    h = _F32(lam_t - lam_r)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        em = _F32(np.exp(-h)) if data else _F32(np.exp(h))
        if sde:
            e2 = _F32(np.exp(_F32(-2.0) * h))
            c_x = float(_F32(sigma[t] / sigma[ref]) * em)
            c0 = float(alpha[t] * (_F32(1) - e2))
            c1 = float(alpha[t] * ((_F32(1) - e2) / (_F32(-2.0) * h) + _F32(1)))
            c2 = float(alpha[t] * ((_F32(1) - e2 + _F32(-2.0) * h) / (_F32(-2.0) * h) ** 2
                                   - _F32(0.5)))
            noise = float(sigma[t] * np.sqrt(_F32(1) - e2))
        elif data:  # x_t = c_x x - A D0 + B D1 - C D2
            c_x = float(sigma[t] / sigma[ref])
            c0 = -float(alpha[t] * (em - _F32(1)))
            c1 = float(alpha[t] * ((em - _F32(1)) / h + _F32(1)))
            c2 = -float(alpha[t] * ((em - _F32(1) + h) / h**2 - _F32(0.5)))
            noise = 0.0
        else:  # x_t = c_x x - A' D0 - B' D1 - C' D2
            c_x = float(alpha[t] / alpha[ref])
            c0 = -float(sigma[t] * (em - _F32(1)))
            c1 = -float(sigma[t] * ((em - _F32(1)) / h - _F32(1)))
            c2 = -float(sigma[t] * ((em - _F32(1) - h) / h**2 - _F32(0.5)))
            noise = 0.0
        c = np.zeros(3)
        if order == 1:
            c[0] = c0
            return c_x, c, noise
        midpoint = solver_type == "midpoint"
        if order == 2:
            if singlestep:  # D0 = m1, D1 = (m0 - m1) / r0, r0 = (lam_s0 - lam_s1) / h
                r0 = float(_F32(lam[s[0]] - lam[s[1]]) / h)
                d0, d1 = np.array([0.0, 1.0, 0.0]), np.array([1.0, -1.0, 0.0]) / r0
            else:  # D0 = m0, D1 = (m0 - m1) / r0, r0 = (lam_s0 - lam_s1) / h
                r0 = float(_F32(lam[s[0]] - lam[s[1]]) / h)
                d0, d1 = np.array([1.0, 0.0, 0.0]), np.array([1.0, -1.0, 0.0]) / r0
            return c_x, c0 * d0 + (0.5 * c0 if midpoint else c1) * d1, noise
        if singlestep:  # D0 = m2; D1_0 = (m1 - m2) / r1, D1_1 = (m0 - m2) / r0
            r0 = float(_F32(lam[s[0]] - lam[s[2]]) / h)
            r1 = float(_F32(lam[s[1]] - lam[s[2]]) / h)
            d0 = np.array([0.0, 0.0, 1.0])
            d1_0 = np.array([0.0, 1.0, -1.0]) / r1
            d1_1 = np.array([1.0, 0.0, -1.0]) / r0
            d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
            d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1)
            if midpoint:
                return c_x, c0 * d0 + c1 * d1_1, noise
            return c_x, c0 * d0 + c1 * d1 + c2 * d2, noise
        r0 = float(_F32(lam[s[0]] - lam[s[1]]) / h)
        r1 = float(_F32(lam[s[1]] - lam[s[2]]) / h)
        d0 = np.array([1.0, 0.0, 0.0])
        d1_0 = np.array([1.0, -1.0, 0.0]) / r0
        d1_1 = np.array([0.0, 1.0, -1.0]) / r1
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        return c_x, c0 * d0 + c1 * d1 + c2 * d2, noise


def _check_common(prediction_type: str, solver_order: int, supported: Sequence[int]) -> int:
    check_prediction_type(prediction_type)
    if isinstance(solver_order, bool) or solver_order not in supported:
        raise ValueError(f"solver_order must be one of {list(supported)}, got {solver_order!r}")
    return int(solver_order)


def _threshold_fn(thresholding: bool, ratio: float, max_value: float) -> Any:
    if not thresholding:
        return None
    return lambda x0: diffusers_threshold(x0, ratio, max_value)


def _dpm_setup(
    schedule: DiscreteSchedule, alphas_cumprod: ArrayLike | None, num_steps: int,
    algorithm_type: str, solver_type: str, final_sigmas_type: str, **grid: Any,
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    if algorithm_type not in DPM_ALGORITHMS:
        raise ValueError(
            f"algorithm_type={algorithm_type!r} is not supported; expected one of "
            f"{list(DPM_ALGORITHMS)}"
        )
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    if algorithm_type == "dpmsolver" and final_sigmas_type == "zero":
        raise ValueError(
            "final_sigmas_type='zero' is not supported for algorithm_type='dpmsolver' (as in "
            "diffusers); use final_sigmas_type='sigma_min'"
        )
    ac = table_alphas_cumprod(schedule, alphas_cumprod)
    ts, sigmas = diffusers_dpm_grid(ac, num_steps, final_sigmas_type=final_sigmas_type, **grid)
    return ts, sigmas, _alpha_sigma_lambda(sigmas)


def _dpm_tables(
    caps: Sequence[int], max_order: int, algorithm_type: str, solver_type: str,
    marginals: tuple[np.ndarray, np.ndarray, np.ndarray], singlestep: bool,
) -> _Tables:
    n = len(caps)
    hist = max_order - 1
    pred = np.zeros((n, max_order, hist + 4))
    for i in range(n):
        for p in range(1, min(caps[i], i + 1) + 1):
            c_x, c_m, c_z = _dpm_coeffs(algorithm_type, solver_type, p, *marginals, t=i + 1,
                                        s=[i, i - 1, i - 2], singlestep=singlestep)
            pred[i, p - 1, 1 if singlestep else 0] = c_x
            pred[i, p - 1, 2:3 + hist] = c_m[: hist + 1]
            pred[i, p - 1, -1] = c_z
    return _Tables(pred=pred, pred_cap=np.asarray(caps), corr=None, corr_cap=None,
                   singlestep=singlestep)


def _dpm_loop(
    schedule: DiscreteSchedule, ts: np.ndarray, sigmas: np.ndarray, tables: _Tables,
    prediction_type: str, algorithm_type: str, threshold: Any, noise_fn: NoiseFn | None,
    order: int | None,
) -> DiffusersLoop:
    """The DPM-Solver loop of either family: data or noise outputs, noise for the SDE."""
    sde = algorithm_type == "sde-dpmsolver++"
    return linear_multistep_loop(
        schedule, ts, sigmas, tables, prediction_type=prediction_type,
        to_data=algorithm_type != "dpmsolver", threshold=threshold,
        noise_fn=(default_noise if noise_fn is None else noise_fn) if sde else None,
        order=order,
    )


def diffusers_dpm_multistep_loop(
    schedule: DiscreteSchedule,
    num_steps: int,
    *,
    alphas_cumprod: ArrayLike | None = None,
    solver_order: int = 2,
    algorithm_type: str = "dpmsolver++",
    solver_type: str = "midpoint",
    lower_order_final: bool = True,
    euler_at_final: bool = False,
    sigma_schedule: str | None = None,
    final_sigmas_type: str = "zero",
    lambda_min_clipped: float = -math.inf,
    timestep_spacing: str = "linspace",
    steps_offset: int = 0,
    prediction_type: str = "eps",
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    round_fractional: bool = True,
    noise_fn: NoiseFn | None = None,
) -> DiffusersLoop:
    """Diffusers' ``DPMSolverMultistepScheduler`` loop (DPM-Solver++(2M/3M), DPM-Solver).

    Step ``i`` (``h = lambda_{i+1} - lambda_i``, ``r0 = (lambda_i - lambda_{i-1}) / h``)
    takes order ``1`` on the first call since the start, on the last step where
    ``euler_at_final``, ``lower_order_final`` with ``n < 15`` or a zero final sigma
    applies, and order ``<= 2`` on the second call and (``n < 15``) the second-to-last
    step; diffusers' third-order update weighs ``D2`` by ``phi3`` (see
    :mod:`diffjax.samplers.multistep`).

    Args:
      schedule: the denoiser's schedule.
      num_steps: ``num_inference_steps``.
      alphas_cumprod: diffusers' float32 table (``None``: the schedule's).
      solver_order: 1, 2 or 3.
      algorithm_type: ``'dpmsolver++'`` (data prediction), ``'dpmsolver'`` (noise) or
        ``'sde-dpmsolver++'`` (draws ``noise_fn`` noise every step).
      solver_type: ``'midpoint'`` or ``'heun'`` (second-order steps).
      lower_order_final: diffusers' rule (only below 15 steps).
      euler_at_final: the last step is first order.
      sigma_schedule: ``None``, ``'karras'``, ``'exponential'`` or ``'lu'``
        (``use_karras_sigmas``, ``use_exponential_sigmas``, ``use_lu_lambdas``).
      final_sigmas_type: ``'zero'`` (data prediction only) or ``'sigma_min'``.
      lambda_min_clipped: diffusers' clipping of the grid's low-noise end.
      timestep_spacing: ``'linspace'``, ``'leading'`` or ``'trailing'``.
      steps_offset: added to the ``leading`` grid.
      prediction_type: ``'eps'``, ``'v'`` or ``'x0'``.
      thresholding: diffusers' dynamic thresholding of ``x0``.
      dynamic_thresholding_ratio: its quantile.
      sample_max_value: its largest threshold.
      round_fractional: round Karras / Lu timesteps (diffusers: unless
        ``beta_schedule='squaredcos_cap_v2'``).
      noise_fn: ``noise_fn(key, step_index, shape, dtype)`` for the SDE variant
        (default :func:`~diffjax.samplers.diffusers_compat.default_noise`).

    Returns:
      A :class:`~diffjax.samplers.diffusers_compat.DiffusersLoop` of ``num_steps`` calls.
    """
    order = _check_common(prediction_type, solver_order, (1, 2, 3))
    ts, sigmas, marginals = _dpm_setup(
        schedule, alphas_cumprod, num_steps, algorithm_type, solver_type, final_sigmas_type,
        family="multistep", timestep_spacing=timestep_spacing, steps_offset=steps_offset,
        sigma_schedule=sigma_schedule, lambda_min_clipped=lambda_min_clipped,
        round_fractional=round_fractional,
    )
    n = len(ts)
    short = bool(lower_order_final) and n < LOWER_ORDER_FINAL_STEPS
    caps = []
    for i in range(n):
        final = i == n - 1 and (euler_at_final or short or final_sigmas_type == "zero")
        second = i == n - 2 and short
        caps.append(1 if order == 1 or final else 2 if order == 2 or second else 3)
    tables = _dpm_tables(caps, order, algorithm_type, solver_type, marginals, singlestep=False)
    return _dpm_loop(
        schedule, ts, sigmas, tables, prediction_type, algorithm_type,
        _threshold_fn(thresholding, dynamic_thresholding_ratio, sample_max_value), noise_fn,
        order=min(order, 2) if order == 3 else order,
    )


def singlestep_order_list(
    num_steps: int, solver_order: int, lower_order_final: bool, final_sigmas_type: str
) -> list[int]:
    """``DPMSolverSinglestepScheduler.get_order_list``: the order of every step.

    ``lower_order_final`` is forced on (as diffusers does, with a warning) when
    ``num_steps % solver_order != 0`` or the final sigma is zero.
    """
    n, k = int(num_steps), int(solver_order)
    if n % k != 0 or final_sigmas_type == "zero":
        lower_order_final = True
    if lower_order_final:
        if k == 3:
            tails = {0: [1, 2, 1], 1: [1], 2: [1, 2]}
            orders = [1, 2, 3] * (n // 3 - (1 if n % 3 == 0 else 0)) + tails[n % 3]
        elif k == 2:
            orders = [1, 2] * (n // 2 - 1) + [1, 1] if n % 2 == 0 else [1, 2] * (n // 2) + [1]
        else:
            orders = [1] * n
    else:
        orders = {3: [1, 2, 3] * (n // 3), 2: [1, 2] * (n // 2), 1: [1] * n}[k]
    if final_sigmas_type == "zero":
        orders[-1] = 1
    return orders


def diffusers_dpm_singlestep_loop(
    schedule: DiscreteSchedule,
    num_steps: int,
    *,
    alphas_cumprod: ArrayLike | None = None,
    solver_order: int = 2,
    algorithm_type: str = "dpmsolver++",
    solver_type: str = "midpoint",
    lower_order_final: bool = False,
    sigma_schedule: str | None = None,
    final_sigmas_type: str = "zero",
    lambda_min_clipped: float = -math.inf,
    prediction_type: str = "eps",
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    noise_fn: NoiseFn | None = None,
) -> DiffusersLoop:
    """Diffusers' ``DPMSolverSinglestepScheduler`` loop.

    The grid (linspace spacing only) is cut into groups by :func:`singlestep_order_list`
    (``[1, 2, 3]`` repeated for order 3): a group of ``k`` steps starts from the sample at
    its first grid point and evaluates the network at each of its ``k`` grid points (the
    intermediate points of DPM-Solver-k lie on the grid, at diffusers' per-step ratios
    ``r = (lambda_s_j - lambda_s_0) / h``); step ``j`` of a group lands on the next grid
    point with order ``j + 1``, from the group's start. The order is
    ``min(order_list[i], calls since the start)`` as diffusers' ``model_outputs`` check.

    Args:
      schedule: the denoiser's schedule.
      num_steps: ``num_inference_steps``.
      alphas_cumprod: diffusers' float32 table (``None``: the schedule's).
      solver_order: 1, 2 or 3.
      algorithm_type: ``'dpmsolver++'``, ``'dpmsolver'`` or ``'sde-dpmsolver++'``.
      solver_type: ``'midpoint'`` or ``'heun'``.
      lower_order_final: see :func:`singlestep_order_list`.
      sigma_schedule: ``None``, ``'karras'`` or ``'exponential'``.
      final_sigmas_type: ``'zero'`` (data prediction only) or ``'sigma_min'``.
      lambda_min_clipped: diffusers' clipping of the grid's low-noise end.
      prediction_type: ``'eps'``, ``'v'`` or ``'x0'``.
      thresholding: diffusers' dynamic thresholding of ``x0``.
      dynamic_thresholding_ratio: its quantile.
      sample_max_value: its largest threshold.
      noise_fn: the SDE variant's noise (see :func:`diffusers_dpm_multistep_loop`).

    Returns:
      A :class:`~diffjax.samplers.diffusers_compat.DiffusersLoop` of ``num_steps`` calls.
    """
    order = _check_common(prediction_type, solver_order, (1, 2, 3))
    if sigma_schedule == "lu":
        raise ValueError("DPMSolverSinglestepScheduler has no use_lu_lambdas")
    ts, sigmas, marginals = _dpm_setup(
        schedule, alphas_cumprod, num_steps, algorithm_type, solver_type, final_sigmas_type,
        family="singlestep", sigma_schedule=sigma_schedule,
        lambda_min_clipped=lambda_min_clipped,
    )
    caps = singlestep_order_list(len(ts), order, lower_order_final, final_sigmas_type)
    tables = _dpm_tables(caps, order, algorithm_type, solver_type, marginals, singlestep=True)
    return _dpm_loop(
        schedule, ts, sigmas, tables, prediction_type, algorithm_type,
        _threshold_fn(thresholding, dynamic_thresholding_ratio, sample_max_value), noise_fn,
        order=None,
    )


# --------------------------------------------------------------------------------------
# UniPC.
# --------------------------------------------------------------------------------------


def _unipc_rhos(
    rks: np.ndarray, hh: np.float32, bh2: bool, order: int, corrector: bool
) -> tuple[np.ndarray, np.float32, np.float32]:
    """UniPC's ``rhos`` (diffusers' Vandermonde solve), ``h phi_1(hh)`` and ``B(h)``."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        h_phi_1 = _F32(np.expm1(hh))
        h_phi_k = _F32(h_phi_1 / hh - _F32(1))
        b_h = _F32(np.expm1(hh)) if bh2 else _F32(hh)
        fact = 1
        rows, b = [], []
        for k in range(1, order + 1):
            rows.append(np.power(rks, k - 1).astype(_F32))
            b.append(_F32(h_phi_k * _F32(fact) / b_h))
            fact *= k + 1
            h_phi_k = _F32(h_phi_k / hh - _F32(1) / _F32(fact))
        R, bv = np.stack(rows).astype(np.float64), np.asarray(b, np.float64)
        if corrector:
            rhos = np.array([0.5]) if order == 1 else np.linalg.solve(R, bv)
        elif order == 1:
            rhos = np.zeros(0)
        elif order == 2:
            rhos = np.array([0.5])
        else:
            rhos = np.linalg.solve(R[:-1, :-1], bv[:-1])
    return rhos.astype(_F32).astype(np.float64), h_phi_1, b_h


def _unipc_update(
    marginals: tuple[np.ndarray, np.ndarray, np.ndarray], t: int, s0: int,
    previous: Sequence[int], order: int, predict_x0: bool, bh2: bool, corrector: bool,
) -> tuple[float, float, np.ndarray]:
    """One UniP / UniC update: ``(c_start, c_new, c_outputs)``.

    Predictor: ``x_t = c_start x + c_new m0 + sum_k c_outputs[k] m_{k+1}`` (``m0`` the
    output at ``s0``, ``m_k`` at ``previous[k-1]``). Corrector: the same from
    ``last_sample`` with ``c_new`` the weight of the new output at ``t`` and
    ``c_outputs[0]`` that of the output at ``s0``.
    """
    alpha, sigma, lam = marginals
    h = _F32(lam[t] - lam[s0])
    hh = _F32(-h) if predict_x0 else h
    k_terms = order - 1
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        rks = np.array([_F32(lam[p] - lam[s0]) / h for p in previous[:k_terms]] + [1.0], _F32)
    rhos, h_phi_1, b_h = _unipc_rhos(rks, hh, bh2, order, corrector)
    ratio = float(sigma[t] / sigma[s0]) if predict_x0 else float(alpha[t] / alpha[s0])
    coef = float(alpha[t]) if predict_x0 else float(sigma[t])
    cb = coef * float(b_h)
    outs = np.zeros(len(previous) + 1)
    outs[0] = -coef * float(h_phi_1)
    for k in range(k_terms):  # D1_k = (m_{k+1} - m0) / r_k
        w = cb * rhos[k] / float(rks[k])
        outs[k + 1] -= w
        outs[0] += w
    new = 0.0
    if corrector:  # D1_t = m_t - m0, weighted by rhos[-1]
        new = -cb * rhos[-1]
        outs[0] += cb * rhos[-1]
    return ratio, new, outs


def diffusers_unipc_loop(
    schedule: DiscreteSchedule,
    num_steps: int,
    *,
    alphas_cumprod: ArrayLike | None = None,
    solver_order: int = 2,
    predict_x0: bool = True,
    solver_type: str = "bh2",
    lower_order_final: bool = True,
    disable_corrector: Sequence[int] = (),
    sigma_schedule: str | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    final_sigmas_type: str = "zero",
    timestep_spacing: str = "linspace",
    steps_offset: int = 0,
    prediction_type: str = "eps",
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
) -> DiffusersLoop:
    """Diffusers' ``UniPCMultistepScheduler`` loop (UniPC-p, Zhao et al. 2023, Alg. 2).

    Each call first corrects the previous step's prediction with the new model output
    (UniC, the previous step's order; skipped on the first call since the start and
    after the steps listed in ``disable_corrector``), then predicts (UniP) with order
    ``min(solver_order, n - i)`` (``lower_order_final``), warmed up by the calls since the
    start.

    Args:
      schedule: the denoiser's schedule.
      num_steps: ``num_inference_steps``.
      alphas_cumprod: diffusers' float32 table (``None``: the schedule's).
      solver_order: 1 to 3 (diffusers allows more; 1 to 3 are supported here).
      predict_x0: data prediction (else noise prediction).
      solver_type: ``'bh1'`` (``B(h) = h``) or ``'bh2'`` (``B(h) = e^h - 1``).
      lower_order_final: lower the order over the last steps.
      disable_corrector: step indices after which UniC is skipped.
      sigma_schedule: ``None``, ``'karras'`` or ``'exponential'``.
      sigma_min: their lower end (``None``: the table's).
      sigma_max: their upper end.
      final_sigmas_type: ``'zero'`` or ``'sigma_min'`` (with a sigma schedule: its last).
      timestep_spacing: ``'linspace'``, ``'leading'`` or ``'trailing'``.
      steps_offset: added to the ``leading`` grid.
      prediction_type: ``'eps'``, ``'v'`` or ``'x0'``.
      thresholding: diffusers' dynamic thresholding of ``x0`` (with ``predict_x0``).
      dynamic_thresholding_ratio: its quantile.
      sample_max_value: its largest threshold.

    Returns:
      A :class:`~diffjax.samplers.diffusers_compat.DiffusersLoop` of ``num_steps`` calls.
    """
    order = _check_common(prediction_type, solver_order, (1, 2, 3))
    if solver_type not in ("bh1", "bh2"):
        raise ValueError(f"solver_type must be 'bh1' or 'bh2', got {solver_type!r}")
    if sigma_schedule == "lu":
        raise ValueError("UniPCMultistepScheduler has no use_lu_lambdas")
    ac = table_alphas_cumprod(schedule, alphas_cumprod)
    ts, sigmas = diffusers_dpm_grid(
        ac, num_steps, family="unipc", timestep_spacing=timestep_spacing,
        steps_offset=steps_offset, sigma_schedule=sigma_schedule,
        final_sigmas_type=final_sigmas_type, sigma_min=sigma_min, sigma_max=sigma_max,
    )
    marginals = _alpha_sigma_lambda(sigmas)
    n, bh2, hist = len(ts), solver_type == "bh2", order
    caps = [min(order, n - i) if lower_order_final else order for i in range(n)]
    skip = {int(k) for k in disable_corrector}
    corr_caps = [0 if i == 0 or (i - 1) in skip else caps[i - 1] for i in range(n)]
    pred = np.zeros((n, order, hist + 4))
    corr = np.zeros((n, order + 1, hist + 4))
    corr[:, 0, 0] = 1.0  # no corrector: x as is
    for i in range(n):
        for p in range(1, min(caps[i], i + 1) + 1):
            ratio, _, outs = _unipc_update(marginals, i + 1, i, [i - k for k in range(1, p)],
                                           p, predict_x0, bh2, corrector=False)
            pred[i, p - 1, 0], pred[i, p - 1, 2:2 + p] = ratio, outs
        for c in range(1, min(corr_caps[i], i) + 1):
            ratio, new, outs = _unipc_update(marginals, i, i - 1,
                                             [i - 1 - k for k in range(1, c)], c, predict_x0,
                                             bh2, corrector=True)
            corr[i, c, 1], corr[i, c, 2], corr[i, c, 3:3 + c] = ratio, new, outs
    tables = _Tables(pred=pred, pred_cap=np.asarray(caps), corr=corr,
                     corr_cap=np.asarray(corr_caps), singlestep=False)
    return linear_multistep_loop(
        schedule, ts, sigmas, tables, prediction_type=prediction_type, to_data=predict_x0,
        threshold=_threshold_fn(thresholding and predict_x0, dynamic_thresholding_ratio,
                                sample_max_value),
        order=None,
    )


diffusers_dpm_multistep = txt2img_factory(
    diffusers_dpm_multistep_loop, "diffusers_dpm_multistep", "DPMSolverMultistepScheduler"
)


diffusers_dpm_singlestep = txt2img_factory(
    diffusers_dpm_singlestep_loop, "diffusers_dpm_singlestep", "DPMSolverSinglestepScheduler"
)


diffusers_unipc = txt2img_factory(
    diffusers_unipc_loop, "diffusers_unipc", "UniPCMultistepScheduler"
)
