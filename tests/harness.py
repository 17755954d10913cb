"""Shared test fixtures for the samplers: diffusers' harness and analytic Gaussian data.

* diffusers' deterministic scheduler-test harness (docs/design.md): the sample and the dummy
  model whose goldens the DDIM / DPM-Solver / UniPC tests compare against.
* Analytic Gaussian data ``N(mu, S)`` with the exact ``eps*`` and the exact
  probability-flow map, in float64, for fitting convergence orders: every deterministic
  sampler is then affine in ``x_T``, so its output law ``N(b, J J^T)`` is read off three
  probes and its W2 distance to the exact law is exact.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from diffjax import schedules as S
from diffjax.parameterization import Denoised

T = 1000
LINEAR = S.make_schedule("linear", T)
KEY = jax.random.key(0)

MU = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.6], [0.6, 0.5]])


# ------------------------------------------------------- diffusers' harness


def harness_sample():
    """diffusers' deterministic scheduler-test sample, batch-first (4, 3, 8, 8)."""
    x = jnp.arange(768, dtype=jnp.float32) / 768
    return x.reshape(3, 8, 8, 4).transpose(3, 0, 1, 2)


def harness_model(x, t, cond):
    """diffusers' dummy model eps(x, t) = x * t / (t + 1) with integer timestep t."""
    t = t.reshape((-1,) + (1,) * (x.ndim - 1))
    return x * t / (t + 1)


# ------------------------------------------------- analytic Gaussian data


def gaussian_eps_model(schedule, mu, cov):
    """Exact eps* for data N(mu, cov) (x is (B, d)), float32: sigma (a^2 S + s^2 I)^-1 (x - a mu).

    Uses the eigendecomposition S = V diag(l) V^T, so no linear solve runs per step.
    """
    lam, vecs = np.linalg.eigh(np.asarray(cov, np.float64))
    lam, vecs = jnp.asarray(lam, jnp.float32), jnp.asarray(vecs, jnp.float32)
    mu = jnp.asarray(mu, jnp.float32)

    def model_fn(x, t, cond):
        a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
        r = (x - a * mu) @ vecs  # eigen-coordinates
        return s * (r / (a**2 * lam + s**2)) @ vecs.T

    return model_fn


@flax.struct.dataclass
class LinearVP64(S.LinearVPSchedule):
    """The library's LinearVPSchedule evaluated in float64 (under enable_x64).

    The library schedules compute in float32 by design; measuring third-order
    convergence down to errors of 1e-7 needs the schedule in float64 too.
    """

    def log_alpha(self, t):
        t = jnp.asarray(t, jnp.float64)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def t_from_log_snr(self, log_snr):
        db = self.beta_max - self.beta_min
        tmp = 2.0 * db * jax.nn.softplus(-jnp.asarray(log_snr, jnp.float64))
        return tmp / (jnp.sqrt(self.beta_min**2 + tmp) + self.beta_min) / db


def gaussian_denoiser64(schedule, mu, cov):
    """Exact (eps*, x0*) for data N(mu, cov) in float64: eps* = sigma S_t^-1 (x - alpha mu)."""
    lam, vecs = np.linalg.eigh(cov)

    def den(x, t, cond):
        a, s = schedule.alpha(t), schedule.sigma(t)
        eps = s * (((x - a * mu) @ vecs) / (a**2 * lam + s**2)) @ vecs.T
        return Denoised(eps=eps, x0=(x - s * eps) / a)

    return den


def linear_vp_alpha_sigma(t):
    """alpha(t), sigma(t) of the default LinearVPSchedule (beta 0.1..20), NumPy float64."""
    log_alpha = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    return np.exp(log_alpha), np.sqrt(-np.expm1(2 * log_alpha))


def exact_flow_law(mu, cov, t_start, t_end):
    """Law of the exact probability-flow ODE map t_start -> t_end applied to N(0, I).

    For Gaussian data each eigen-coordinate keeps (x - alpha mu) / sqrt(alpha^2 l + sigma^2)
    along the flow, so the map is x -> alpha_e mu + G (x - alpha_s mu) with G diagonal in
    the eigenbasis of cov (float64, closed form; default LinearVPSchedule).
    """
    lam, vecs = np.linalg.eigh(cov)
    (a_s, s_s), (a_e, s_e) = linear_vp_alpha_sigma(t_start), linear_vp_alpha_sigma(t_end)
    G = vecs @ np.diag(np.sqrt((a_e**2 * lam + s_e**2) / (a_s**2 * lam + s_s**2))) @ vecs.T
    return a_e * mu - G @ (a_s * mu), G @ G.T


def gaussian_w2(m1, c1, m2, c2):
    """Exact 2-Wasserstein distance between two Gaussians (float64)."""
    w, v = np.linalg.eigh(c1)
    r1 = (v * np.sqrt(np.maximum(w, 0))) @ v.T
    inner = np.linalg.eigvalsh(r1 @ c2 @ r1)
    w2sq = np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2)
    return float(np.sqrt(max(w2sq - 2 * np.sum(np.sqrt(np.maximum(inner, 0))), 0.0)))


def run_eager(sampler, den, x, num_steps=None):
    """Steps a sampler op by op with concrete step indices (the state keeps x's dtype).

    The library driver casts x_T to float32 by design; this loop lets the float64
    convergence tests run the samplers' own init/step/finalize in float64 without a
    compile per step count. ``num_steps`` stops early (default: all steps).
    """
    state = sampler.init(x)
    for i in range(sampler.num_steps if num_steps is None else num_steps):
        state = sampler.step(den, state, jnp.int32(i), None, None)
    return sampler.finalize(state)


def affine_law(out):
    """Output law N(b, J J^T) of an affine map from its images of the probes 0, e1, e2."""
    out = np.asarray(out)
    b, J = out[0], (out[1:] - out[0]).T
    return b, J @ J.T


def fitted_order(steps, errors):
    """Minus the slope of log(error) against log(steps): the convergence order."""
    return float(-np.polyfit(np.log(steps), np.log(errors), 1)[0])
