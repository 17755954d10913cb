"""The InceptionV3 network of FID (pytorch-fid's ``FIDInceptionV3``) in Flax Linen.

FID numbers are only comparable when computed with one specific network: the TensorFlow
Inception graph of 2015 that the original FID code used, which pytorch-fid ports as
``FIDInceptionV3``. It differs from torchvision's InceptionV3 in ways that change the
features: the pooling branch of the last block (``Mixed_7c``) uses max pooling, the other
pooling branches average with ``count_include_pad=False``; convolutions have no bias;
BatchNorm uses ``eps = 1e-3``; the classifier has 1008 logits. This module reproduces it
layer for layer, with the parameter names of pytorch-fid's state dict (``Mixed_5b`` /
``branch5x5_2`` / ``conv``, ``bn``), NHWC layout.

Weights are never downloaded. Convert pytorch-fid's checkpoint
(``pt_inception-2015-12-05-6726825d.pth``, obtained by the user) once with::

    python -m diffjax.networks.inception convert pt_inception-2015-12-05-6726825d.pth out.npz

(needs ``torch``; only the converter imports it) and point :func:`load_inception_weights`
at the ``.npz`` or set ``DIFFJAX_INCEPTION_WEIGHTS``. The ``.npz`` is a plain numpy
archive, read with ``allow_pickle=False``, every shape checked.

Inputs: :func:`preprocess_images` resizes to 299x299 with bilinear interpolation and no
antialiasing (``jax.image.resize(..., "bilinear", antialias=False)``, which matches
pytorch-fid's ``F.interpolate(..., mode="bilinear", align_corners=False)``) and maps the
value range to ``[-1, 1]``; grayscale images are repeated to three channels. The
features for FID are the 2048-d ``pool3`` outputs.

Parity: ``tests/test_inception.py`` checks this port against pytorch-fid 0.3.0 run with
identical random weights (``experiments/make_inception_golden.py``).

References:
  Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016
  (https://arxiv.org/abs/1512.00567).
  Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
  Equilibrium", NeurIPS 2017 (FID and its Inception graph).
  pytorch-fid (https://github.com/mseitzer/pytorch-fid), ``pytorch_fid/inception.py``.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.files import write_npz_atomic
from diffjax.networks._batching import map_padded_batches
from diffjax.networks.torch_layout import flatten_params, unflatten_params

__all__ = [
    "FEATURE_DIM",
    "INPUT_SIZE",
    "NUM_LOGITS",
    "WEIGHTS_ENV_VAR",
    "FIDInceptionV3",
    "convert_pytorch_fid_checkpoint",
    "inception_apply",
    "inception_features",
    "inception_variable_shapes",
    "load_inception_weights",
    "preprocess_images",
    "pytorch_fid_state_dict_shapes",
    "save_inception_weights",
    "variables_from_pytorch_fid_state_dict",
]

WEIGHTS_ENV_VAR = "DIFFJAX_INCEPTION_WEIGHTS"
"""Environment variable naming the converted weights ``.npz`` when no path is given."""

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008
_BN_EPS = 1e-3
_FORMAT = "diffjax.fid_inception_v3"
_FORMAT_KEY = "__format__"
_VERSION = 1

Pair = tuple[int, int]


def _pair(v: int | Pair) -> Pair:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3, running statistics), ReLU.

    Attributes:
      features: Output channels.
      kernel_size: ``k`` or ``(kh, kw)``.
      strides: ``s`` or ``(sh, sw)``.
      padding: Symmetric zero padding ``p`` or ``(ph, pw)``.
      precision: Precision of the convolution (``"highest"`` keeps float32 on TPU/GPU).
    """

    features: int
    kernel_size: int | Pair
    strides: int | Pair = 1
    padding: int | Pair = 0
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies conv, BN and ReLU to NHWC ``x``."""
        ph, pw = _pair(self.padding)
        x = nn.Conv(
            self.features,
            _pair(self.kernel_size),
            strides=_pair(self.strides),
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            precision=self.precision,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=_BN_EPS, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average pooling, padding 1, padded zeros excluded from the mean."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    """``FIDInceptionA``: 1x1, 5x5, double 3x3 and (count_include_pad=False) pool branches."""

    pool_features: int
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps NHWC ``x`` to ``224 + pool_features`` channels."""
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b1 = conv(64, 1, name="branch1x1")(x)
        b5 = conv(48, 1, name="branch5x5_1")(x)
        b5 = conv(64, 5, padding=2, name="branch5x5_2")(b5)
        b3 = conv(64, 1, name="branch3x3dbl_1")(x)
        b3 = conv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
        b3 = conv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
        bp = conv(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """``InceptionB`` (``Mixed_6a``): the 35x35 -> 17x17 reduction."""

    precision: Any = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps NHWC ``x`` (C channels) to ``480 + C`` channels at half resolution."""
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b3 = conv(384, 3, strides=2, name="branch3x3")(x)
        bd = conv(64, 1, name="branch3x3dbl_1")(x)
        bd = conv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = conv(96, 3, strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    """``FIDInceptionC``: factorized 7x7 branches and a count_include_pad=False pool branch."""

    channels_7x7: int
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps NHWC ``x`` to 768 channels."""
        conv = functools.partial(BasicConv2d, precision=self.precision)
        c7 = self.channels_7x7
        b1 = conv(192, 1, name="branch1x1")(x)
        b7 = conv(c7, 1, name="branch7x7_1")(x)
        b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = conv(c7, 1, name="branch7x7dbl_1")(x)
        bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = conv(192, 1, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """``InceptionD`` (``Mixed_7a``): the 17x17 -> 8x8 reduction."""

    precision: Any = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps NHWC ``x`` (C channels) to ``512 + C`` channels at half resolution."""
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b3 = conv(192, 1, name="branch3x3_1")(x)
        b3 = conv(320, 3, strides=2, name="branch3x3_2")(b3)
        b7 = conv(192, 1, name="branch7x7x3_1")(x)
        b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = conv(192, 3, strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """``FIDInceptionE_1`` / ``FIDInceptionE_2``: expanded 3x3 branches.

    Attributes:
      max_pool: Pool branch uses 3x3 max pooling (``E_2``, ``Mixed_7c``) instead of
        count_include_pad=False average pooling (``E_1``, ``Mixed_7b``).
      precision: Convolution precision.
    """

    max_pool: bool = False
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps NHWC ``x`` to 2048 channels."""
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b1 = conv(320, 1, name="branch1x1")(x)
        b3 = conv(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = conv(448, 1, name="branch3x3dbl_1")(x)
        bd = conv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        bp = conv(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's ``FIDInceptionV3`` (no auxiliary head), NHWC.

    ``__call__`` takes images already preprocessed (see :func:`preprocess_images`): NHWC,
    3 channels, values in ``[-1, 1]``, normally 299x299 (any size from 75x75 up runs).
    It returns ``{"pool3": (B, 2048), "logits": (B, 1008)}``. The outputs of pytorch-fid's
    blocks 0-2 (after ``maxpool1``, ``maxpool2`` and ``Mixed_6e``) are sown into the
    ``"intermediates"`` collection as ``block0``..``block2``.

    Variables: ``{"params": ..., "batch_stats": ...}`` (BatchNorm running statistics).

    Attributes:
      precision: Precision of every convolution and of the classifier.
    """

    precision: Any = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        """Runs the network on preprocessed NHWC images."""
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected preprocessed NHWC RGB images, got shape {x.shape}.")
        conv = functools.partial(BasicConv2d, precision=self.precision)
        p = self.precision
        x = conv(32, 3, strides=2, name="Conv2d_1a_3x3")(x)
        x = conv(32, 3, name="Conv2d_2a_3x3")(x)
        x = conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        self.sow("intermediates", "block0", x)
        x = conv(80, 1, name="Conv2d_3b_1x1")(x)
        x = conv(192, 3, name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        self.sow("intermediates", "block1", x)
        x = InceptionA(32, precision=p, name="Mixed_5b")(x)
        x = InceptionA(64, precision=p, name="Mixed_5c")(x)
        x = InceptionA(64, precision=p, name="Mixed_5d")(x)
        x = InceptionB(precision=p, name="Mixed_6a")(x)
        x = InceptionC(128, precision=p, name="Mixed_6b")(x)
        x = InceptionC(160, precision=p, name="Mixed_6c")(x)
        x = InceptionC(160, precision=p, name="Mixed_6d")(x)
        x = InceptionC(192, precision=p, name="Mixed_6e")(x)
        self.sow("intermediates", "block2", x)
        x = InceptionD(precision=p, name="Mixed_7a")(x)
        x = InceptionE(max_pool=False, precision=p, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, precision=p, name="Mixed_7c")(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(NUM_LOGITS, precision=p, name="fc")(pool3)
        return {"pool3": pool3, "logits": logits}


# --------------------------------------------------------------------------------------
# Preprocessing and application.


def preprocess_images(
    images: jax.Array,
    *,
    resize: bool = True,
    input_range: Sequence[float] | None = (-1.0, 1.0),
    size: int = INPUT_SIZE,
) -> jax.Array:
    """Prepares NHWC images for :class:`FIDInceptionV3` (traceable).

    Args:
      images: ``(B, H, W, C)`` with ``C`` 1 (repeated to RGB) or 3.
      resize: Resize to ``size x size`` with bilinear interpolation, no antialiasing
        (pytorch-fid's ``F.interpolate(mode="bilinear", align_corners=False)``).
      input_range: ``(low, high)`` value range of ``images``, mapped linearly to
        ``[-1, 1]``: ``(-1, 1)`` for diffjax data (the default), ``(0, 1)`` for
        pytorch-fid's convention, ``(0, 255)`` for pixels. ``None``: leave values as they
        are (already in ``[-1, 1]``).
      size: Target side length.

    Returns:
      ``(B, size, size, 3)`` float32 images (``(B, H, W, 3)`` without resize).
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"images must be NHWC with 1 or 3 channels, got shape {images.shape}"
            + ("; transpose NCHW with x.transpose(0, 2, 3, 1)" if images.ndim == 4 else "")
            + "."
        )
    x = images.astype(jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if resize and x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear", antialias=False)
    if input_range is not None:
        lo, hi = float(input_range[0]), float(input_range[1])
        if not hi > lo:
            raise ValueError(f"input_range must be (low, high) with high > low, {input_range=}.")
        if (lo, hi) != (-1.0, 1.0):
            x = (x - lo) * (2.0 / (hi - lo)) - 1.0
    return x


@functools.partial(jax.jit, static_argnames=("resize", "input_range", "precision"))
def _apply(
    variables: Any,
    images: jax.Array,
    resize: bool,
    input_range: tuple[float, float] | None,
    precision: Any,
) -> dict[str, jax.Array]:
    x = preprocess_images(images, resize=resize, input_range=input_range)
    return FIDInceptionV3(precision=precision).apply(variables, x)


def _static_range(input_range: Sequence[float] | None) -> tuple[float, float] | None:
    return None if input_range is None else (float(input_range[0]), float(input_range[1]))


def inception_apply(
    variables: Any,
    images: Any,
    *,
    resize: bool = True,
    input_range: Sequence[float] | None = (-1.0, 1.0),
    precision: Any = "highest",
) -> dict[str, jax.Array]:
    """Preprocesses and runs :class:`FIDInceptionV3` on one batch (jitted per shape).

    Args:
      variables: From :func:`load_inception_weights`.
      images: ``(B, H, W, C)`` images, ``C`` in {1, 3}.
      resize: Resize to 299x299 first (see :func:`preprocess_images`).
      input_range: Value range of ``images`` (see :func:`preprocess_images`).
      precision: Convolution precision.

    Returns:
      ``{"pool3": (B, 2048), "logits": (B, 1008)}`` float32.
    """
    return _apply(variables, jnp.asarray(images), resize, _static_range(input_range), precision)


def inception_features(
    variables: Any,
    images: Any,
    *,
    batch_size: int = 50,
    resize: bool = True,
    input_range: Sequence[float] | None = (-1.0, 1.0),
    precision: Any = "highest",
) -> np.ndarray:
    """The 2048-d pool3 features of ``images``, computed in batches (host numpy, float32).

    The last batch is padded to ``batch_size`` so that there is one compilation.
    Accumulate FID statistics from them with :class:`diffjax.metrics.fid.FeatureStatistics`.

    Args:
      variables: From :func:`load_inception_weights`.
      images: ``(N, H, W, C)`` images (numpy or JAX), ``C`` in {1, 3}.
      batch_size: Images per compiled call.
      resize: Resize to 299x299 first.
      input_range: Value range of ``images`` (see :func:`preprocess_images`).
      precision: Convolution precision.

    Returns:
      ``(N, 2048)`` float32 features.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}.")

    def pool3(x: np.ndarray) -> jax.Array:
        return inception_apply(
            variables, x, resize=resize, input_range=input_range, precision=precision
        )["pool3"]

    return map_padded_batches(pool3, images, batch_size, (FEATURE_DIM,))


# --------------------------------------------------------------------------------------
# Variable shapes and pytorch-fid names.


def inception_variable_shapes() -> dict[str, tuple[int, ...]]:
    """Shapes of every variable, keyed ``"params/Mixed_5b/branch1x1/conv/kernel"`` etc.

    Computed once with ``jax.eval_shape`` (no compilation, no memory), then cached.
    """
    return dict(_variable_shapes())


@functools.cache
def _variable_shapes() -> tuple[tuple[str, tuple[int, ...]], ...]:
    x = jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32)
    tree = jax.eval_shape(lambda x: FIDInceptionV3().init(jax.random.key(0), x), x)
    return tuple((k, tuple(v.shape)) for k, v in flatten_params(tree).items())


# Flax variable (collection, leaf) -> (pytorch-fid suffix, transform to Flax layout).
_TORCH_SUFFIX = {
    ("params", "kernel", "conv"): ("weight", lambda w: np.transpose(w, (2, 3, 1, 0))),
    ("params", "scale", "bn"): ("weight", None),
    ("params", "bias", "bn"): ("bias", None),
    ("batch_stats", "mean", "bn"): ("running_mean", None),
    ("batch_stats", "var", "bn"): ("running_var", None),
    ("params", "kernel", "fc"): ("weight", lambda w: np.transpose(w)),
    ("params", "bias", "fc"): ("bias", None),
}


def _torch_name(flax_name: str) -> tuple[str, Any]:
    collection, *path, leaf = flax_name.split("/")
    owner = path[-1]
    suffix, transform = _TORCH_SUFFIX[(collection, leaf, owner)]
    return ".".join([*path, suffix]), transform


def _to_torch_layout(flax_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The pytorch shape of a Flax variable: conv (kh, kw, in, out) -> (out, in, kh, kw)."""
    if flax_name.endswith("conv/kernel"):
        return (shape[3], shape[2], shape[0], shape[1])
    if flax_name.endswith("fc/kernel"):
        return (shape[1], shape[0])
    return shape


def pytorch_fid_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """The pytorch-fid ``FIDInceptionV3`` state-dict keys (no ``num_batches_tracked``) and shapes.

    These are the keys of ``pt_inception-2015-12-05-6726825d.pth``: 94 ``BasicConv2d``
    layers (``*.conv.weight``, ``*.bn.{weight,bias,running_mean,running_var}``) and
    ``fc.{weight,bias}``.
    """
    out = {}
    for flax_name, shape in inception_variable_shapes().items():
        torch_name, _ = _torch_name(flax_name)
        out[torch_name] = _to_torch_layout(flax_name, shape)
    return dict(sorted(out.items()))


def variables_from_pytorch_fid_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Converts a pytorch-fid state dict (numpy arrays or tensors) to Flax variables.

    Keys are those of pytorch-fid's ``fid_inception_v3()`` model (``Conv2d_1a_3x3.conv.
    weight``, ``Mixed_7c.branch_pool.bn.running_var``, ``fc.bias``, ...); a ``module.``
    prefix is stripped, ``num_batches_tracked`` buffers are ignored. Every other key must
    match exactly, with the expected shape.

    Args:
      state_dict: Mapping from pytorch-fid key to array (anything ``np.asarray`` takes).

    Returns:
      ``{"params": ..., "batch_stats": ...}`` of float32 numpy arrays.

    Raises:
      KeyError: On missing or unexpected keys (listed).
      ValueError: On a shape mismatch.
    """
    sd = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.endswith("num_batches_tracked"):
            continue
        sd[key] = value
    shapes = inception_variable_shapes()
    flat: dict[str, np.ndarray] = {}
    used = set()
    missing = []
    for flax_name, shape in shapes.items():
        torch_name, transform = _torch_name(flax_name)
        if torch_name not in sd:
            missing.append(torch_name)
            continue
        value = np.asarray(sd[torch_name], dtype=np.float32)
        used.add(torch_name)
        if transform is not None:
            value = transform(value)
        if value.shape != shape:
            raise ValueError(
                f"{torch_name}: expected shape {_to_torch_layout(flax_name, shape)} "
                f"(pytorch layout), got {np.shape(sd[torch_name])}."
            )
        flat[flax_name] = np.ascontiguousarray(value)
    unexpected = sorted(set(sd) - used)
    if missing or unexpected:
        raise KeyError(
            f"Not a pytorch-fid FIDInceptionV3 state dict: {len(missing)} missing keys "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, {len(unexpected)} unexpected "
            f"keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}."
        )
    return unflatten_params(flat)


# --------------------------------------------------------------------------------------
# Weight files.


def save_inception_weights(path: str | os.PathLike[str], variables: Mapping[str, Any]) -> None:
    """Writes Flax variables of :class:`FIDInceptionV3` to an ``.npz`` (float32, no pickle).

    Args:
      path: Destination file (``.npz`` is appended when missing), written atomically.
      variables: ``{"params": ..., "batch_stats": ...}``.
    """
    flat = {k: np.asarray(v, np.float32) for k, v in flatten_params(variables).items()}
    _check_flat(flat, str(path))
    write_npz_atomic(path, **{_FORMAT_KEY: np.array(f"{_FORMAT}.v{_VERSION}")}, **flat)


def _check_flat(flat: Mapping[str, np.ndarray], where: str) -> None:
    shapes = inception_variable_shapes()
    missing = sorted(set(shapes) - set(flat))
    unexpected = sorted(set(flat) - set(shapes))
    if missing or unexpected:
        raise KeyError(
            f"{where}: not FIDInceptionV3 weights: {len(missing)} missing variables "
            f"{missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}."
        )
    bad = [(k, v.shape, shapes[k]) for k, v in flat.items() if tuple(v.shape) != shapes[k]]
    if bad:
        details = ", ".join(f"{k}: {got} (expected {want})" for k, got, want in bad[:5])
        raise ValueError(f"{where}: {len(bad)} variables have the wrong shape: {details}.")


def load_inception_weights(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Loads converted FID Inception weights (see :func:`convert_pytorch_fid_checkpoint`).

    Args:
      path: The ``.npz``; default: the file named by ``$DIFFJAX_INCEPTION_WEIGHTS``.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` of float32 JAX arrays.

    Raises:
      FileNotFoundError: If no path is given and the variable is unset, or the file is
        absent (the message says how to produce it; nothing is downloaded).
      KeyError / ValueError: If the file is not a complete, correctly shaped set.
    """
    if path is None:
        path = os.environ.get(WEIGHTS_ENV_VAR) or None
        if path is None:
            raise FileNotFoundError(
                "No FID Inception weights: pass a path or set "
                f"{WEIGHTS_ENV_VAR}=/path/to/fid_inception.npz. diffjax never downloads them. "
                "Get pytorch-fid's pt_inception-2015-12-05-6726825d.pth (its GitHub release "
                "'fid_weights') and convert it once with `python -m "
                "diffjax.networks.inception convert <pth> <npz>` (needs torch)."
            )
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"FID Inception weights file {path!r} does not exist. Convert pytorch-fid's "
            "checkpoint with `python -m diffjax.networks.inception convert <pth> <npz>`."
        )
    with np.load(path, allow_pickle=False) as data:
        flat = {k: data[k] for k in data.files if k != _FORMAT_KEY}
        fmt = str(data[_FORMAT_KEY]) if _FORMAT_KEY in data.files else None
    if fmt is not None and not fmt.startswith(_FORMAT):
        raise ValueError(f"{path!r} holds {fmt!r}, not {_FORMAT!r} weights.")
    _check_flat(flat, path)
    return unflatten_params({k: jnp.asarray(v, jnp.float32) for k, v in flat.items()})


def convert_pytorch_fid_checkpoint(
    src: str | os.PathLike[str], dst: str | os.PathLike[str]
) -> None:
    """Converts pytorch-fid's ``.pth`` checkpoint into diffjax's ``.npz`` (needs torch).

    Reads with ``torch.load(src, map_location="cpu", weights_only=True)`` (no arbitrary
    unpickling); torch is imported only here.

    Args:
      src: ``pt_inception-2015-12-05-6726825d.pth`` (or any state dict with its keys).
      dst: Output ``.npz`` for :func:`load_inception_weights`.
    """
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Converting the pytorch-fid checkpoint needs PyTorch (`pip install torch`); "
            "loading the converted .npz does not."
        ) from e
    state = torch.load(os.fspath(src), map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    sd = {k: v.detach().cpu().numpy() for k, v in state.items()}
    save_inception_weights(dst, variables_from_pytorch_fid_state_dict(sd))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m diffjax.networks.inception convert SRC.pth DST.npz``."""
    parser = argparse.ArgumentParser(prog="python -m diffjax.networks.inception")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert pytorch-fid's .pth to diffjax's .npz")
    conv.add_argument("src")
    conv.add_argument("dst")
    args = parser.parse_args(argv)
    convert_pytorch_fid_checkpoint(args.src, args.dst)
    print(f"wrote {args.dst}")


if __name__ == "__main__":  # pragma: no cover
    main()
