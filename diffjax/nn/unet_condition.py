"""The cross-attention UNet of Stable Diffusion in Flax Linen (diffusers' UNet2DConditionModel).

A port of diffusers' ``UNet2DConditionModel`` (``models/unets/unet_2d_condition.py``) for
the block types Stable Diffusion 1.x / 2.x, LCM and SDXL checkpoints use, with diffusers'
module names (so the naming rule to its state dict is mechanical, see
:mod:`diffjax.stable_diffusion.unet`). Layout is NHWC; the output is float32.

The network (Rombach et al. 2022, section 3.3; Ho et al. 2020 appendix B):

* time: ``t_emb = [cos(t w), sin(t w)]`` with ``w_i = exp(-ln(10000) i / (C0/2 - freq_shift))``
  (``flip_sin_to_cos``; sin first otherwise), then ``emb = linear_2(silu(linear_1(t_emb +
  cond_proj(timestep_cond))))``: the ``cond_proj`` term is LCM's guidance embedding
  (``time_cond_proj_dim``); SDXL's ``text_time`` addition embedding adds
  ``add_embedding([text_embeds, sinusoid(time_ids)])`` to ``emb``.
* ``conv_in``; down blocks (``resnets`` with an ``attentions`` Transformer2D after each in
  ``CrossAttnDownBlock2D``, a stride-2 ``downsamplers`` conv but in the last); the mid block
  (resnet, transformer, resnet); up blocks (``layers_per_block + 1`` resnets on the
  channel concatenation with the stored skips, nearest 2x ``upsamplers`` + conv but in
  the last); ``conv_norm_out``, silu, ``conv_out``.
* ResnetBlock2D: ``h = conv1(silu(GN(x))) + time_emb_proj(silu(emb))``,
  ``h = conv2(silu(GN(h)))``, ``out = (shortcut(x) + h) / output_scale_factor``.
* Transformer2D: ``GN(eps=1e-6)``, ``proj_in`` (1x1 conv, or Linear with
  ``use_linear_projection``), transformer blocks, ``proj_out``, plus the input. Each block:
  ``x += attn1(LN(x))`` (self), ``x += attn2(LN(x), context)`` (cross),
  ``x += ff(LN(x))`` with the GEGLU feed-forward ``net_2(a * gelu(g))``,
  ``[a, g] = net_0.proj(x)`` (inner width ``4 dim``, exact gelu).
* Attention: ``softmax(q k^T / sqrt(d_head)) v`` with ``to_q/to_k/to_v`` (no bias) and
  ``to_out_0`` (biased), through :func:`jax.nn.dot_product_attention` (its default
  implementation; in JAX 0.10 that is XLA's unfused path on every backend, measured in
  experiments/results/sd_bench), optionally over query chunks (``query_chunk_size``,
  :mod:`diffjax.nn.attention`) to bound the score buffers' memory.

Heads: diffusers' ``attention_head_dim`` is, for historical reasons
(https://github.com/huggingface/diffusers/issues/2011), the NUMBER of heads of each block
(``num_attention_heads = num_attention_heads or attention_head_dim``; SD 1.x: 8 heads
everywhere; SD 2.x: ``[5, 10, 20, 20]``, i.e. 64 channels per head); a block of width
``C`` has heads of ``C // heads`` channels. ``num_attention_heads``, which diffusers
itself refuses for this class, is accepted here and wins when given.

References:
  Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models",
  CVPR 2022 (https://arxiv.org/abs/2112.10752).
  Luo et al., "Latent Consistency Models", 2023 (https://arxiv.org/abs/2310.04378), Eq. 9
  (the guidance-scale embedding behind ``time_cond_proj_dim``).
  Podell et al., "SDXL", 2023 (https://arxiv.org/abs/2307.01952), section 2.2.
  diffusers ``models/unets/unet_2d_condition.py``, ``unet_2d_blocks.py``,
  ``transformers/transformer_2d.py``, ``attention.py``, ``resnet.py``, ``embeddings.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.nn.attention import chunked_dot_product_attention

__all__ = [
    "DOWN_BLOCK_TYPES",
    "MID_BLOCK_TYPES",
    "UP_BLOCK_TYPES",
    "UNet2DConditionModel",
    "UNetConditionConfig",
    "example_inputs",
    "param_count",
    "sinusoidal_embedding",
]

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn",)
ADDITION_EMBED_TYPES = (None, "text_time")
_ACTIVATIONS = ("silu", "swish")
# torch's default init of Linear / Conv2d weights (kaiming_uniform(a=sqrt(5))):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Also cheap to trace (jax.eval_shape of init).
KERNEL_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")

# Config keys whose only supported value is diffusers' default (the key -> that value).
_DEFAULT_ONLY: dict[str, Any] = {
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "num_class_embeds": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "time_embedding_type": "positional",
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "cross_attention_norm": None,
    "resnet_skip_time_act": False,
    "reverse_transformer_layers_per_block": None,
    "mid_block_only_cross_attention": None,
}


def _per_block(value: Any, n: int, key: str) -> tuple:
    if isinstance(value, list | tuple):
        if len(value) != n:
            raise ValueError(
                f"unet config {key}={list(value)!r} has {len(value)} entries, but there are "
                f"{n} down blocks."
            )
        return tuple(value)
    return (value,) * n


@dataclasses.dataclass(frozen=True)
class UNetConditionConfig:
    """diffusers' ``UNet2DConditionModel`` config (its ``config.json`` keys; SD 1.5 defaults).

    Per-block fields are normalized to tuples (one entry per down block, in down order).
    Hashable, so it can be a static argument of ``jax.jit``. Build from a diffusers dict with
    :meth:`from_diffusers_dict`.
    """

    sample_size: int | None = 64
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D",
    )
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = (
        "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
    )
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: tuple[int, ...] = (2, 2, 2, 2)
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: tuple[int, ...] = (768, 768, 768, 768)
    transformer_layers_per_block: tuple[int, ...] = (1, 1, 1, 1)
    num_attention_heads: tuple[int, ...] = (8, 8, 8, 8)
    use_linear_projection: bool = False
    upcast_attention: bool = False
    resnet_time_scale_shift: str = "default"
    time_embedding_dim: int | None = None
    time_cond_proj_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None

    def __post_init__(self):
        n = len(self.down_block_types)
        for key in ("up_block_types", "block_out_channels", "layers_per_block",
                    "cross_attention_dim", "transformer_layers_per_block",
                    "num_attention_heads"):
            if len(getattr(self, key)) != n:
                raise ValueError(
                    f"unet config {key} has {len(getattr(self, key))} entries, but "
                    f"down_block_types has {n}."
                )
        for kind, types, supported in (("down_block_types", self.down_block_types,
                                        DOWN_BLOCK_TYPES),
                                       ("up_block_types", self.up_block_types, UP_BLOCK_TYPES),
                                       ("mid_block_type", (self.mid_block_type,),
                                        MID_BLOCK_TYPES)):
            for t in types:
                if t not in supported:
                    raise NotImplementedError(
                        f"unet config {kind}: block type {t!r} is not supported; supported: "
                        f"{', '.join(supported)}."
                    )
        if self.addition_embed_type not in ADDITION_EMBED_TYPES:
            raise NotImplementedError(
                f"unet config addition_embed_type={self.addition_embed_type!r} is not "
                "supported; supported: None, 'text_time' (SDXL)."
            )
        if self.addition_embed_type == "text_time" and (
            self.addition_time_embed_dim is None
            or self.projection_class_embeddings_input_dim is None
        ):
            raise ValueError(
                "unet config addition_embed_type='text_time' needs addition_time_embed_dim "
                "and projection_class_embeddings_input_dim."
            )
        if self.act_fn not in _ACTIVATIONS:
            raise NotImplementedError(
                f"unet config act_fn={self.act_fn!r} is not supported; supported: silu, swish."
            )
        if self.resnet_time_scale_shift not in ("default", "scale_shift"):
            raise NotImplementedError(
                f"unet config resnet_time_scale_shift={self.resnet_time_scale_shift!r} is not "
                "supported; supported: 'default', 'scale_shift'."
            )
        for k in (self.conv_in_kernel, self.conv_out_kernel):
            if k % 2 != 1:
                raise ValueError(f"unet config conv_in/out_kernel must be odd, got {k}.")
        if self.downsample_padding not in (0, 1):
            raise NotImplementedError(
                f"unet config downsample_padding={self.downsample_padding} is not supported; "
                "supported: 0, 1."
            )
        widths = set(self.block_out_channels)
        for c in sorted(widths):
            if c % self.norm_num_groups:
                raise ValueError(
                    f"unet config norm_num_groups={self.norm_num_groups} does not divide the "
                    f"block width {c} (block_out_channels={list(self.block_out_channels)})."
                )
        for i, (c, h) in enumerate(zip(self.block_out_channels, self.num_attention_heads,
                                       strict=True)):
            if h < 1 or c % h:
                raise ValueError(
                    f"unet config: block {i} of width {c} cannot have {h} attention heads "
                    "(attention_head_dim / num_attention_heads must divide the width)."
                )

    @classmethod
    def from_diffusers_dict(cls, d: Mapping[str, Any]) -> UNetConditionConfig:
        """Builds the config from a diffusers ``unet/config.json`` dict.

        Keys that do not change the network's computation (``_class_name``,
        ``_diffusers_version``, ``dropout``, ``sample_size``'s use, ...) are ignored; absent
        keys take diffusers' defaults.

        Raises:
          NotImplementedError: For a block type, ``addition_embed_type`` or other option
            this port does not have (the key, the value and what is supported).
          ValueError: For an inconsistent config (lengths, head counts, group counts).
        """
        name = d.get("_class_name", "UNet2DConditionModel")
        if name != "UNet2DConditionModel":
            raise ValueError(
                f"unet config _class_name is {name!r}; only UNet2DConditionModel is supported."
            )
        for key, default in _DEFAULT_ONLY.items():
            value = d.get(key, default)
            if isinstance(value, list | tuple) and isinstance(default, bool):
                value = default if not any(value) else value
            if value != default:
                raise NotImplementedError(
                    f"unet config {key}={value!r} is not supported (only {default!r})."
                )
        down = tuple(d.get("down_block_types", cls.down_block_types))
        down = tuple(t.removeprefix("UNetRes") for t in down)
        n = len(down)
        heads = d.get("num_attention_heads") or d.get("attention_head_dim", 8)
        if any(isinstance(t, list | tuple) for t in _as_list(
                d.get("transformer_layers_per_block", 1))):
            raise NotImplementedError(
                "unet config transformer_layers_per_block with nested lists (asymmetric UNets) "
                "is not supported."
            )
        kwargs: dict[str, Any] = {
            "down_block_types": down,
            "up_block_types": tuple(t.removeprefix("UNetRes")
                                    for t in d.get("up_block_types", cls.up_block_types)),
            "mid_block_type": d.get("mid_block_type", cls.mid_block_type),
            "block_out_channels": tuple(d.get("block_out_channels", cls.block_out_channels)),
            "layers_per_block": _per_block(d.get("layers_per_block", 2), n, "layers_per_block"),
            "cross_attention_dim": _per_block(d.get("cross_attention_dim", 1280), n,
                                              "cross_attention_dim"),
            "transformer_layers_per_block": _per_block(
                d.get("transformer_layers_per_block", 1), n, "transformer_layers_per_block"),
            "num_attention_heads": _per_block(heads, n, "attention_head_dim"),
            "norm_num_groups": d.get("norm_num_groups", 32),
        }
        if kwargs["norm_num_groups"] is None:
            raise NotImplementedError("unet config norm_num_groups=None is not supported.")
        if kwargs["mid_block_type"] is None:
            raise NotImplementedError(
                f"unet config mid_block_type=None is not supported; supported: "
                f"{', '.join(MID_BLOCK_TYPES)}."
            )
        plain = ("sample_size", "in_channels", "out_channels", "center_input_sample",
                 "flip_sin_to_cos", "freq_shift", "downsample_padding",
                 "mid_block_scale_factor", "act_fn", "norm_eps", "use_linear_projection",
                 "upcast_attention", "resnet_time_scale_shift", "time_embedding_dim",
                 "time_cond_proj_dim", "conv_in_kernel", "conv_out_kernel",
                 "addition_embed_type", "addition_time_embed_dim",
                 "projection_class_embeddings_input_dim")
        kwargs.update({k: d[k] for k in plain if k in d})
        if isinstance(kwargs.get("sample_size"), list | tuple):
            kwargs["sample_size"] = tuple(kwargs["sample_size"])
        return cls(**kwargs)

    @property
    def time_embed_dim(self) -> int:
        """Width of the time embedding ``emb`` (``4 * block_out_channels[0]`` by default)."""
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @property
    def downsampling_factor(self) -> int:
        """The factor by which the deepest level is smaller: ``2 ** (num_blocks - 1)``."""
        return 2 ** (len(self.block_out_channels) - 1)


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


# --------------------------------------------------------------------------------------
# Embeddings.


@functools.cache
def _frequencies(half: int, freq_shift: float) -> np.ndarray:
    # ``exp(-ln(10000) i / (half - shift))``: the exponent rounded in float32 as torch does,
    # the exponential in float64 then rounded (matches torch's float32 exp more often than
    # XLA's, which matters for t ~ 1000).
    exponent = np.float32(-math.log(10000)) * np.arange(half, dtype=np.float32)
    exponent = exponent / np.float32(half - freq_shift)
    return np.exp(exponent.astype(np.float64)).astype(np.float32)


def sinusoidal_embedding(
    t: jax.Array, dim: int, flip_sin_to_cos: bool, freq_shift: float
) -> jax.Array:
    """The sinusoid of diffusers' ``get_timestep_embedding``: ``(N,) -> (N, dim)`` float32.

    ``[sin(t w), cos(t w)]`` (``[cos, sin]`` with ``flip_sin_to_cos``),
    ``w_i = exp(-ln(10000) i / (dim // 2 - freq_shift))``, zero-padded when ``dim`` is odd.
    """
    half = dim // 2
    args = t.astype(jnp.float32)[:, None] * jnp.asarray(_frequencies(half, freq_shift))[None]
    parts = [jnp.cos(args), jnp.sin(args)] if flip_sin_to_cos else [jnp.sin(args),
                                                                    jnp.cos(args)]
    emb = jnp.concatenate(parts, axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nn.Module):
    """``linear_2(silu(linear_1(x + cond_proj(condition))))`` (diffusers' TimestepEmbedding)."""

    dim: int
    cond_proj_dim: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, condition: jax.Array | None = None) -> jax.Array:
        """``(B, in) -> (B, dim)``; ``condition`` ``(B, cond_proj_dim)`` when configured."""
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                                  precision=self.precision, kernel_init=KERNEL_INIT)
        if self.cond_proj_dim is not None:
            cond_proj = dense(x.shape[-1], use_bias=False, name="cond_proj")
            if condition is not None:
                x = x + cond_proj(condition.astype(self.dtype))
            elif self.is_initializing():
                cond_proj(jnp.zeros((1, self.cond_proj_dim), self.dtype))
        x = nn.silu(dense(self.dim, name="linear_1")(x))
        return dense(self.dim, name="linear_2")(x)


# --------------------------------------------------------------------------------------
# Blocks.


class _Common(nn.Module):
    """Shared attributes: config, dtypes, precision and the attention's query chunk."""

    config: UNetConditionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None
    query_chunk_size: int | None = None

    def _common(self) -> tuple[Any, ...]:
        """The shared attributes, positionally, for the child modules."""
        return (self.config, self.dtype, self.param_dtype, self.precision,
                self.query_chunk_size)

    def _kw(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "param_dtype": self.param_dtype}

    def dense(self, features: int, name: str, use_bias: bool = True) -> nn.Dense:
        return nn.Dense(features, use_bias=use_bias, precision=self.precision, name=name,
                        kernel_init=KERNEL_INIT, **self._kw())

    def conv(self, features: int, name: str, kernel: int = 3, stride: int = 1,
             padding: Any = None) -> nn.Conv:
        pad = (kernel - 1) // 2 if padding is None else padding
        return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad,
                       precision=self.precision, name=name, kernel_init=KERNEL_INIT,
                       **self._kw())

    def group_norm(self, name: str, eps: float | None = None) -> nn.GroupNorm:
        eps = self.config.norm_eps if eps is None else eps
        return nn.GroupNorm(self.config.norm_num_groups, epsilon=eps, use_fast_variance=False,
                            name=name, **self._kw())

    def layer_norm(self, name: str) -> nn.LayerNorm:
        # BasicTransformerBlock's LayerNorms use Transformer2DModel's norm_eps=1e-5.
        return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=name, **self._kw())


