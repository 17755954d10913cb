"""UniPC: the unified predictor-corrector multistep solver (UniP-p + UniC-p).

UniPC (Zhao et al. 2023) is a multistep exponential integrator in log-SNR time like
DPM-Solver++(M) (see :mod:`diffjax.samplers.multistep` for the notation), with two parts
per step ``i`` (one network evaluation each):

* **UniC** (corrector, Sec. 3.1): once ``m_i = model(x_i, s_i)`` is known, the step that
  produced ``x_i`` is redone from the previous (corrected) sample ``x_{i-1}`` including
  ``m_i``, raising its order by one. ``m_i`` itself is *not* re-evaluated at the
  corrected point, so the corrector is free.
* **UniP** (predictor, Sec. 3.2): the multistep step from ``s_i`` to ``s_{i+1}`` with the
  outputs ``m_i, m_{i-1}, ...``.

Both are, for data prediction (``prediction='data'``, UniPC++), with ``h = lambda_t - lambda_s``,
``u = -h``, ``r_k = (lambda_{s_k} - lambda_s) / h`` and ``D_k = (m_k - m_0) / r_k``
(Zhao et al. Alg. 2 with ``B(h)``; for noise prediction ``alpha <-> sigma`` and
``u = h``)::

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^u - 1) m_0 - alpha_t B(u) sum_k rho_k D_k

The weights solve ``R rho = b`` with ``R[j, k] = r_k^j`` and
``b_j = g_j(u) j! / B(u)``, ``g_j(u) = sum_{n >= j+1} u^{n-j} / n!``
(``g_1 = (e^u - 1) / u - 1``, ``g_{j+1} = g_j / u - 1 / (j+1)!``). The corrector appends
``r = 1`` with ``D = m_i - m_0`` and solves the full system; the predictor of order ``p``
uses the ``p - 1`` past differences only. As in the paper's code (and diffusers), the
one-coefficient cases use ``rho = 1/2``: predictor order 2 (which makes UniP-2 with
``B(h) = e^h - 1`` exactly DPM-Solver++(2M)) and corrector order 1. ``variant='bh2'`` is
``B(u) = e^u - 1`` (the paper's choice for guided sampling and diffusers' default),
``'bh1'`` is ``B(u) = u``.

The ``g_j`` are evaluated with their power series for ``|u| < 1/2``, so their leading
cancellation costs no precision at small steps (the recursion alone loses about
``eps / |u|^j``).

Orders are static, as in diffusers: predictor step ``i`` uses
``min(order, i + 1)`` (warm-up), and where the ``lower_order_final`` rule applies also
``min(order, num_steps - i)``; the corrector at step ``i`` has the order of the
predictor step it corrects (so UniPC-p reaches order p + 1 away from the ends).
``lax.switch`` dispatches, so only the chosen order is computed. The history is a
fixed-size buffer of the last ``order`` model outputs in the scan carry.

References:
  Zhao, Bai, Rao, Zhou & Lu, "UniPC: A Unified Predictor-Corrector Framework for Fast
  Sampling of Diffusion Models", NeurIPS 2023 (arXiv 2302.04867), Alg. 1-3, App. C.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_choice, is_int
from diffjax.parameterization import DenoiseFn
from diffjax.samplers.driver import Sampler, state_dtype
from diffjax.samplers.exponential import (
    DynamicThresholding,
    StaticThresholding,
    check_exponential_grid,
    check_multistep_order,
    check_prediction,
    check_thresholding,
    dispatch,
    exponential_step,
    marginal,
    multistep_orders,
    phi1,
    step_context,
)
from diffjax.schedules import VPSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = ["UNIPC_VARIANTS", "UniPCState", "unipc", "unipc_corrector_orders"]

UNIPC_VARIANTS = ("bh2", "bh1")
"""``B(h)`` of UniPC: ``'bh2'`` is ``e^h - 1``, ``'bh1'`` is ``h`` (Zhao et al. Sec. 3.3)."""

_SERIES_TERMS = 16
_SERIES_RADIUS = 0.5


class UniPCState(NamedTuple):
    """UniPC state.

    Attributes:
      x: the current sample, the predictor's output (float32).
      x_prev: the previous corrected sample, where the corrector restarts from.
      model_outputs: the last ``order`` model outputs, newest first,
        shape ``(order, *x.shape)``.
      lambdas: their ``lambda = log(alpha / sigma)``, shape ``(order,)``.
    """

    x: Array
    x_prev: Array
    model_outputs: Array
    lambdas: Array


def _g(u: Array, n: int) -> list[Array]:
    """``[g_1(u), ..., g_n(u)]``, ``g_j(u) = sum_{m >= 1} u^m / (m + j)!``.

    For ``|u| < 1/2``: the power series of ``g_n`` and the stable downward recursion
    ``g_j = u (g_{j+1} + 1/(j+1)!)``. Elsewhere the upward recursion
    ``g_{j+1} = g_j / u - 1/(j+1)!`` from ``g_1 = expm1(u) / u - 1``, which is accurate
    there (and gives ``g_1 = -1`` at ``u = -inf``).
    """
    small = jnp.abs(u) < _SERIES_RADIUS
    u_big = jnp.where(small, jnp.ones_like(u), u)
    u_small = jnp.where(small, u, jnp.zeros_like(u))
    up = [jnp.expm1(u_big) / u_big - 1.0]
    for j in range(1, n):
        up.append(up[-1] / u_big - 1.0 / math.factorial(j + 1))
    down = [jnp.zeros_like(u)]
    for m in range(_SERIES_TERMS, 0, -1):  # Horner: g_n = u (c_1 + u (c_2 + ...))
        down[0] = u_small * (1.0 / math.factorial(m + n) + down[0])
    for j in range(n - 1, 0, -1):
        down.insert(0, u_small * (down[0] + 1.0 / math.factorial(j + 1)))
    return [jnp.where(small, d, g) for d, g in zip(down, up, strict=True)]


def _solve_vandermonde(nodes: Sequence[Array], moments: Sequence[Array]) -> list[Array]:
    """Solves ``sum_k rho_k nodes_k^j = moments_j`` for ``j < n`` (``R rho = b``).

    ``rho_k`` is the moment functional applied to the Lagrange polynomial of node ``k``:
    ``sum_j c_kj moments_j / prod_{m != k} (nodes_k - nodes_m)``, with ``c_kj`` the
    coefficients of ``prod_{m != k} (x - nodes_m)``. Closed form for the small systems
    here (n <= 3); no LU factorization in the scan body.
    """
    rhos = []
    for k, r_k in enumerate(nodes):
        coeffs, denom = [1.0], 1.0  # coefficients of prod (x - r_m), lowest degree first
        for m, r_m in enumerate(nodes):
            if m == k:
                continue
            shifted = [0.0, *coeffs]
            coeffs = [a - r_m * b for a, b in zip(shifted, [*coeffs, 0.0], strict=True)]
            denom = denom * (r_k - r_m)
        rhos.append(sum(c * b for c, b in zip(coeffs, moments, strict=True)) / denom)
    return rhos


def _rhos(u: Array, rks: Sequence[Array], n: int, variant: str) -> list[Array]:
    """UniPC's weights: the first ``n`` rows and columns of ``R rho = b``.

    Args:
      u: the signed step (``-h`` for data prediction, ``h`` for noise prediction).
      rks: the ratios ``r_k``, at least ``n`` of them (``1`` last for the corrector).
      n: the system size.
      variant: ``'bh1'`` or ``'bh2'``.

    Returns:
      ``n`` weights.
    """
    B = jnp.expm1(u) if variant == "bh2" else u
    b = [g * float(math.factorial(j)) / B for j, g in enumerate(_g(u, n), start=1)]
    return _solve_vandermonde(list(rks[:n]), b)


def unipc_corrector_orders(
    orders: Sequence[int], disable_corrector: Sequence[int] = ()
) -> tuple[int, ...]:
    """The static corrector order of each step (``0``: no correction).

    Step ``i > 0`` corrects the predictor step ``i - 1`` with that step's order, unless
    ``i - 1`` is in ``disable_corrector`` (diffusers' convention).

    Args:
      orders: the predictor orders, one per step.
      disable_corrector: predictor steps whose result is not corrected.

    Returns:
      One corrector order per step.
    """
    off = set(disable_corrector)
    return (0, *(0 if i in off else int(o) for i, o in enumerate(orders[:-1])))


def _check_disable_corrector(disable_corrector: Any, num_steps: int) -> tuple[int, ...]:
    if isinstance(disable_corrector, str) or not isinstance(
        disable_corrector, Sequence | np.ndarray
    ):
        raise ValueError(
            f"disable_corrector must be a sequence of step indices, got {disable_corrector=!r}"
        )
    steps = tuple(disable_corrector)
    for i in steps:
        if not is_int(i) or not 0 <= i < num_steps:
            raise ValueError(
                f"disable_corrector entries must be step indices in [0, {num_steps}), got "
                f"{disable_corrector=!r}"
            )
    return tuple(int(i) for i in steps)


def unipc(
    schedule: VPSchedule,
    timesteps: ArrayLike,
    order: int = 2,
    *,
    prediction: str = "data",
    variant: str = "bh2",
    lower_order_final: str = "always",
    disable_corrector: Sequence[int] = (),
    thresholding: StaticThresholding | DynamicThresholding | None = None,
) -> Sampler:
    """Builds a UniPC sampler: UniP-p predictor and UniC-p corrector, one evaluation a step.

    The defaults are diffusers' ``UniPCMultistepScheduler`` defaults (``solver_order=2``,
    ``solver_type='bh2'``, ``predict_x0=True`` (``prediction='data'``),
    ``lower_order_final=True`` (``'always'``),
    ``disable_corrector=[]``); its default ``final_sigmas_type='zero'`` is a grid ending at
    the clean point (``final=-1`` on a discrete schedule), ``'sigma_min'`` one ending at
    ``t = 0``.

    Example (diffusers' defaults, 10 steps)::

        grid = with_final_timestep(linspace_timesteps(1000, 10), final=-1)
        sampler = unipc(schedule, grid)

    Args:
      schedule: noise schedule with ``alpha``, ``sigma`` and ``log_snr``.
      timesteps: static, strictly decreasing grid of ``num_steps + 1`` model times.
      order: the predictor order p, 1, 2 or 3 (the corrector raises it to p + 1); needs
        ``num_steps >= order``.
      prediction: ``'data'`` (UniPC++, the default) or ``'noise'`` (the grid must then
        end at ``sigma > 0``).
      variant: ``'bh2'`` (``B(h) = e^h - 1``) or ``'bh1'`` (``B(h) = h``).
      lower_order_final: when to use orders ``min(order, num_steps - i)`` at the end:
        ``'always'`` (the default; diffusers applies this at every step count for UniPC),
        ``'never'`` or ``'below_15_steps'``. A grid ending at ``sigma = 0`` always takes
        a first-order last step.
      disable_corrector: predictor steps (indices) whose result is not corrected.
      thresholding: static or dynamic thresholding of the data prediction
        (``prediction='data'`` only); ``None`` (the default) does not clip.

    Returns:
      A :class:`~diffjax.samplers.driver.Sampler` with ``nfe = num_steps`` and ``order``
      ``p + 1`` (``p`` when a corrector is disabled).

    Raises:
      ValueError: for an unknown option, an unsupported order, too few steps for the
        order, a bad grid, or a noise-prediction solver whose grid ends at ``sigma = 0``.
    """
    prediction = check_prediction(prediction)
    variant = check_choice("variant", variant, UNIPC_VARIANTS)
    thresholding = check_thresholding(thresholding, prediction)
    ts, clean = check_exponential_grid(schedule, timesteps, prediction)
    num_steps = int(ts.shape[0] - 1)
    order = check_multistep_order("UniPC", order, (1, 2, 3), num_steps)
    orders = multistep_orders(order, num_steps, lower_order_final, clean)
    disabled = _check_disable_corrector(disable_corrector, num_steps)
    corrector = unipc_corrector_orders(orders, disabled)

    def init(x_T: ArrayLike) -> UniPCState:
        dtype = state_dtype(x_T)
        x = jnp.asarray(x_T, dtype)
        return UniPCState(
            x=x,
            x_prev=x,
            model_outputs=jnp.zeros((order, *x.shape), dtype),
            lambdas=jnp.zeros((order,), dtype),
        )

    def update(
        x: Array, m_s: Any, m_t: Any, outs: Array, lams: Array, n: int, m_new: Array | None
    ) -> Array:
        """One UniP (``m_new is None``) or UniC step of order ``n`` from ``m_s`` to ``m_t``.

        ``outs[0]`` is the model output at ``m_s``; ``outs[k]``, ``lams[k]`` the older ones.
        """
        scale, coef, u = exponential_step(prediction, m_s, m_t)
        base = scale * x - coef * phi1(u) * outs[0]
        num_diffs = n if m_new is not None else n - 1
        if num_diffs == 0:
            return base
        h = m_t.lam - m_s.lam
        rks = [(lams[k] - m_s.lam) / h for k in range(1, n)]
        diffs = [(outs[k] - outs[0]) / rks[k - 1] for k in range(1, n)]
        if m_new is not None:  # UniC: the new output enters with r = 1
            rks.append(jnp.ones_like(h))
            diffs.append(m_new - outs[0])
        rhos = [0.5] if num_diffs == 1 else _rhos(u, rks, num_diffs, variant)
        B = jnp.expm1(u) if variant == "bh2" else u
        return base - coef * B * sum(r * d for r, d in zip(rhos, diffs, strict=True))

    def step(
        denoise_fn: DenoiseFn, state: UniPCState, step_index: Array, key: Array, cond: Any
    ) -> UniPCState:
        del key  # deterministic
        x = state.x
        dtype = x.dtype
        grid, s, _, m_s, m_t, model = step_context(
            schedule, ts, step_index, dtype, denoise_fn, cond, prediction, thresholding
        )
        m_new = model(x, s)
        outs, lams = state.model_outputs, state.lambdas

        def correct(n: int) -> Any:
            def run() -> Array:
                m_p = marginal(schedule, grid[jnp.maximum(step_index - 1, 0)], dtype)
                return update(state.x_prev, m_p, m_s, outs, lams, n, m_new)

            return run

        x = dispatch(
            corrector, step_index, {0: lambda: x, **{n: correct(n) for n in set(corrector) - {0}}}
        )
        outs = jnp.concatenate([m_new[None], outs[:-1]], axis=0)
        lams = jnp.concatenate([m_s.lam[None], lams[:-1]], axis=0)

        def predict(n: int) -> Any:
            return lambda: update(x, m_s, m_t, outs, lams, n, None)

        x_t = dispatch(orders, step_index, {n: predict(n) for n in set(orders)})
        return UniPCState(
            x=x_t.astype(dtype), x_prev=x.astype(dtype), model_outputs=outs, lambdas=lams
        )

    def finalize(state: UniPCState) -> Array:
        return state.x

    # UniC-p raises the predictor's order p to p + 1 (Zhao et al. 2023, Theorem 3.3); with
    # a corrector disabled the declared order is the predictor's (a lower bound).
    return Sampler(
        num_steps=num_steps, init=init, step=step, finalize=finalize, schedule=schedule,
        nfe=num_steps, order=order if disabled else order + 1,
    )
