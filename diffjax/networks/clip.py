"""CLIP (vision and text towers) in Flax Linen, Hugging Face weights, and the CLIP score.

A port of transformers' ``CLIPModel`` layer for layer, with its parameter names:

- Vision: patch embedding (a stride-``patch_size`` convolution without bias), a learned
  class token, learned position embeddings, ``pre_layrnorm`` (sic), pre-LN transformer
  layers, ``post_layernorm`` of the class token, ``visual_projection`` (no bias).
- Text: token + position embeddings, the same transformer layers under a causal mask,
  ``final_layer_norm``, pooling at the end-of-text token, ``text_projection`` (no bias).
  Pooling follows transformers: configs with ``eos_token_id == 2`` (the value in
  checkpoints converted before transformers PR #24773, OpenAI's among them) take the
  position of the largest id (:func:`pool_legacy_argmax`, right for CLIP's vocabulary
  where ``<|endoftext|>`` has the largest id); otherwise the first position equal to
  ``eos_token_id`` (:func:`pool_first_eos`). Right padding never changes the pooled
  output: the mask is causal.
- ``logit_scale``: ``logits_per_image = exp(logit_scale) * cos(E_image, E_text)``.

Weights are never downloaded. Point :func:`load_clip` at a Hugging Face CLIP directory
(``config.json`` + ``model.safetensors``, e.g. a local snapshot of
``openai/clip-vit-base-patch32``), or set ``DIFFJAX_CLIP_WEIGHTS`` to it;
:func:`load_clip_tokenizer` reads ``vocab.json`` + ``merges.txt`` from the same place. The
safetensors file is read with numpy (:mod:`diffjax.networks.safetensors_io`), every tensor
checked by name and shape.

CLIP score (Hessel et al. 2021, as in torchmetrics): for image/caption pairs,
``mean_i max(100 * cos(E_image_i, E_text_i), 0)``. Images go through
:func:`preprocess_clip_images`, the float path of transformers' ``CLIPImageProcessor``:
resize the shortest side to ``image_size`` (bicubic, antialiased, the long side
``int(image_size * long / short)``), center crop, scale to ``[0, 1]``, normalize with the
OpenAI mean and std.

Parity: ``tests/test_clip.py`` checks this port against transformers' torch ``CLIPModel``
of a tiny random config (``experiments/make_clip_golden.py``).

References:
  Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
  ICML 2021 (https://arxiv.org/abs/2103.00020).
  Hessel et al., "CLIPScore: A Reference-free Evaluation Metric for Image Captioning",
  EMNLP 2021 (https://arxiv.org/abs/2104.08718), Eq. 1 (with w = 1, scaled by 100).
  transformers ``models/clip/modeling_clip.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diffjax._checks import is_int
from diffjax.networks._batching import map_padded_batches
from diffjax.networks.clip_tokenizer import CLIPTokenizer
from diffjax.networks.safetensors_io import read_safetensors
from diffjax.networks.torch_layout import TorchParam, params_from_state_dict, state_dict_shapes

__all__ = [
    "CLIP",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "WEIGHTS_ENV_VAR",
    "CLIPConfig",
    "CLIPTextConfig",
    "CLIPVisionConfig",
    "clip_hf_state_dict_shapes",
    "clip_image_features",
    "clip_score",
    "clip_scores",
    "clip_text_features",
    "load_clip",
    "load_clip_tokenizer",
    "params_from_hf_state_dict",
    "pool_first_eos",
    "pool_legacy_argmax",
    "preprocess_clip_images",
]

WEIGHTS_ENV_VAR = "DIFFJAX_CLIP_WEIGHTS"
"""Environment variable naming the Hugging Face CLIP directory when no path is given."""

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_LEGACY_EOS_ID = 2


# --------------------------------------------------------------------------------------
# Configuration (field names and defaults as transformers' CLIP configs: ViT-B/32).


def _known(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _square(value: Any, name: str) -> int:
    if isinstance(value, list | tuple):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"vision {name} must be square, got {value!r}.")
        value = value[0]
    return int(value)


def _check_heads(hidden: int, heads: int, tower: str) -> None:
    if heads < 1 or hidden % heads:
        raise ValueError(
            f"{tower} hidden_size={hidden} is not a multiple of num_attention_heads={heads}."
        )


def _quick_gelu(x: jax.Array) -> jax.Array:
    """``x * sigmoid(1.702 x)``: OpenAI CLIP's GELU approximation."""
    return x * jax.nn.sigmoid(1.702 * x)


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation ``ACT2FN[name]`` of transformers, for those CLIP checkpoints use."""
    match name:
        case "quick_gelu":
            return _quick_gelu
        case "gelu":
            return functools.partial(jax.nn.gelu, approximate=False)
        case "gelu_new" | "gelu_pytorch_tanh":
            return functools.partial(jax.nn.gelu, approximate=True)
        case _:
            raise ValueError(
                f"unsupported hidden_act {name!r}; expected quick_gelu, gelu, gelu_new or "
                "gelu_pytorch_tanh."
            )


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """The vision tower (transformers' ``CLIPVisionConfig`` fields; defaults: ViT-B/32)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        _check_heads(self.hidden_size, self.num_attention_heads, "vision")
        _activation(self.hidden_act)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"vision image_size={self.image_size} is not a multiple of "
                f"patch_size={self.patch_size}."
            )

    @property
    def num_positions(self) -> int:
        """Patches plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """The text tower (transformers' ``CLIPTextConfig`` fields; defaults: ViT-B/32's)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407

    def __post_init__(self):
        _check_heads(self.hidden_size, self.num_attention_heads, "text")
        _activation(self.hidden_act)

    @property
    def pooling(self) -> str:
        """``"legacy_argmax"`` when ``eos_token_id == 2``, else ``"first_eos"`` (transformers)."""
        return "legacy_argmax" if self.eos_token_id == _LEGACY_EOS_ID else "first_eos"


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """A whole CLIP model: both towers, the shared projection size and the logit scale init.

    Hashable (frozen), so it can be a static argument of ``jax.jit``. Read a Hugging Face
    ``config.json`` with :meth:`from_json`.
    """

    vision: CLIPVisionConfig = CLIPVisionConfig()
    text: CLIPTextConfig = CLIPTextConfig()
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> CLIPConfig:
        """Builds the config from a transformers ``CLIPConfig`` dict (``config.json``).

        Unknown keys are ignored, absent ones take transformers' defaults; old-style
        ``text_config_dict`` / ``vision_config_dict`` entries override ``text_config`` /
        ``vision_config`` as in transformers.

        Raises:
          ValueError: For a non-CLIP ``model_type``, non-square images or patches, an
            unsupported activation, or a list-valued ``eos_token_id``.
        """
        model_type = d.get("model_type", "clip")
        if model_type != "clip":
            raise ValueError(f"config model_type is {model_type!r}, expected 'clip'.")
        text = {**(d.get("text_config") or {}), **(d.get("text_config_dict") or {})}
        vision = {**(d.get("vision_config") or {}), **(d.get("vision_config_dict") or {})}
        if vision.get("num_channels", 3) != 3:
            raise ValueError(f"only RGB CLIP models are supported, {vision['num_channels']=}.")
        vision = {k: _square(v, k) if k in ("image_size", "patch_size") else v
                  for k, v in vision.items()}
        eos = text.get("eos_token_id", CLIPTextConfig.eos_token_id)
        if not is_int(eos):
            raise ValueError(f"text eos_token_id must be one integer, got {eos!r}.")
        top = {k: d[k] for k in ("projection_dim", "logit_scale_init_value") if k in d}
        return cls(
            vision=CLIPVisionConfig(**_known(CLIPVisionConfig, vision)),
            text=CLIPTextConfig(**_known(CLIPTextConfig, text)),
            **top,
        )

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> CLIPConfig:
        """Reads a Hugging Face CLIP ``config.json``."""
        with open(path, encoding="utf-8") as f:
            return cls.from_hf_dict(json.load(f))


