"""Tests for DDIM inversion (diffjax.samplers.inversion)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from harness import (
    GAUSSIAN,
    T,
    fitted_order,
    harness_model,
    harness_sample,
    run_eager,
)

from diffjax import schedules as S
from diffjax.parameterization import make_denoiser
from diffjax.samplers import ddim, ddim_inversion, sample

# experiments/make_inversion_golden.py: diffusers' DDIMInverseScheduler on the harness
# (leading spacing, offset 0, set_alpha_to_one=True, clip_sample=False).
DIFFUSERS_INVERSE = {10: (671.681702, 0.87458557), 50: (728.792603, 0.94894868)}


@pytest.mark.parametrize("num_steps", sorted(DIFFUSERS_INVERSE))
def test_matches_diffusers_inverse_scheduler(num_steps):
    sched = S.DiscreteSchedule.from_betas(S.linear_betas(T, 1e-4, 0.02))
    grid = S.with_final_timestep(S.leading_timesteps(T, num_steps))  # [.., 0, -1]
    den = make_denoiser(harness_model, sched, "eps")
    inverter = ddim_inversion(sched, grid)
    assert inverter.num_steps == num_steps
    x = jax.jit(lambda x: sample(inverter, den, x, jax.random.key(0)))(harness_sample())
    assert x.dtype == jnp.float32 and x.shape == (4, 3, 8, 8)
    golden_sum, golden_mean = DIFFUSERS_INVERSE[num_steps]
    np.testing.assert_allclose(float(jnp.sum(jnp.abs(x))), golden_sum, rtol=1e-5)
    np.testing.assert_allclose(float(jnp.mean(jnp.abs(x))), golden_mean, rtol=1e-5)


PROBES = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, -1.5]])
STEPS = (10, 20, 40, 80)


def _gaussian_runs():
    """Inversion (t = 0 -> 1) and DDIM decoding of PROBES, exact denoiser, float64."""
    sched = S.LinearVPSchedule()
    den = GAUSSIAN.denoiser(sched)
    x0 = jnp.asarray(PROBES, jnp.float64)
    runs = {}
    for n in STEPS:
        grid = np.linspace(1.0, 0.0, n + 1)
        x_T = run_eager(ddim_inversion(sched, grid), den, x0)
        runs[n] = (np.asarray(x_T), np.asarray(run_eager(ddim(sched, grid), den, x_T)))
    return runs


@pytest.fixture(scope="module")
def gaussian_runs():
    with jax.enable_x64(True):
        return _gaussian_runs()


def test_reconstruction_error_vanishes_at_first_order(gaussian_runs):
    """decode(invert(x0)) -> x0 as the steps grow, error ~ 1 / steps."""
    errors = [np.abs(gaussian_runs[n][1] - PROBES).max() for n in STEPS]
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    assert 0.85 < fitted_order(STEPS, errors) < 1.3, errors
    assert errors[-1] < errors[0] / 6  # 8x the steps


def test_inversion_converges_to_exact_flow_map(gaussian_runs):
    """The encoder converges to the exact probability-flow map t = 0 -> 1 (affine for Gaussians).

    ``GAUSSIAN.flow_law`` gives the map as ``x -> b + G x`` through the law of N(0, I):
    ``(b, G G^T)`` with ``G`` symmetric positive definite.
    """
    b, gg = GAUSSIAN.flow_law(S.LinearVPSchedule(), 0.0, 1.0)
    w, v = np.linalg.eigh(gg)
    G = (v * np.sqrt(w)) @ v.T
    exact = b + PROBES @ G.T
    errors = [np.abs(gaussian_runs[n][0] - exact).max() for n in STEPS]
    assert 0.85 < fitted_order(STEPS, errors) < 1.3, errors
    assert errors[-1] < errors[0] / 6


def test_errors():
    sched = S.make_schedule("linear", T)
    with pytest.raises(ValueError, match="non-increasing"):
        ddim_inversion(sched, np.array([-1, 100, 500]))
    with pytest.raises(ValueError, match="num_steps \\+ 1"):
        ddim_inversion(sched, np.array([999]))
