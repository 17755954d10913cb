"""Prediction-type conversions (eps / x0 / v) and the denoiser wrapper.

With ``x_t = alpha x_0 + sigma eps`` (``alpha**2 + sigma**2 = 1``) and the velocity
``v = alpha eps - sigma x_0`` (Salimans & Ho, 2022, Sec. 4), any one of ``eps``, ``x0``
or ``v`` determines the others given ``x_t``.

Samplers never see the network: :func:`make_denoiser` turns a raw network
``model_fn(x, t, cond)`` and its prediction type into a ``denoise_fn(x, t, cond)``
that returns both ``eps`` and ``x0`` as float32 (:class:`Denoised`).

Coefficients ``alpha`` and ``sigma`` may be scalars, arrays that broadcast against
``x``, or per-example vectors of shape ``(B,)`` (expanded to ``(B, 1, ..., 1)``).

References:
  Ho et al., "Denoising Diffusion Probabilistic Models", 2020, Eq. 4 and 11.
  Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion Models",
  2022, Sec. 4 and App. D (v-parameterization).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from diffjax.schedules import VPSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "PREDICTION_TYPES",
    "DenoiseFn",
    "Denoised",
    "ModelFn",
    "ScheduledDenoiser",
    "check_prediction_type",
    "denoiser_schedule",
    "eps_to_v",
    "eps_to_x0",
    "expand_to",
    "make_denoiser",
    "training_target",
    "v_to_eps",
    "v_to_x0",
    "x0_eps_to_v",
    "x0_to_eps",
    "x0_to_v",
]

PREDICTION_TYPES = ("eps", "x0", "v")


class Denoised(NamedTuple):
    """A denoiser's output: the noise and clean-data estimates (float32)."""

    eps: Array
    x0: Array


ModelFn = Callable[[Array, Array, Any], Array]
"""``model_fn(x, t, cond) -> raw network output`` (any float dtype)."""


class DenoiseFn(Protocol):
    """``denoise_fn(x, t, cond) -> Denoised`` with ``t`` a scalar or ``(B,)`` model times."""

    def __call__(self, x: Array, t: ArrayLike, cond: Any) -> Denoised: ...  # noqa: D102


@dataclasses.dataclass(frozen=True, eq=False)
class ScheduledDenoiser:
    """A denoiser that records the noise schedule it was built for.

    Calling it calls ``fn``. :func:`make_denoiser` and
    :func:`~diffjax.guidance.classifier_free_guidance` return one, so that
    :func:`~diffjax.samplers.sample` can refuse a sampler built for another schedule
    (which would silently misread the network). A plain function records no schedule
    and is not checked. It hashes and compares by identity, like a function.

    Attributes:
      fn: ``fn(x, t, cond) -> Denoised``.
      schedule: the schedule ``fn`` converts predictions with (``alpha(t)``,
        ``sigma(t)``).
    """

    fn: Callable[..., Denoised]
    schedule: VPSchedule

    def __call__(self, x: Array, t: ArrayLike, cond: Any = None) -> Denoised:
        """Calls ``fn(x, t, cond)``."""
        return self.fn(x, t, cond)


def denoiser_schedule(denoise_fn: Any) -> VPSchedule | None:
    """The schedule a denoiser records (a :class:`ScheduledDenoiser`), else ``None``."""
    if isinstance(denoise_fn, ScheduledDenoiser):
        return denoise_fn.schedule
    return None