# --------------------------------------------------------------------------------------
# The network.


def pool_legacy_argmax(hidden: jax.Array, input_ids: jax.Array) -> jax.Array:
    """Hidden state at the largest token id of each row (first one on ties).

    transformers' pooling for configs with ``eos_token_id == 2``: with CLIP's vocabulary,
    ``<|endoftext|>`` has the largest id, so this is the first end-of-text token unless
    tokens were added to the vocabulary after it.

    Args:
      hidden: ``(B, L, D)``.
      input_ids: ``(B, L)`` integer ids.

    Returns:
      ``(B, D)``.
    """
    index = jnp.argmax(input_ids, axis=-1)
    return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]


def pool_first_eos(hidden: jax.Array, input_ids: jax.Array, eos_token_id: int) -> jax.Array:
    """Hidden state at the first ``eos_token_id`` of each row (position 0 if there is none).

    transformers' pooling for configs with ``eos_token_id != 2``.

    Args:
      hidden: ``(B, L, D)``.
      input_ids: ``(B, L)`` integer ids.
      eos_token_id: The end-of-text id.

    Returns:
      ``(B, D)``.
    """
    index = jnp.argmax(input_ids == eos_token_id, axis=-1)
    return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


class CLIPAttention(nn.Module):
    """Multi-head self-attention with ``q/k/v/out_proj`` (biased) projections.

    Attributes:
      num_heads: Attention heads.
      causal: Mask future positions (text tower).
      precision: Matmul precision.
    """

    num_heads: int
    causal: bool = False
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(B, L, D) -> (B, L, D)``."""
        b, length, d = x.shape
        head_dim = d // self.num_heads
        dense = functools.partial(nn.Dense, d, precision=self.precision)
        split = (b, length, self.num_heads, head_dim)
        q = dense(name="q_proj")(x).reshape(split)
        k = dense(name="k_proj")(x).reshape(split)
        v = dense(name="v_proj")(x).reshape(split)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=self.precision) * head_dim**-0.5
        if self.causal:
            mask = jnp.tril(jnp.ones((length, length), bool))
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=self.precision)
        return dense(name="out_proj")(out.reshape(b, length, d))


class CLIPMLP(nn.Module):
    """``fc1`` -> activation -> ``fc2``."""

    hidden_size: int
    intermediate_size: int
    hidden_act: str
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(..., D) -> (..., D)``."""
        x = nn.Dense(self.intermediate_size, precision=self.precision, name="fc1")(x)
        x = _activation(self.hidden_act)(x)
        return nn.Dense(self.hidden_size, precision=self.precision, name="fc2")(x)


