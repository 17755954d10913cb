"""Variance-preserving (VP) noise schedules and timestep grids.

A VP diffusion corrupts data as ``x_t = alpha(t) x_0 + sigma(t) eps`` with
``alpha(t)**2 + sigma(t)**2 = 1``. This module provides

* discrete schedules (``T`` training timesteps, model time = integer index in
  ``[0, T-1]``) built from linear, scaled-linear (Stable Diffusion) and cosine
  betas, viewed in continuous time the way DPM-Solver views discrete models;
* continuous-time VP schedules (linear ``beta(t)`` and cosine) on ``t in [0, 1]``,
  sampled on ``[eps, t_max]``;
* :class:`VPSchedule`, the protocol every schedule satisfies and every sampler,
  denoiser and loss is written against;
* static (NumPy) timestep grids for samplers: leading, trailing, linspace,
  quadratic and logSNR-uniform spacings.

Time convention for a :class:`DiscreteSchedule` with ``T`` steps: model time ``t``
is a float in ``[-1, T-1]``. Integer ``n`` is training timestep ``n`` with
``alpha_bar(n) = prod_{i<=n} (1 - beta_i)``; ``t = -1`` is the virtual clean point
with ``alpha_bar = 1`` and ``sigma = 0`` (DDIM's "final alpha = 1"). Between
integers ``log alpha`` is interpolated linearly, which is exactly DPM-Solver's
discrete-to-continuous mapping ``t_cont = (n + 1) / T`` (Lu et al., 2022, App. D).

All ``log_snr`` values are ``2 log(alpha / sigma)`` (the log of the signal-to-noise
ratio, twice DPM-Solver's ``lambda``).

Dtypes. Schedule arithmetic follows the dtype of its input: float64 times (under
``jax_enable_x64``) give float64 values, float32 times float32 values, and integer
or lower-precision times are promoted to float32. A :class:`DiscreteSchedule` keeps
its tables (``log alpha_bar_n``, computed in float64) at JAX's default float
precision, float32 unless it is built with ``jax_enable_x64`` on or an explicit
``dtype``; they are cast to the input's dtype at use, so float32 results do not
depend on how the tables are stored.

References:
  Ho et al., "Denoising Diffusion Probabilistic Models", 2020 (linear betas).
  Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models", 2021,
  Eq. 17 (cosine schedule).
  Song et al., "Denoising Diffusion Implicit Models", 2021, App. D.2 (quadratic grid).
  Lu et al., "DPM-Solver", 2022, App. D (``NoiseScheduleVP``; logSNR-uniform grid).
  Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed", 2024,
  Table 2 (leading / trailing / linspace spacings).
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffjax._checks import check_int, is_int

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "SCHEDULE_NAMES",
    "CosineVPSchedule",
    "DiscreteSchedule",
    "LinearVPSchedule",
    "VPSchedule",
    "cosine_betas",
    "leading_timesteps",
    "linear_betas",
    "linspace_timesteps",
    "log_snr_uniform_timesteps",
    "make_schedule",
    "quadratic_timesteps",
    "scaled_linear_betas",
    "trailing_timesteps",
    "with_final_timestep",
]


# --------------------------------------------------------------------------------------
# Beta schedules (NumPy float64, static).
# --------------------------------------------------------------------------------------


def _check_count(name: str, value: Any, maximum: int | None = None) -> int:
    """A positive integer count: ``TypeError`` for a non-integer, ``ValueError`` if < 1."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {name}={value!r}")
    return check_int(name, value, minimum=1, maximum=maximum)


def _check_num_timesteps(num_timesteps: Any) -> int:
    return _check_count("num_timesteps", num_timesteps)


def _check_beta_range(beta_start: float, beta_end: float) -> None:
    if not 0.0 < beta_start < 1.0:
        raise ValueError(f"beta_start must be in (0, 1), got {beta_start=}")
    if not 0.0 < beta_end < 1.0:
        raise ValueError(f"beta_end must be in (0, 1), got {beta_end=}")


