"""diffusers ``AutoencoderKL`` weights (``vae/``) onto diffjax's Flax ``AutoencoderKL``.

The naming rule (:func:`diffusers_vae_param`): Flax path segments ``name_<i>`` of the lists
(``down_blocks``, ``up_blocks``, ``resnets``, ``attentions``, ``downsamplers``,
``upsamplers``, ``to_out``) become ``name.<i>``; ``kernel`` becomes ``weight`` (a 4-D
kernel is a ``Conv2d``, a 2-D one a ``Linear``), ``scale`` becomes ``weight``. Checkpoints
saved before diffusers 0.14 (``sd-vae-ft-mse`` among them) name the mid-block attention
``query`` / ``key`` / ``value`` / ``proj_attn``, sometimes as 1x1 convolutions; they are
renamed as diffusers does on load (:func:`rename_deprecated_attention`).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.networks.torch_layout import TorchParam, flatten_params, params_from_state_dict
from diffjax.nn.autoencoder import AutoencoderKL, AutoencoderKLConfig
from diffjax.stable_diffusion.folder import (
    MODEL_INDEX,
    open_folder,
    read_component_config,
    read_component_weights,
    require_class,
)

__all__ = [
    "SUPPORTED_VAE_CLASSES",
    "diffusers_vae_param",
    "load_vae",
    "params_from_diffusers_state_dict",
    "rename_deprecated_attention",
    "save_vae",
    "vae_param_shapes",
]

SUPPORTED_VAE_CLASSES = ("AutoencoderKL",)
_LISTS = ("down_blocks", "up_blocks", "resnets", "attentions", "downsamplers", "upsamplers",
          "to_out")
_INDEXED = re.compile(rf"^({'|'.join(_LISTS)})_(\d+)$")
_DEPRECATED = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def diffusers_vae_param(path: str, shape: tuple[int, ...]) -> TorchParam:
    """The diffusers state-dict key and layout of the Flax parameter ``path`` of ``shape``."""
    *parents, leaf = path.split("/")
    parts = []
    for p in parents:
        m = _INDEXED.match(p)
        parts.extend([m.group(1), m.group(2)] if m else [p])
    layout = "same"
    if leaf == "kernel":
        leaf, layout = "weight", "conv" if len(shape) == 4 else "linear"
    elif leaf == "scale":
        leaf = "weight"
    return TorchParam(".".join([*parts, leaf]), layout)


def rename_deprecated_attention(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Pre-0.14 attention names (``mid_block.attentions.0.query.weight`` ...) to today's.

    1x1-convolution weights ``(O, I, 1, 1)`` of those layers become ``(O, I)``.
    """
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if "attentions" in parts and len(parts) >= 2 and parts[-2] in _DEPRECATED:
            key = ".".join([*parts[:-2], _DEPRECATED[parts[-2]], parts[-1]])
            value = np.asarray(value)
            if value.ndim == 4 and value.shape[2:] == (1, 1):
                value = value[:, :, 0, 0]
        out[key] = value
    return out


@functools.cache
def vae_param_shapes(config: AutoencoderKLConfig) -> dict[str, tuple[int, ...]]:
    """Flax parameter path -> shape for ``config`` (``jax.eval_shape``: no memory)."""
    f = config.downsample_factor
    x = jax.ShapeDtypeStruct((1, f, f, config.in_channels), jnp.float32)
    tree = jax.eval_shape(AutoencoderKL(config).init, jax.random.key(0), x)
    return {k: tuple(v.shape) for k, v in flatten_params(tree["params"]).items()}


def params_from_diffusers_state_dict(
    state_dict: Mapping[str, Any],
    config: AutoencoderKLConfig,
    *,
    what: str = "VAE weights",
    dtype: Any = np.float32,
) -> dict[str, Any]:
    """A diffusers ``AutoencoderKL`` state dict (numpy) -> :class:`AutoencoderKL` params.

    Raises:
      KeyError: Tensors missing or left over (listed).
      ValueError: A tensor whose shape is not the config's (name, both shapes).
    """
    shapes = vae_param_shapes(config)
    return params_from_state_dict(
        rename_deprecated_attention(state_dict), shapes,
        lambda path: diffusers_vae_param(path, shapes[path]), what=what, dtype=dtype,
    )


def _vae_dir(path: str) -> str:
    if os.path.isfile(os.path.join(path, MODEL_INDEX)):
        folder = open_folder(path)
        require_class("vae", folder.component_class("vae"), SUPPORTED_VAE_CLASSES,
                      f"{path!r} {MODEL_INDEX}")
        return folder.component_dir("vae")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"VAE folder {path!r} does not exist.")
    return path


def load_vae(
    path: str | os.PathLike[str],
    *,
    variant: str | None = None,
    dtype: Any = jnp.float32,
) -> tuple[dict[str, Any], AutoencoderKLConfig]:
    """Loads a diffusers ``AutoencoderKL`` (a pipeline folder or its ``vae/`` folder).

    Args:
      path: A diffusers pipeline folder (with ``model_index.json``) or a VAE component
        folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).
      variant: ``"fp16"`` for the ``.fp16.safetensors`` files.
      dtype: The parameters' dtype (float32; ``jnp.bfloat16`` for accelerators).

    Returns:
      ``(params, config)``: JAX arrays for ``AutoencoderKL(config).apply({"params": ...})``.

    Raises:
      FileNotFoundError: A missing folder, config or weights file (named).
      ValueError / KeyError: An unsupported class or config key, mismatched tensors.
    """
    directory = _vae_dir(os.fspath(path))
    config_dict = read_component_config(directory)
    config = AutoencoderKLConfig.from_diffusers(config_dict)
    state_dict = read_component_weights(directory, variant)
    params = params_from_diffusers_state_dict(
        state_dict, config, what=f"the VAE in {directory!r}", dtype=None
    )
    return jax.tree.map(lambda v: jnp.asarray(v, dtype), params), config


def save_vae(
    path: str | os.PathLike[str], params: Mapping[str, Any], config: AutoencoderKLConfig
) -> None:
    """Writes an :class:`AutoencoderKL` as a diffusers ``vae/`` folder.

    ``config.json`` (:meth:`AutoencoderKLConfig.to_diffusers`) and
    ``diffusion_pytorch_model.safetensors`` in diffusers' names and (NCHW) layouts, float32;
    :func:`load_vae` and diffusers' ``AutoencoderKL.from_pretrained`` read it.
    """
    from diffjax.files import write_text_atomic
    from diffjax.networks.safetensors_io import write_safetensors
    from diffjax.networks.torch_layout import state_dict_from_params

    directory = os.fspath(path)
    os.makedirs(directory, exist_ok=True)
    shapes = vae_param_shapes(config)
    flat = flatten_params(params)
    if set(flat) != set(shapes) or any(tuple(np.shape(flat[k])) != shapes[k] for k in shapes):
        raise ValueError("params do not match the AutoencoderKL of this config (other names or "
                         "shapes).")
    tensors = state_dict_from_params(
        jax.tree.map(lambda v: np.asarray(v, np.float32), dict(params)),
        lambda p: diffusers_vae_param(p, shapes[p]),
    )
    write_safetensors(os.path.join(directory, "diffusion_pytorch_model.safetensors"), tensors)
    write_text_atomic(os.path.join(directory, "config.json"),
                      json.dumps(config.to_diffusers(), indent=2) + "\n")
