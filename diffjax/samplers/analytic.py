"""Gaussian-mixture data with an exact denoiser: the analytic model samplers are checked on.

For data ``x0 ~ sum_k pi_k N(mu_k, S_k)`` and ``x_t = alpha_t x0 + sigma_t eps``, the
marginal is ``p_t = sum_k pi_k N(alpha_t mu_k, C_k)`` with ``C_k = alpha_t^2 S_k +
sigma_t^2 I``, so the score is exact:

    score(x) = -sum_k r_k(x) C_k^-1 (x - alpha_t mu_k),   r_k = posterior of component k,

and the ideal noise prediction is ``eps* = -sigma_t score`` (docs/design.md, "Analytic
models"). :meth:`GaussianMixture.denoiser` returns it as a
:class:`~diffjax.parameterization.Denoised`, so every sampler can run on it with no
training; :meth:`GaussianMixture.eps_model` returns it as a raw noise-prediction
network (for :func:`~diffjax.parameterization.make_denoiser`), and
:meth:`GaussianMixture.sample` draws exact data samples to compare with. Arithmetic
follows the dtype of ``x`` (float64 under ``jax_enable_x64``, with the schedule then
computing in float64 too).

For a single Gaussian ``N(mu, S)`` the probability-flow ODE is solved exactly as well:
each eigen-coordinate of ``(x - alpha_t mu) / sqrt(alpha_t^2 l + sigma_t^2)`` is
constant along the flow, so :meth:`GaussianMixture.flow_map` is the exact (affine)
solution map and :meth:`GaussianMixture.flow_law` the exact law a deterministic
sampler's output should have.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.parameterization import Denoised, ModelFn, ScheduledDenoiser
from diffjax.schedules import VPSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = ["GaussianMixture"]


class GaussianMixture(NamedTuple):
    """A Gaussian mixture in ``d`` dimensions (NumPy float64 parameters).

    Build it with :meth:`create`, which checks the parameters and precomputes the
    eigendecompositions ``S_k = V_k diag(l_k) V_k^T``.

    Attributes:
      weights: ``pi_k``, shape ``(K,)``, summing to 1.
      means: ``mu_k``, shape ``(K, d)``.
      eigvals: ``l_k``, shape ``(K, d)``, non-negative.
      eigvecs: ``V_k``, shape ``(K, d, d)``.
    """

    weights: np.ndarray
    means: np.ndarray
    eigvals: np.ndarray
    eigvecs: np.ndarray

    @classmethod
    def create(cls, weights: ArrayLike, means: ArrayLike, covs: ArrayLike) -> GaussianMixture:
        """Checks and stores a mixture.

        Args:
          weights: ``(K,)`` positive weights (normalized here).
          means: ``(K, d)`` component means.
          covs: ``(K, d, d)`` symmetric positive semi-definite covariances.

        Raises:
          ValueError: for inconsistent shapes, non-positive weights or a covariance that
            is not symmetric positive semi-definite.
        """
        w = np.asarray(weights, np.float64)
        mu = np.asarray(means, np.float64)
        cov = np.asarray(covs, np.float64)
        if w.ndim != 1 or mu.ndim != 2 or cov.ndim != 3 or not (
            w.shape[0] == mu.shape[0] == cov.shape[0] and cov.shape[1:] == (mu.shape[1],) * 2
        ):
            raise ValueError(
                f"need weights (K,), means (K, d), covs (K, d, d); got {w.shape}, {mu.shape}, "
                f"{cov.shape}"
            )
        if np.any(w <= 0):
            raise ValueError(f"weights must be positive, got {w}")
        if not np.allclose(cov, np.swapaxes(cov, 1, 2)):
            raise ValueError("covs must be symmetric")
        lam, vecs = np.linalg.eigh(cov)
        if np.any(lam < -1e-12 * np.maximum(1.0, np.abs(lam).max())):
            raise ValueError("covs must be positive semi-definite")
        return cls(w / w.sum(), mu, np.maximum(lam, 0.0), vecs)

    @classmethod
    def gaussian(cls, mean: ArrayLike, cov: ArrayLike) -> GaussianMixture:
        """A single Gaussian ``N(mean, cov)``: ``mean`` shape ``(d,)``, ``cov`` ``(d, d)``."""
        return cls.create([1.0], np.asarray(mean, np.float64)[None], np.asarray(cov)[None])

    @property
    def dim(self) -> int:
        """The data dimension ``d``."""
        return int(self.means.shape[1])

    def sample(self, key: Array, num: int, dtype: Any = jnp.float32) -> Array:
        """``num`` exact samples, shape ``(num, d)``."""
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.choice(k_comp, len(self.weights), (num,), p=jnp.asarray(self.weights))
        z = jax.random.normal(k_noise, (num, self.dim), dtype)
        scale = jnp.asarray(self.eigvecs * np.sqrt(self.eigvals)[:, None, :], dtype)
        return jnp.asarray(self.means, dtype)[comp] + jnp.einsum("nij,nj->ni", scale[comp], z)

    def _alpha_sigma(self, schedule: VPSchedule, x: Array, t: ArrayLike) -> tuple[Array, Array]:
        """``alpha_t, sigma_t`` of shape ``(B, 1)`` in the dtype of ``x``."""
        t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
        a = jnp.asarray(schedule.alpha(t), x.dtype)[:, None]
        return a, jnp.asarray(schedule.sigma(t), x.dtype)[:, None]

    def eps(self, schedule: VPSchedule, x: ArrayLike, t: ArrayLike) -> Array:
        """The exact noise prediction ``eps* = -sigma_t score(x)``, in the dtype of ``x``.

        Args:
          schedule: the noise schedule ``x`` was noised with.
          x: noisy data ``x_t``, shape ``(B, d)``.
          t: a scalar or ``(B,)`` model times of ``schedule``.
        """
        x = jnp.asarray(x)
        dtype = x.dtype
        a, s = (c[:, :, None] for c in self._alpha_sigma(schedule, x, t))  # (B, 1, 1)
        lam = jnp.asarray(self.eigvals, dtype)[None]  # (1, K, d)
        var = a**2 * lam + s**2  # eigenvalues of C_k
        vecs = jnp.asarray(self.eigvecs, dtype)
        diff = x[:, None, :] - a * jnp.asarray(self.means, dtype)[None]  # (B, K, d)
        r = jnp.einsum("bkd,kde->bke", diff, vecs)  # eigen-coordinates
        log_p = -0.5 * jnp.sum(r**2 / var + jnp.log(var), axis=-1)
        resp = jax.nn.softmax(log_p + jnp.log(jnp.asarray(self.weights, dtype)), axis=-1)
        c_inv_diff = jnp.einsum("bke,kde->bkd", r / var, vecs)  # C_k^-1 (x - a mu_k)
        score = -jnp.sum(resp[..., None] * c_inv_diff, axis=1)
        return -s[:, :, 0] * score

    def eps_model(self, schedule: VPSchedule) -> ModelFn:
        """The exact ``eps*`` as a raw network ``model_fn(x, t, cond) -> eps``.

        For :func:`~diffjax.parameterization.make_denoiser` with ``prediction_type='eps'``,
        which then forms ``x0`` (in float32); ``cond`` is unused.
        """

        def model_fn(x: Array, t: ArrayLike, cond: Any = None) -> Array:
            del cond
            return self.eps(schedule, x, t)

        return model_fn

    def denoiser(self, schedule: VPSchedule) -> ScheduledDenoiser:
        """The exact ``denoise_fn(x, t, cond) -> Denoised`` (``eps*`` and ``x0*``).

        ``x`` is ``(B, d)``, ``t`` a scalar or ``(B,)`` model times of ``schedule``;
        ``cond`` is unused. It records ``schedule``, so samplers built for another
        schedule refuse it.
        """

        def denoise_fn(x: Array, t: ArrayLike, cond: Any = None) -> Denoised:
            del cond
            x = jnp.asarray(x)
            eps = self.eps(schedule, x, t)
            a, s = self._alpha_sigma(schedule, x, t)
            return Denoised(eps=eps, x0=(x - s * eps) / a)

        return ScheduledDenoiser(denoise_fn, schedule)

    def component(self, k: int) -> GaussianMixture:
        """The ``k``-th component alone, ``N(mu_k, S_k)`` (a class-conditional law)."""
        k = int(k)
        return GaussianMixture(
            np.ones(1), self.means[k : k + 1], self.eigvals[k : k + 1], self.eigvecs[k : k + 1]
        )

    def flow_map(
        self, schedule: VPSchedule, t_start: float, t_end: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The exact probability-flow map ``x_{t_start} -> x_{t_end}`` of a single Gaussian.

        For data ``N(mu, S = V diag(l) V^T)`` each eigen-coordinate of
        ``(x - alpha_t mu) / sqrt(alpha_t^2 l + sigma_t^2)`` is constant along the flow, so
        the map is affine: ``x -> shift + G x`` with
        ``G = V diag(sqrt((alpha_e^2 l + sigma_e^2) / (alpha_s^2 l + sigma_s^2))) V^T`` and
        ``shift = alpha_e mu - G alpha_s mu``. The schedule is evaluated in float64
        (``jax_enable_x64`` is switched on here).

        Args:
          schedule: the noise schedule.
          t_start: the start time (the sampler's first grid point).
          t_end: the end time (the sampler's target).

        Returns:
          ``(shift, G)``, NumPy float64 of shapes ``(d,)`` and ``(d, d)``.

        Raises:
          ValueError: for a mixture of more than one component (its flow has no closed
            form).
        """
        if len(self.weights) != 1:
            raise ValueError(
                f"the flow map needs a single Gaussian, got {len(self.weights)} components"
            )
        with jax.enable_x64(True):
            t = jnp.asarray([t_start, t_end], jnp.float64)
            a_s, a_e = np.asarray(schedule.alpha(t), np.float64)
            s_s, s_e = np.asarray(schedule.sigma(t), np.float64)
        mu, lam, vecs = self.means[0], self.eigvals[0], self.eigvecs[0]
        gain = np.sqrt((a_e**2 * lam + s_e**2) / (a_s**2 * lam + s_s**2))
        G = vecs @ np.diag(gain) @ vecs.T
        return a_e * mu - G @ (a_s * mu), G

    def flow_law(
        self, schedule: VPSchedule, t_start: float, t_end: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The exact law at ``t_end`` of the probability flow from ``x_{t_start} ~ N(0, I)``.

        The image of ``N(0, I)`` under :meth:`flow_map` ``x -> shift + G x``:
        ``N(shift, G G^T)``, the law a deterministic sampler's output should have.

        Returns:
          ``(mean, cov)``, NumPy float64.

        Raises:
          ValueError: for a mixture of more than one component.
        """
        shift, G = self.flow_map(schedule, t_start, t_end)
        return shift, G @ G.T
