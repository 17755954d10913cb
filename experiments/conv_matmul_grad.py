"""A drop-in ``lax.conv_general_dilated`` whose kernel gradient is a sum of matmuls.

An experiment, kept out of the package because it measured slower. On XLA:CPU the weight
gradient of a 2-D convolution (which JAX expresses as another convolution with the batch
and feature axes swapped) once ran several times slower than the forward pass. For a
kernel of size ``kh x kw`` the same gradient is exactly ``kh * kw`` matrix products
between strided slices of the padded input and the output cotangent:

    dW[i, j] = sum_{b, h, w} x_pad[b, s*h + i, s*w + j, :]^T  g[b, h, w, :]

which need no convolution emitter at all. :func:`conv_general_dilated` computes the forward
pass and the input gradient with the stock ``lax`` convolution and only replaces the
kernel gradient. It has the signature of ``lax.conv_general_dilated`` so that it can be
given to ``diffjax.nn.UNet(conv_general_dilated=...)`` (or any
``flax.linen.Conv(..., conv_general_dilated=...)``); calls it does not cover (other
layouts, dilations, feature groups, negative padding, other than 2 spatial dims) fall
through to ``lax.conv_general_dilated`` unchanged.

:func:`select_conv_general_dilated` picks the implementation by mode. ``'auto'`` uses
the matmul gradient only on the backends listed in ``AUTO_MATMUL_BACKENDS`` (checked with
``jax.default_backend()`` at trace time), so GPU and TPU programs are exactly the stock
ones. That set is empty: with jax 0.10.2, XLA:CPU runs convolutions in its YNNPACK
fusions and the stock kernel gradient takes 1.3-3.5x the forward time (an earlier ~9x
did not reproduce); the strided patch copies and transposed-operand matmuls of the matmul
version cost more, and it made the digits-UNet train step slower (0.7-0.8x at 8x8,
0.8-0.9x at 16x16; experiments/bench_conv_grad.py, results in
experiments/results/bench_conv_grad.txt). Re-measure with that script; where it wins,
add the backend to the set and pass ``select_conv_general_dilated('auto')`` to the UNet.
Its values and gradients are checked against ``lax`` by tests/test_conv.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "AUTO_MATMUL_BACKENDS",
    "CONV_WEIGHT_GRAD_MODES",
    "conv_general_dilated",
    "select_conv_general_dilated",
]

CONV_WEIGHT_GRAD_MODES = ("auto", "matmul", "stock")

# Backends on which 'auto' picks the matmul kernel gradient: only where it was measured to
# make the train step faster (see the module docstring; empty for jax 0.10.2 XLA:CPU).
AUTO_MATMUL_BACKENDS: frozenset[str] = frozenset()

# NHWC input, HWIO kernel, NHWC output, in ConvDimensionNumbers form.
_NHWC_HWIO = lax.ConvDimensionNumbers(
    lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)
)

Pads = tuple[tuple[int, int], tuple[int, int]]


def _all_ones(values: Sequence[int] | None) -> bool:
    return values is None or all(v == 1 for v in values)


def _explicit_pads(
    padding: str | Sequence[tuple[int, int]] | Sequence[int],
    in_hw: Sequence[int],
    kernel_hw: Sequence[int],
    strides: Sequence[int],
) -> Pads | None:
    """Returns ((lo, hi), (lo, hi)) padding, or None when it is not representable."""
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(tuple(in_hw), tuple(kernel_hw), tuple(strides), padding)
    else:
        pads = list(padding)
    if len(pads) != 2:
        return None
    out = []
    for p in pads:
        if isinstance(p, int):  # lax accepts neither; let it raise the error.
            return None
        lo, hi = (int(v) for v in p)
        if lo < 0 or hi < 0:
            return None
        out.append((lo, hi))
    return (out[0], out[1])


def _kernel_grad(x: jax.Array, g: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int],
                 pads: Pads, precision: Any, out_dtype: Any) -> jax.Array:
    """Kernel gradient of an NHWC/HWIO convolution as kh*kw matrix products.

    Args:
      x: the convolution input, (B, H, W, Cin).
      g: the output cotangent, (B, Ho, Wo, Cout).
      kernel_hw: (kh, kw).
      strides: (sh, sw).
      pads: explicit non-negative padding ((top, bottom), (left, right)).
      precision: passed to the matmuls.
      out_dtype: dtype of the returned gradient (the kernel's dtype).

    Returns:
      The kernel gradient, (kh, kw, Cin, Cout).
    """
    kh, kw = kernel_hw
    sh, sw = strides
    batch, _, _, cin = x.shape
    _, ho, wo, cout = g.shape
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    low_precision = jnp.dtype(x.dtype).itemsize < 4
    acc_dtype = jnp.float32 if low_precision else None
    g2 = g.astype(x.dtype).reshape(-1, cout)
    rows = []
    for i in range(kh):
        cols = []
        for j in range(kw):
            patch = lax.slice(
                xp,
                (0, i, j, 0),
                (batch, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, cin),
                (1, sh, sw, 1),
            )
            # (Cin, N) @ (N, Cout): contract the batch*spatial axis of both.
            cols.append(
                lax.dot_general(
                    patch.reshape(-1, cin),
                    g2,
                    (((0,), (0,)), ((), ())),
                    precision=precision,
                    preferred_element_type=acc_dtype,
                )
            )
        rows.append(jnp.stack(cols))
    return jnp.stack(rows).astype(out_dtype)


def _stock_conv(x, w, strides, pads, precision, preferred_element_type):
    return lax.conv_general_dilated(
        x,
        w,
        strides,
        pads,
        dimension_numbers=_NHWC_HWIO,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_matmul_grad(x, w, strides, pads, precision, preferred_element_type):
    return _stock_conv(x, w, strides, pads, precision, preferred_element_type)


def _conv_fwd(x, w, strides, pads, precision, preferred_element_type):
    y = _stock_conv(x, w, strides, pads, precision, preferred_element_type)
    return y, (x, w)


def _conv_bwd(strides, pads, precision, preferred_element_type, res, g):
    x, w = res
    # Input gradient: the stock transposed convolution (its forward is dead code).
    _, x_vjp = jax.vjp(
        lambda x_: _stock_conv(x_, w, strides, pads, precision, preferred_element_type), x
    )
    (dx,) = x_vjp(g)
    dw = _kernel_grad(x, g, tuple(w.shape[:2]), strides, pads, precision, w.dtype)
    return dx, dw


_conv_matmul_grad.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """``lax.conv_general_dilated`` with a matmul kernel gradient (same values).

    Covered: 2-D NHWC/HWIO convolutions with any strides, string or non-negative explicit
    padding, no dilation and one feature/batch group, any batch size. Anything else is
    forwarded to ``lax.conv_general_dilated`` unchanged. The forward pass and the input
    gradient are the stock ones; only the kernel gradient is computed as ``kh * kw``
    matrix products (accumulated in float32 for 16-bit inputs).

    Args:
      lhs: input, e.g. (B, H, W, Cin).
      rhs: kernel, e.g. (kh, kw, Cin, Cout).
      window_strides: spatial strides.
      padding: 'SAME', 'VALID', 'SAME_LOWER' or a sequence of (low, high) pairs.
      lhs_dilation: input dilation (only None/1 is covered).
      rhs_dilation: kernel dilation (only None/1 is covered).
      dimension_numbers: as in ``lax.conv_general_dilated``.
      feature_group_count: only 1 is covered.
      batch_group_count: only 1 is covered.
      precision: as in ``lax.conv_general_dilated``.
      preferred_element_type: as in ``lax.conv_general_dilated``.

    Returns:
      The convolution output, identical to ``lax.conv_general_dilated``.
    """
    stock = functools.partial(
        lax.conv_general_dilated,
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if lhs.ndim != 4 or rhs.ndim != 4 or len(window_strides) != 2:
        return stock()
    if not (_all_ones(lhs_dilation) and _all_ones(rhs_dilation)):
        return stock()
    if feature_group_count != 1 or batch_group_count != 1:
        return stock()
    try:
        dnums = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    except (TypeError, ValueError):
        return stock()
    if tuple(dnums) != tuple(_NHWC_HWIO):
        return stock()
    strides = (int(window_strides[0]), int(window_strides[1]))
    pads = _explicit_pads(padding, lhs.shape[1:3], rhs.shape[:2], strides)
    if pads is None or lhs.shape[3] != rhs.shape[2]:
        return stock()
    return _conv_matmul_grad(lhs, rhs, strides, pads, precision, preferred_element_type)


def select_conv_general_dilated(mode: str = "auto") -> Callable[..., jax.Array]:
    """Returns the convolution function for a kernel-gradient mode.

    Args:
      mode: 'matmul' (always :func:`conv_general_dilated`), 'stock'
        (``lax.conv_general_dilated``) or 'auto' (matmul when ``jax.default_backend()``,
        read when this is called, i.e. at trace time, is in ``AUTO_MATMUL_BACKENDS``;
        stock otherwise, and always on GPU/TPU).

    Returns:
      A function with the signature of ``lax.conv_general_dilated``.

    Raises:
      ValueError: for an unknown mode.
    """
    if mode not in CONV_WEIGHT_GRAD_MODES:
        raise ValueError(f"conv_weight_grad must be one of {CONV_WEIGHT_GRAD_MODES}, got {mode=!r}")
    if mode == "auto":
        mode = "matmul" if jax.default_backend() in AUTO_MATMUL_BACKENDS else "stock"
    return conv_general_dilated if mode == "matmul" else lax.conv_general_dilated