def check_prediction_type(prediction_type: str) -> str:
    """Returns ``prediction_type`` or raises a ValueError naming it."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown {prediction_type=!r}; expected one of {list(PREDICTION_TYPES)}")
    return prediction_type


def expand_to(coef: ArrayLike, x: Array) -> Array:
    """Casts ``coef`` to float32 and makes a per-example ``(B,)`` vector broadcast to ``x``.

    Args:
      coef: scalar, ``(B,)`` vector, or an array already broadcastable to ``x``.
      x: batch-first array.

    Returns:
      ``coef`` as float32, reshaped to ``(B, 1, ..., 1)`` when it is a vector and ``x``
      has more than one dimension.
    """
    coef = jnp.asarray(coef, jnp.float32)
    if coef.ndim == 1 and x.ndim > 1:
        coef = coef.reshape((coef.shape[0],) + (1,) * (x.ndim - 1))
    return coef


def _f32(x: ArrayLike) -> Array:
    return jnp.asarray(x, jnp.float32)


def eps_to_x0(x: ArrayLike, eps: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Array:
    """``x0 = (x - sigma eps) / alpha`` (Ho et al. Eq. 15)."""
    x = _f32(x)
    return (x - expand_to(sigma, x) * _f32(eps)) / expand_to(alpha, x)


def x0_to_eps(x: ArrayLike, x0: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Array:
    """``eps = (x - alpha x0) / sigma`` (requires ``sigma > 0``)."""
    x = _f32(x)
    return (x - expand_to(alpha, x) * _f32(x0)) / expand_to(sigma, x)


def v_to_x0(x: ArrayLike, v: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Array:
    """``x0 = alpha x - sigma v`` (Salimans & Ho, App. D)."""
    x = _f32(x)
    return expand_to(alpha, x) * x - expand_to(sigma, x) * _f32(v)


def v_to_eps(x: ArrayLike, v: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Array:
    """``eps = sigma x + alpha v``."""
    x = _f32(x)
    return expand_to(sigma, x) * x + expand_to(alpha, x) * _f32(v)


def x0_eps_to_v(x0: ArrayLike, eps: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Array:
    """``v = alpha eps - sigma x0`` (Salimans & Ho, Sec. 4)."""
    x0 = _f32(x0)
    return expand_to(alpha, x0) * _f32(eps) - expand_to(sigma, x0) * x0


def eps_to_v(x: ArrayLike, eps: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Array:
    """``v`` from ``x_t`` and ``eps``: ``(eps - sigma x) / alpha``."""
    x = _f32(x)
    return (_f32(eps) - expand_to(sigma, x) * x) / expand_to(alpha, x)


def x0_to_v(x: ArrayLike, x0: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> Array:
    """``v`` from ``x_t`` and ``x0``: ``(alpha x - x0) / sigma``."""
    x = _f32(x)
    return (expand_to(alpha, x) * x - _f32(x0)) / expand_to(sigma, x)


def training_target(
    prediction_type: str, x0: ArrayLike, eps: ArrayLike, alpha: ArrayLike, sigma: ArrayLike
) -> Array:
    """The regression target for a network of the given prediction type.

    Args:
      prediction_type: ``'eps'``, ``'x0'`` or ``'v'``.
      x0: clean data, batch-first.
      eps: the noise used to build ``x_t``.
      alpha: signal scale(s) at the sampled times (scalar or ``(B,)``).
      sigma: noise scale(s) at the sampled times.

    Returns:
      float32 target with the shape of ``x0``.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "eps":
        return _f32(eps)
    if prediction_type == "x0":
        return _f32(x0)
    return x0_eps_to_v(x0, eps, alpha, sigma)


def make_denoiser(
    model_fn: ModelFn, schedule: VPSchedule, prediction_type: str
) -> ScheduledDenoiser:
    """Wraps a raw network into a denoiser returning float32 ``(eps, x0)``.

    The network is called as ``model_fn(x, t_vec, cond)`` with ``x`` float32 and
    ``t_vec`` the model times broadcast to shape ``(B,)`` float32. Its output is cast
    to float32 before any arithmetic, so a bfloat16 network still gives float32
    sampler math.

    Args:
      model_fn: ``model_fn(x, t, cond) -> raw output`` with the shape of ``x``.
      schedule: a discrete or continuous VP schedule from :mod:`diffjax.schedules`
        (:class:`~diffjax.schedules.VPSchedule`; ``alpha(t)`` and ``sigma(t)`` are used).
      prediction_type: what the network predicts: ``'eps'``, ``'x0'`` or ``'v'``.

    Returns:
      ``denoise_fn(x, t, cond) -> Denoised`` with ``t`` a scalar or ``(B,)``, as a
      :class:`ScheduledDenoiser` that records ``schedule`` (samplers built for another
      schedule refuse it).

    Raises:
      ValueError: for an unknown ``prediction_type``.
    """
    check_prediction_type(prediction_type)

    def denoise_fn(x: Array, t: ArrayLike, cond: Any = None) -> Denoised:
        x = _f32(x)
        if x.ndim < 1:
            raise ValueError(f"x must be batch-first with ndim >= 1, got shape {x.shape}")
        t_vec = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
        out = _f32(model_fn(x, t_vec, cond))
        if out.shape != x.shape:
            raise ValueError(f"model_fn output shape {out.shape} does not match x shape {x.shape}")
        alpha, sigma = schedule.alpha(t_vec), schedule.sigma(t_vec)
        if prediction_type == "eps":
            return Denoised(eps=out, x0=eps_to_x0(x, out, alpha, sigma))
        if prediction_type == "x0":
            return Denoised(eps=x0_to_eps(x, out, alpha, sigma), x0=out)
        return Denoised(eps=v_to_eps(x, out, alpha, sigma), x0=v_to_x0(x, out, alpha, sigma))

    return ScheduledDenoiser(denoise_fn, schedule)
