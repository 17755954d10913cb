"""Gaussian-mixture data with an exact denoiser: the analytic model samplers are checked on.

For data ``x0 ~ sum_k pi_k N(mu_k, S_k)`` and ``x_t = alpha_t x0 + sigma_t eps``, the
marginal is ``p_t = sum_k pi_k N(alpha_t mu_k, C_k)`` with ``C_k = alpha_t^2 S_k +
sigma_t^2 I``, so the score is exact:

    score(x) = -sum_k r_k(x) C_k^-1 (x - alpha_t mu_k),   r_k = posterior of component k,

and the ideal noise prediction is ``eps* = -sigma_t score`` (docs/design.md, "Analytic
models"). :meth:`GaussianMixture.denoiser` returns it as a
:class:`~diffjax.parameterization.Denoised`, so every sampler can run on it with no
training, and :meth:`GaussianMixture.sample` draws exact data samples to compare with.
Arithmetic follows the dtype of ``x`` (float64 under ``jax_enable_x64``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.parameterization import Denoised, ScheduledDenoiser

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

    def denoiser(self, schedule: Any) -> ScheduledDenoiser:
        """The exact ``denoise_fn(x, t, cond) -> Denoised`` (``eps*`` and ``x0*``).

        ``x`` is ``(B, d)``, ``t`` a scalar or ``(B,)`` model times of ``schedule``;
        ``cond`` is unused. It records ``schedule``, so samplers built for another
        schedule refuse it.
        """

        def denoise_fn(x: Array, t: ArrayLike, cond: Any = None) -> Denoised:
            del cond
            x = jnp.asarray(x)
            dtype = x.dtype
            t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
            a = jnp.asarray(schedule.alpha(t), dtype)[:, None, None]  # (B, 1, 1)
            s = jnp.asarray(schedule.sigma(t), dtype)[:, None, None]
            lam = jnp.asarray(self.eigvals, dtype)[None]  # (1, K, d)
            var = a**2 * lam + s**2  # eigenvalues of C_k
            vecs = jnp.asarray(self.eigvecs, dtype)
            diff = x[:, None, :] - a * jnp.asarray(self.means, dtype)[None]  # (B, K, d)
            r = jnp.einsum("bkd,kde->bke", diff, vecs)  # eigen-coordinates
            log_p = -0.5 * jnp.sum(r**2 / var + jnp.log(var), axis=-1)
            resp = jax.nn.softmax(log_p + jnp.log(jnp.asarray(self.weights, dtype)), axis=-1)
            c_inv_diff = jnp.einsum("bke,kde->bkd", r / var, vecs)  # C_k^-1 (x - a mu_k)
            score = -jnp.sum(resp[..., None] * c_inv_diff, axis=1)
            eps = -s[:, :, 0] * score
            return Denoised(eps=eps, x0=(x - s[:, :, 0] * eps) / a[:, :, 0])

        return ScheduledDenoiser(denoise_fn, schedule)
