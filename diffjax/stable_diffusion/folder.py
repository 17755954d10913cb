"""Reading a diffusers-layout model folder (``model_index.json`` + one folder per component).

A folder saved by diffusers' ``StableDiffusionPipeline.save_pretrained`` looks like::

    model_index.json            {"_class_name": "StableDiffusionPipeline",
                                 "unet": ["diffusers", "UNet2DConditionModel"], ...}
    unet/config.json            diffusion_pytorch_model[.fp16].safetensors
    vae/config.json             diffusion_pytorch_model[.fp16].safetensors
    text_encoder/config.json    model[.fp16].safetensors
    tokenizer/                  vocab.json, merges.txt, tokenizer_config.json
    scheduler/scheduler_config.json

Large components may be sharded: ``<weights>.safetensors.index.json`` (with a variant,
``<weights>.safetensors.index.fp16.json``, as diffusers and transformers name it) maps each
tensor to a shard file. Only safetensors are read (with numpy,
:mod:`diffjax.networks.safetensors_io`); pickled ``.bin`` files are refused with a message.
Nothing here imports torch or touches the network.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from diffjax.networks.safetensors_io import read_safetensors

__all__ = [
    "ModelFolder",
    "open_folder",
    "read_component_config",
    "read_component_weights",
    "require_class",
    "weights_candidates",
]

MODEL_INDEX = "model_index.json"
CONFIG_FILES = ("config.json", "scheduler_config.json")
WEIGHT_NAMES = ("diffusion_pytorch_model", "model")  # diffusers', transformers' file stems


def _add_variant(filename: str, variant: str | None) -> str:
    """``a.safetensors`` -> ``a.fp16.safetensors``: the variant before the last suffix."""
    if not variant:
        return filename
    stem, ext = filename.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def weights_candidates(variant: str | None = None) -> list[str]:
    """The weight file names a component folder is searched for, in order."""
    names = []
    for stem in WEIGHT_NAMES:
        names.append(_add_variant(f"{stem}.safetensors", variant))
        names.append(_add_variant(f"{stem}.safetensors.index.json", variant))
    return names


def _read_json(path: str, what: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: {path!r} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: {path!r} is not valid JSON ({e}).") from e
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path!r} holds a {type(data).__name__}, not a JSON object.")
    return data


def read_component_config(component_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` (models) or ``scheduler_config.json`` (schedulers) of a component.

    Raises:
      FileNotFoundError: Neither file exists (both paths named).
    """
    component_dir = os.fspath(component_dir)
    for name in CONFIG_FILES:
        path = os.path.join(component_dir, name)
        if os.path.isfile(path):
            return _read_json(path, "component config")
    raise FileNotFoundError(
        f"{component_dir!r} has no {' or '.join(CONFIG_FILES)} (looked for "
        f"{', '.join(os.path.join(component_dir, n) for n in CONFIG_FILES)})."
    )


def _read_sharded(index_path: str) -> dict[str, np.ndarray]:
    index = _read_json(index_path, "sharded weights index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index_path!r} has no 'weight_map' object.")
    directory = os.path.dirname(index_path)
    out: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        path = os.path.join(directory, shard)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"shard {path!r} named by {index_path!r} does not exist.")
        out.update(read_safetensors(path, [k for k, v in weight_map.items() if v == shard]))
    return out


