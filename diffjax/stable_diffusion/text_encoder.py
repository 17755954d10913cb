"""Stable Diffusion's text encoder: transformers' ``CLIPTextModel`` (``text_encoder/``) in Flax.

The tower is :class:`diffjax.networks.clip.CLIPTextTransformer` (token + position
embeddings, pre-LN causal transformer layers, ``final_layer_norm``). The UNet is
conditioned on the per-token states ``c = tau_theta(y)`` (Rombach et al. 2022, Eq. 3):

- ``skip=0`` (diffusers' ``clip_skip=None``): ``last_hidden_state``, i.e.
  ``final_layer_norm(h_N)``;
- ``skip=k`` (``clip_skip=k``): ``final_layer_norm(h_{N-k})``, with ``h_0`` the
  embeddings and ``h_i`` layer ``i``'s output, as diffusers' ``encode_prompt`` does with
  ``hidden_states[-(clip_skip + 1)]``.

Weights: ``text_encoder/config.json`` (a transformers ``CLIPTextConfig``) and
``model.safetensors``; keys with the ``text_model.`` prefix (transformers 4, every released
SD checkpoint) or without it (transformers 5's ``save_pretrained``). Prompts are tokenized
with :class:`diffjax.networks.clip_tokenizer.CLIPTokenizer` from ``tokenizer/``, padded to
the 77-token window; longer prompts are truncated with a warning naming how many tokens
were dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.networks.clip import CLIPTextConfig, CLIPTextTransformer, _hf_param
from diffjax.networks.clip_tokenizer import CLIPTokenizer
from diffjax.networks.torch_layout import TorchParam, flatten_params, params_from_state_dict
from diffjax.stable_diffusion.folder import (
    MODEL_INDEX,
    open_folder,
    read_component_config,
    read_component_weights,
    require_class,
)

__all__ = [
    "SUPPORTED_TEXT_ENCODER_CLASSES",
    "SUPPORTED_TOKENIZER_CLASSES",
    "encode_prompt",
    "load_text_encoder",
    "load_tokenizer",
    "params_from_hf_text_state_dict",
    "text_config_from_dict",
    "tokenize_prompts",
]

SUPPORTED_TEXT_ENCODER_CLASSES = ("CLIPTextModel",)
SUPPORTED_TOKENIZER_CLASSES = ("CLIPTokenizer", "CLIPTokenizerFast")
_PREFIX = "text_model."


def text_config_from_dict(d: Mapping[str, Any]) -> CLIPTextConfig:
    """A :class:`CLIPTextConfig` from transformers' ``text_encoder/config.json`` dict.

    Raises:
      ValueError: A ``model_type`` other than ``clip_text_model``, an architecture other
        than ``CLIPTextModel``, or an unsupported activation.
    """
    model_type = d.get("model_type", "clip_text_model")
    if model_type != "clip_text_model":
        raise ValueError(f"text encoder config model_type is {model_type!r}, expected "
                         "'clip_text_model' (transformers' CLIPTextConfig).")
    arch = d.get("architectures") or ["CLIPTextModel"]
    unsupported = [a for a in arch if a not in SUPPORTED_TEXT_ENCODER_CLASSES]
    if unsupported:
        raise ValueError(f"text encoder architectures {unsupported} are not supported; "
                         f"supported: {', '.join(SUPPORTED_TEXT_ENCODER_CLASSES)}.")
    names = {f.name for f in dataclasses.fields(CLIPTextConfig)}
    eos = d.get("eos_token_id", CLIPTextConfig.eos_token_id)
    if isinstance(eos, list):
        raise ValueError(f"text encoder eos_token_id must be an int, got {eos!r}.")
    return CLIPTextConfig(**{k: v for k, v in d.items() if k in names})


@functools.cache
def _param_shapes(config: CLIPTextConfig) -> dict[str, tuple[int, ...]]:
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    tree = jax.eval_shape(CLIPTextTransformer(config).init, jax.random.key(0), ids)
    return {k: tuple(v.shape) for k, v in flatten_params(tree["params"]).items()}


def _text_param(prefix: str):
    def rule(path: str) -> TorchParam:
        name, layout = _hf_param(path)
        return TorchParam(prefix + name, layout)

    return rule


def params_from_hf_text_state_dict(
    state_dict: Mapping[str, Any], config: CLIPTextConfig, *, what: str = "text encoder",
    dtype: Any = np.float32,
) -> dict[str, Any]:
    """A transformers ``CLIPTextModel`` state dict -> :class:`CLIPTextTransformer` params.

    Keys may carry the ``text_model.`` prefix or not; ``position_ids`` buffers are ignored.
    """
    prefix = _PREFIX if any(k.startswith(_PREFIX) for k in state_dict) else ""
    return params_from_state_dict(
        state_dict, _param_shapes(config), _text_param(prefix), what=what,
        ignore=lambda name: name.endswith("position_ids"), dtype=dtype,
    )


def _component_dir(path: str, component: str, supported: Sequence[str]) -> str:
    if os.path.isfile(os.path.join(path, MODEL_INDEX)):
        folder = open_folder(path)
        require_class(component, folder.component_class(component), supported,
                      f"{path!r} {MODEL_INDEX}")
        return folder.component_dir(component)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{component} folder {path!r} does not exist.")
    return path


def load_text_encoder(
    path: str | os.PathLike[str], *, variant: str | None = None, dtype: Any = jnp.float32
) -> tuple[dict[str, Any], CLIPTextConfig]:
    """Loads ``text_encoder/`` of a diffusers folder (or that component folder itself).

    Returns:
      ``(params, config)`` for ``CLIPTextTransformer(config)`` / :func:`encode_prompt`.

    Raises:
      FileNotFoundError: A missing folder, config or weights file (named).
      ValueError / KeyError: An unsupported class, mismatched tensors (named).
    """
    directory = _component_dir(os.fspath(path), "text_encoder", SUPPORTED_TEXT_ENCODER_CLASSES)
    config = text_config_from_dict(read_component_config(directory))
    params = params_from_hf_text_state_dict(
        read_component_weights(directory, variant), config,
        what=f"the text encoder in {directory!r}", dtype=None,
    )
    return jax.tree.map(lambda v: jnp.asarray(v, dtype), params), config


def load_tokenizer(path: str | os.PathLike[str], max_length: int = 77) -> CLIPTokenizer:
    """The CLIP tokenizer of ``tokenizer/``, padding to ``max_length``.

    Reads ``vocab.json`` + ``merges.txt``, or only ``tokenizer.json`` as transformers 5
    writes it.
    """
    directory = _component_dir(os.fspath(path), "tokenizer", SUPPORTED_TOKENIZER_CLASSES)
    if os.path.isfile(os.path.join(directory, "vocab.json")):
        return CLIPTokenizer.from_directory(directory, max_length=max_length)
    tokenizer_json = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(tokenizer_json):
        raise FileNotFoundError(f"tokenizer folder {directory!r} has neither vocab.json + "
                                "merges.txt nor tokenizer.json.")
    with open(tokenizer_json, encoding="utf-8") as f:
        model = json.load(f)["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return CLIPTokenizer(model["vocab"], merges, max_length=max_length)


def tokenize_prompts(
    tokenizer: CLIPTokenizer, prompts: str | Sequence[str], max_length: int | None = None
) -> np.ndarray:
    """``(N, max_length)`` ids (BOS, tokens, EOS, padding); warns for each truncated prompt.

    The warning names the prompt and how many tokens were dropped (diffusers logs the
    dropped text; the ids are the same).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    length = tokenizer.max_length if max_length is None else int(max_length)
    for i, prompt in enumerate(prompts):
        n = len(tokenizer.encode(prompt))
        if n > length - 2:
            warnings.warn(
                f"prompt {i} ({prompt[:40]!r}...) has {n} tokens but the text encoder's "
                f"window holds {length - 2} (+ BOS/EOS): the last {n - (length - 2)} tokens "
                "were dropped.",
                stacklevel=2,
            )
    return tokenizer(list(prompts), max_length=length)


