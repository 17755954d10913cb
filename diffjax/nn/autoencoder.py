"""The KL-regularised autoencoder of latent diffusion (diffusers' ``AutoencoderKL``) in Flax.

Rombach et al. 2022 (Sec. 3.1, App. G) compress an image ``x`` (``H x W x 3``, values in
``[-1, 1]``) to a latent ``z`` (``H/f x W/f x c``, ``f = 2**(levels - 1)``) with an encoder
``E`` whose output parameterises a diagonal Gaussian posterior

    q(z | x) = N(z; mu(x), diag(exp(logvar(x)))),   logvar clipped to [-30, 20],

trained with a reconstruction loss plus a small KL term ``KL(q(z|x) || N(0, I))`` (the
"KL-reg." autoencoder); a decoder ``D`` maps ``z`` back. The diffusion model works on the
scaled latent ``z * scaling_factor`` (the paper's rescaling to unit variance, Sec. 4.3.2;
0.18215 for SD 1.x/2.x), or ``(z - shift_factor) * scaling_factor`` for VAEs with a
``shift_factor`` (SD 3, Flux): :func:`scale_latents` / :func:`unscale_latents`.

The network is diffusers' ``AutoencoderKL`` layer for layer (NHWC here, NCHW there):

- ``Encoder``: ``conv_in`` 3x3; per level ``layers_per_block`` ResNet blocks and, except
  on the last level, a downsampling 3x3 convolution of stride 2 after padding the bottom
  and right by one (``F.pad(x, (0, 1, 0, 1))``, then padding 0); a mid block (ResNet,
  single-head self-attention, ResNet); GroupNorm, SiLU, ``conv_out`` to ``2 c`` channels.
- ``Decoder``: ``conv_in``; the mid block; per level (widths reversed) ``layers_per_block
  + 1`` ResNet blocks and, except on the last, nearest-neighbour 2x upsampling and a 3x3
  convolution; GroupNorm, SiLU, ``conv_out``.
- ResNet block: ``h = conv2(act(norm2(conv1(act(norm1(x))))))``, output ``x' + h`` with
  ``x'`` a 1x1 ``conv_shortcut`` of ``x`` when the widths differ.
- Mid-block attention: ``x + to_out(softmax(q k^T / sqrt(C)) v)`` on ``group_norm(x)``
  flattened to ``H*W`` tokens, one head of width ``C``, no output rescale
  (``rescale_output_factor=1``); through ``jax.nn.dot_product_attention``.
- Every GroupNorm has ``epsilon=1e-6``; ``quant_conv`` / ``post_quant_conv`` are 1x1.

Config keys are diffusers' (:class:`AutoencoderKLConfig.from_diffusers`); the folder
loader is :func:`diffjax.stable_diffusion.vae.load_vae`. Parity against diffusers' torch
model: ``tests/test_sd_vae.py``.

References:
  Rombach, Blattmann, Lorenz, Esser, Ommer, "High-Resolution Image Synthesis with Latent
  Diffusion Models", CVPR 2022 (https://arxiv.org/abs/2112.10752).
  Kingma, Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
  diffusers ``models/autoencoders/autoencoder_kl.py`` and ``vae.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "AutoencoderKL",
    "AutoencoderKLConfig",
    "sample_latent",
    "scale_latents",
    "unscale_latents",
]

GROUP_NORM_EPS = 1e-6
LOGVAR_RANGE = (-30.0, 20.0)
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
}
# Keys of a diffusers AutoencoderKL config.json that do not change the network's math.
_IGNORED_KEYS = frozenset({"sample_size", "force_upcast"})
_DOWN_BLOCK = "DownEncoderBlock2D"
_UP_BLOCK = "UpDecoderBlock2D"


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig:
    """diffusers' ``AutoencoderKL`` config (same names, same defaults; hashable for ``jit``).

    Attributes:
      in_channels / out_channels: Image channels.
      block_out_channels: Width per level; ``len - 1`` downsamplings.
      layers_per_block: ResNet blocks per encoder level (the decoder has one more).
      latent_channels: ``c``, the latent's channels.
      norm_num_groups: GroupNorm groups (must divide every width).
      act_fn: ``silu`` (SD), or ``swish`` / ``mish`` / ``gelu`` / ``relu``.
      mid_block_add_attention: Self-attention in the mid blocks.
      use_quant_conv / use_post_quant_conv: The 1x1 convolutions around the latent.
      scaling_factor / shift_factor: The latent scaling (:func:`scale_latents`).
      latents_mean / latents_std: Per-channel latent statistics some pipelines use
        instead (kept, not used by the network).
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    act_fn: str = "silu"
    mid_block_add_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.act_fn not in _ACTIVATIONS:
            raise ValueError(
                f"AutoencoderKL act_fn {self.act_fn!r} is not supported; supported: "
                f"{', '.join(_ACTIVATIONS)}."
            )
        if not self.block_out_channels:
            raise ValueError("AutoencoderKL block_out_channels must not be empty.")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"AutoencoderKL norm_num_groups={self.norm_num_groups} does not divide the "
                f"block_out_channels {list(bad)} (of {list(self.block_out_channels)})."
            )
        if self.layers_per_block < 1:
            raise ValueError(f"AutoencoderKL layers_per_block must be >= 1, got "
                             f"{self.layers_per_block}.")

    @property
    def downsample_factor(self) -> int:
        """``f``: image side / latent side (8 for SD)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, d: Mapping[str, Any]) -> AutoencoderKLConfig:
        """Builds the config from diffusers' ``vae/config.json`` dict.

        ``_``-prefixed keys (``_class_name``, ``_diffusers_version``), ``sample_size`` and
        ``force_upcast`` are ignored; absent keys take diffusers' defaults.

        Raises:
          ValueError: For a ``_class_name`` other than ``AutoencoderKL``, block types other
            than ``DownEncoderBlock2D`` / ``UpDecoderBlock2D`` (or a count that is not
            the number of levels), or a key this port does not know (it may change the
            network: named, with the supported keys).
        """
        name = d.get("_class_name", "AutoencoderKL")
        if name != "AutoencoderKL":
            raise ValueError(
                f"VAE config _class_name is {name!r}; only 'AutoencoderKL' is supported."
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        known = fields | _IGNORED_KEYS | {"down_block_types", "up_block_types"}
        unknown = sorted(k for k in d if not k.startswith("_") and k not in known)
        if unknown:
            raise ValueError(
                f"AutoencoderKL config keys {unknown} are not supported (they may change the "
                f"network); supported keys: {', '.join(sorted(known))}."
            )
        levels = len(d.get("block_out_channels", cls.block_out_channels))
        for key, block in (("down_block_types", _DOWN_BLOCK), ("up_block_types", _UP_BLOCK)):
            types = list(d.get(key, [block] * levels))
            if len(types) != levels or any(t != block for t in types):
                raise ValueError(
                    f"AutoencoderKL {key}={types} is not supported: expected {levels} x "
                    f"{block!r} (one per block_out_channels entry)."
                )
        kwargs = {k: v for k, v in d.items() if k in fields}
        for key in ("block_out_channels", "latents_mean", "latents_std"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    def to_diffusers(self) -> dict[str, Any]:
        """This config as diffusers' ``vae/config.json`` dict (:meth:`from_diffusers` reads it)."""
        d: dict[str, Any] = {"_class_name": "AutoencoderKL"}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            d[f.name] = list(value) if isinstance(value, tuple) else value
        levels = len(self.block_out_channels)
        d["down_block_types"] = [_DOWN_BLOCK] * levels
        d["up_block_types"] = [_UP_BLOCK] * levels
        return d

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> AutoencoderKLConfig:
        """Reads a diffusers ``vae/config.json`` (see :meth:`from_diffusers`)."""
        with open(path, encoding="utf-8") as f:
            return cls.from_diffusers(json.load(f))