def read_component_weights(
    component_dir: str | os.PathLike[str], variant: str | None = None
) -> dict[str, np.ndarray]:
    """The state dict (torch layout, numpy arrays as stored) of a component folder.

    Args:
      component_dir: e.g. ``<folder>/vae``.
      variant: ``None`` for the full-precision files, or e.g. ``"fp16"`` for
        ``diffusion_pytorch_model.fp16.safetensors`` / ``model.fp16.safetensors``.

    Raises:
      FileNotFoundError: No weight file: the names looked for, and the weight-like files
        that are there (another variant, a pickled ``.bin``).
    """
    component_dir = os.fspath(component_dir)
    candidates = weights_candidates(variant)
    for name in candidates:
        path = os.path.join(component_dir, name)
        if os.path.isfile(path):
            return _read_sharded(path) if name.endswith(".json") else read_safetensors(path)
    present = sorted(f for f in os.listdir(component_dir)
                     if f.endswith((".safetensors", ".bin", ".ckpt", ".pt", ".index.json")))
    hint = f"; it has {', '.join(present)}" if present else "; it has no weight files"
    if any(f.endswith((".bin", ".ckpt", ".pt")) for f in present):
        hint += " (pickled torch files are not read: convert them to safetensors)"
    raise FileNotFoundError(
        f"no weights in {component_dir!r} for variant={variant!r}: looked for "
        f"{', '.join(candidates)}{hint}."
    )


def require_class(
    component: str, class_name: str | None, supported: Sequence[str], where: str
) -> str:
    """Returns ``class_name`` if it is one of ``supported``, else a ValueError naming both."""
    if class_name not in supported:
        raise ValueError(
            f"{where}: {component} class {class_name!r} is not supported; supported: "
            f"{', '.join(supported)}."
        )
    return class_name


@dataclasses.dataclass(frozen=True)
class ModelFolder:
    """A diffusers pipeline folder: its path and ``model_index.json``.

    Attributes:
      path: The folder.
      pipeline_class: ``model_index.json``'s ``_class_name`` (``StableDiffusionPipeline``).
      components: Component name -> ``(library, class_name)`` for every non-null entry.
    """

    path: str
    pipeline_class: str
    components: Mapping[str, tuple[str, str]]

    def component_dir(self, name: str) -> str:
        """The folder of component ``name`` (``"unet"``, ``"vae"``, ...), checked to exist.

        Raises:
          FileNotFoundError: The component is not in ``model_index.json`` or its folder is
            missing (its name and path).
        """
        path = os.path.join(self.path, name)
        if name not in self.components:
            raise FileNotFoundError(
                f"model folder {self.path!r} has no {name!r} component in {MODEL_INDEX} "
                f"(it lists {', '.join(sorted(self.components)) or 'none'})."
            )
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"model folder {self.path!r}: component {name!r} "
                f"({self.components[name][1]}) is listed in {MODEL_INDEX} but its folder "
                f"{path!r} is missing."
            )
        return path

    def component_class(self, name: str) -> str:
        """The class name ``model_index.json`` gives component ``name``."""
        self.component_dir(name)
        return self.components[name][1]

    def config(self, name: str) -> dict[str, Any]:
        """The component's ``config.json`` / ``scheduler_config.json`` as a dict."""
        return read_component_config(self.component_dir(name))

    def weights(self, name: str, variant: str | None = None) -> dict[str, np.ndarray]:
        """The component's state dict (see :func:`read_component_weights`)."""
        return read_component_weights(self.component_dir(name), variant)


def open_folder(path: str | os.PathLike[str]) -> ModelFolder:
    """Reads ``model_index.json`` of a diffusers pipeline folder.

    Raises:
      FileNotFoundError: The folder or its ``model_index.json`` is missing.
      ValueError: ``model_index.json`` is malformed (an entry that is not
        ``[library, class]``).
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder {path!r} does not exist.")
    index_path = os.path.join(path, MODEL_INDEX)
    if not os.path.isfile(index_path):
        raise FileNotFoundError(
            f"{path!r} is not a diffusers model folder: {index_path!r} does not exist."
        )
    index = _read_json(index_path, "diffusers model index")
    components = {}
    for key, value in index.items():
        if key.startswith("_") or not isinstance(value, list):
            continue
        if len(value) != 2:
            raise ValueError(f"{index_path!r}: entry {key!r} is {value!r}, expected "
                             "[library, class_name].")
        if value[1] is not None:
            components[key] = (value[0], value[1])
    return ModelFolder(path, str(index.get("_class_name", "")), components)