@functools.partial(jax.jit, static_argnames=("config", "skip", "precision"))
def _encode(params, input_ids, config, skip, precision):
    out = CLIPTextTransformer(config, precision).apply(
        {"params": params}, input_ids, output_hidden_states=skip > 0
    )
    if skip == 0:
        return out["last_hidden_state"]
    norm = nn.LayerNorm(epsilon=config.layer_norm_eps, use_fast_variance=False)
    return norm.apply({"params": params["final_layer_norm"]}, out["hidden_states"][-(skip + 1)])


def encode_prompt(
    params: Any,
    config: CLIPTextConfig,
    input_ids: Any,
    skip: int = 0,
    *,
    precision: Any = "highest",
) -> jax.Array:
    """The UNet's conditioning ``(B, L, hidden_size)`` for token ids (see the module doc).

    Args:
      params: From :func:`load_text_encoder`.
      config: Its config.
      input_ids: ``(B, L)`` integer ids, ``L <= max_position_embeddings``.
      skip: diffusers' ``clip_skip``: 0 for the last layer, ``k`` for
        ``final_layer_norm(hidden_states[-(k + 1)])``.
      precision: Matmul precision.

    Raises:
      ValueError: Bad ids (shape, range) or ``skip`` outside ``[0, num_hidden_layers]``.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be (B, L) integers, got {ids.dtype} {ids.shape}.")
    if ids.shape[1] > config.max_position_embeddings:
        raise ValueError(f"input_ids length {ids.shape[1]} exceeds max_position_embeddings="
                         f"{config.max_position_embeddings}; tokenize with truncation.")
    if ids.size and (ids.min() < 0 or ids.max() >= config.vocab_size):
        raise ValueError(f"token ids span [{ids.min()}, {ids.max()}], outside the vocabulary "
                         f"[0, {config.vocab_size}).")
    if not 0 <= int(skip) <= config.num_hidden_layers:
        raise ValueError(f"skip (clip_skip) must be in [0, {config.num_hidden_layers}], got "
                         f"{skip}.")
    return _encode(params, jnp.asarray(ids, jnp.int32), config, int(skip), precision)