def scale_latents(z: jax.Array, config: AutoencoderKLConfig) -> jax.Array:
    """``(z - shift_factor) * scaling_factor``: the VAE latent as the diffusion model sees it."""
    shift = 0.0 if config.shift_factor is None else config.shift_factor
    return (z - shift) * config.scaling_factor


def unscale_latents(latents: jax.Array, config: AutoencoderKLConfig) -> jax.Array:
    """``latents / scaling_factor + shift_factor``: the inverse of :func:`scale_latents`."""
    shift = 0.0 if config.shift_factor is None else config.shift_factor
    return latents / config.scaling_factor + shift


def sample_latent(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
    """A draw ``mean + exp(logvar / 2) * eps`` of the posterior ``q(z | x)``."""
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps


class _Base(nn.Module):
    config: AutoencoderKLConfig
    dtype: Any = jnp.float32
    precision: Any = "highest"

    def norm(self, name: str) -> nn.GroupNorm:
        return nn.GroupNorm(self.config.norm_num_groups, epsilon=GROUP_NORM_EPS,
                            use_fast_variance=False, dtype=self.dtype, name=name)

    def conv(self, features: int, name: str, kernel: int = 3, strides: int = 1,
             padding: Any = "SAME") -> nn.Conv:
        return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=padding,
                       dtype=self.dtype, precision=self.precision, name=name)

    def act(self, x: jax.Array) -> jax.Array:
        return _ACTIVATIONS[self.config.act_fn](x)


