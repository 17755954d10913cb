"""The DDPM / ADM-family UNet noise predictor (Flax Linen, NHWC).

Architecture of Ho et al. (2020), appendix B, with the class conditioning of Dhariwal &
Nichol (2021): a sinusoidal embedding of the model time, an MLP to ``4 * base_channels``,
plus (optionally) a learned class embedding with one extra row, the null class used for
classifier-free guidance (Ho & Salimans, 2022). Residual blocks
(GroupNorm-swish-conv, + projected embedding, GroupNorm-swish-dropout-conv, 1x1 skip;
or, with ``scale_shift_norm``, the embedding as a scale and shift after the second
GroupNorm, as in Dhariwal & Nichol's ADM),
self-attention at chosen resolutions, strided-conv downsampling, a middle block
(res, attn, res), an up path with ``num_res_blocks + 1`` blocks per level that each take
one skip connection, nearest-neighbour upsampling + conv, and a final
GroupNorm-swish-conv.

With the defaults and a 32x32x3 input (DDPM CIFAR-10) it has 35.7M parameters.

References:
  Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. NeurIPS 2020.
  Dhariwal, Nichol. Diffusion Models Beat GANs on Image Synthesis. NeurIPS 2021.
  Ho, Salimans. Classifier-Free Diffusion Guidance. 2022.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.nn.groups import DEFAULT_NUM_GROUPS, embedding_erasing_widths, group_count

__all__ = ["UNet", "timestep_embedding"]

Dtype = Any
# A function with the signature of ``lax.conv_general_dilated`` (None: that one).
ConvFn = Callable[..., jax.Array] | None

# DDPM's initializer (variance scaling, fan_avg, uniform); zero for the last layer of each
# residual branch and of the network, so every block starts as the identity.
_default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
_zero_init = nn.initializers.zeros


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding of (float) model times, as in DDPM / the Transformer.

    Frequencies are ``max_period ** (-k / (dim // 2 - 1))`` for k = 0 .. dim // 2 - 1;
    the embedding is ``[sin(t * f), cos(t * f)]`` (zero-padded when ``dim`` is odd).

    Args:
      t: (B,) model times (timestep indices as floats).
      dim: embedding width (>= 4).
      max_period: the longest wavelength.

    Returns:
      (B, dim) float32 embedding.
    """
    if dim < 4:
        raise ValueError(f"timestep embedding needs dim >= 4, got {dim=}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class _Norm(nn.Module):
    """GroupNorm (statistics in float32) with a group count that divides the channels."""

    num_groups: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.GroupNorm(
            num_groups=group_count(x.shape[-1], self.num_groups),
            epsilon=1e-6,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="norm",
        )(x)


class ResBlock(nn.Module):
    """DDPM residual block with a time(-and-class) embedding projection.

    With ``scale_shift_norm=False`` (DDPM) the projected embedding ``e`` is added before
    the second GroupNorm: ``h = norm(h + e)``. With ``scale_shift_norm=True`` (ADM's
    ``use_scale_shift_norm``) it is split into ``(s, b)`` and applied after it:
    ``h = norm(h) * (1 + s) + b``. The first is erased by a GroupNorm with one channel
    per group (the per-channel constant ``e`` is what that norm subtracts), so a block
    whose width is at most ``num_groups`` ignores the embedding unless it scales and
    shifts.
    """

    out_channels: int
    dropout: float
    num_groups: int
    conv_fn: ConvFn
    scale_shift_norm: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        conv = dict(kernel_size=(3, 3), padding="SAME", conv_general_dilated=self.conv_fn, **kw)
        h = nn.swish(_Norm(self.num_groups, name="norm_0", **kw)(x))
        h = nn.Conv(self.out_channels, kernel_init=_default_init, name="conv_0", **conv)(h)
        width = 2 * self.out_channels if self.scale_shift_norm else self.out_channels
        e = nn.Dense(width, kernel_init=_default_init, name="emb_proj", **kw)(nn.swish(emb))
        e = e[:, None, None, :].astype(h.dtype)
        if self.scale_shift_norm:
            scale, shift = jnp.split(e, 2, axis=-1)
            h = _Norm(self.num_groups, name="norm_1", **kw)(h) * (1 + scale) + shift
        else:
            h = _Norm(self.num_groups, name="norm_1", **kw)(h + e)
        h = nn.swish(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_channels, kernel_init=_zero_init, name="conv_1", **conv)(h)
        if x.shape[-1] != self.out_channels:
            # A 1x1 convolution, written as a Dense layer (same parameters).
            x = nn.Dense(self.out_channels, kernel_init=_default_init, name="skip", **kw)(x)
        return x + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, with a residual connection."""

    num_heads: int
    num_groups: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        if channels % self.num_heads:
            raise ValueError(
                f"num_heads must divide the channels of every attention block, got "
                f"num_heads={self.num_heads} for {channels} channels"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        head_dim = channels // self.num_heads
        h = _Norm(self.num_groups, name="norm", **kw)(x)
        qkv = nn.Dense(3 * channels, kernel_init=_default_init, name="qkv", **kw)(h)
        qkv = qkv.reshape(batch, height * width, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits / math.sqrt(head_dim), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, height, width, channels)
        out = nn.Dense(channels, kernel_init=_zero_init, name="proj", **kw)(out)
        return x + out


class Downsample(nn.Module):
    """3x3 convolution with stride 2 (padding 1 on each side)."""

    conv_fn: ConvFn
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Conv(
            x.shape[-1],
            (3, 3),
            strides=(2, 2),
            padding=((1, 1), (1, 1)),
            kernel_init=_default_init,
            conv_general_dilated=self.conv_fn,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    conv_fn: ConvFn
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(
            b, 2 * h, 2 * w, c
        )
        return nn.Conv(
            c,
            (3, 3),
            padding="SAME",
            kernel_init=_default_init,
            conv_general_dilated=self.conv_fn,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)


class UNet(nn.Module):
    """DDPM / ADM UNet noise predictor (NHWC).

    Attributes:
      base_channels: channels of the first level; the embedding MLP is 4x wider.
      channel_mults: channel multiplier of each level; there are len(channel_mults) - 1
        downsamplings, so H and W must be divisible by 2 ** (len(channel_mults) - 1).
      num_res_blocks: residual blocks per level on the down path (the up path has one more).
      attention_resolutions: feature-map sizes (height) at which self-attention is used,
        e.g. (16,) means attention on 16x16 feature maps.
      dropout: dropout rate inside residual blocks (active only with ``train=True``).
      num_classes: number of classes for a class-conditional model (None: unconditional).
        The class embedding has ``num_classes + 1`` rows; row ``num_classes`` (see
        :attr:`null_label`) is the learned null class for classifier-free guidance.
      num_groups: GroupNorm groups (the largest divisor of the channel count that is at
        most this).
      num_heads: attention heads (must divide the channels at attention resolutions).
      out_channels: output channels (default: the input channels).
      dtype: compute dtype (e.g. ``jnp.bfloat16``); the output is always float32.
      param_dtype: parameter dtype.
      conv_general_dilated: the convolution every ``nn.Conv`` of the network calls, as in
        ``flax.linen.Conv`` (None: ``lax.conv_general_dilated``). A replacement must
        compute the same function; experiments/conv_matmul_grad.py is one, measured in
        experiments/bench_conv_grad.py.
      scale_shift_norm: apply the embedding as a scale and shift after each residual
        block's second GroupNorm (ADM) instead of adding it before (DDPM, the default).
        An added embedding is erased where a block's width is at most ``num_groups``
        (one channel per group): such a model ignores its time and class inputs, which
        the UNet warns about.
      remat: rematerialize each residual and attention block in the backward pass
        (``flax.linen.remat``): their activations are recomputed instead of stored, so
        training memory grows with the block count far more slowly, for about one extra
        forward pass of compute. Parameters and outputs are the same either way.
    """

    base_channels: int = 128
    channel_mults: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    num_classes: int | None = None
    num_groups: int = DEFAULT_NUM_GROUPS
    num_heads: int = 1
    out_channels: int | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    conv_general_dilated: ConvFn = None
    scale_shift_norm: bool = False
    remat: bool = False

    @property
    def null_label(self) -> int:
        """The label of the learned null class (``num_classes``) for classifier-free guidance."""
        if self.num_classes is None:
            raise ValueError("null_label needs a class-conditional UNet, got num_classes=None")
        return self.num_classes

    def _check_config(self) -> None:
        if self.base_channels < 1:
            raise ValueError(f"base_channels must be positive, got {self.base_channels=}")
        if len(self.channel_mults) < 1 or any(m < 1 for m in self.channel_mults):
            raise ValueError(f"channel_mults must be positive integers, got {self.channel_mults=}")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks=}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout=}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {self.num_classes=}")
        if self.num_groups < 1 or self.num_heads < 1:
            raise ValueError(
                f"num_groups and num_heads must be >= 1, got {self.num_groups=}, {self.num_heads=}"
            )
        erased = embedding_erasing_widths(self.base_channels, self.channel_mults, self.num_groups)
        if erased and not self.scale_shift_norm:
            warnings.warn(
                f"UNet residual blocks of width {erased} have one channel per GroupNorm group "
                f"(num_groups={self.num_groups}), which removes the added time/class embedding: "
                "those blocks ignore t and labels. Use scale_shift_norm=True (or more channels "
                "than num_groups).",
                stacklevel=3,
            )

    def _check_inputs(
        self, x: jax.Array, t: jax.Array, labels: jax.Array | None
    ) -> tuple[jax.Array, jax.Array | None]:
        if x.ndim != 4:
            raise ValueError(f"x must be 4-D (B, H, W, C), got x.shape={x.shape}")
        batch, height, width, _ = x.shape
        factor = 2 ** (len(self.channel_mults) - 1)
        if height % factor or width % factor:
            raise ValueError(
                f"spatial size of x must be divisible by 2 ** (len(channel_mults) - 1) = "
                f"{factor}, got x.shape={x.shape}"
            )
        t = jnp.asarray(t, jnp.float32)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (batch,))
        elif t.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape ({batch},), got t.shape={t.shape}")
        if self.num_classes is None:
            if labels is not None:
                raise ValueError(
                    "labels were given to an unconditional UNet (num_classes=None); "
                    "set num_classes to train a class-conditional model"
                )
            return t, None
        if labels is None:
            raise ValueError(
                f"labels are required for a class-conditional UNet (num_classes="
                f"{self.num_classes}); pass null_label={self.null_label} for unconditional"
            )
        labels = jnp.asarray(labels)
        if labels.shape != (batch,):
            raise ValueError(f"labels must have shape ({batch},), got labels.shape={labels.shape}")
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(f"labels must be integers, got labels.dtype={labels.dtype}")
        return t, labels

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        labels: jax.Array | None = None,
        *,
        train: bool = False,
    ) -> jax.Array:
        """Predicts the network output (e.g. eps) for a noisy batch.

        Args:
          x: (B, H, W, C) noisy images.
          t: (B,) or scalar float model time (timestep index 0..T-1 as a float).
          labels: (B,) int class labels in [0, num_classes] (num_classes = null class) for a
            class-conditional model; None for an unconditional one.
          train: enables dropout (then apply needs a 'dropout' rng).

        Returns:
          (B, H, W, out_channels) float32.
        """
        self._check_config()
        t, labels = self._check_inputs(x, t, labels)
        conv_fn = self.conv_general_dilated
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        out_channels = self.out_channels or x.shape[-1]
        emb_dim = 4 * self.base_channels

        # Time (and class) embedding.
        emb = timestep_embedding(t, self.base_channels)
        emb = nn.Dense(emb_dim, kernel_init=_default_init, name="time_mlp_0", **kw)(emb)
        emb = nn.Dense(emb_dim, kernel_init=_default_init, name="time_mlp_1", **kw)(nn.swish(emb))
        if labels is not None:
            class_emb = nn.Embed(
                self.num_classes + 1,
                emb_dim,
                embedding_init=nn.initializers.normal(1.0),
                name="class_embed",
                **kw,
            )(labels)
            emb = emb + class_emb

        # Under remat, ``train`` (argument 3 counting the module) must stay a Python bool.
        res_block = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
        attention_block = nn.remat(AttentionBlock) if self.remat else AttentionBlock

        def res(h: jax.Array, channels: int, name: str) -> jax.Array:
            return res_block(
                channels, self.dropout, self.num_groups, conv_fn, self.scale_shift_norm,
                name=name, **kw,
            )(h, emb, train)

        def attn(h: jax.Array, name: str) -> jax.Array:
            return attention_block(self.num_heads, self.num_groups, name=name, **kw)(h)

        # Down path.
        h = nn.Conv(
            self.base_channels,
            (3, 3),
            padding="SAME",
            kernel_init=_default_init,
            conv_general_dilated=conv_fn,
            name="conv_in",
            **kw,
        )(x)
        skips = [h]
        num_levels = len(self.channel_mults)
        for level, mult in enumerate(self.channel_mults):
            for i in range(self.num_res_blocks):
                h = res(h, self.base_channels * mult, f"down_{level}_res_{i}")
                if h.shape[1] in self.attention_resolutions:
                    h = attn(h, f"down_{level}_attn_{i}")
                skips.append(h)
            if level != num_levels - 1:
                h = Downsample(conv_fn, name=f"down_{level}_downsample", **kw)(h)
                skips.append(h)

        # Middle.
        h = res(h, h.shape[-1], "mid_res_0")
        h = attn(h, "mid_attn")
        h = res(h, h.shape[-1], "mid_res_1")

        # Up path.
        for level in reversed(range(num_levels)):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1)
                h = res(h, self.base_channels * self.channel_mults[level], f"up_{level}_res_{i}")
                if h.shape[1] in self.attention_resolutions:
                    h = attn(h, f"up_{level}_attn_{i}")
            if level != 0:
                h = Upsample(conv_fn, name=f"up_{level}_upsample", **kw)(h)
        assert not skips

        # Output.
        h = nn.swish(_Norm(self.num_groups, name="out_norm", **kw)(h))
        h = nn.Conv(
            out_channels,
            (3, 3),
            padding="SAME",
            kernel_init=_zero_init,
            conv_general_dilated=conv_fn,
            name="out_conv",
            **kw,
        )(h)
        return h.astype(jnp.float32)
