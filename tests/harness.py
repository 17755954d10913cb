"""Shared test fixtures for the samplers: diffusers' harness and analytic Gaussian data.

* diffusers' deterministic scheduler-test harness (docs/design.md): the sample and the dummy
  model whose goldens the DDIM / DPM-Solver / UniPC tests compare against.
* Analytic Gaussian data ``GAUSSIAN = N(MU, COV)``, the library's exact oracle
  (:class:`diffjax.samplers.analytic.GaussianMixture`: ``eps*``, ``x0*`` and the exact
  probability-flow law), run in float64 on the library's own schedules under
  ``jax.enable_x64`` for fitting convergence orders: every deterministic sampler is then
  affine in ``x_T``, so its output law ``N(b, J J^T)`` is read off three probes and its W2
  distance to the exact law is exact.
"""

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import schedules as S
from diffjax.samplers.analytic import GaussianMixture

T = 1000
LINEAR = S.make_schedule("linear", T)
KEY = jax.random.key(0)

MU = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.6], [0.6, 0.5]])
GAUSSIAN = GaussianMixture.gaussian(MU, COV)


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


def gaussian_w2(m1, c1, m2, c2):
    """Exact 2-Wasserstein distance between two Gaussians (float64)."""
    w, v = np.linalg.eigh(c1)
    r1 = (v * np.sqrt(np.maximum(w, 0))) @ v.T
    inner = np.linalg.eigvalsh(r1 @ c2 @ r1)
    w2sq = np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2)
    return float(np.sqrt(max(w2sq - 2 * np.sum(np.sqrt(np.maximum(inner, 0))), 0.0)))


def run_eager(sampler, den, x, num_steps=None):
    """Steps a sampler op by op with concrete step indices (the state keeps x's dtype).

    The library driver compiles one ``lax.scan`` per grid; this loop lets the float64
    convergence tests (under ``jax.enable_x64``) run the samplers' own
    init/step/finalize on many grids without a compile per step count. ``num_steps``
    stops early (default: all steps).
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
