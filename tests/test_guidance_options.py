"""Tests for the guidance-rescale and guidance-interval options of classifier_free_guidance."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import schedules as S
from diffjax.guidance import classifier_free_guidance, guidance_rescale_correction
from diffjax.parameterization import eps_to_x0, make_denoiser

SCHED = S.make_schedule("linear", 1000)
NULL = 10
B = 3


def _model_fn(x, t, labels):
    """A toy class-conditional model whose output std depends on the label."""
    scale = (1.0 + labels.astype(jnp.float32) / 4.0).reshape(-1, 1, 1, 1)
    return jnp.tanh(x * scale + (t / 1000.0).reshape(-1, 1, 1, 1)) * scale


def _inputs(seed=0):
    x = jax.random.normal(jax.random.key(seed), (B, 4, 4, 2))
    labels = jnp.array([1, 5, 7])
    return x, labels


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_rescale_zero_is_plain_guidance(prediction_type):
    den = make_denoiser(_model_fn, SCHED, prediction_type)
    x, labels = _inputs()
    t = jnp.array([20.0, 400.0, 950.0])

    @jax.jit
    def run(w, phi):
        plain = classifier_free_guidance(den, w, NULL)(x, t, labels)
        traced = classifier_free_guidance(den, w, NULL, rescale=phi, schedule=SCHED)(x, t, labels)
        static = classifier_free_guidance(den, w, NULL, rescale=0.0)(x, t, labels)
        return plain, traced, static

    plain, traced, static = run(2.0, 0.0)
    chex.assert_trees_all_equal(plain, static)
    chex.assert_trees_all_close(plain, traced, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["eps", "v"])
def test_full_rescale_matches_conditional_std(prediction_type):
    den = make_denoiser(_model_fn, SCHED, prediction_type)
    x, labels = _inputs(1)
    t = jnp.array([100.0, 300.0, 700.0])
    w = 4.0
    guided = jax.jit(
        lambda: classifier_free_guidance(den, w, NULL, rescale=1.0, schedule=SCHED)(x, t, labels)
    )()
    cond = den(x, t, labels)
    plain = classifier_free_guidance(den, w, NULL)(x, t, labels)
    axes = (1, 2, 3)
    np.testing.assert_allclose(guided.eps.std(axis=axes), cond.eps.std(axis=axes), rtol=1e-5)
    # the plain guided prediction had a different std, so the test is not vacuous
    assert np.all(np.abs(plain.eps.std(axis=axes) / cond.eps.std(axis=axes) - 1) > 0.05)
    # x0 is consistent with the rescaled eps
    a, s = SCHED.alpha(t), SCHED.sigma(t)
    np.testing.assert_allclose(guided.x0, eps_to_x0(x, guided.eps, a, s), rtol=1e-4, atol=1e-4)


def test_partial_rescale_blends_linearly():
    den = make_denoiser(_model_fn, SCHED, "eps")
    x, labels = _inputs(2)
    f = jax.jit(
        lambda phi: classifier_free_guidance(den, 3.0, NULL, rescale=phi, schedule=SCHED)(
            x, 250.0, labels
        )
    )
    g0, g1, gh = f(0.0), f(1.0), f(0.3)
    chex.assert_trees_all_close(
        gh, jax.tree.map(lambda a, b: 0.7 * a + 0.3 * b, g0, g1), rtol=1e-4, atol=1e-4
    )


def test_rescale_correction_is_diffusers_rescale_noise_cfg():
    """diffusers' rescale_noise_cfg (torch's unbiased std), written out in float64."""
    rng = np.random.default_rng(0)
    guided = rng.normal(size=(2, 4, 4, 3)) * np.array([3.0, 0.5]).reshape(2, 1, 1, 1)
    cond = rng.normal(size=guided.shape)
    phi = 0.7
    axes = (1, 2, 3)
    std_text = cond.std(axis=axes, ddof=1, keepdims=True)
    std_cfg = guided.std(axis=axes, ddof=1, keepdims=True)
    want = phi * (guided * std_text / std_cfg) + (1 - phi) * guided
    got = guided + guidance_rescale_correction(jnp.asarray(guided, jnp.float32),
                                               jnp.asarray(cond, jnp.float32), phi)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-6)
    zero = guidance_rescale_correction(jnp.zeros((1, 2, 2, 1)), jnp.ones((1, 2, 2, 1)), 1.0)
    np.testing.assert_array_equal(np.asarray(zero), 0.0)  # std(guided) = 0: unrescaled


def test_interval_outside_is_conditional_inside_is_guided():
    den = make_denoiser(_model_fn, SCHED, "v")
    x, labels = _inputs(3)
    t = jnp.array([50.0, 500.0, 900.0])  # only the middle example is inside

    @jax.jit
    def run(lo, hi, phi):
        return classifier_free_guidance(
            den, 2.5, NULL, rescale=phi, interval=(lo, hi), schedule=SCHED
        )(x, t, labels)

    out = run(100.0, 800.0, 0.0)
    cond = den(x, t, labels)
    plain = classifier_free_guidance(den, 2.5, NULL)(x, t, labels)
    for field in ("eps", "x0"):
        got, c, p = (np.asarray(getattr(o, field)) for o in (out, cond, plain))
        np.testing.assert_allclose(got[[0, 2]], c[[0, 2]], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got[1], p[1], rtol=1e-6, atol=1e-6)
    # with rescale on, examples outside the interval are still exactly conditional
    out = run(100.0, 800.0, 0.7)
    np.testing.assert_allclose(
        np.asarray(out.eps)[[0, 2]], np.asarray(cond.eps)[[0, 2]], rtol=1e-6, atol=1e-6
    )
    # closed interval: bounds are inclusive; scalar t works too
    edge = classifier_free_guidance(den, 2.5, NULL, interval=(500.0, 500.0))(x, 500.0, labels)
    chex.assert_trees_all_close(edge, classifier_free_guidance(den, 2.5, NULL)(x, 500.0, labels))


def test_no_recompiles_when_options_change():
    den = make_denoiser(_model_fn, SCHED, "eps")
    x, labels = _inputs(4)

    @jax.jit
    def run(w, phi, lo, hi):
        return classifier_free_guidance(
            den, w, NULL, rescale=phi, interval=(lo, hi), schedule=SCHED
        )(x, 300.0, labels)

    for w, phi, lo, hi in [(1.0, 0.0, 0.0, 999.0), (3.0, 0.7, 100.0, 200.0), (0.5, 1.0, 0, 50)]:
        run(jnp.float32(w), jnp.float32(phi), jnp.float32(lo), jnp.float32(hi))
    assert run._cache_size() == 1


def test_option_validation():
    den = make_denoiser(_model_fn, SCHED, "eps")
    with pytest.raises(ValueError, match="schedule"):
        classifier_free_guidance(den, 1.0, NULL, rescale=0.7)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        classifier_free_guidance(den, 1.0, NULL, rescale=1.5, schedule=SCHED)
    with pytest.raises(ValueError, match="t_lo <= t_hi"):
        classifier_free_guidance(den, 1.0, NULL, interval=(500, 100))
    with pytest.raises(ValueError, match="pair"):
        classifier_free_guidance(den, 1.0, NULL, interval=5.0)

    def traced_without_schedule(phi):
        return classifier_free_guidance(den, 1.0, NULL, rescale=phi)

    with pytest.raises(ValueError, match="schedule"):
        jax.jit(
            lambda phi: (
                traced_without_schedule(phi)(
                    jnp.ones((B, 2, 2, 1)), 5.0, jnp.zeros((B,), jnp.int32)
                ).eps
            )
        )(0.5)


class _ToyClassNet(nn.Module):
    """A class-conditional eps network with a null class, cheap to compile."""

    num_classes: int

    @nn.compact
    def __call__(self, x, t, labels, train=False):
        scale = nn.Embed(self.num_classes + 1, 1)(labels)[:, None, None, :]
        return jnp.tanh(x * (1.0 + scale) + (t / 1000.0)[:, None, None, None])


def test_generate_wires_rescale_and_interval_without_recompiling():
    """generate(): guidance rescale and interval are traced arguments of the one compiled
    sampler; an interval that excludes every step is the conditional model (w = 0), the
    full interval is plain guidance, and rescale changes the samples."""
    from diffjax.app.generate import _generate, generate

    model = _ToyClassNet(num_classes=3)  # any Linen module with the UNet's call signature
    params = model.init(
        {"params": jax.random.key(0)},
        jnp.zeros((1, 4, 4, 1)),
        jnp.zeros((1,)),
        jnp.zeros((1,), jnp.int32),
        train=False,
    )["params"]
    common = dict(
        prediction_type="eps", image_shape=(4, 4, 1), key=jax.random.key(1), labels=[0, 2],
        sampler="unipc", num_steps=3, clip_x0=None,
    )
    run = lambda **kw: np.asarray(generate(model, params, SCHED, **common, **kw))  # noqa: E731
    before = _generate._cache_size()
    plain = run(guidance_scale=3.0)
    outs = {
        "conditional": run(guidance_scale=0.0, guidance_interval=(0.0, 999.0)),
        "outside": run(guidance_scale=3.0, guidance_interval=(2000.0, 3000.0)),
        "full": run(guidance_scale=3.0, guidance_interval=(-1.0, 999.0)),
        "rescaled": run(guidance_scale=3.0, guidance_rescale=0.7),
    }
    assert _generate._cache_size() == before + 1
    np.testing.assert_allclose(outs["outside"], outs["conditional"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(outs["full"], plain, rtol=1e-6, atol=1e-6)
    assert not np.allclose(outs["rescaled"], plain, atol=1e-4)
    assert not np.allclose(plain, outs["conditional"], atol=1e-4)
    with pytest.raises(ValueError, match="guidance_scale"):
        run(guidance_rescale=0.5)
    with pytest.raises(ValueError, match="guidance_rescale"):
        run(guidance_scale=1.0, guidance_rescale=1.5)
    with pytest.raises(ValueError, match="t_lo <= t_hi"):
        run(guidance_scale=1.0, guidance_interval=(5.0, 1.0))


def test_cli_guidance_flags_parse():
    from diffjax.app.cli import build_parser
    from diffjax.app.generate import parse_guidance_interval
    from diffjax.app.sampler_specs import parse_sampler

    args = build_parser().parse_args(
        ["sample", "--workdir", "w", "--sampler", "edm-heun", "--guidance", "2",
         "--guidance-rescale", "0.7", "--guidance-interval", "100,800"]
    )
    assert args.guidance_rescale == 0.7 and args.sampler == parse_sampler("edm-heun")
    assert parse_guidance_interval(args.guidance_interval) == (100.0, 800.0)
    assert parse_guidance_interval(None) is None
    for bad in ("100", "a,b", "1,2,3"):
        with pytest.raises(ValueError, match="--guidance-interval"):
            parse_guidance_interval(bad)
    with pytest.raises(ValueError, match="LO <= HI"):
        parse_guidance_interval("800,100")