def linear_betas(
    num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """Linearly spaced betas (Ho et al., 2020, Sec. 4).

    Args:
      num_timesteps: number of training timesteps ``T``.
      beta_start: ``beta_0``.
      beta_end: ``beta_{T-1}``.

    Returns:
      float64 array of shape ``(T,)``.
    """
    num_timesteps = _check_num_timesteps(num_timesteps)
    _check_beta_range(beta_start, beta_end)
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def scaled_linear_betas(
    num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> np.ndarray:
    """Stable Diffusion's "scaled linear" betas: linear in ``sqrt(beta)``.

    Args:
      num_timesteps: number of training timesteps ``T``.
      beta_start: ``beta_0``.
      beta_end: ``beta_{T-1}``.

    Returns:
      float64 array of shape ``(T,)``.
    """
    num_timesteps = _check_num_timesteps(num_timesteps)
    _check_beta_range(beta_start, beta_end)
    return np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_timesteps) ** 2


def cosine_betas(
    num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999
) -> np.ndarray:
    """Cosine schedule betas (Nichol & Dhariwal, 2021, Eq. 17).

    ``alpha_bar(u) = cos(((u + s) / (1 + s)) * pi / 2)**2`` for ``u = n / T`` and
    ``beta_n = min(1 - alpha_bar((n+1)/T) / alpha_bar(n/T), max_beta)``.

    Args:
      num_timesteps: number of training timesteps ``T``.
      s: small offset that keeps ``beta_0`` from being vanishingly small.
      max_beta: cap on beta (prevents the singularity at ``u = 1``).

    Returns:
      float64 array of shape ``(T,)``.
    """
    num_timesteps = _check_num_timesteps(num_timesteps)
    if s < 0.0:
        raise ValueError(f"s must be >= 0, got {s=}")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must be in (0, 1), got {max_beta=}")
    u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((u + s) / (1.0 + s) * np.pi / 2.0) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


# --------------------------------------------------------------------------------------
# The schedule contract.
# --------------------------------------------------------------------------------------


@runtime_checkable
class VPSchedule(Protocol):
    """A variance-preserving noise schedule in the model's own time ``t``.

    The forward process is ``x_t = alpha_t x_0 + sigma_t eps`` with

        alpha_t**2 + sigma_t**2 = 1,    lambda_t = log(alpha_t / sigma_t),

    where ``alpha_t`` decreases and ``sigma_t`` increases with ``t``; ``lambda_t`` is
    DPM-Solver's half-logSNR (Lu et al., 2022) and :meth:`log_snr` is ``2 lambda_t``.
    Methods take model times (scalars or arrays; integers are promoted to float32)
    and compute in the input's float dtype, at least float32.

    Three times name the sampling range unambiguously:

    * ``t_max``: the largest time, where samplers start from ``x_T ~ N(0, I)``;
    * ``t_clean``: the clean point, ``sigma = 0`` and ``alpha = 1`` (``lambda =
      +inf``): ``-1`` on a :class:`DiscreteSchedule`, ``0`` on a continuous one;
    * ``t_min_noise``: the smallest time with ``sigma > 0`` at which samplers
      evaluate the network: ``0`` (training timestep 0) on a
      :class:`DiscreteSchedule`, ``eps`` (``1e-3``) on a continuous one.
    """

    @property
    def t_max(self) -> float:
        """Largest model time, where sampling starts."""
        ...

    @property
    def t_clean(self) -> float:
        """The clean point: ``sigma(t_clean) == 0``."""
        ...

    @property
    def t_min_noise(self) -> float:
        """Smallest model time with ``sigma > 0`` that samplers evaluate the network at."""
        ...

    def alpha(self, t: ArrayLike) -> Array:
        """Signal scale ``alpha_t``."""
        ...

    def sigma(self, t: ArrayLike) -> Array:
        """Noise scale ``sigma_t = sqrt(1 - alpha_t**2)``."""
        ...

    def log_snr(self, t: ArrayLike) -> Array:
        """``log(alpha_t**2 / sigma_t**2) = 2 lambda_t``."""
        ...

    def alpha_bar(self, t: ArrayLike) -> Array:
        """``alpha_t**2``."""
        ...

    def log_alpha(self, t: ArrayLike) -> Array:
        """``log alpha_t``."""
        ...

    def t_from_log_snr(self, log_snr: ArrayLike) -> Array:
        """Inverse of :meth:`log_snr`."""
        ...


def _float_dtype(value: ArrayLike) -> Any:
    """The dtype schedule arithmetic on ``value`` runs in: its float dtype, >= float32."""
    return jnp.promote_types(jnp.result_type(value), jnp.float32)


def _as_float(value: ArrayLike) -> Array:
    """``value`` as an array of :func:`_float_dtype` (float64 stays, integers -> float32)."""
    return jnp.asarray(value, _float_dtype(value))


# --------------------------------------------------------------------------------------
# Discrete schedule.
# --------------------------------------------------------------------------------------


@flax.struct.dataclass
class DiscreteSchedule:
    """A discrete VP schedule viewed in (interpolated) continuous time.

    Build it with :meth:`from_betas` or :meth:`from_alphas_cumprod` (which compute
    the logs in float64) or with :func:`make_schedule`. It is a pytree, so it may be
    passed through ``jax.jit``; the number of timesteps is static (an array shape).
    It satisfies :class:`VPSchedule` with ``t_clean = -1``, ``t_min_noise = 0`` and
    ``t_max = T - 1``.

    Attributes:
      alphas_cumprod: ``alpha_bar_n`` for ``n = 0..T-1``, shape ``(T,)``.
      log_alphas_cumprod: ``log alpha_bar_n``, computed in float64 and stored at the
        construction ``dtype`` (float32 by default); cast to the input's dtype at use.
    """

    alphas_cumprod: Array
    log_alphas_cumprod: Array

    # ----- construction ---------------------------------------------------------------

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: ArrayLike, dtype: Any = None) -> DiscreteSchedule:
        """Builds a schedule from ``alpha_bar`` values (strictly decreasing, in (0, 1)).

        Args:
          alphas_cumprod: ``alpha_bar_n``, shape ``(T,)``.
          dtype: the tables' dtype; ``None`` is JAX's default float (float32, or
            float64 under ``jax_enable_x64``).
        """
        ac = np.asarray(alphas_cumprod, dtype=np.float64)
        if ac.ndim != 1 or ac.shape[0] < 1:
            raise ValueError(f"alphas_cumprod must be a non-empty 1-D array, got shape {ac.shape}")
        if not (np.all(ac > 0.0) and np.all(ac < 1.0)):
            raise ValueError("alphas_cumprod must lie in the open interval (0, 1)")
        if np.any(np.diff(ac) >= 0.0):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        return cls._from_tables(ac, np.log(ac), dtype)

    @classmethod
    def from_betas(cls, betas: ArrayLike, dtype: Any = None) -> DiscreteSchedule:
        """Builds a schedule from betas: ``alpha_bar_n = prod_{i<=n} (1 - beta_i)``.

        Args:
          betas: ``beta_n``, shape ``(T,)``.
          dtype: the tables' dtype; ``None`` is JAX's default float (float32, or
            float64 under ``jax_enable_x64``).
        """
        b = np.asarray(betas, dtype=np.float64)
        if b.ndim != 1 or b.shape[0] < 1:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {b.shape}")
        if not (np.all(b > 0.0) and np.all(b < 1.0)):
            raise ValueError("betas must lie in the open interval (0, 1)")
        log_ac = np.cumsum(np.log1p(-b))
        return cls._from_tables(np.exp(log_ac), log_ac, dtype)

    @classmethod
    def _from_tables(cls, ac: np.ndarray, log_ac: np.ndarray, dtype: Any) -> DiscreteSchedule:
        """Stores float64 tables at ``dtype`` (``None``: JAX's default float dtype)."""
        if dtype is None:
            dtype = jnp.result_type(float)
        return cls(
            alphas_cumprod=jnp.asarray(ac, dtype), log_alphas_cumprod=jnp.asarray(log_ac, dtype)
        )

    # ----- static properties ----------------------------------------------------------

    @property
    def num_timesteps(self) -> int:
        """Number of training timesteps ``T`` (static)."""
        return int(self.alphas_cumprod.shape[0])

    @property
    def betas(self) -> Array:
        """``beta_n = 1 - alpha_bar_n / alpha_bar_{n-1}`` (with ``alpha_bar_{-1} = 1``)."""
        padded = self._padded_log_alpha_bar(self.log_alphas_cumprod.dtype)
        return -jnp.expm1(padded[1:] - padded[:-1])

    @property
    def t_clean(self) -> float:
        """The clean point ``-1`` (``alpha_bar = 1``, ``sigma = 0``)."""
        return -1.0

    @property
    def t_min_noise(self) -> float:
        """Smallest noisy time ``0``, training timestep 0 (``sigma**2 = beta_0``)."""
        return 0.0

    @property
    def t_max(self) -> float:
        """Largest model time ``T - 1``."""
        return float(self.num_timesteps - 1)

    # ----- continuous view --------------------------------------------------------------

    def _padded_log_alpha_bar(self, dtype: Any) -> Array:
        """``log alpha_bar`` at model times ``-1, 0, ..., T-1``, as ``dtype``."""
        zero = jnp.zeros((1,), dtype)
        return jnp.concatenate([zero, jnp.asarray(self.log_alphas_cumprod, dtype)])

    def log_alpha_bar(self, t: ArrayLike) -> Array:
        """``log alpha_bar(t)``, piecewise linear on the grid ``-1, 0, ..., T-1``.

        Exact at integers; values outside ``[-1, T-1]`` are clamped.
        """
        t = _as_float(t)
        padded = self._padded_log_alpha_bar(t.dtype)  # index k <-> model time k - 1
        u = jnp.clip(t + 1.0, 0.0, float(self.num_timesteps))
        lo = jnp.clip(jnp.floor(u), 0.0, float(self.num_timesteps - 1))
        frac = u - lo
        lo = lo.astype(jnp.int32)
        return (1.0 - frac) * padded[lo] + frac * padded[lo + 1]

    def log_alpha(self, t: ArrayLike) -> Array:
        """``log alpha(t) = log alpha_bar(t) / 2`` (DPM-Solver's marginal_log_mean_coeff)."""
        return 0.5 * self.log_alpha_bar(t)

    def alpha_bar(self, t: ArrayLike) -> Array:
        """``alpha_bar(t) = alpha(t)**2``; equals ``alphas_cumprod[t]`` at integers."""
        return jnp.exp(self.log_alpha_bar(t))

    def alpha(self, t: ArrayLike) -> Array:
        """Signal scale ``alpha(t) = sqrt(alpha_bar(t))``."""
        return jnp.exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t: ArrayLike) -> Array:
        """Noise scale ``sigma(t) = sqrt(1 - alpha_bar(t))`` (computed with ``expm1``)."""
        return jnp.sqrt(-jnp.expm1(self.log_alpha_bar(t)))

    def log_snr(self, t: ArrayLike) -> Array:
        """``log(alpha**2 / sigma**2)``; ``+inf`` at the clean point ``t = -1``."""
        lab = self.log_alpha_bar(t)
        return lab - jnp.log(-jnp.expm1(lab))

    def t_from_log_snr(self, log_snr: ArrayLike) -> Array:
        """Inverse of :meth:`log_snr` (inverts the piecewise-linear ``log alpha_bar``)."""
        log_snr = _as_float(log_snr)
        lab = -jax.nn.softplus(-log_snr)  # log sigmoid(log_snr) = log alpha_bar
        padded = self._padded_log_alpha_bar(log_snr.dtype)
        grid = jnp.arange(-1, self.num_timesteps, dtype=log_snr.dtype)
        # jnp.interp needs increasing abscissae: log alpha_bar decreases with t.
        return jnp.interp(lab, padded[::-1], grid[::-1])

    def posterior_variance(self, t: ArrayLike, t_prev: ArrayLike) -> Array:
        """Variance of ``q(x_{t_prev} | x_t, x_0)`` ("beta tilde", Ho et al. Eq. 7).

        ``(sigma_prev**2 / sigma_t**2) * (1 - alpha_bar_t / alpha_bar_prev)``; with
        ``t_prev = t - 1`` this is ``beta_tilde_t``, and for a skipped grid it is the
        DDIM ``eta = 1`` variance (Song et al. Eq. 16).
        """
        lab_t = self.log_alpha_bar(t)
        lab_p = self.log_alpha_bar(t_prev)
        return (jnp.expm1(lab_p) / jnp.expm1(lab_t)) * (-jnp.expm1(lab_t - lab_p))

    def to_continuous_time(self, timestep: ArrayLike) -> Array:
        """DPM-Solver's map from discrete model time ``n`` to ``t = (n + 1) / T``."""
        return (_as_float(timestep) + 1.0) / self.num_timesteps

    def from_continuous_time(self, t: ArrayLike) -> Array:
        """Inverse of :meth:`to_continuous_time`: ``n = T t - 1``."""
        return _as_float(t) * self.num_timesteps - 1.0