class ResnetBlock(_Base):
    """diffusers' ``ResnetBlock2D`` without a time embedding (``temb_channels=None``)."""

    features: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv(self.features, "conv1")(self.act(self.norm("norm1")(x)))
        h = self.conv(self.features, "conv2")(self.act(self.norm("norm2")(h)))
        if x.shape[-1] != self.features:
            x = self.conv(self.features, "conv_shortcut", kernel=1, padding="VALID")(x)
        return x + h


class MidAttention(_Base):
    """The mid block's single-head self-attention (diffusers ``Attention``, residual)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        t = self.norm("group_norm")(x).reshape(b, h * w, 1, c)

        def dense(name):
            return nn.Dense(c, dtype=self.dtype, precision=self.precision, name=name)

        q, k, v = dense("to_q")(t), dense("to_k")(t), dense("to_v")(t)
        out = jax.nn.dot_product_attention(q, k, v)  # (B, T, 1, C), scale 1/sqrt(C)
        out = dense("to_out_0")(out.reshape(b, h * w, c))
        return x + out.reshape(b, h, w, c)


class MidBlock(_Base):
    """diffusers' ``UNetMidBlock2D``: ResNet, attention (optional), ResNet."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        kw = dict(config=self.config, dtype=self.dtype, precision=self.precision, features=c)
        x = ResnetBlock(**kw, name="resnets_0")(x)
        if self.config.mid_block_add_attention:
            x = MidAttention(self.config, self.dtype, self.precision, name="attentions_0")(x)
        return ResnetBlock(**kw, name="resnets_1")(x)


class _Resample(_Base):
    """diffusers' ``Downsample2D`` / ``Upsample2D``: a 3x3 ``conv``, resampling by 2.

    Down: pad bottom/right by one, then stride 2, padding 0. Up: nearest-neighbour 2x,
    then stride 1, padding 1.
    """

    down: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        if self.down:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # F.pad(x, (0, 1, 0, 1))
            return self.conv(width, "conv", strides=2, padding="VALID")(x)
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(width, "conv")(x)


class _Level(_Base):
    """``DownEncoderBlock2D`` (``down``) / ``UpDecoderBlock2D``: ResNets, then resampling."""

    features: int = 0
    num_layers: int = 1
    resample: bool = False
    down: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(config=self.config, dtype=self.dtype, precision=self.precision)
        for j in range(self.num_layers):
            x = ResnetBlock(**kw, features=self.features, name=f"resnets_{j}")(x)
        if self.resample:
            name = "downsamplers_0" if self.down else "upsamplers_0"
            x = _Resample(**kw, down=self.down, name=name)(x)
        return x