class CLIPEncoder(nn.Module):
    """``num_layers`` pre-LN transformer layers (``layers_0`` .. ``layers_{n-1}``).

    Each layer: ``x += self_attn(layer_norm1(x)); x += mlp(layer_norm2(x))``.
    """

    config: CLIPVisionConfig | CLIPTextConfig
    causal: bool = False
    precision: Any = "highest"

    @nn.compact
    def __call__(
        self, x: jax.Array, output_hidden_states: bool = False
    ) -> jax.Array | tuple[jax.Array, tuple[jax.Array, ...]]:
        """``(B, L, D) -> (B, L, D)``.

        With ``output_hidden_states``, also the tuple of every layer's input and the last
        output (``num_hidden_layers + 1`` arrays), as transformers' ``hidden_states``.
        """
        c = self.config
        states = [x]
        for i in range(c.num_hidden_layers):
            layer = _EncoderLayer(c, self.causal, self.precision, name=f"layers_{i}")
            x = layer(x)
            states.append(x)
        return (x, tuple(states)) if output_hidden_states else x


class _EncoderLayer(nn.Module):
    config: CLIPVisionConfig | CLIPTextConfig
    causal: bool
    precision: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        h = _layer_norm(c.layer_norm_eps, "layer_norm1")(x)
        x = x + CLIPAttention(c.num_attention_heads, self.causal, self.precision,
                              name="self_attn")(h)
        h = _layer_norm(c.layer_norm_eps, "layer_norm2")(x)
        mlp = CLIPMLP(c.hidden_size, c.intermediate_size, c.hidden_act, self.precision,
                      name="mlp")
        return x + mlp(h)


class _VisionEmbeddings(nn.Module):
    config: CLIPVisionConfig
    precision: Any

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        c = self.config
        d, p = c.hidden_size, c.patch_size
        class_embedding = self.param("class_embedding", nn.initializers.normal(d**-0.5), (d,))
        x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                    precision=self.precision, name="patch_embedding")(pixel_values)
        x = x.reshape(x.shape[0], -1, d)  # row-major over the patch grid, as torch flatten(2)
        cls = jnp.broadcast_to(class_embedding.astype(x.dtype), (x.shape[0], 1, d))
        x = jnp.concatenate([cls, x], axis=1)
        pos = nn.Embed(c.num_positions, d, name="position_embedding")
        return x + pos(jnp.arange(c.num_positions))[None]


