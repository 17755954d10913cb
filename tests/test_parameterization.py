"""Tests for diffjax.parameterization: eps/x0/v conversions and the denoiser wrapper."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import parameterization as P
from diffjax import schedules as S

SCHED = S.make_schedule("linear", 1000)
B = 4


@jax.jit
def _setup_jit(key):
    k0, k1, k2 = jax.random.split(key, 3)
    x0 = jax.random.normal(k0, (B, 3, 5, 2))
    eps = jax.random.normal(k1, (B, 3, 5, 2))
    t = jax.random.randint(k2, (B,), 0, 1000).astype(jnp.float32)
    alpha, sigma = SCHED.alpha(t), SCHED.sigma(t)
    x = P.expand_to(alpha, x0) * x0 + P.expand_to(sigma, x0) * eps
    return x0, eps, t, alpha, sigma, x


def _setup(seed=0):
    return _setup_jit(jax.random.key(seed))


def test_expand_to():
    x = jnp.zeros((B, 3, 5))
    chex.assert_shape(P.expand_to(jnp.ones(B), x), (B, 1, 1))
    chex.assert_shape(P.expand_to(2.0, x), ())
    assert P.expand_to(jnp.ones(B, jnp.bfloat16), x).dtype == jnp.float32


def test_conversions_roundtrip():
    x0, eps, _, alpha, sigma, x = _setup()

    @jax.jit
    def convert(x0, eps, alpha, sigma, x):
        v = P.x0_eps_to_v(x0, eps, alpha, sigma)
        got = (
            P.eps_to_x0(x, eps, alpha, sigma),
            P.x0_to_eps(x, x0, alpha, sigma),
            P.v_to_x0(x, v, alpha, sigma),
            P.v_to_eps(x, v, alpha, sigma),
            P.eps_to_v(x, eps, alpha, sigma),
            P.x0_to_v(x, x0, alpha, sigma),
        )
        return got, (x0, eps, x0, eps, v, v)

    got, expected = convert(x0, eps, alpha, sigma, x)
    # x0 from eps at t ~ 999 divides float32 round-off by alpha ~ 0.006; hence atol.
    chex.assert_trees_all_close(got, expected, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_training_target(prediction_type):
    x0, eps, _, alpha, sigma, _ = _setup()
    target = P.training_target(prediction_type, x0, eps, alpha, sigma)
    expected = {
        "eps": eps,
        "x0": x0,
        "v": P.expand_to(alpha, x0) * eps - P.expand_to(sigma, x0) * x0,
    }[prediction_type]
    chex.assert_trees_all_close(target, expected, rtol=1e-6, atol=1e-6)
    assert target.dtype == jnp.float32


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_denoiser_recovers_truth_from_an_oracle(prediction_type):
    """A network that outputs the exact target makes the denoiser return (eps, x0)."""
    x0, eps, t, alpha, sigma, x = _setup(1)
    target = P.training_target(prediction_type, x0, eps, alpha, sigma)
    seen = {}

    def model_fn(x_in, t_in, cond):
        seen["t"], seen["dtype"] = t_in, x_in.dtype
        return target

    out = P.make_denoiser(model_fn, SCHED, prediction_type)(x, t, None)
    assert isinstance(out, P.Denoised)
    chex.assert_shape(seen["t"], (B,))
    assert seen["dtype"] == jnp.float32
    # 1/alpha at t ~ 999 amplifies float32 round-off in x0 from eps; hence atol.
    chex.assert_trees_all_close(out.x0, x0, atol=2e-3, rtol=1e-4)
    chex.assert_trees_all_close(out.eps, eps, atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_denoiser_bfloat16_network_gives_float32_math(prediction_type):
    x0, eps, t, alpha, sigma, x = _setup(2)
    raw = P.training_target(prediction_type, x0, eps, alpha, sigma).astype(jnp.bfloat16)
    out = P.make_denoiser(lambda *_: raw, SCHED, prediction_type)(x, t, None)
    assert out.eps.dtype == jnp.float32 and out.x0.dtype == jnp.float32
    # Same as converting the (upcast) network output in float32 by hand.
    r = raw.astype(jnp.float32)
    expected = {
        "eps": P.Denoised(eps=r, x0=P.eps_to_x0(x, r, alpha, sigma)),
        "x0": P.Denoised(eps=P.x0_to_eps(x, r, alpha, sigma), x0=r),
        "v": P.Denoised(eps=P.v_to_eps(x, r, alpha, sigma), x0=P.v_to_x0(x, r, alpha, sigma)),
    }[prediction_type]
    chex.assert_trees_all_close(out, expected, rtol=1e-6, atol=1e-6)


def test_denoiser_scalar_time_is_broadcast():
    x = jnp.ones((B, 2))
    seen = {}

    def model_fn(x_in, t_in, cond):
        seen["t"] = t_in
        return jnp.zeros_like(x_in)

    out = P.make_denoiser(model_fn, SCHED, "eps")(x, 10, None)
    np.testing.assert_array_equal(seen["t"], np.full(B, 10.0, np.float32))
    chex.assert_trees_all_close(out.x0, x / SCHED.alpha(10.0), rtol=1e-6)


def test_unknown_prediction_type():
    with pytest.raises(ValueError, match="prediction_type='epsilon'"):
        P.make_denoiser(lambda x, t, c: x, SCHED, "epsilon")
    with pytest.raises(ValueError, match="prediction_type"):
        P.training_target("score", 0.0, 0.0, 1.0, 0.0)


def test_model_output_shape_mismatch():
    den = P.make_denoiser(lambda x, t, c: x[:, :1], SCHED, "eps")
    with pytest.raises(ValueError, match="shape"):
        den(jnp.ones((B, 2)), 5, None)
