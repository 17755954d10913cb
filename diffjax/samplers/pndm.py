"""PNDM / PLMS (Liu et al. 2022), exactly as diffusers' ``PNDMScheduler`` runs it.

The pseudo linear multistep method (PLMS) applies the DDIM transfer ``phi`` (Liu et al.,
Eq. 9; diffusers' ``_get_prev_sample``)::

    phi(x, t, s, e) = sqrt(a_s / a_t) x
                      - (a_s - a_t) e / (a_t sqrt(1 - a_s) + sqrt(a_t (1 - a_t) a_s))

with ``a = alpha_bar`` to a combination ``e'`` of the last network outputs: the
Adams-Bashforth weights ``e_0``, ``(3 e_0 - e_1) / 2``, ``(23 e_0 - 16 e_1 + 5 e_2) / 12``
and ``(55 e_0 - 59 e_1 + 37 e_2 - 9 e_3) / 24`` (Eq. 12). The warm-up is either

* ``skip_prk_steps=True`` (Stable Diffusion 1.x): the first step is a 2-evaluation
  Heun-like step (``phi`` with ``e_0``, then again from the same start with
  ``(e_0 + e_1) / 2``), so ``n`` steps make ``n + 1`` network calls; or
* ``skip_prk_steps=False``: three pseudo Runge-Kutta steps (Eq. 13) of 4 evaluations each,
  at ``t``, ``t - r/2`` (twice) and ``t - r`` with ``r = T // n``, then PLMS: ``n + 9``
  calls.

Here one sampler step is one network call, as one iteration of diffusers' pipeline loop
over ``scheduler.timesteps`` is: ``Sampler.num_steps`` (and ``nfe``) is the number of
calls, ``len(scheduler.timesteps)``, not ``num_inference_steps``. The bookkeeping
diffusers keeps in Python (the ``ets`` list, ``cur_sample``, ``cur_model_output``,
``counter``) is replayed at build time into per-call tables; the state holds the sample,
the held ``cur_sample``, the last four ``ets`` and the Runge-Kutta accumulator.

References:
  Liu, Ren, Lin & Zhao, "Pseudo Numerical Methods for Diffusion Models on Manifolds",
  ICLR 2022.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.parameterization import DenoiseFn, check_prediction_type
from diffjax.samplers.diffusers_compat import (
    DiffusersLoop,
    alpha_bar_noise_coeffs,
    check_num_steps,
    check_spacing,
    noise_coeffs_table,
    raw_model_output,
    table_alphas_cumprod,
    txt2img_factory,
)
from diffjax.schedules import DiscreteSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = ["PNDMState", "pndm", "pndm_loop", "pndm_timesteps"]

_ETS = 4  # diffusers keeps at most four past outputs


class PNDMState(NamedTuple):
    """PNDM state (float32).

    Attributes:
      x: the sample the next network call sees.
      cur: diffusers' ``cur_sample`` (the start of a warm-up or Runge-Kutta step).
      ets: the last four entries of diffusers' ``ets`` list, newest first.
      acc: diffusers' ``cur_model_output`` (the Runge-Kutta weighted sum).
    """

    x: Array
    cur: Array
    ets: Array
    acc: Array


def _base_timesteps(T: int, n: int, spacing: str, steps_offset: int) -> np.ndarray:
    """``PNDMScheduler._timesteps`` (ascending), as ``set_timesteps`` computes it."""
    if spacing == "linspace":
        return np.linspace(0, T - 1, n).round().astype(np.int64)
    if spacing == "leading":
        ratio = T // n
        return (np.arange(0, n) * ratio).round().astype(np.int64) + int(steps_offset)
    ratio = T / n
    return np.round(np.arange(T, 0, -ratio))[::-1].astype(np.int64) - 1


def pndm_timesteps(
    num_timesteps: int,
    num_steps: int,
    *,
    skip_prk_steps: bool = True,
    timestep_spacing: str = "leading",
    steps_offset: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``PNDMScheduler.timesteps``: the model times of every call, and the PRK ones.

    Returns:
      ``(timesteps, prk_timesteps)``, int64; ``timesteps`` has ``num_steps + 1`` entries
      with ``skip_prk_steps`` (the second-to-last grid time twice) and
      ``num_steps + 9`` without (12 Runge-Kutta calls, then ``num_steps - 3`` PLMS ones).
    """
    check_spacing(timestep_spacing)
    T, n = num_timesteps, num_steps
    base = _base_timesteps(T, n, timestep_spacing, steps_offset)
    if skip_prk_steps:
        prk = np.array([], np.int64)
        plms = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1].copy()
    else:
        if n < 4:
            raise ValueError(
                f"PNDM with skip_prk_steps=False needs num_steps >= 4 (its Runge-Kutta "
                f"warm-up uses the last 4 grid times), got {n}"
            )
        prk = np.array(base[-4:]).repeat(2) + np.tile(np.array([0, T // n // 2]), 4)
        prk = (prk[:-1].repeat(2)[1:-1])[::-1].copy()
        plms = base[:-3][::-1].copy()
    return np.concatenate([prk, plms]).astype(np.int64), prk.astype(np.int64)


@dataclasses.dataclass
class _Role:
    """What ``PNDMScheduler.step`` does at its ``counter`` (calls since the start).

    It sets which registers the call reads and writes, and which ``(t, t_prev)`` variant
    of the call's grid time it uses (:func:`_variant_times`).
    """

    variant: int = 0
    push: bool = False  # e is appended to ets
    w_e: float = 0.0  # e' = w_e e + w_acc acc + sum_j w_ets[j] ets[j] (ets after the push)
    w_acc: float = 0.0
    w_ets: tuple[float, ...] = (0.0,) * _ETS
    acc_keep: float = 1.0  # acc' = acc_keep acc + acc_add e
    acc_add: float = 0.0
    set_cur: bool = False  # cur := x before the update
    base_is_cur: bool = False  # phi starts from cur (else from x)


def _plms_weights(n_ets: int) -> tuple[float, ...]:
    """Adams-Bashforth weights on ets (newest first) for ``n_ets`` stored outputs."""
    weights = {
        1: (1.0,),
        2: (3 / 2, -1 / 2),
        3: (23 / 12, -16 / 12, 5 / 12),
    }.get(n_ets, (55 / 24, -59 / 24, 37 / 24, -9 / 24))
    return weights + (0.0,) * (_ETS - len(weights))


def _roles(skip_prk: bool) -> list[_Role]:
    """``step``'s behaviour at counters ``0, 1, ...``; the last entry holds for all later.

    Replays ``step_prk`` / ``step_plms`` of a fresh scheduler (``ets`` empty, ``counter``
    0). Variant 0 is ``(t, t - r)``; with ``skip_prk_steps`` counter 1 uses variant 1,
    ``(t + r, t)``; the Runge-Kutta counters ``c < 12`` use variant ``c + 1``.
    """
    if skip_prk:
        return [
            _Role(push=True, w_e=1.0, set_cur=True),
            _Role(variant=1, w_e=0.5, w_ets=(0.5, 0.0, 0.0, 0.0), base_is_cur=True),
            _Role(push=True, w_ets=_plms_weights(2)),
            _Role(push=True, w_ets=_plms_weights(3)),
            _Role(push=True, w_ets=_plms_weights(4)),
        ]
    roles = []
    for counter in range(12):
        role = _Role(variant=counter + 1, base_is_cur=True, w_e=1.0)
        phase = counter % 4
        if phase == 0:
            role.acc_keep, role.acc_add, role.push, role.set_cur = 0.0, 1 / 6, True, True
        elif phase in (1, 2):
            role.acc_add = 1 / 3
        else:
            role.w_acc, role.w_e, role.acc_keep = 1.0, 1 / 6, 0.0
        roles.append(role)
    return [*roles, _Role(push=True, w_ets=_plms_weights(4))]


def _variant_times(
    timesteps: np.ndarray, prk: np.ndarray, T: int, n: int, skip_prk: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(t, t_prev)`` of every call ``i`` in every variant, each ``(calls, variants)``.

    ``step_plms`` moves ``t -> t - r`` (``r = T // n``), at counter 1 ``t + r -> t``;
    ``step_prk`` at counter ``c`` moves ``prk[c // 4 * 4] -> t - (0 if c odd else r // 2)``.
    """
    r = T // n
    ts = timesteps.astype(np.int64)[:, None]
    t, prev = [ts], [ts - r]
    if skip_prk:
        t.append(ts + r)
        prev.append(ts)
    else:
        for c in range(12):
            t.append(np.full_like(ts, prk[c // 4 * 4]))
            prev.append(ts - (0 if c % 2 else r // 2))
    return np.concatenate(t, axis=1), np.concatenate(prev, axis=1)


def pndm_loop(
    schedule: DiscreteSchedule,
    num_steps: int,
    *,
    alphas_cumprod: ArrayLike | None = None,
    skip_prk_steps: bool = True,
    set_alpha_to_one: bool = False,
    steps_offset: int = 0,
    timestep_spacing: str = "leading",
    prediction_type: str = "eps",
) -> DiffusersLoop:
    """Diffusers' ``PNDMScheduler`` loop (PLMS, PRK warm-up optional).

    Args:
      schedule: the denoiser's schedule (recorded for :func:`~diffjax.samplers.sample`).
      num_steps: diffusers' ``num_inference_steps``.
      alphas_cumprod: diffusers' float32 table (``None``: the schedule's).
      skip_prk_steps: the PLMS warm-up (True, SD 1.x) or the Runge-Kutta one (False).
      set_alpha_to_one: the final ``alpha_bar`` is 1 (else ``alpha_bar[0]``).
      steps_offset: added to the ``leading`` grid.
      timestep_spacing: ``'leading'``, ``'trailing'`` or ``'linspace'``.
      prediction_type: ``'eps'`` or ``'v'`` (diffusers' PNDM has no x0 networks).

    Returns:
      A :class:`~diffjax.samplers.diffusers_compat.DiffusersLoop` of one call per network
      evaluation (``num_steps + 1`` calls with ``skip_prk_steps``, ``num_steps + 9``
      without; the txt2img sampler's ``order`` is ``None``: the warm-up repeats a time,
      so tests/test_sampler_order.py's measure does not apply); its counters
      (``counter``, ``ets``, ``cur_sample``) follow the calls since the start, as a fresh
      scheduler's do after img2img's slice.

    Raises:
      ValueError: for an x0 network, a bad spacing, or timesteps outside the table.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "x0":
        raise ValueError(
            "PNDMScheduler supports prediction_type 'epsilon' and 'v_prediction', not 'sample'"
        )
    ac = table_alphas_cumprod(schedule, alphas_cumprod).astype(np.float64)
    T = ac.shape[0]
    n = check_num_steps(num_steps, T)
    timesteps, prk = pndm_timesteps(
        T, n, skip_prk_steps=skip_prk_steps, timestep_spacing=timestep_spacing,
        steps_offset=steps_offset,
    )
    roles = _roles(skip_prk_steps)
    t_idx, p_idx = _variant_times(timesteps, prk, T, n, skip_prk_steps)
    calls_n = len(timesteps)
    # txt2img (counter = i) must stay on the table; other (start, counter) pairs are clipped.
    own = np.array([roles[min(i, len(roles) - 1)].variant for i in range(calls_n)])
    t_own = t_idx[np.arange(calls_n), own]
    if t_own.max() > T - 1 or timesteps.min() < 0 or timesteps.max() > T - 1:
        raise ValueError(
            f"PNDM timesteps {timesteps.tolist()} (timestep_spacing={timestep_spacing!r}, "
            f"steps_offset={steps_offset}, skip_prk_steps={skip_prk_steps}) leave [0, {T - 1}]"
        )
    final = 1.0 if set_alpha_to_one else ac[0]
    a_t = ac[np.clip(t_idx, 0, T - 1)]
    a_s = np.where(p_idx >= 0, ac[np.clip(p_idx, 0, T - 1)], final)
    denom = a_t * np.sqrt(1.0 - a_s) + np.sqrt(a_t * (1.0 - a_t) * a_s)

    def tab(values: Any, dtype: Any = jnp.float32) -> Array:
        return jnp.asarray(np.asarray(values), dtype)

    by_counter = {
        field.name: tab([getattr(role, field.name) for role in roles],
                        jnp.bool_ if field.type in (bool, "bool") else jnp.float32)
        for field in dataclasses.fields(_Role) if field.name != "variant"
    }
    by_counter["variant"] = tab([role.variant for role in roles], jnp.int32)
    by_call = {
        "t_model": tab(timesteps),
        "sample_coeff": tab(np.sqrt(a_s / a_t)),
        "out_coeff": tab((a_s - a_t) / denom),
        "sqrt_at": tab(np.sqrt(a_t)),
        "sqrt_bt": tab(np.sqrt(1.0 - a_t)),
    }

    def init(x: Array) -> PNDMState:
        return PNDMState(x=x, cur=x, ets=jnp.zeros((_ETS, *x.shape), x.dtype), acc=x * 0)

    def step(
        denoise_fn: DenoiseFn, state: PNDMState, i: Array, j: Array, key: Array, cond: Any
    ) -> PNDMState:
        del key
        x = state.x
        dtype = x.dtype
        g = {name: v[jnp.minimum(j, len(roles) - 1)] for name, v in by_counter.items()}
        c = {name: v[i] for name, v in by_call.items()}
        v = g["variant"]
        t = c["t_model"]
        e = raw_model_output(denoise_fn(x, t, cond), x, t, schedule, prediction_type)
        ets = jnp.where(g["push"], jnp.concatenate([e[None], state.ets[:-1]]), state.ets)
        mix = jnp.tensordot(g["w_ets"].astype(dtype), ets, axes=1)
        m = g["w_e"].astype(dtype) * e + g["w_acc"].astype(dtype) * state.acc + mix
        acc = g["acc_keep"].astype(dtype) * state.acc + g["acc_add"].astype(dtype) * e
        cur = jnp.where(g["set_cur"], x, state.cur)
        base = jnp.where(g["base_is_cur"], cur, x)
        if prediction_type == "v":
            m = c["sqrt_at"][v].astype(dtype) * m + c["sqrt_bt"][v].astype(dtype) * base
        x_new = c["sample_coeff"][v].astype(dtype) * base - c["out_coeff"][v].astype(dtype) * m
        return PNDMState(x=x_new.astype(dtype), cur=cur, ets=ets, acc=acc)

    return DiffusersLoop(
        num_steps=calls_n, num_inference_steps=n, init=init, step=step,
        finalize=lambda s: s.x, schedule=schedule, init_noise_sigma=np.float32(1),
        noise_coeffs=noise_coeffs_table(
            n, *alpha_bar_noise_coeffs(ac, timesteps[: n + 1]).T, num_calls=calls_n
        ),
        order=None,
    )


pndm = txt2img_factory(pndm_loop, "pndm", "PNDMScheduler")
