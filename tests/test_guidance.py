"""Tests for diffjax.guidance: classifier-free guidance in one batched call."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import schedules as S
from diffjax.guidance import classifier_free_guidance
from diffjax.parameterization import make_denoiser

SCHED = S.make_schedule("linear", 1000)
NULL = 10  # the null class id
B = 3


def _model_fn(calls):
    """A toy class-conditional eps model; records the batch size of every call."""

    def model_fn(x, t, labels):
        calls.append(x.shape[0])
        scale = (1.0 + labels.astype(jnp.float32) / 10.0).reshape(-1, 1, 1)
        return jnp.tanh(x * scale + (t / 1000.0).reshape(-1, 1, 1))

    return model_fn


def test_one_batched_call_and_formula():
    calls = []
    den = make_denoiser(_model_fn(calls), SCHED, "eps")
    x = jax.random.normal(jax.random.key(0), (B, 4, 2))
    labels = jnp.array([1, 5, 7])
    w = 2.5

    @jax.jit
    def run(x, labels):
        guided = classifier_free_guidance(den, w, NULL)(x, 300.0, labels)
        assert calls == [2 * B]  # conditional and unconditional halves in ONE call
        return guided, den(x, 300.0, labels), den(x, 300.0, jnp.full((B,), NULL))

    guided, cond, uncond = run(x, labels)
    chex.assert_trees_all_close(
        guided.eps, (1 + w) * cond.eps - w * uncond.eps, rtol=1e-5, atol=1e-6
    )
    chex.assert_trees_all_close(guided.x0, (1 + w) * cond.x0 - w * uncond.x0, rtol=1e-5, atol=1e-5)


def test_zero_scale_is_the_conditional_model():
    den = make_denoiser(_model_fn([]), SCHED, "v")
    x = jax.random.normal(jax.random.key(1), (B, 4, 2))
    labels = jnp.array([0, 2, 3])
    t = jnp.array([10.0, 500.0, 990.0])
    guided, plain = jax.jit(
        lambda x, t, labels: (
            classifier_free_guidance(den, 0.0, NULL)(x, t, labels),
            den(x, t, labels),
        )
    )(x, t, labels)
    chex.assert_trees_all_close(guided, plain, rtol=1e-6, atol=1e-6)


def test_pytree_conditioning_and_traced_scale():
    seen = {}

    def model_fn(x, t, cond):
        seen["cond"] = cond
        return x * cond["emb"].mean(axis=-1).reshape(-1, 1)

    den = make_denoiser(model_fn, SCHED, "eps")
    cond = {"emb": jnp.ones((B, 5)), "mask": jnp.ones((B,), bool)}
    null = {"emb": jnp.zeros((5,)), "mask": False}

    @jax.jit
    def f(w, x):
        return classifier_free_guidance(den, w, null)(x, 100.0, cond).eps

    x = jnp.ones((B, 2))
    np.testing.assert_allclose(f(3.0, x), 4.0 * x, rtol=1e-6)  # (1 + w) * 1 - w * 0
    chex.assert_shape(seen["cond"]["emb"], (2 * B, 5))
    chex.assert_shape(seen["cond"]["mask"], (2 * B,))


def test_missing_cond():
    den = make_denoiser(_model_fn([]), SCHED, "eps")
    with pytest.raises(ValueError, match="cond"):
        classifier_free_guidance(den, 1.0, NULL)(jnp.ones((B, 4, 2)), 5.0, None)