_BETA_FNS = {
    "linear": linear_betas,
    "scaled_linear": scaled_linear_betas,
    "cosine": cosine_betas,
}
# The schedule names `make_schedule` (and `config.diffusion.schedule`) accepts.
SCHEDULE_NAMES = tuple(_BETA_FNS)


def make_schedule(
    name: str, num_timesteps: int = 1000, *, dtype: Any = None, **kwargs: Any
) -> DiscreteSchedule:
    """Builds a :class:`DiscreteSchedule` from a schedule name (for configs).

    Args:
      name: one of ``'linear'``, ``'scaled_linear'``, ``'cosine'``.
      num_timesteps: number of training timesteps ``T``.
      dtype: the tables' dtype (see :meth:`DiscreteSchedule.from_betas`).
      **kwargs: forwarded to the beta function (e.g. ``beta_start``, ``s``).

    Returns:
      The schedule.

    Raises:
      ValueError: for an unknown ``name``.
    """
    if name not in SCHEDULE_NAMES:
        raise ValueError(f"unknown schedule {name=!r}; expected one of {sorted(SCHEDULE_NAMES)}")
    return DiscreteSchedule.from_betas(_BETA_FNS[name](num_timesteps, **kwargs), dtype)


# --------------------------------------------------------------------------------------
# Continuous-time VP schedules.
# --------------------------------------------------------------------------------------