class CLIPVisionTransformer(nn.Module):
    """transformers' ``CLIPVisionModel`` (``vision_model``): NHWC normalized pixels in.

    Returns ``{"last_hidden_state": (B, 1 + patches, D), "pooler_output": (B, D)}``.
    """

    config: CLIPVisionConfig
    precision: Any = "highest"

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> dict[str, jax.Array]:
        """Runs the tower on ``(B, image_size, image_size, 3)`` preprocessed images."""
        c = self.config
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (c.image_size, c.image_size, 3):
            raise ValueError(
                f"pixel_values must be (B, {c.image_size}, {c.image_size}, 3) NHWC "
                f"(see preprocess_clip_images), got {pixel_values.shape}."
            )
        x = _VisionEmbeddings(c, self.precision, name="embeddings")(pixel_values)
        x = _layer_norm(c.layer_norm_eps, "pre_layrnorm")(x)
        x = CLIPEncoder(c, causal=False, precision=self.precision, name="encoder")(x)
        pooled = _layer_norm(c.layer_norm_eps, "post_layernorm")(x[:, 0])
        return {"last_hidden_state": x, "pooler_output": pooled}


class _TextEmbeddings(nn.Module):
    config: CLIPTextConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        c = self.config
        tokens = nn.Embed(c.vocab_size, c.hidden_size, name="token_embedding")(input_ids)
        pos = nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embedding")
        return tokens + pos(jnp.arange(input_ids.shape[-1]))[None]


class CLIPTextTransformer(nn.Module):
    """transformers' ``CLIPTextModel`` (``text_model``): token ids in, causal mask.

    Returns ``{"last_hidden_state": (B, L, D), "pooler_output": (B, D)}``, pooled at the
    end-of-text token (``config.pooling``).
    """

    config: CLIPTextConfig
    precision: Any = "highest"

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, output_hidden_states: bool = False
    ) -> dict[str, Any]:
        """Runs the tower on ``(B, L)`` ids, ``L <= max_position_embeddings``.

        With ``output_hidden_states``, the dict also holds ``"hidden_states"``: the
        embeddings and every layer's output, ``num_hidden_layers + 1`` arrays ``(B, L, D)``
        before ``final_layer_norm`` (transformers' ``output_hidden_states=True``).
        """
        c = self.config
        if input_ids.ndim != 2 or input_ids.shape[1] > c.max_position_embeddings:
            raise ValueError(
                f"input_ids must be (B, L) with L <= max_position_embeddings="
                f"{c.max_position_embeddings}, got shape {input_ids.shape}."
            )
        x = _TextEmbeddings(c, name="embeddings")(input_ids)
        x, states = CLIPEncoder(c, causal=True, precision=self.precision, name="encoder")(
            x, output_hidden_states=True
        )
        x = _layer_norm(c.layer_norm_eps, "final_layer_norm")(x)
        if c.pooling == "legacy_argmax":
            pooled = pool_legacy_argmax(x, input_ids)
        else:
            pooled = pool_first_eos(x, input_ids, c.eos_token_id)
        out = {"last_hidden_state": x, "pooler_output": pooled}
        if output_hidden_states:
            out["hidden_states"] = states
        return out


class CLIP(nn.Module):
    """transformers' ``CLIPModel`` in Flax: both towers, projections and ``logit_scale``.

    Methods (use with ``CLIP(config).apply({"params": params}, x, method=...)``):
    ``get_image_features(pixel_values)`` and ``get_text_features(input_ids)`` return the
    unnormalized projected embeddings ``(B, projection_dim)``; ``__call__(input_ids,
    pixel_values)`` returns transformers' ``CLIPOutput`` fields (see there).

    Attributes:
      config: The model configuration.
      precision: Matmul / convolution precision (``"highest"`` keeps float32 on TPU/GPU).
    """

    config: CLIPConfig
    precision: Any = "highest"

    def setup(self):
        """Creates the towers, the projections and ``logit_scale``."""
        c, p = self.config, self.precision
        self.vision_model = CLIPVisionTransformer(c.vision, p)
        self.text_model = CLIPTextTransformer(c.text, p)
        self.visual_projection = nn.Dense(c.projection_dim, use_bias=False, precision=p)
        self.text_projection = nn.Dense(c.projection_dim, use_bias=False, precision=p)
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(c.logit_scale_init_value), ()
        )

    def get_image_features(self, pixel_values: jax.Array) -> jax.Array:
        """Projected pooled image features ``(B, projection_dim)`` of preprocessed NHWC pixels."""
        return self.visual_projection(self.vision_model(pixel_values)["pooler_output"])

    def get_text_features(self, input_ids: jax.Array) -> jax.Array:
        """Projected pooled text features ``(B, projection_dim)`` of ``(B, L)`` token ids."""
        return self.text_projection(self.text_model(input_ids)["pooler_output"])

    def __call__(self, input_ids: jax.Array, pixel_values: jax.Array) -> dict[str, Any]:
        """The fields of transformers' ``CLIPOutput`` (no loss), as a dict.

        Returns:
          ``logits_per_image`` ``(B_img, B_txt)`` = ``exp(logit_scale) * cos``, its
          transpose ``logits_per_text``, the L2-normalized ``image_embeds`` /
          ``text_embeds``, and ``vision_model_output`` / ``text_model_output`` (dicts with
          ``last_hidden_state`` and ``pooler_output``).
        """
        vision = self.vision_model(pixel_values)
        text = self.text_model(input_ids)
        image_embeds = _l2_normalize(self.visual_projection(vision["pooler_output"]))
        text_embeds = _l2_normalize(self.text_projection(text["pooler_output"]))
        logits_per_text = jnp.exp(self.logit_scale) * jnp.matmul(
            text_embeds, image_embeds.T, precision=self.precision
        )
        return {
            "logits_per_image": logits_per_text.T,
            "logits_per_text": logits_per_text,
            "image_embeds": image_embeds,
            "text_embeds": text_embeds,
            "vision_model_output": vision,
            "text_model_output": text,
        }