class ResnetBlock2D(_Common):
    """diffusers' ``ResnetBlock2D`` (``time_embedding_norm`` default or scale_shift)."""

    out_channels: int = 0
    output_scale_factor: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        """``(B, H, W, Cin), (B, E) -> (B, H, W, out_channels)``."""
        c = self.out_channels
        h = self.conv(c, "conv1")(nn.silu(self.group_norm("norm1")(x)))
        scale_shift = self.config.resnet_time_scale_shift == "scale_shift"
        t = self.dense(2 * c if scale_shift else c, "time_emb_proj")(nn.silu(emb))
        t = t[:, None, None, :]
        if scale_shift:
            scale, shift = jnp.split(t, 2, axis=-1)
            h = self.group_norm("norm2")(h) * (1 + scale) + shift
        else:
            h = self.group_norm("norm2")(h + t)
        h = self.conv(c, "conv2")(nn.silu(h))
        if x.shape[-1] != c:
            x = self.conv(c, "conv_shortcut", kernel=1)(x)
        return (x + h) / self.output_scale_factor


class Attention(_Common):
    """diffusers' ``Attention`` (``to_q``/``to_k``/``to_v`` without bias, ``to_out_0``)."""

    heads: int = 1
    head_dim: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        """``(B, L, D)`` queries, ``(B, S, Dc)`` keys/values (``x`` itself when ``None``)."""
        context = x if context is None else context
        inner = self.heads * self.head_dim
        b, length, _ = x.shape

        def heads(y: jax.Array) -> jax.Array:
            return y.reshape(y.shape[0], y.shape[1], self.heads, self.head_dim)

        q = heads(self.dense(inner, "to_q", use_bias=False)(x))
        k = heads(self.dense(inner, "to_k", use_bias=False)(context))
        v = heads(self.dense(inner, "to_v", use_bias=False)(context))
        out = chunked_dot_product_attention(q, k, v, self.query_chunk_size)
        return self.dense(x.shape[-1], "to_out_0")(out.reshape(b, length, inner))