class _ContinuousVP:
    """Shared methods of the continuous schedules.

    Subclasses define ``log_alpha``, ``t_from_log_snr``, ``t_max`` and the field
    ``t_min_noise``.
    """

    t_min_noise: float

    @property
    def t_clean(self) -> float:
        """The clean point ``0`` (``alpha = 1``, ``sigma = 0``)."""
        return 0.0

    def _check_range(self) -> None:
        if not 0.0 < self.t_min_noise < self.t_max:
            raise ValueError(
                f"need 0 < t_min_noise < t_max, got t_min_noise={self.t_min_noise}, "
                f"t_max={self.t_max}"
            )

    def log_alpha(self, t: ArrayLike) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def alpha_bar(self, t: ArrayLike) -> Array:
        """``alpha(t)**2``."""
        return jnp.exp(2.0 * self.log_alpha(t))

    def alpha(self, t: ArrayLike) -> Array:
        """Signal scale ``alpha(t)``."""
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t: ArrayLike) -> Array:
        """Noise scale ``sigma(t) = sqrt(1 - alpha(t)**2)``."""
        return jnp.sqrt(-jnp.expm1(2.0 * self.log_alpha(t)))

    def log_snr(self, t: ArrayLike) -> Array:
        """``log(alpha**2 / sigma**2)``."""
        lab = 2.0 * self.log_alpha(t)
        return lab - jnp.log(-jnp.expm1(lab))