def _l2_normalize(x: jax.Array) -> jax.Array:
    return x / jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))


# --------------------------------------------------------------------------------------
# Hugging Face state dicts and weight directories.


@functools.cache
def _param_shapes(config: CLIPConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    pixels = jax.ShapeDtypeStruct((1, config.vision.image_size, config.vision.image_size, 3),
                                  jnp.float32)
    tree = jax.eval_shape(lambda i, x: CLIP(config).init(jax.random.key(0), i, x), ids, pixels)
    flat = traverse_util.flatten_dict(tree["params"], sep="/")
    return tuple((k, tuple(v.shape)) for k, v in flat.items())


def _hf_param(flax_name: str) -> TorchParam:
    """The transformers ``CLIPModel`` tensor of a Flax param path, and its layout."""
    *path, leaf = flax_name.split("/")
    path = [f"layers.{p.removeprefix('layers_')}" if p.startswith("layers_") else p
            for p in path]
    layout = "same"
    if leaf == "kernel" and path[-1] == "patch_embedding":
        leaf, layout = "weight", "conv"
    elif leaf == "kernel":
        leaf, layout = "weight", "linear"
    elif leaf in ("scale", "embedding"):
        leaf = "weight"
    return TorchParam(".".join([*path, leaf]), layout)


def clip_hf_state_dict_shapes(config: CLIPConfig) -> dict[str, tuple[int, ...]]:
    """The transformers ``CLIPModel`` state-dict keys and (torch-layout) shapes for ``config``.

    Computed with ``jax.eval_shape`` (no memory, no compilation). Non-persistent
    ``position_ids`` buffers are not included.
    """
    return state_dict_shapes(dict(_param_shapes(config)), _hf_param)


def params_from_hf_state_dict(
    state_dict: Mapping[str, Any], config: CLIPConfig
) -> dict[str, Any]:
    """Converts a transformers ``CLIPModel`` state dict (numpy arrays) to Flax params.

    ``*.position_ids`` buffers (stored by old checkpoints) are ignored; every other key
    must be present exactly once with its expected shape. Values are cast to float32.

    Args:
      state_dict: HF key (``vision_model.encoder.layers.0.mlp.fc1.weight``, ...) to array.
      config: The configuration the weights belong to.

    Returns:
      The ``params`` pytree of :class:`CLIP` (float32 numpy arrays).

    Raises:
      KeyError: On missing or unexpected keys (listed).
      ValueError: On a shape mismatch (the key, the expected and the found shape).
    """
    return params_from_state_dict(
        state_dict, dict(_param_shapes(config)), _hf_param,
        what="CLIP weights (a transformers CLIPModel state dict)",
        ignore=lambda name: name.endswith("position_ids"),
    )


def _weights_dir(path: str | os.PathLike[str] | None) -> str:
    if path is None:
        path = os.environ.get(WEIGHTS_ENV_VAR) or None
        if path is None:
            raise FileNotFoundError(
                f"No CLIP weights: pass a directory or set {WEIGHTS_ENV_VAR}=/path/to/clip, a "
                "Hugging Face CLIP directory with config.json, model.safetensors, vocab.json "
                "and merges.txt (e.g. a local copy of openai/clip-vit-base-patch32). diffjax "
                "never downloads them."
            )
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"CLIP weights directory {path!r} does not exist (expected config.json and "
            "model.safetensors inside)."
        )
    return path