class _GEGLUProj(_Common):
    """``net_0``: the GEGLU input projection ``proj`` to ``2 * inner`` and the gate."""

    inner: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(..., D) -> (..., inner)``: ``a * gelu(g)`` (exact gelu)."""
        a, g = jnp.split(self.dense(2 * self.inner, "proj")(x), 2, axis=-1)
        return a * jax.nn.gelu(g, approximate=False)


class GEGLUFeedForward(_Common):
    """``net_2(a * gelu(g))`` with ``[a, g] = net_0.proj(x)``, inner width ``4 * dim``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(B, L, D) -> (B, L, D)``."""
        dim = x.shape[-1]
        h = _GEGLUProj(*self._common(), inner=4 * dim, name="net_0")(x)
        return self.dense(dim, "net_2")(h)


class BasicTransformerBlock(_Common):
    """Self-attention, cross-attention and the GEGLU feed-forward, each pre-LayerNorm."""

    heads: int = 1
    head_dim: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        """``(B, L, D), (B, S, Dc) -> (B, L, D)``."""
        common = self._common()
        attn = functools.partial(Attention, *common, heads=self.heads, head_dim=self.head_dim)
        x = x + attn(name="attn1")(self.layer_norm("norm1")(x))
        x = x + attn(name="attn2")(self.layer_norm("norm2")(x), context)
        return x + GEGLUFeedForward(*common, name="ff")(self.layer_norm("norm3")(x))


class Transformer2DModel(_Common):
    """diffusers' ``Transformer2DModel`` on continuous inputs (a residual around it)."""

    heads: int = 1
    num_layers: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        """``(B, H, W, C), (B, S, Dc) -> (B, H, W, C)``."""
        b, hgt, wid, c = x.shape
        h = self.group_norm("norm", eps=1e-6)(x).reshape(b, hgt * wid, c)
        # A 1x1 conv on NHWC is a Dense over channels; the naming rule stores it as a conv.
        h = self.dense(c, "proj_in")(h)
        for i in range(self.num_layers):
            h = BasicTransformerBlock(*self._common(), heads=self.heads, head_dim=c // self.heads,
                                      name=f"transformer_blocks_{i}")(h, context)
        h = self.dense(c, "proj_out")(h)
        return h.reshape(b, hgt, wid, c) + x


