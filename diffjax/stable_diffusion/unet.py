"""diffusers ``unet/`` folders onto :class:`diffjax.nn.unet_condition.UNet2DConditionModel`.

A diffusers model folder's ``unet/`` component holds ``config.json`` (a
``UNet2DConditionModel`` config) and ``diffusion_pytorch_model.safetensors`` (or the
``fp16`` variant ``diffusion_pytorch_model.fp16.safetensors``, or a sharded
``*.safetensors.index.json``). Read with numpy only, no torch.

The naming rule (Flax path -> diffusers key) is mechanical because the Flax modules carry
diffusers' names: list indices ``down_blocks_1`` / ``resnets_0`` / ``to_out_0`` /
``net_2`` become ``down_blocks.1`` / ``resnets.0`` / ``to_out.0`` / ``net.2``; ``kernel``
becomes ``weight`` (Conv2d OIHW -> HWIO, Linear transposed); norm ``scale`` becomes
``weight``. ``proj_in`` / ``proj_out`` are Dense layers here; without
``use_linear_projection`` diffusers stores them as 1x1 convolutions (layout
``conv1x1_linear``).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.networks.torch_layout import (
    TorchParam,
    flatten_params,
    params_from_state_dict,
    state_dict_shapes,
)
from diffjax.nn.unet_condition import UNet2DConditionModel, UNetConditionConfig, example_inputs
from diffjax.stable_diffusion.folder import read_component_config, read_component_weights

__all__ = [
    "diffusers_unet_param",
    "load_unet",
    "read_unet_config",
    "unet_params_from_state_dict",
    "unet_state_dict_shapes",
]

"""The stem of a diffusers model's weight file (``.safetensors``, ``.fp16.safetensors``)."""

_LISTS = frozenset({"down_blocks", "up_blocks", "resnets", "attentions", "transformer_blocks",
                    "downsamplers", "upsamplers", "to_out", "net"})
_CONVS = frozenset({"conv_in", "conv_out", "conv1", "conv2", "conv_shortcut", "conv"})
_INDEXED = re.compile(r"^(?P<name>.+)_(?P<index>\d+)$")


def _component(part: str) -> str:
    m = _INDEXED.match(part)
    if m and m["name"] in _LISTS:
        return f"{m['name']}.{m['index']}"
    return part


def diffusers_unet_param(flax_path: str, use_linear_projection: bool) -> TorchParam:
    """The diffusers ``UNet2DConditionModel`` tensor of a Flax param path, and its layout.

    Args:
      flax_path: ``'down_blocks_0/attentions_0/proj_in/kernel'``-style path.
      use_linear_projection: The config's flag (``proj_in`` / ``proj_out`` stored as
        Linear rather than as 1x1 Conv2d).

    Returns:
      E.g. ``TorchParam('down_blocks.0.attentions.0.proj_in.weight', 'conv1x1_linear')``.
    """
    *path, leaf = flax_path.split("/")
    path = [_component(p) for p in path]
    layout = "same"
    if leaf == "kernel":
        leaf = "weight"
        if path[-1] in _CONVS:
            layout = "conv"
        elif path[-1] in ("proj_in", "proj_out") and not use_linear_projection:
            layout = "conv1x1_linear"
        else:
            layout = "linear"
    elif leaf == "scale":
        leaf = "weight"
    return TorchParam(".".join([*path, leaf]), layout)


@functools.cache
def _param_shapes(config: UNetConditionConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    model = UNet2DConditionModel(config)
    tree = jax.eval_shape(lambda r: model.init(r, *example_inputs(config, context_length=1)),
                          jax.random.key(0))
    return tuple((k, tuple(v.shape)) for k, v in flatten_params(tree["params"]).items())


def unet_state_dict_shapes(config: UNetConditionConfig) -> dict[str, tuple[int, ...]]:
    """The diffusers state-dict keys and (torch-layout) shapes of ``config``'s UNet.

    Computed with ``jax.eval_shape`` (no memory, no compilation).
    """
    return state_dict_shapes(
        dict(_param_shapes(config)),
        functools.partial(diffusers_unet_param, use_linear_projection=config.use_linear_projection),
    )


def unet_params_from_state_dict(
    state_dict: Mapping[str, Any],
    config: UNetConditionConfig,
    *,
    what: str = "UNet weights (a diffusers UNet2DConditionModel state dict)",
    dtype: Any = np.float32,
) -> dict[str, Any]:
    """Converts a diffusers ``UNet2DConditionModel`` state dict (numpy) to Flax params.

    Args:
      state_dict: diffusers key (``down_blocks.0.resnets.0.conv1.weight``, ...) -> array
        (float32, float16 or bfloat16).
      config: The configuration the weights belong to.
      what: The weights, for messages (e.g. the file's path).
      dtype: The dtype of the returned numpy arrays.

    Returns:
      The ``params`` tree of :class:`UNet2DConditionModel`.

    Raises:
      KeyError: Tensors missing or left over (listed).
      ValueError: A tensor of the wrong shape (its name, the expected and stored shapes).
    """
    rule = functools.partial(diffusers_unet_param,
                             use_linear_projection=config.use_linear_projection)
    return params_from_state_dict(state_dict, dict(_param_shapes(config)), rule, what=what,
                                  dtype=dtype)


def read_unet_config(component_dir: str | os.PathLike[str]) -> UNetConditionConfig:
    """Reads ``config.json`` of a diffusers ``unet/`` folder.

    Raises:
      FileNotFoundError: The folder or its ``config.json`` is absent (path named).
      NotImplementedError / ValueError: From :meth:`UNetConditionConfig.from_diffusers_dict`.
    """
    directory = os.fspath(component_dir)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"UNet folder {directory!r} does not exist.")
    return UNetConditionConfig.from_diffusers_dict(read_component_config(directory))


def load_unet(
    component_dir: str | os.PathLike[str],
    dtype: Any = jnp.float32,
    variant: str | None = None,
) -> tuple[dict[str, Any], UNetConditionConfig]:
    """Loads a diffusers ``unet/`` folder into Flax params.

    Args:
      component_dir: The folder with ``config.json`` and the weights.
      dtype: The parameters' dtype (``jnp.bfloat16`` halves memory on accelerators).
      variant: ``None`` for ``diffusion_pytorch_model.safetensors``, ``"fp16"`` for
        ``diffusion_pytorch_model.fp16.safetensors``.

    Returns:
      ``(params, config)``: JAX arrays for :class:`UNet2DConditionModel` and its config.

    Raises:
      FileNotFoundError: A missing folder, config or weight file (path named).
      KeyError / ValueError: Tensors missing, left over or of the wrong shape (named).
    """
    directory = os.fspath(component_dir)
    config = read_unet_config(directory)
    state_dict = read_component_weights(directory, variant)
    params = unet_params_from_state_dict(
        state_dict, config, what=f"the UNet weights in {directory!r}", dtype=np.float32
    )
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), params), config