def _read_state_dict(directory: str) -> dict[str, np.ndarray]:
    single = os.path.join(directory, "model.safetensors")
    index = single + ".index.json"
    if os.path.isfile(single):
        return read_safetensors(single)
    if os.path.isfile(index):  # sharded checkpoint
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        out: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            names = [k for k, v in weight_map.items() if v == shard]
            out.update(read_safetensors(os.path.join(directory, shard), names))
        return out
    raise FileNotFoundError(
        f"{directory!r} has no model.safetensors (nor model.safetensors.index.json). Only "
        "safetensors weights are read (no pickled pytorch_model.bin)."
    )


def load_clip(path: str | os.PathLike[str] | None = None) -> tuple[dict[str, Any], CLIPConfig]:
    """Loads a Hugging Face CLIP checkpoint directory into Flax params.

    Args:
      path: Directory with ``config.json`` and ``model.safetensors`` (or a sharded
        ``model.safetensors.index.json``); default ``$DIFFJAX_CLIP_WEIGHTS``.

    Returns:
      ``(params, config)``: float32 JAX arrays in :class:`CLIP`'s layout, and the config.

    Raises:
      FileNotFoundError: If no directory is given or a file is absent (nothing is
        downloaded).
      KeyError / ValueError: On missing, unexpected or mis-shaped tensors (named).
    """
    directory = _weights_dir(path)
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{directory!r} has no config.json (a transformers CLIPConfig).")
    config = CLIPConfig.from_json(config_path)
    params = params_from_hf_state_dict(_read_state_dict(directory), config)
    return jax.tree.map(jnp.asarray, params), config


def load_clip_tokenizer(
    path: str | os.PathLike[str] | None = None, max_length: int | None = None
) -> CLIPTokenizer:
    """The :class:`~diffjax.networks.clip_tokenizer.CLIPTokenizer` of a CLIP directory.

    Args:
      path: Directory with ``vocab.json`` and ``merges.txt``; default
        ``$DIFFJAX_CLIP_WEIGHTS``.
      max_length: Padded length; default the text tower's ``max_position_embeddings``
        from ``config.json`` when present, else ``tokenizer_config.json``'s, else 77.
    """
    directory = _weights_dir(path)
    kwargs = {}
    config_path = os.path.join(directory, "config.json")
    if max_length is not None:
        kwargs["max_length"] = int(max_length)
    elif os.path.isfile(config_path):
        kwargs["max_length"] = CLIPConfig.from_json(config_path).text.max_position_embeddings
    return CLIPTokenizer.from_directory(directory, **kwargs)


# --------------------------------------------------------------------------------------
# Preprocessing, features and the CLIP score.