class _Sampler(_Common):
    """``downsamplers_0`` (stride-2 conv) or ``upsamplers_0`` (nearest 2x, then conv)."""

    features: int = 0
    up: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Halves or doubles H and W."""
        if self.up:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            return self.conv(self.features, "conv")(x)
        if self.config.downsample_padding == 0:  # diffusers pads right and bottom by one
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
            return self.conv(self.features, "conv", stride=2, padding=0)(x)
        return self.conv(self.features, "conv", stride=2, padding=1)(x)


class DownBlock(_Common):
    """``CrossAttnDownBlock2D`` / ``DownBlock2D``: returns the output and the skips."""

    index: int = 0

    @nn.compact
    def __call__(
        self, x: jax.Array, emb: jax.Array, context: jax.Array
    ) -> tuple[jax.Array, list[jax.Array]]:
        """``x -> (x', skips)``: one skip per resnet, one after the downsampler."""
        cfg, i = self.config, self.index
        common = self._common()
        c = cfg.block_out_channels[i]
        cross = cfg.down_block_types[i] == "CrossAttnDownBlock2D"
        skips = []
        for j in range(cfg.layers_per_block[i]):
            x = ResnetBlock2D(*common, out_channels=c, name=f"resnets_{j}")(x, emb)
            if cross:
                x = Transformer2DModel(*common, heads=cfg.num_attention_heads[i],
                                       num_layers=cfg.transformer_layers_per_block[i],
                                       name=f"attentions_{j}")(x, context)
            skips.append(x)
        if i < len(cfg.block_out_channels) - 1:
            x = _Sampler(*common, features=c, name="downsamplers_0")(x)
            skips.append(x)
        return x, skips


class MidBlock(_Common):
    """``UNetMidBlock2DCrossAttn``: resnet, transformer, resnet."""

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, context: jax.Array) -> jax.Array:
        """``(B, h, w, C_last) -> (B, h, w, C_last)``."""
        cfg = self.config
        common = self._common()
        c = cfg.block_out_channels[-1]
        res = functools.partial(ResnetBlock2D, *common, out_channels=c,
                                output_scale_factor=cfg.mid_block_scale_factor)
        x = res(name="resnets_0")(x, emb)
        x = Transformer2DModel(*common, heads=cfg.num_attention_heads[-1],
                               num_layers=cfg.transformer_layers_per_block[-1],
                               name="attentions_0")(x, context)
        return res(name="resnets_1")(x, emb)


