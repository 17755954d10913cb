"""The DDPM/ADM UNet: parameter count, shapes, dtypes, dropout, conditioning, errors."""

import functools
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.nn import UNet, embedding_erasing_widths, group_count, timestep_embedding

# Tiny class-conditional config used by most tests (8x8x1 inputs, attention at 4x4).
TINY = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
            num_groups=4, dropout=0.1, num_classes=3)


def _count(tree) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def _random_params(model, x, t, labels=None, seed=0, scale=0.3):
    """Parameters of the right shapes filled with numpy normals (no jitted init to compile).

    Random values everywhere (also in the zero-initialized output layers) make every
    parameter matter, so conditioning and dropout show in the output.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, t, labels)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * scale, s.dtype), shapes)


@functools.cache
def _tiny_apply():
    """One jitted apply of the TINY model, shared by tests (one compilation per input shape)."""
    return jax.jit(UNet(**TINY).apply)


@functools.cache
def _inputs(batch=2, size=8, channels=1):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(batch, size, size, channels)), jnp.float32)
    t = jnp.asarray(rng.uniform(0, 999, size=(batch,)), jnp.float32)
    return x, t


def test_ddpm_cifar10_parameter_count():
    model = UNet()  # DDPM CIFAR-10 defaults: 128, (1, 2, 2, 2), 2 blocks, attention at 16.
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                            jnp.zeros((1,)))
    n = _count(shapes)
    assert abs(n - 35.7e6) / 35.7e6 < 0.01, n
    assert n == 35_746_307  # the count of the official DDPM CIFAR-10 model
    # Class conditioning adds (num_classes + 1) * 4 * base_channels parameters.
    cond = UNet(num_classes=10)
    shapes_c = jax.eval_shape(cond.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                              jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
    assert _count(shapes_c) == n + 11 * 512


def test_attention_only_at_requested_resolution():
    x, t = _inputs()
    labels = jnp.array([0, 1])
    params = jax.eval_shape(UNet(**TINY).init, jax.random.key(0), x, t, labels)["params"]
    attn = sorted(k for k in params if "attn" in k)
    # Level 1 is 4x4: one down block, mid, two up blocks; level 0 (8x8) has none.
    assert attn == ["down_1_attn_0", "mid_attn", "up_1_attn_0", "up_1_attn_1"]


def test_real_init_and_zero_output_at_init():
    x, t = _inputs()
    labels = jnp.array([0, 3])
    model = UNet(**TINY)
    # An rbg key: threefry random ops compile slowly on XLA:CPU (~1-2 s each).
    params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x, t, labels)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert params["params"]["class_embed"]["embedding"].shape == (4, 32)
    y = _tiny_apply()(params, x, t, labels)
    chex.assert_shape(y, x.shape)
    # The final convolution is zero-initialized (DDPM), so the initial prediction is 0.
    np.testing.assert_array_equal(y, 0.0)


def test_shapes_scalar_time_and_out_channels():
    x, t = _inputs(batch=3, size=8, channels=2)
    model = UNet(**{**TINY, "num_classes": None, "out_channels": 5})
    params = _random_params(model, x, t)
    apply = jax.jit(model.apply)
    y = apply(params, x, t)
    chex.assert_shape(y, (3, 8, 8, 5))
    assert y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))
    # A scalar time is broadcast over the batch.
    y_scalar = apply(params, x, t[1])
    chex.assert_trees_all_close(y_scalar[1], y[1], rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_float32_params_and_output():
    x, t = _inputs()
    labels = jnp.array([0, 2])
    model16 = UNet(**TINY, dtype=jnp.bfloat16)
    shapes = jax.eval_shape(model16.init, jax.random.key(0), x, t, labels)
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(shapes))
    params = _random_params(model16, x, t, labels)
    y16 = jax.jit(model16.apply)(params, x, t, labels)
    y32 = _tiny_apply()(params, x, t, labels)
    assert y16.dtype == jnp.float32
    rel = float(jnp.linalg.norm(y16 - y32) / jnp.linalg.norm(y32))
    assert rel < 0.1, rel


def test_dropout_only_in_training():
    x, t = _inputs()
    labels = jnp.array([1, 2])
    model = UNet(**TINY)
    params = _random_params(model, x, t, labels)

    @jax.jit
    def train_apply(key):
        return model.apply(params, x, t, labels, train=True, rngs={"dropout": key})

    # Without train=True no rng is needed (and the output is deterministic).
    y_eval = _tiny_apply()(params, x, t, labels)
    y_a = train_apply(jax.random.key(0, impl="rbg"))
    y_b = train_apply(jax.random.key(1, impl="rbg"))
    assert float(jnp.max(jnp.abs(y_a - y_eval))) > 1e-3
    assert float(jnp.max(jnp.abs(y_a - y_b))) > 1e-3
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(functools.partial(model.apply, train=True), params, x, t, labels)
    # dropout=0 with train=True needs no rng (no dropout mask is drawn).
    model0 = UNet(**{**TINY, "dropout": 0.0})
    jax.eval_shape(functools.partial(model0.apply, train=True), params, x, t, labels)


def test_class_conditioning_and_null_label():
    x, t = _inputs()
    model = UNet(**TINY)
    assert model.null_label == 3
    params = _random_params(model, x, t, jnp.array([0, 0]))
    apply = _tiny_apply()
    y0 = apply(params, x, t, jnp.array([0, 0]))
    y1 = apply(params, x, t, jnp.array([1, 1]))
    y_null = apply(params, x, t, jnp.full((2,), model.null_label))
    assert bool(jnp.all(jnp.isfinite(y_null)))
    assert float(jnp.max(jnp.abs(y0 - y1))) > 1e-3
    assert float(jnp.max(jnp.abs(y0 - y_null))) > 1e-3
    # Labels act per example.
    y_mixed = apply(params, x, t, jnp.array([0, 1]))
    chex.assert_trees_all_close(y_mixed[0], y0[0], rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(y_mixed[1], y1[1], rtol=1e-5, atol=1e-5)


def test_an_added_embedding_is_erased_at_one_channel_per_group_unless_it_scales_and_shifts():
    # 8 channels in 8 groups: GroupNorm subtracts each channel's mean, which is exactly
    # the constant an added embedding contributes. Scale-shift after the norm keeps it.
    x, t = _inputs()
    config = dict(base_channels=8, channel_mults=(1,), num_res_blocks=1,
                  attention_resolutions=(), num_groups=8, dropout=0.0, num_classes=3)
    labels, other_labels, other_t = jnp.array([0, 0]), jnp.array([1, 1]), t + 300.0
    changes = {}
    for scale_shift in (False, True):
        model = UNet(**config, scale_shift_norm=scale_shift)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            params = _random_params(model, x, t, labels)
        erased_warning = [w for w in caught if "one channel per GroupNorm group" in str(w.message)]
        assert bool(erased_warning) == (not scale_shift), [str(w.message) for w in caught]
        y = model.apply(params, x, t, labels)
        changes[scale_shift] = (
            float(jnp.max(jnp.abs(model.apply(params, x, t, other_labels) - y))),
            float(jnp.max(jnp.abs(model.apply(params, x, other_t, labels) - y))),
        )
    assert max(changes[False]) < 1e-4, changes  # neither labels nor t reach the output
    assert min(changes[True]) > 1e-2, changes  # both do
    assert embedding_erasing_widths(8, (1,), 8) == [8]
    assert embedding_erasing_widths(32, (1, 2), 32) == [32]
    assert embedding_erasing_widths(128, (1, 2, 2, 2), 32) == []


def test_input_errors():
    x, t = _inputs()
    labels = jnp.array([0, 1])
    cond = UNet(**TINY)
    uncond = UNet(**{**TINY, "num_classes": None})
    params = _random_params(cond, x, t, labels)
    params_u = _random_params(uncond, x, t)
    with pytest.raises(ValueError, match="4-D"):
        cond.apply(params, x[0], t, labels)
    with pytest.raises(ValueError, match="divisible"):
        three_levels = UNet(**{**TINY, "channel_mults": (1, 2, 2)})  # needs multiples of 4
        jax.eval_shape(three_levels.init, jax.random.key(0), jnp.zeros((2, 6, 6, 1)), t, labels)
    with pytest.raises(ValueError, match="divisible"):
        cond.apply(params, jnp.zeros((2, 7, 8, 1)), t, labels)
    with pytest.raises(ValueError, match="labels are required"):
        cond.apply(params, x, t)
    with pytest.raises(ValueError, match="unconditional"):
        uncond.apply(params_u, x, t, labels)
    with pytest.raises(ValueError, match="labels must have shape"):
        cond.apply(params, x, t, jnp.array([0, 1, 2]))
    with pytest.raises(TypeError, match="labels must be integers"):
        cond.apply(params, x, t, jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="t must be"):
        cond.apply(params, x, jnp.zeros((3,)), labels)
    with pytest.raises(ValueError, match="null_label"):
        _ = uncond.null_label
    with pytest.raises(ValueError, match="num_heads"):
        jax.eval_shape(UNet(**{**TINY, "num_heads": 3}).init, jax.random.key(0), x, t, labels)


def test_timestep_embedding_and_groups():
    emb = timestep_embedding(jnp.array([0.0, 1.0, 999.0]), 8)
    chex.assert_shape(emb, (3, 8))
    np.testing.assert_allclose(emb[0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)
    np.testing.assert_allclose(emb[1, 0], np.sin(1.0), rtol=1e-6)
    np.testing.assert_allclose(emb[1, 3], np.sin(1e-4), rtol=1e-4)  # lowest frequency 1/10000
    assert group_count(128, 32) == 32
    assert group_count(8, 32) == 8
    assert group_count(24, 16) == 12


def test_remat_keeps_parameters_outputs_and_gradients():
    x, t = _inputs()
    labels = jnp.array([0, 2])
    # One level (a res block, attention at 8x8 and the middle): remat is per block, and a
    # small model keeps the two gradient compilations cheap.
    small = dict(TINY, channel_mults=(1,), attention_resolutions=(8,))
    plain, remat = UNet(**small), UNet(**small, remat=True)
    shapes = jax.eval_shape(plain.init, jax.random.key(0), x, t, labels)
    chex.assert_trees_all_equal_shapes_and_dtypes(
        shapes, jax.eval_shape(remat.init, jax.random.key(0), x, t, labels)
    )
    params = _random_params(plain, x, t, labels)
    key = jax.random.key(3, impl="rbg")

    def loss(model, p):
        y = model.apply(p, x, t, labels, train=True, rngs={"dropout": key})
        return jnp.mean(y**2)

    jaxpr = str(jax.make_jaxpr(jax.grad(functools.partial(loss, remat)))(params))
    assert "remat" in jaxpr or "checkpoint" in jaxpr
    (l_plain, g_plain), (l_remat, g_remat) = (
        jax.jit(jax.value_and_grad(functools.partial(loss, m)))(params) for m in (plain, remat)
    )
    chex.assert_trees_all_close(l_remat, l_plain, rtol=1e-6)
    chex.assert_trees_all_close(g_remat, g_plain, rtol=1e-5, atol=1e-6)