def _resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Shortest-edge resize as transformers: short side ``size``, long ``int(size*long/short)``."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def preprocess_clip_images(
    images: jax.Array,
    image_size: int,
    input_range: Sequence[float] = (-1.0, 1.0),
) -> jax.Array:
    """``CLIPImageProcessor`` on float images (traceable; shapes are static).

    Steps: scale ``input_range`` to ``[0, 1]``, repeat grayscale to RGB, resize the
    shortest side to ``image_size`` with antialiased bicubic interpolation
    (``jax.image.resize``, equal to torch's ``F.interpolate(mode="bicubic",
    antialias=True)``), width first then height, clipping the overshoot to ``[0, 1]``
    after each pass as PIL's uint8 resampling does; center crop ``image_size x
    image_size`` (top-left offset rounded down); normalize with the OpenAI mean and std.
    Nothing is quantized to uint8, so on uint8 pixels the result is within about one
    grey level (1/255 before normalization) of transformers' ``CLIPImageProcessor``.

    Args:
      images: ``(B, H, W, C)`` with ``C`` 1 or 3.
      image_size: The vision tower's input side.
      input_range: ``(low, high)`` of ``images``: ``(-1, 1)`` (diffjax samples, the
        default), ``(0, 1)`` or ``(0, 255)``.

    Returns:
      ``(B, image_size, image_size, 3)`` float32.
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"images must be NHWC with 1 or 3 channels, got shape {images.shape}"
            + ("; transpose NCHW with x.transpose(0, 2, 3, 1)" if images.ndim == 4 else "")
            + "."
        )
    lo, hi = float(input_range[0]), float(input_range[1])
    if not hi > lo:
        raise ValueError(f"input_range must be (low, high) with high > low, {input_range=}.")
    x = (images.astype(jnp.float32) - lo) / (hi - lo)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    b, h, w, _ = x.shape
    rh, rw = _resized_shape(h, w, image_size)
    # Width pass, then height pass, each clipped to [0, 1]: PIL's uint8 resampling (and
    # torchvision's on uint8) clips the overshoot between and after its separable passes.
    for shape in ((b, h, rw, 3), (b, rh, rw, 3)):
        if shape != x.shape:
            x = jnp.clip(jax.image.resize(x, shape, "bicubic", antialias=True), 0.0, 1.0)
    top, left = (rh - image_size) // 2, (rw - image_size) // 2
    x = x[:, top : top + image_size, left : left + image_size]
    return (x - jnp.asarray(OPENAI_CLIP_MEAN)) / jnp.asarray(OPENAI_CLIP_STD)


def _check_images(images: np.ndarray, input_range: tuple[float, float]) -> None:
    """Clear errors for a wrong layout or values outside ``input_range`` (host check)."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        hint = ""
        if images.ndim == 4 and images.shape[1] in (1, 3):
            hint = "; these look NCHW: transpose with x.transpose(0, 2, 3, 1)"
        raise ValueError(
            f"images must be (N, H, W, C) with C in {{1, 3}}, got shape {images.shape}{hint}."
        )
    if not np.issubdtype(images.dtype, np.number):
        raise TypeError(f"images must be numeric, got dtype {images.dtype}.")
    if images.size == 0:
        return
    lo, hi = input_range
    found_lo, found_hi = float(np.min(images)), float(np.max(images))
    if not (np.isfinite(found_lo) and np.isfinite(found_hi)):
        raise ValueError("images contain non-finite values (NaN or inf).")
    tol = 1e-3 * (hi - lo)
    if found_lo < lo - tol or found_hi > hi + tol:
        raise ValueError(
            f"image values span [{found_lo:.4g}, {found_hi:.4g}], outside "
            f"input_range=({lo:g}, {hi:g}); pass the range the images use: (-1, 1) for "
            "diffjax samples, (0, 1), or (0, 255) for pixels."
        )


@functools.partial(jax.jit, static_argnames=("config", "input_range", "precision"))
def _image_features(params, images, config, input_range, precision):
    x = preprocess_clip_images(images, config.vision.image_size, input_range)
    return CLIP(config, precision).apply({"params": params}, x, method=CLIP.get_image_features)


@functools.partial(jax.jit, static_argnames=("config", "precision"))
def _text_features(params, input_ids, config, precision):
    return CLIP(config, precision).apply({"params": params}, input_ids,
                                         method=CLIP.get_text_features)


def clip_image_features(
    params: Any,
    config: CLIPConfig,
    images: Any,
    *,
    input_range: Sequence[float] = (-1.0, 1.0),
    batch_size: int = 32,
    precision: Any = "highest",
) -> np.ndarray:
    """Projected CLIP image features (unnormalized), in jitted fixed-size batches.

    Args:
      params: From :func:`load_clip`.
      config: Its config.
      images: ``(N, H, W, C)``, ``C`` in {1, 3}, values in ``input_range`` (checked).
      input_range: ``(low, high)`` of the values: ``(-1, 1)``, ``(0, 1)``, ``(0, 255)``.
      batch_size: Images per compiled call (the last batch is padded).
      precision: Matmul / convolution precision.

    Returns:
      ``(N, projection_dim)`` float32.
    """
    images = np.asarray(images)
    rng = (float(input_range[0]), float(input_range[1]))
    if not rng[1] > rng[0]:
        raise ValueError(f"input_range must be (low, high) with high > low, {input_range=}.")
    _check_images(images, rng)

    def fn(x):
        return _image_features(params, x, config, rng, precision)

    return map_padded_batches(fn, images, batch_size, (config.projection_dim,))


def _check_ids(input_ids: np.ndarray, config: CLIPTextConfig) -> None:
    if input_ids.ndim != 2 or not np.issubdtype(input_ids.dtype, np.integer):
        raise ValueError(
            f"token ids must be a 2-D integer array (N, L), got {input_ids.dtype} "
            f"{input_ids.shape}."
        )
    if input_ids.shape[1] > config.max_position_embeddings:
        raise ValueError(
            f"token ids have length {input_ids.shape[1]} > max_position_embeddings="
            f"{config.max_position_embeddings}; tokenize with truncation to that length."
        )
    if input_ids.size and (input_ids.min() < 0 or input_ids.max() >= config.vocab_size):
        raise ValueError(
            f"token ids span [{input_ids.min()}, {input_ids.max()}], outside the vocabulary "
            f"[0, {config.vocab_size})."
        )