class Encoder(_Base):
    """diffusers' VAE ``Encoder`` (``double_z=True``): image -> ``2 * latent_channels``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        kw = dict(config=c, dtype=self.dtype, precision=self.precision)
        x = self.conv(c.block_out_channels[0], "conv_in")(x)
        last = len(c.block_out_channels) - 1
        for i, width in enumerate(c.block_out_channels):
            x = _Level(**kw, features=width, num_layers=c.layers_per_block,
                       resample=i < last, down=True, name=f"down_blocks_{i}")(x)
        x = MidBlock(**kw, name="mid_block")(x)
        x = self.act(self.norm("conv_norm_out")(x))
        return self.conv(2 * c.latent_channels, "conv_out")(x)


class Decoder(_Base):
    """diffusers' VAE ``Decoder`` (GroupNorm): latent -> image."""

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        c = self.config
        kw = dict(config=c, dtype=self.dtype, precision=self.precision)
        widths = c.block_out_channels[::-1]
        x = self.conv(widths[0], "conv_in")(z)
        x = MidBlock(**kw, name="mid_block")(x)
        for i, width in enumerate(widths):
            x = _Level(**kw, features=width, num_layers=c.layers_per_block + 1,
                       resample=i < len(widths) - 1, down=False, name=f"up_blocks_{i}")(x)
        x = self.act(self.norm("conv_norm_out")(x))
        return self.conv(c.out_channels, "conv_out")(x)


class AutoencoderKL(nn.Module):
    """diffusers' ``AutoencoderKL`` in Flax (NHWC); see the module docstring.

    Use ``model.apply(variables, x, method=AutoencoderKL.encode)`` for ``(mean, logvar)``
    and ``method=AutoencoderKL.decode`` for images; ``__call__`` (for ``init``) decodes the
    posterior mean.

    Attributes:
      config: The configuration.
      dtype: Computation dtype (parameters stay as given; ``bfloat16`` on accelerators).
      precision: Matmul / convolution precision (``"highest"``: float32 on TPU/GPU).
    """

    config: AutoencoderKLConfig
    dtype: Any = jnp.float32
    precision: Any = "highest"

    def setup(self):
        """Creates the encoder, the decoder and the quant convolutions."""
        c, kw = self.config, dict(dtype=self.dtype, precision=self.precision)
        self.encoder = Encoder(c, **kw)
        self.decoder = Decoder(c, **kw)
        if c.use_quant_conv:
            self.quant_conv = nn.Conv(2 * c.latent_channels, (1, 1), **kw)
        if c.use_post_quant_conv:
            self.post_quant_conv = nn.Conv(c.latent_channels, (1, 1), **kw)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(mean, logvar)`` of ``q(z | x)``, each ``(B, H/f, W/f, latent_channels)``.

        Args:
          x: ``(B, H, W, in_channels)`` images in ``[-1, 1]``, ``H`` and ``W`` multiples
            of ``config.downsample_factor``.
        """
        c = self.config
        if x.ndim != 4 or x.shape[-1] != c.in_channels:
            raise ValueError(f"VAE encode expects (B, H, W, {c.in_channels}) NHWC images, got "
                             f"shape {x.shape}.")
        f = c.downsample_factor
        if x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"VAE encode: height and width must be multiples of {f}, got "
                             f"{x.shape[1]}x{x.shape[2]}.")
        moments = self.encoder(x)
        if c.use_quant_conv:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z: jax.Array) -> jax.Array:
        """Images ``(B, H*f, W*f, out_channels)`` of unscaled latents ``(B, H, W, c)``."""
        c = self.config
        if z.ndim != 4 or z.shape[-1] != c.latent_channels:
            raise ValueError(f"VAE decode expects (B, h, w, {c.latent_channels}) NHWC latents, "
                             f"got shape {z.shape}.")
        if c.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Reconstruction ``decode(mean)`` (initialises every parameter)."""
        return self.decode(self.encode(x)[0])