class UpBlock(_Common):
    """``CrossAttnUpBlock2D`` / ``UpBlock2D`` number ``index`` (0 = deepest)."""

    index: int = 0

    @nn.compact
    def __call__(
        self, x: jax.Array, skips: Sequence[jax.Array], emb: jax.Array, context: jax.Array
    ) -> jax.Array:
        """Consumes ``skips`` (the last one first), each concatenated onto the channels."""
        cfg, i = self.config, self.index
        common = self._common()
        level = len(cfg.block_out_channels) - 1 - i  # the down level of the same width
        c = cfg.block_out_channels[level]
        cross = cfg.up_block_types[i] == "CrossAttnUpBlock2D"
        skips = list(skips)
        for j in range(cfg.layers_per_block[level] + 1):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = ResnetBlock2D(*common, out_channels=c, name=f"resnets_{j}")(x, emb)
            if cross:
                x = Transformer2DModel(*common, heads=cfg.num_attention_heads[level],
                                       num_layers=cfg.transformer_layers_per_block[level],
                                       name=f"attentions_{j}")(x, context)
        if i < len(cfg.block_out_channels) - 1:
            x = _Sampler(*common, features=c, up=True, name="upsamplers_0")(x)
        return x


# --------------------------------------------------------------------------------------
# The model.


