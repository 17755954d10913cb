"""The matmul kernel-gradient convolution (experiments/conv_matmul_grad.py) equals lax's."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from repo_scripts import load_script

from diffjax.nn import UNet

_matmul_conv = load_script("experiments/conv_matmul_grad.py")
AUTO_MATMUL_BACKENDS = _matmul_conv.AUTO_MATMUL_BACKENDS
conv_general_dilated = _matmul_conv.conv_general_dilated
select_conv_general_dilated = _matmul_conv.select_conv_general_dilated

DN = ("NHWC", "HWIO", "NHWC")

CASES = [
    # (batch, height, width, cin, cout, kh, kw, strides, padding)
    (2, 8, 8, 3, 4, 3, 3, (1, 1), "SAME"),
    (3, 8, 8, 4, 5, 3, 3, (2, 2), "SAME"),
    (1, 9, 7, 2, 3, 3, 3, (2, 2), "SAME"),
    (2, 8, 8, 4, 4, 3, 3, (2, 2), ((1, 1), (1, 1))),
    (2, 7, 6, 3, 2, 3, 2, (1, 2), ((2, 0), (0, 1))),
    (2, 6, 6, 3, 4, 1, 1, (1, 1), "VALID"),
    (5, 10, 10, 2, 3, 5, 5, (3, 3), "VALID"),
    (1, 4, 4, 3, 3, 3, 3, (1, 1), ((0, 0), (0, 0))),
]


def _conv(fn, x, w, strides, padding):
    return fn(x, w, strides, padding, dimension_numbers=DN)


def _normal(rng, shape, dtype=np.float32):
    return jnp.asarray(rng.normal(size=shape), dtype)


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_matches_lax_values_and_grads(case):
    b, h, wd, cin, cout, kh, kw, strides, padding = case
    rng = np.random.default_rng(0)
    x, w = _normal(rng, (b, h, wd, cin)), _normal(rng, (kh, kw, cin, cout))
    out_shape = jax.eval_shape(
        lambda x, w: _conv(lax.conv_general_dilated, x, w, strides, padding), x, w).shape
    g = _normal(rng, out_shape)

    @jax.jit
    def values_and_grads(x, w, g):
        results = []
        for fn in (lax.conv_general_dilated, conv_general_dilated):
            y, vjp = jax.vjp(lambda x, w, fn=fn: _conv(fn, x, w, strides, padding), x, w)
            results.append((y, *vjp(g)))
        return results

    ref, got = values_and_grads(x, w, g)
    chex.assert_trees_all_close(got, ref, rtol=1e-5, atol=1e-5)


def test_jit_grad_of_scalar_loss():
    rng = np.random.default_rng(1)
    x, w = _normal(rng, (4, 8, 8, 3)), _normal(rng, (3, 3, 3, 6))

    def loss(fn, w, x):
        return jnp.sum(jnp.tanh(_conv(fn, x, w, (2, 2), "SAME")) ** 2)

    ref = jax.grad(loss, argnums=(1, 2))(lax.conv_general_dilated, w, x)
    got = jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0)(conv_general_dilated, w, x)
    chex.assert_trees_all_close(got, ref, rtol=1e-5, atol=1e-5)


def test_bfloat16_kernel_grad_dtype():
    rng = np.random.default_rng(2)
    x, w = _normal(rng, (2, 8, 8, 3), jnp.bfloat16), _normal(rng, (3, 3, 3, 4), jnp.bfloat16)

    def f(fn):
        return jax.jit(jax.grad(
            lambda w: jnp.sum(_conv(fn, x, w, (1, 1), "SAME").astype(jnp.float32))))
    got, ref = f(conv_general_dilated)(w), f(lax.conv_general_dilated)(w)
    assert got.dtype == jnp.bfloat16
    chex.assert_trees_all_close(
        got.astype(jnp.float32), ref.astype(jnp.float32), rtol=2e-2, atol=2e-2
    )


def test_uncovered_calls_fall_through():
    # NCHW layout, dilation and feature groups go to the stock convolution, same values.
    rng = np.random.default_rng(3)
    x, w = _normal(rng, (2, 4, 8, 8)), _normal(rng, (4, 2, 3, 3))
    kwargs = dict(rhs_dilation=(2, 2), feature_group_count=2)
    got = conv_general_dilated(x, w, (1, 1), "SAME", **kwargs)
    ref = lax.conv_general_dilated(x, w, (1, 1), "SAME", **kwargs)
    np.testing.assert_array_equal(got, ref)


def test_select_modes():
    assert select_conv_general_dilated("matmul") is conv_general_dilated
    assert select_conv_general_dilated("stock") is lax.conv_general_dilated
    auto_matmul = jax.default_backend() in AUTO_MATMUL_BACKENDS
    expected = conv_general_dilated if auto_matmul else lax.conv_general_dilated
    assert select_conv_general_dilated("auto") is expected
    assert "gpu" not in AUTO_MATMUL_BACKENDS and "tpu" not in AUTO_MATMUL_BACKENDS
    with pytest.raises(ValueError, match="conv_weight_grad"):
        select_conv_general_dilated("fast")


def test_unet_gradient_matmul_equals_stock():
    # Two levels: 3x3 convs with stride 1 and 2, with and without channel changes.
    kwargs = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                  attention_resolutions=(), num_groups=4, dropout=0.0, num_classes=3)
    rng = np.random.default_rng(4)
    x, target = _normal(rng, (3, 8, 8, 1)), _normal(rng, (3, 8, 8, 1))
    t = jnp.array([0.0, 10.0, 500.0])
    labels = jnp.array([0, 2, 3])
    stock = UNet(conv_general_dilated=select_conv_general_dilated("stock"), **kwargs)
    matmul = UNet(conv_general_dilated=select_conv_general_dilated("matmul"), **kwargs)
    # Random values in every parameter (no zero-initialized layers), so all carry gradient.
    # (Numpy arithmetic: eager jnp ops on ~50 differently shaped leaves compile ~50 kernels.)
    shapes = jax.eval_shape(stock.init, jax.random.key(0), x, t, labels)
    params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)

    @jax.jit
    def grads(params):
        def loss(model, params):
            return jnp.mean((model.apply(params, x, t, labels) - target) ** 2)
        return [jax.grad(functools.partial(loss, m))(params) for m in (stock, matmul)]

    g_stock, g_matmul = jax.device_get(grads(params))
    leaves_s, leaves_m = jax.tree.leaves(g_stock), jax.tree.leaves(g_matmul)
    scale = max(np.abs(g).max() for g in leaves_s)
    for a, b in zip(leaves_m, leaves_s, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale)
    diff = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(leaves_m, leaves_s, strict=True)))
    norm = np.sqrt(sum(np.sum(b**2) for b in leaves_s))
    assert diff / norm < 1e-5, diff / norm
