"""Tests for the EDM Heun sampler with Karras sigmas on VP schedules."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from harness import (
    GAUSSIAN,
    KEY,
    LINEAR,
    harness_model,
    run_eager,
)

from diffjax import schedules as S
from diffjax.parameterization import make_denoiser
from diffjax.samplers import edm_heun, edm_sigma_range, karras_sigmas, sample

X_T = np.array([[0.3, -1.2], [1.5, 0.7], [-0.4, 0.1]])

# k-diffusion 0.1.1.post1 get_sigmas_karras(rho=7) + sample_heun (no churn), float64, on
# exact Gaussian data N(MU, COV) over the default LinearVPSchedule's range, from
# x = X_T * sqrt(1 + sigma_max^2). Produced by
# `PYTHONPATH=/tmp/kdiff python experiments/make_edm_golden.py` (install line inside).
K_SIGMA_MIN, K_SIGMA_MAX = 0.010485992786702987, 152.16697028394637
K_SIGMAS_4 = [152.16697028394643, 20.58975302627926, 1.2381745156509643, 0.010485992786702987, 0.0]
K_HEUN = {
    4: [
        [0.1474287346478338, -2.396103837555421],
        [6.829644491121543, 3.107662007902247],
        [-0.1459058115118066, -0.9069743507370338],
    ],
    8: [
        [0.7517949752858075, -1.3203962422956443],
        [3.2050926777629325, 0.8325540011078127],
        [0.550153100965866, -0.6238187823617257],
    ],
}


def test_matches_k_diffusion_sample_heun():
    with jax.enable_x64(True):
        sched = S.LinearVPSchedule()
        np.testing.assert_allclose(edm_sigma_range(sched), (K_SIGMA_MIN, K_SIGMA_MAX), rtol=1e-12)
        sigmas = karras_sigmas(4, K_SIGMA_MIN, K_SIGMA_MAX)
        np.testing.assert_allclose(sigmas, K_SIGMAS_4, rtol=1e-12)
        den = GAUSSIAN.denoiser(sched)
        for n, golden in K_HEUN.items():
            sampler = edm_heun(sched, karras_sigmas(n, *edm_sigma_range(sched)))
            out = run_eager(sampler, den, jnp.asarray(X_T, jnp.float64))
            np.testing.assert_allclose(np.asarray(out), golden, rtol=1e-10, atol=1e-12)
    # The float32 library path (driver, float32 schedule) agrees to float32 accuracy.
    sched32 = S.LinearVPSchedule()
    den32 = make_denoiser(GAUSSIAN.eps_model(sched32), sched32, "eps")
    sampler = edm_heun(sched32, karras_sigmas(8, *edm_sigma_range(sched32)))
    out = jax.jit(lambda x: sample(sampler, den32, x, KEY))(jnp.asarray(X_T, jnp.float32))
    np.testing.assert_allclose(np.asarray(out), K_HEUN[8], rtol=2e-4, atol=2e-4)


# The Heun order on Gaussian data: tests/test_sampler_order.py.

def test_discrete_schedule_by_hand():
    """One Heun step between two integer timesteps of a discrete schedule, no zero at the
    end: the network sees x_t = alpha(t) x_edm at exactly t = 999 and t = 500 (the
    interpolated time is exact at integers), by the EDM formulas written out in NumPy."""
    ac = np.asarray(LINEAR.alphas_cumprod, np.float64)
    s_hi, s_lo = (math.sqrt((1 - ac[t]) / ac[t]) for t in (999, 500))
    seen_t = []

    def model_fn(x, t, c):
        jax.debug.callback(lambda t: seen_t.append(np.asarray(t)), t)
        return harness_model(x, t, c)

    den = make_denoiser(model_fn, LINEAR, "eps")
    x_T = np.linspace(-1.0, 1.0, 6).reshape(2, 3)
    out = sample(edm_heun(LINEAR, np.array([s_hi, s_lo])), den, jnp.asarray(x_T), KEY)
    jax.effects_barrier()
    np.testing.assert_allclose(np.sort(np.concatenate(seen_t)), [500, 500, 999, 999], atol=0.02)

    def d_edm(x, s, t):  # (x - D) / sigma with D the x0 of the eps model at x_t = alpha x
        a = 1 / math.sqrt(1 + s * s)
        eps = a * x * t / (t + 1)
        return (x - (a * x - math.sqrt(1 - a * a) * eps) / a) / s

    x = x_T * math.sqrt(1 + s_hi**2)
    x_euler = x + d_edm(x, s_hi, 999) * (s_lo - s_hi)
    x_next = x + 0.5 * (d_edm(x, s_hi, 999) + d_edm(x_euler, s_lo, 500)) * (s_lo - s_hi)
    # float32: the step cancels x_edm ~ 157 x_T down to O(1), so ~1e-4 relative round-off.
    np.testing.assert_allclose(np.asarray(out), x_next / math.sqrt(1 + s_lo**2), rtol=2e-4)


def test_evaluations_scan_churn_and_recompiles():
    """2N - 1 network calls in one scan with one cond (Heun / final Euler); churn adds
    sqrt(sigma_hat^2 - sigma^2) z with z from the step's key; S_churn is traced."""
    calls = []

    def model_fn(x, t, c):
        jax.debug.callback(lambda: calls.append(1))
        return 0.1 * x

    den = make_denoiser(model_fn, LINEAR, "eps")
    sigmas = karras_sigmas(5, *edm_sigma_range(LINEAR))
    x_T = jnp.ones((2, 3))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(key, s_churn):
        return sample(edm_heun(LINEAR, sigmas, s_churn=s_churn), den, x_T, key)

    chex.clear_trace_counter()
    a, b, c = run(KEY, 0.0), run(KEY, 40.0), run(jax.random.key(1), 40.0)
    jax.effects_barrier()
    assert len(calls) == 3 * (2 * 5 - 1)
    assert run._cache_size() == 1
    assert not np.allclose(a, b) and not np.allclose(b, c)
    jaxpr = jax.make_jaxpr(lambda x: sample(edm_heun(LINEAR, sigmas), den, x, KEY))(x_T)
    (scan,) = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
    assert sum(e.primitive.name == "cond" for e in scan.params["jaxpr"].jaxpr.eqns) == 1

    # One churned Euler step (onto sigma = 0) by hand: gamma = min(S_churn / N, sqrt2 - 1).
    s0, n, s_churn = 2.0, 1, 0.3
    sampler = edm_heun(LINEAR, np.array([s0, 0.0]), s_churn=s_churn, s_noise=0.9)
    x = jnp.asarray([[0.2, -0.4, 1.0]])
    key = jax.random.key(7)
    got = sampler.finalize(sampler.step(den, sampler.init(x), jnp.int32(0), key, None))
    s_hat = s0 * (1 + min(s_churn / n, math.sqrt(2) - 1))
    z = np.asarray(jax.random.normal(key, x.shape))
    x_hat = np.asarray(x) * math.sqrt(1 + s0**2) + math.sqrt(s_hat**2 - s0**2) * 0.9 * z
    t_hat = float(LINEAR.t_from_log_snr(-2 * math.log(s_hat)))
    x0 = np.asarray(den(jnp.asarray(x_hat / math.sqrt(1 + s_hat**2)), t_hat, None).x0)
    np.testing.assert_allclose(np.asarray(got), x0, rtol=1e-5, atol=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="num_steps"):
        karras_sigmas(0, 0.01, 80.0)
    with pytest.raises(ValueError, match="sigma_min"):
        karras_sigmas(10, 0.0, 80.0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        edm_heun(LINEAR, np.array([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="sigmas"):
        edm_heun(LINEAR, np.array([1.0]))
    with pytest.raises(ValueError, match="s_churn"):
        edm_heun(LINEAR, karras_sigmas(4, 0.01, 80.0), s_churn=-1.0)
    with pytest.raises(ValueError, match="s_tmin"):
        edm_heun(LINEAR, karras_sigmas(4, 0.01, 80.0), s_tmin=5.0, s_tmax=1.0)
    with pytest.raises(ValueError, match="sigmas"):
        jax.jit(lambda s: edm_heun(LINEAR, s).num_steps)(jnp.asarray([2.0, 1.0, 0.0]))