def _check_inputs(
    cfg: UNetConditionConfig,
    sample: jax.Array,
    timesteps: jax.Array,
    context: jax.Array,
    timestep_cond: jax.Array | None,
    added_cond: Mapping[str, jax.Array] | None,
) -> None:
    if sample.ndim != 4 or sample.shape[-1] != cfg.in_channels:
        raise ValueError(
            f"sample must be (B, H, W, {cfg.in_channels}) NHWC, got shape {sample.shape}."
        )
    b, h, w, _ = sample.shape
    f = cfg.downsampling_factor
    if h % f or w % f:
        raise ValueError(
            f"sample height and width must be multiples of {f} (the UNet halves them "
            f"{len(cfg.block_out_channels) - 1} times), got {h}x{w}."
        )
    if np.ndim(timesteps) > 1 or np.size(timesteps) not in (1, b):
        raise ValueError(
            f"timesteps must be a scalar or of shape ({b},), got shape {np.shape(timesteps)}."
        )
    widths = set(cfg.cross_attention_dim)
    if context.ndim != 3 or context.shape[0] != b or {context.shape[-1]} != widths:
        raise ValueError(
            f"encoder_hidden_states must be (B={b}, L, cross_attention_dim="
            f"{'/'.join(map(str, sorted(widths)))}), got shape {context.shape}."
        )
    if timestep_cond is not None:
        if cfg.time_cond_proj_dim is None:
            raise ValueError("timestep_cond was given, but the config has no time_cond_proj_dim.")
        if timestep_cond.shape != (b, cfg.time_cond_proj_dim):
            raise ValueError(
                f"timestep_cond must be (B={b}, time_cond_proj_dim={cfg.time_cond_proj_dim}), "
                f"got shape {timestep_cond.shape}."
            )
    if cfg.addition_embed_type == "text_time":
        missing = [k for k in ("text_embeds", "time_ids") if k not in (added_cond or {})]
        if missing:
            raise ValueError(
                f"addition_embed_type='text_time' needs added_cond with {', '.join(missing)}."
            )
        text, ids = added_cond["text_embeds"], added_cond["time_ids"]
        width = text.shape[-1] + ids.shape[-1] * cfg.addition_time_embed_dim
        if (text.ndim != 2 or ids.ndim != 2 or text.shape[0] != b or ids.shape[0] != b
                or width != cfg.projection_class_embeddings_input_dim):
            raise ValueError(
                f"added_cond text_embeds {text.shape} and time_ids {ids.shape} must be (B={b}, "
                f".) with text width + time_ids * addition_time_embed_dim = "
                f"projection_class_embeddings_input_dim="
                f"{cfg.projection_class_embeddings_input_dim}, got {width}."
            )
    elif added_cond:
        raise ValueError("added_cond was given, but the config has no addition_embed_type.")