@flax.struct.dataclass
class LinearVPSchedule(_ContinuousVP):
    """VP SDE with linear ``beta(t) = beta_min + t (beta_max - beta_min)`` on ``[0, 1]``.

    ``log alpha(t) = -t**2 (beta_max - beta_min) / 4 - t beta_min / 2``
    (Song et al., 2021, "Score-Based Generative Modeling through SDEs", Eq. 33).

    It satisfies :class:`VPSchedule` with ``t_clean = 0`` and ``t_max = 1``.

    Attributes:
      beta_min: ``beta(0)``.
      beta_max: ``beta(1)``.
      t_min_noise: smallest time a sampler evaluates the network at (``eps``).
    """

    beta_min: float = flax.struct.field(pytree_node=False, default=0.1)
    beta_max: float = flax.struct.field(pytree_node=False, default=20.0)
    t_min_noise: float = flax.struct.field(pytree_node=False, default=1e-3)

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta_min < self.beta_max:
            raise ValueError(
                f"need 0 <= beta_min < beta_max, got beta_min={self.beta_min}, "
                f"beta_max={self.beta_max}"
            )
        self._check_range()

    @property
    def t_max(self) -> float:
        """Largest time, 1."""
        return 1.0

    def log_alpha(self, t: ArrayLike) -> Array:
        """``log alpha(t)``."""
        t = _as_float(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def t_from_log_snr(self, log_snr: ArrayLike) -> Array:
        """Inverse of :meth:`log_snr` in closed form (Lu et al., 2022, App. D)."""
        log_snr = _as_float(log_snr)
        db = self.beta_max - self.beta_min
        tmp = 2.0 * db * jax.nn.softplus(-log_snr)  # = -4 db log alpha
        return tmp / (jnp.sqrt(self.beta_min**2 + tmp) + self.beta_min) / db


@flax.struct.dataclass
class CosineVPSchedule(_ContinuousVP):
    """Continuous cosine schedule (Nichol & Dhariwal, 2021; Lu et al., 2022, App. D).

    ``alpha(t) = cos(((t + s) / (1 + s)) pi / 2) / cos((s / (1 + s)) pi / 2)``. Near
    ``t = 1`` alpha vanishes and log-SNR diverges, so samplers start at ``t_max``
    (DPM-Solver's ``T = 0.9946``). The discrete cosine schedule satisfies
    ``alpha_bar_n = alpha_bar((n + 1) / T)`` wherever its betas are not capped.
    It satisfies :class:`VPSchedule` with ``t_clean = 0``.

    Attributes:
      s: small offset.
      t_min_noise: smallest time a sampler evaluates the network at (``eps``).
      t_max: largest time a sampler should start from.
    """

    s: float = flax.struct.field(pytree_node=False, default=0.008)
    t_min_noise: float = flax.struct.field(pytree_node=False, default=1e-3)
    t_max: float = flax.struct.field(pytree_node=False, default=0.9946)

    def __post_init__(self) -> None:
        self._check_range()

    def _log_alpha_0(self) -> float:
        return math.log(math.cos(self.s / (1.0 + self.s) * math.pi / 2.0))

    def log_alpha(self, t: ArrayLike) -> Array:
        """``log alpha(t)``; exactly ``0`` at the clean point ``t = 0``.

        The normalization ``log alpha(0)`` is a float64 constant, which the dtype's
        rounding of ``log cos(...)`` at ``t = 0`` does not cancel exactly (float32 would
        leave ``sigma(0) = 2e-4``), so ``t = 0`` is pinned.
        """
        t = _as_float(t)
        log_alpha = jnp.log(jnp.cos((t + self.s) / (1.0 + self.s) * jnp.pi / 2.0))
        return jnp.where(t == 0.0, 0.0, log_alpha - self._log_alpha_0())

    def t_from_log_snr(self, log_snr: ArrayLike) -> Array:
        """Inverse of :meth:`log_snr` in closed form."""
        log_snr = _as_float(log_snr)
        log_alpha = -0.5 * jax.nn.softplus(-log_snr)
        c = jnp.exp(log_alpha + self._log_alpha_0())
        return jnp.arccos(c) * 2.0 * (1.0 + self.s) / jnp.pi - self.s


# --------------------------------------------------------------------------------------
# Timestep grids (static NumPy int arrays of decreasing model times, length num_steps).
# --------------------------------------------------------------------------------------


def _check_steps(num_timesteps: Any, num_steps: Any) -> tuple[int, int]:
    num_timesteps = _check_num_timesteps(num_timesteps)
    num_steps = _check_count("num_steps", num_steps)
    if num_steps > num_timesteps:
        raise ValueError(
            f"num_steps={num_steps} exceeds the schedule's num_timesteps={num_timesteps}"
        )
    return num_timesteps, num_steps


def leading_timesteps(num_timesteps: int, num_steps: int, offset: int = 0) -> np.ndarray:
    """Leading spacing: ``n * (T // num_steps) + offset`` (DDIM / Stable Diffusion).

    ``leading_timesteps(1000, 50, offset=1)`` is ``[981, 961, ..., 21, 1]``.

    Args:
      num_timesteps: training timesteps ``T``.
      num_steps: number of sampling steps.
      offset: added to every timestep (diffusers' ``steps_offset``).

    Returns:
      Decreasing int64 array of shape ``(num_steps,)``.
    """
    num_timesteps, num_steps = _check_steps(num_timesteps, num_steps)
    ratio = num_timesteps // num_steps
    if offset < 0 or (num_steps - 1) * ratio + offset > num_timesteps - 1:
        raise ValueError(f"{offset=} puts timesteps outside [0, {num_timesteps - 1}]")
    return (np.arange(num_steps, dtype=np.int64) * ratio)[::-1] + int(offset)


def trailing_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """Trailing spacing: ``round(T - k T / num_steps) - 1`` (Lin et al., 2024).

    ``trailing_timesteps(1000, 10)`` is ``[999, 899, ..., 99]``.

    Returns:
      Decreasing int64 array of shape ``(num_steps,)``.
    """
    num_timesteps, num_steps = _check_steps(num_timesteps, num_steps)
    k = np.arange(num_steps, dtype=np.float64)
    return np.round(num_timesteps - k * num_timesteps / num_steps).astype(np.int64) - 1


def linspace_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """Linspace spacing as in DPM-Solver multistep (final point dropped).

    ``num_steps + 1`` points from ``T-1`` to ``0``, rounded half to even, and the final
    ``0`` dropped (it is the target).

    ``linspace_timesteps(1000, 10)`` is ``[999, 899, 799, 699, 599, 500, 400, 300, 200, 100]``.

    The evaluation times are distinct integers in ``[1, T-1]``, so at most ``T - 1`` steps
    fit (points spaced more than 1 apart never round onto the same integer). diffusers
    silently drops the duplicates that ``num_steps = T`` produces, running fewer steps
    than asked; this raises instead.

    Returns:
      Strictly decreasing int64 array of shape ``(num_steps,)``.

    Raises:
      ValueError: if ``num_steps > T - 1``.
    """
    num_timesteps, num_steps = _check_steps(num_timesteps, num_steps)
    if num_steps > num_timesteps - 1:
        raise ValueError(
            f"num_steps={num_steps} is too many for linspace spacing on a "
            f"{num_timesteps}-step schedule: its num_steps + 1 points run from "
            f"{num_timesteps - 1} down to the target 0, so at most {num_timesteps - 1} "
            "distinct steps fit"
        )
    grid = np.round(np.linspace(0.0, num_timesteps - 1, num_steps + 1)).astype(np.int64)
    return grid[::-1][:-1].copy()


def quadratic_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """DDIM's quadratic spacing ``int(linspace(0, sqrt(0.8 T), num_steps)**2)``.

    Listed ascending for ``T = 1000``, 10 steps it is
    ``[0, 9, 39, 88, 158, 246, 355, 483, 632, 800]``; this returns sampler order
    (decreasing). As in the DDIM reference code, truncation can repeat a timestep
    near 0 for large ``num_steps`` (e.g. 50 steps); a repeated entry is a
    zero-length step, which DDIM and DDPM treat as a no-op.

    Returns:
      Non-increasing int64 array of shape ``(num_steps,)``.
    """
    num_timesteps, num_steps = _check_steps(num_timesteps, num_steps)
    grid = np.linspace(0.0, math.sqrt(0.8 * num_timesteps), num_steps) ** 2
    return grid.astype(np.int64)[::-1].copy()


def log_snr_uniform_timesteps(
    schedule: DiscreteSchedule, num_steps: int, round_to_int: bool = False
) -> np.ndarray:
    """Timesteps uniform in log-SNR (DPM-Solver's ``logSNR`` skip type).

    ``num_steps + 1`` log-SNR values are spaced uniformly from ``log_snr(T-1)`` to
    ``log_snr(0)`` and mapped back to (interpolated) model time; the final ``0`` is
    dropped (it is the target), as for :func:`linspace_timesteps`.

    Unlike the other grids this returns fractional model times by default: uniform
    log-SNR crowds steps near ``t = 0`` so tightly that rounding merges steps already
    at 10 steps on the cosine schedule (and at 37 on the linear one). DPM-Solver also
    evaluates discrete-time models at such interpolated times.

    Args:
      schedule: a concrete (not traced) discrete schedule.
      num_steps: number of sampling steps.
      round_to_int: round to integer timesteps (raises if that merges steps).

    Returns:
      Strictly decreasing array of shape ``(num_steps,)``: float64, or int64 when
      ``round_to_int``.

    Raises:
      ValueError: if ``round_to_int`` and rounding merges two steps.
    """
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"schedule must be a DiscreteSchedule, got {type(schedule).__name__}")
    T, num_steps = _check_steps(schedule.num_timesteps, num_steps)
    log_ac = np.asarray(schedule.log_alphas_cumprod, dtype=np.float64)
    log_snr = log_ac - np.log(-np.expm1(log_ac))
    lam = np.linspace(log_snr[-1], log_snr[0], num_steps + 1)
    lab = -np.logaddexp(0.0, -lam)  # log alpha_bar = log sigmoid(log_snr)
    t = np.interp(lab, log_ac[::-1], np.arange(T, dtype=np.float64)[::-1])[:-1]
    t[0] = T - 1  # exact endpoint (interp round-off)
    if not round_to_int:
        return t
    grid = np.round(t).astype(np.int64)
    if np.any(np.diff(grid) >= 0) or grid[-1] <= 0:
        raise ValueError(
            f"num_steps={num_steps} is too many for integer logSNR-uniform spacing on this "
            "schedule (rounding merges steps); use round_to_int=False"
        )
    return grid


def with_final_timestep(timesteps: ArrayLike, final: int = -1) -> np.ndarray:
    """Appends the sampler's target time to a grid of model-evaluation times.

    Samplers take ``num_steps + 1`` times: the model is evaluated at the first
    ``num_steps`` and the last is where the final step lands. ``final=-1`` is the clean
    point (diffusers' ``set_alpha_to_one=True``); for DDIM with
    ``set_alpha_to_one=False`` use ``final=0`` after a grid that already ends at 0
    (the last step then goes from ``alpha_bar_0`` to ``alpha_bar_0``).

    Args:
      timesteps: decreasing grid of model times, shape ``(num_steps,)``.
      final: the target time.

    Returns:
      int64 array of shape ``(num_steps + 1,)``.
    """
    ts = np.asarray(timesteps)
    if ts.ndim != 1:
        raise ValueError(f"timesteps must be 1-D, got shape {ts.shape}")
    return np.append(ts, final)
