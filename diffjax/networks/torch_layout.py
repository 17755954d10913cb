"""PyTorch state dicts (transformers, diffusers, pytorch-fid) onto Flax parameter trees.

Every loader of torch-trained weights does the same three things: it lists the Flax
parameters a config builds (``jax.eval_shape``, no memory), names the torch tensor each
one comes from and the layout change between them, and checks that the state dict holds
exactly those tensors with exactly those shapes. This module does them once; a model
supplies only its naming rule.

Layouts (the torch tensor -> the Flax array):

* ``"same"``: biases, norm scales, embeddings: unchanged.
* ``"linear"``: ``nn.Linear`` weight ``(out, in)`` -> ``nn.Dense`` kernel ``(in, out)``.
* ``"conv"``: ``nn.Conv2d`` weight ``(O, I, kH, kW)`` -> ``nn.Conv`` kernel ``(kH, kW, I, O)``.
* ``"conv1x1_linear"``: a 1x1 ``nn.Conv2d`` weight ``(O, I, 1, 1)`` -> a Dense kernel ``(I, O)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "LAYOUTS",
    "TorchParam",
    "flatten_params",
    "params_from_state_dict",
    "state_dict_from_params",
    "state_dict_shapes",
    "torch_shape",
    "unflatten_params",
]

LAYOUTS = ("same", "linear", "conv", "conv1x1_linear")


class TorchParam(NamedTuple):
    """Where a Flax parameter lives in a torch state dict."""

    name: str  # the state-dict key, e.g. 'encoder.conv_in.weight'
    layout: str = "same"  # one of LAYOUTS


def torch_shape(flax_shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """The torch shape of a Flax parameter of ``flax_shape`` stored with ``layout``."""
    if layout == "same":
        return tuple(flax_shape)
    if layout == "linear":
        return tuple(flax_shape[::-1])
    if layout == "conv":
        kh, kw, cin, cout = flax_shape
        return (cout, cin, kh, kw)
    if layout == "conv1x1_linear":
        cin, cout = flax_shape
        return (cout, cin, 1, 1)
    raise ValueError(f"unknown torch layout {layout!r}; known: {', '.join(LAYOUTS)}")


def _to_flax(value: np.ndarray, layout: str) -> np.ndarray:
    if layout == "linear":
        value = value.T
    elif layout == "conv":
        value = np.transpose(value, (2, 3, 1, 0))
    elif layout == "conv1x1_linear":
        value = value[:, :, 0, 0].T
    return np.asarray(value, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)


def _to_torch(value: np.ndarray, layout: str) -> np.ndarray:
    if layout == "linear":
        value = value.T
    elif layout == "conv":
        value = np.transpose(value, (3, 2, 0, 1))
    elif layout == "conv1x1_linear":
        value = value.T[:, :, None, None]
    return np.asarray(value, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested params dict as ``{'a/b/kernel': leaf}`` (leaves: arrays or shape structs)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten_params`: ``{'a/b/kernel': leaf}`` -> a nested dict."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _listed(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def params_from_state_dict(
    state_dict: Mapping[str, Any],
    flax_shapes: Mapping[str, tuple[int, ...]],
    torch_param: Callable[[str], TorchParam],
    *,
    what: str,
    ignore: Callable[[str], bool] = lambda name: False,
    dtype: Any = np.float32,
) -> dict[str, Any]:
    """Converts a torch state dict (NumPy arrays) to a nested Flax params dict.

    Args:
      state_dict: torch key -> array (any float dtype; ``fp16`` variants included).
      flax_shapes: Flax parameter path (``'down_0/conv/kernel'``) -> shape, e.g. from
        :func:`flatten_params` of ``jax.eval_shape(module.init, ...)['params']``.
      torch_param: the naming rule: Flax path -> :class:`TorchParam`.
      what: the model, for messages (``'the VAE of /models/sd15'``).
      ignore: torch keys that are not parameters and may be present (buffers).
      dtype: the dtype of the returned arrays (``None`` keeps the stored one).

    Returns:
      The params tree, NumPy arrays in the Flax layout.

    Raises:
      KeyError: tensors missing from the state dict or left over in it (both listed).
      ValueError: a tensor whose shape is not the config's (its name, the expected and
        the stored shape).
    """
    flat, missing, used = {}, [], set()
    for path, shape in flax_shapes.items():
        name, layout = torch_param(path)
        used.add(name)
        if name not in state_dict:
            missing.append(name)
            continue
        value = np.asarray(state_dict[name])
        expected = torch_shape(tuple(shape), layout)
        if value.shape != expected:
            raise ValueError(
                f"{what}: tensor {name!r} has shape {value.shape}, but the config needs "
                f"{expected}"
            )
        if dtype is not None:
            value = value.astype(dtype)
        flat[path] = _to_flax(value, layout)
    unexpected = sorted(k for k in state_dict if k not in used and not ignore(k))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing: {_listed(sorted(missing))}")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors the config has no place for: "
                         f"{_listed(unexpected)}")
        raise KeyError(f"{what} does not match its config: " + "; ".join(parts))
    return unflatten_params(flat)


def state_dict_shapes(
    flax_shapes: Mapping[str, tuple[int, ...]], torch_param: Callable[[str], TorchParam]
) -> dict[str, tuple[int, ...]]:
    """The torch state-dict keys and (torch-layout) shapes that ``flax_shapes`` load from."""
    shapes = {}
    for path, shape in flax_shapes.items():
        name, layout = torch_param(path)
        shapes[name] = torch_shape(tuple(shape), layout)
    return shapes


def state_dict_from_params(
    params: Mapping[str, Any], torch_param: Callable[[str], TorchParam]
) -> dict[str, np.ndarray]:
    """The inverse of :func:`params_from_state_dict`: Flax params -> torch-layout arrays."""
    return {
        torch_param(path).name: _to_torch(np.asarray(value), torch_param(path).layout)
        for path, value in flatten_params(params).items()
    }