class UNet2DConditionModel(nn.Module):
    """diffusers' ``UNet2DConditionModel`` in Flax (NHWC), for SD 1.x / 2.x / LCM / SDXL.

    Attributes:
      config: The network's configuration.
      dtype: Compute dtype (``jnp.bfloat16`` on accelerators); the output is float32.
      param_dtype: Parameter dtype.
      precision: Matmul / convolution precision (``None``: the backend's default).
      query_chunk_size: Attention over query chunks of this many tokens
        (:func:`~diffjax.nn.attention.chunked_dot_product_attention`: the same result,
        score memory bounded by the chunk); ``None``: all queries at once.
    """

    config: UNetConditionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None
    query_chunk_size: int | None = None

    def _common(self) -> tuple[Any, ...]:
        return (self.config, self.dtype, self.param_dtype, self.precision,
                self.query_chunk_size)

    def _embedding(
        self,
        timesteps: jax.Array,
        batch: int,
        timestep_cond: jax.Array | None,
        added_cond: Mapping[str, jax.Array] | None,
    ) -> jax.Array:
        """The time embedding ``emb`` (B, time_embed_dim), with the optional conditionings."""
        cfg = self.config
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype, "precision": self.precision}
        t = jnp.broadcast_to(jnp.reshape(jnp.asarray(timesteps), (-1,)), (batch,))
        c0 = cfg.block_out_channels[0]
        t_emb = sinusoidal_embedding(t, c0, cfg.flip_sin_to_cos, cfg.freq_shift)
        emb = TimestepEmbedding(cfg.time_embed_dim, cfg.time_cond_proj_dim, name="time_embedding",
                                **kw)(t_emb.astype(self.dtype), timestep_cond)
        if cfg.addition_embed_type == "text_time":  # SDXL: pooled text + size/crop ids
            ids = added_cond["time_ids"]
            ids_emb = sinusoidal_embedding(ids.reshape(-1), cfg.addition_time_embed_dim,
                                           cfg.flip_sin_to_cos, cfg.freq_shift)
            add = jnp.concatenate([added_cond["text_embeds"].astype(jnp.float32),
                                   ids_emb.reshape(batch, -1)], axis=-1)
            emb = emb + TimestepEmbedding(cfg.time_embed_dim, name="add_embedding",
                                          **kw)(add.astype(self.dtype))
        return emb

    @nn.compact
    def __call__(
        self,
        sample: jax.Array,
        timesteps: jax.Array | float,
        encoder_hidden_states: jax.Array,
        timestep_cond: jax.Array | None = None,
        added_cond: Mapping[str, jax.Array] | None = None,
    ) -> jax.Array:
        """Predicts the noise (or v) of latents.

        Args:
          sample: ``(B, H, W, in_channels)`` latents, ``H`` and ``W`` multiples of
            ``config.downsampling_factor``.
          timesteps: ``(B,)``, ``(1,)`` or a scalar, on the training grid (0..999).
          encoder_hidden_states: ``(B, L, cross_attention_dim)`` text-encoder states.
          timestep_cond: ``(B, time_cond_proj_dim)``: LCM's guidance-scale embedding.
          added_cond: SDXL's ``{"text_embeds": (B, D), "time_ids": (B, 6)}`` for
            ``addition_embed_type="text_time"``.

        Returns:
          ``(B, H, W, out_channels)`` float32.

        Raises:
          ValueError: For inputs of the wrong shape (named, with the expected shape).
        """
        cfg = self.config
        _check_inputs(cfg, sample, timesteps, encoder_hidden_states, timestep_cond, added_cond)
        b = sample.shape[0]
        common = self._common()
        emb = self._embedding(timesteps, b, timestep_cond, added_cond)
        x = sample.astype(self.dtype)
        if cfg.center_input_sample:
            x = 2 * x - 1.0
        context = encoder_hidden_states.astype(self.dtype)
        x = nn.Conv(cfg.block_out_channels[0], (cfg.conv_in_kernel,) * 2,
                    padding=(cfg.conv_in_kernel - 1) // 2, precision=self.precision,
                    kernel_init=KERNEL_INIT, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="conv_in")(x)
        skips = [x]
        for i in range(len(cfg.down_block_types)):
            x, s = DownBlock(*common, index=i, name=f"down_blocks_{i}")(x, emb, context)
            skips.extend(s)
        x = MidBlock(*common, name="mid_block")(x, emb, context)
        for i in range(len(cfg.up_block_types)):
            level = len(cfg.block_out_channels) - 1 - i
            n = cfg.layers_per_block[level] + 1
            x = UpBlock(*common, index=i, name=f"up_blocks_{i}")(x, skips[-n:], emb, context)
            skips = skips[:-n]
        x = nn.GroupNorm(cfg.norm_num_groups, epsilon=cfg.norm_eps, use_fast_variance=False,
                         dtype=self.dtype, param_dtype=self.param_dtype, name="conv_norm_out")(x)
        x = nn.Conv(cfg.out_channels, (cfg.conv_out_kernel,) * 2,
                    padding=(cfg.conv_out_kernel - 1) // 2, precision=self.precision,
                    kernel_init=KERNEL_INIT, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="conv_out")(nn.silu(x))
        return x.astype(jnp.float32)

    def init_params(self, rng: jax.Array, batch: int = 1, context_length: int = 77) -> Any:
        """Random parameters for ``batch`` latents of ``config.sample_size`` (``init``)."""
        return self.init(rng, *example_inputs(self.config, batch, context_length))["params"]