def clip_text_features(
    params: Any,
    config: CLIPConfig,
    texts: Any,
    *,
    tokenizer: CLIPTokenizer | None = None,
    batch_size: int = 32,
    precision: Any = "highest",
) -> np.ndarray:
    """Projected CLIP text features (unnormalized), in jitted fixed-size batches.

    Args:
      params: From :func:`load_clip`.
      config: Its config.
      texts: A sequence of strings (needs ``tokenizer``) or ``(N, L)`` integer token ids
        (BOS ... EOS, right-padded, ``L <= max_position_embeddings``).
      tokenizer: From :func:`load_clip_tokenizer`, for strings.
      batch_size: Texts per compiled call.
      precision: Matmul precision.

    Returns:
      ``(N, projection_dim)`` float32.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings or an (N, L) id array, not a str.")
    if isinstance(texts, np.ndarray) and texts.dtype.kind in "UO":
        texts = texts.tolist()
    if isinstance(texts, list | tuple) and texts and all(isinstance(t, str) for t in texts):
        if tokenizer is None:
            raise ValueError(
                "texts are strings: pass tokenizer=load_clip_tokenizer(...) or token ids."
            )
        ids = tokenizer(list(texts), max_length=min(tokenizer.max_length,
                                                    config.text.max_position_embeddings))
    else:
        ids = np.asarray(texts)
        if ids.size == 0 and ids.ndim < 2:
            ids = ids.reshape(0, 1).astype(np.int32)
    _check_ids(ids, config.text)

    def fn(x):
        return _text_features(params, x.astype(np.int32), config, precision)

    return map_padded_batches(fn, ids, batch_size, (config.projection_dim,))


def clip_scores(
    images: Any,
    texts: Any,
    params: Any,
    config: CLIPConfig,
    *,
    tokenizer: CLIPTokenizer | None = None,
    input_range: Sequence[float] = (-1.0, 1.0),
    batch_size: int = 32,
    precision: Any = "highest",
) -> np.ndarray:
    """Per-pair CLIP scores ``max(100 * cos(E_image_i, E_text_i), 0)`` (Hessel et al. Eq. 1).

    Args:
      images: ``(N, H, W, C)`` images, values in ``input_range``.
      texts: ``N`` captions (with ``tokenizer``) or ``(N, L)`` token ids.
      params: From :func:`load_clip`.
      config: Its config.
      tokenizer: For string captions.
      input_range: Value range of ``images``.
      batch_size: Items per compiled call.
      precision: Matmul precision.

    Returns:
      ``(N,)`` float64 scores in ``[0, 100]``.
    """
    img = clip_image_features(params, config, images, input_range=input_range,
                              batch_size=batch_size, precision=precision)
    txt = clip_text_features(params, config, texts, tokenizer=tokenizer,
                             batch_size=batch_size, precision=precision)
    if img.shape[0] != txt.shape[0]:
        raise ValueError(
            f"CLIP score needs one caption per image: got {img.shape[0]} images and "
            f"{txt.shape[0]} texts."
        )
    img = img.astype(np.float64)
    txt = txt.astype(np.float64)
    cos = np.sum(img * txt, axis=-1) / (
        np.linalg.norm(img, axis=-1) * np.linalg.norm(txt, axis=-1)
    )
    return np.maximum(100.0 * cos, 0.0)


def clip_score(
    images: Any,
    texts: Any,
    params: Any,
    config: CLIPConfig,
    *,
    tokenizer: CLIPTokenizer | None = None,
    input_range: Sequence[float] = (-1.0, 1.0),
    batch_size: int = 32,
    precision: Any = "highest",
) -> float:
    """CLIP score: the mean over image/caption pairs of ``max(100 * cos, 0)``.

    Arguments as :func:`clip_scores`. Report the CLIP model (e.g. ViT-B/32) and N with it.

    Raises:
      ValueError: If there are no pairs, or on bad images / texts (see
        :func:`clip_scores`).
    """
    scores = clip_scores(images, texts, params, config, tokenizer=tokenizer,
                         input_range=input_range, batch_size=batch_size, precision=precision)
    if scores.size == 0:
        raise ValueError("CLIP score of zero pairs is undefined: got N=0 images and texts.")
    return float(np.mean(scores))