def example_inputs(
    config: UNetConditionConfig, batch: int = 1, context_length: int = 77,
    dtype: Any = jnp.float32,
) -> tuple[Any, ...]:
    """Zero inputs (or shape structs under ``jax.eval_shape``) that build every parameter.

    Returns ``(sample, timesteps, encoder_hidden_states, timestep_cond, added_cond)`` at the
    smallest size the config allows (its ``downsampling_factor``).
    """
    cfg = config
    f = cfg.downsampling_factor
    sample = jnp.zeros((batch, f, f, cfg.in_channels), dtype)
    t = jnp.zeros((batch,), jnp.float32)
    context = jnp.zeros((batch, context_length, cfg.cross_attention_dim[0]), dtype)
    cond = (None if cfg.time_cond_proj_dim is None
            else jnp.zeros((batch, cfg.time_cond_proj_dim), dtype))
    added = None
    if cfg.addition_embed_type == "text_time":
        n_ids = 6
        text = cfg.projection_class_embeddings_input_dim - n_ids * cfg.addition_time_embed_dim
        added = {"text_embeds": jnp.zeros((batch, text), dtype),
                 "time_ids": jnp.zeros((batch, n_ids), jnp.float32)}
    return sample, t, context, cond, added


def param_count(params: Any) -> int:
    """The number of scalars in a parameter tree (arrays or shape structs)."""
    return int(sum(math.prod(p.shape) for p in jax.tree.leaves(params)))

