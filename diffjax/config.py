"""The configuration tree of a diffjax run, its defaults, loading and overrides.

Each config file's ``get_config()`` starts from :func:`base_config` and overrides
what it needs. Every key a run can take is listed here, so an override of an
unknown key (``--config.model.chanels=64``) fails with an error naming it.

Config files are ``ml_collections`` files with a ``get_config(variant='')`` function;
``path/to/file.py:tiny`` selects a variant.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

# Keys that define what a checkpoint contains; a run resumed with different values
# would load parameters that mean something else.
CHECKPOINT_DEFINING_SECTIONS = ("model", "diffusion")
CHECKPOINT_DEFINING_KEYS = ("data.name",)
# Keys of the defining sections that say how the model runs, not what it is: the same
# parameters serve any value, so a resumed run may change them.
CHECKPOINT_NEUTRAL_KEYS = ("model.dtype", "model.conv_weight_grad", "model.remat")


def base_config() -> ml_collections.ConfigDict:
    """Returns the full default configuration tree."""
    config = ml_collections.ConfigDict()

    config.data = ml_collections.ConfigDict()
    # 'digits' | 'fashion_mnist' (IDX files) | 'tfds:<name>' (diffjax.data.SOURCE_NAMES)
    config.data.name = "digits"
    config.data.path = ""  # where the data lives: IDX directory or TFDS data_dir; '' = default
    config.data.split = "train"
    config.data.image_size = 0  # TFDS only: image side after crop/resize; 0 = the dataset's
    config.data.random_flip = False  # random left-right flips (for natural images)
    config.data.num_threads = 8  # grain threads that read and decode batches ahead
    config.data.prefetch_batches = 8  # batches read ahead of the training step

    config.model = ml_collections.ConfigDict()
    config.model.base_channels = 128
    config.model.channel_mults = (1, 2, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attention_resolutions = (16,)
    config.model.dropout = 0.1
    config.model.num_heads = 1
    config.model.class_conditional = True
    config.model.dtype = "float32"  # compute dtype: 'float32' | 'bfloat16'
    config.model.conv_weight_grad = "auto"  # 'auto' | 'matmul' | 'stock'
    config.model.remat = False  # recompute block activations in the backward pass

    config.diffusion = ml_collections.ConfigDict()
    config.diffusion.schedule = "linear"  # 'linear' | 'scaled_linear' | 'cosine'
    config.diffusion.num_timesteps = 1000
    config.diffusion.beta_start = 1e-4
    config.diffusion.beta_end = 0.02
    config.diffusion.prediction_type = "eps"  # 'eps' | 'x0' | 'v'
    config.diffusion.loss_weighting = "uniform"  # 'uniform' | 'min_snr'
    config.diffusion.min_snr_gamma = 5.0
    config.diffusion.p_uncond = 0.1  # classifier-free conditioning dropout

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 500
    config.optim.weight_decay = 0.0
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.grad_clip_norm = 1.0

    config.training = ml_collections.ConfigDict()
    config.training.batch_size = 128  # global batch, split over all devices
    config.training.num_steps = 800_000
    config.training.ema_decay = 0.9999
    config.training.seed = 0
    config.training.log_every = 100
    config.training.checkpoint_every = 5000
    config.training.max_checkpoints_to_keep = 3
    config.training.async_checkpointing = True
    config.training.progress_bar = True
    # Microbatches per step (gradient accumulation); batch_size must split into
    # devices * grad_accum_steps equal parts. The update equals that of the whole batch.
    config.training.grad_accum_steps = 1

    config.sampling = ml_collections.ConfigDict()
    config.sampling.sampler = "ddim"  # 'ddim' | 'ddpm'
    config.sampling.num_steps = 50
    config.sampling.eta = 0.0
    config.sampling.guidance_scale = 0.0
    config.sampling.clip_x0 = 1.0
    return config


def digits_config(variant: str = "") -> ml_collections.ConfigDict:
    """Returns the digits demo config; ``variant='tiny'`` gives a seconds-long smoke run."""
    config = base_config()
    config.data.name = "digits"
    config.model.base_channels = 32
    config.model.channel_mults = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (4,)
    config.model.dropout = 0.0
    config.diffusion.p_uncond = 0.1
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 100
    config.training.batch_size = 128
    config.training.num_steps = 1000
    config.training.ema_decay = 0.999
    config.training.log_every = 50
    config.training.checkpoint_every = 250
    config.sampling.guidance_scale = 3.0
    if variant == "tiny":
        config.model.base_channels = 16
        config.model.attention_resolutions = ()
        config.training.batch_size = 32
        config.training.num_steps = 20
        config.training.log_every = 5
        config.training.checkpoint_every = 10
        config.optim.warmup_steps = 5
    elif variant:
        raise ValueError(f"unknown digits config variant {variant!r}; known: 'tiny'")
    return config


def variant_flags(variant: str, known: Sequence[str]) -> set[str]:
    """Splits a config variant such as ``'tfds,tiny'`` into its flags, checking each.

    Raises:
      ValueError: a flag not in ``known`` (the message lists the known ones).
    """
    flags = {flag.strip() for flag in variant.split(",") if flag.strip()}
    unknown = sorted(flags - set(known))
    if unknown:
        raise ValueError(
            f"unknown config variant {', '.join(map(repr, unknown))}; known: "
            f"{', '.join(map(repr, known))} (combine them with commas)"
        )
    return flags


def make_tiny(config: ml_collections.ConfigDict, image_size: int = 0) -> ml_collections.ConfigDict:
    """Shrinks a config in place to a seconds-long local run on the same data and diffusion.

    The UNet becomes one level of 8 channels with one residual block, no attention and
    no dropout (cheap to compile); the run is 8 steps of batch 8 with a checkpoint every
    4. ``image_size`` (TFDS data) also shrinks the images.
    """
    config.model.base_channels = 8
    config.model.channel_mults = (1,)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = ()
    config.model.dropout = 0.0
    config.model.num_heads = 1
    config.optim.warmup_steps = 2
    config.training.batch_size = 8
    config.training.num_steps = 8
    config.training.ema_decay = 0.99
    config.training.log_every = 2
    config.training.checkpoint_every = 4
    config.data.num_threads = 2
    config.data.prefetch_batches = 2
    config.sampling.num_steps = 10
    if image_size:
        config.data.image_size = image_size
    return config


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads ``get_config()`` from a config file; ``file.py:variant`` passes a variant.

    Args:
      spec: path to a Python config file, optionally followed by ``:variant``.

    Returns:
      The ConfigDict the file returns.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file has no ``get_config``.
    """
    path, _, variant = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location("diffjax_user_config", path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"cannot import config file {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} defines no get_config()")
    return module.get_config(variant) if variant else module.get_config()


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Applies ``key.path=value`` overrides in place, checking each key exists.

    Values are parsed as Python literals (``3``, ``1e-4``, ``(1, 2)``, ``True``) and
    must match the type of the default; strings may be given bare.

    Raises:
      ValueError: unknown key (with the closest known keys) or a value of the wrong type.
    """
    known = flat_keys(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.removeprefix("--config.").removeprefix("config.")
        if not sep:
            raise ValueError(f"config override {item!r} must look like key.path=value")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown config key {key!r}{hint}")
        parent, _, leaf = key.rpartition(".")
        node = config
        for part in parent.split(".") if parent else ():
            node = node[part]
        node[leaf] = _parse_value(key, raw, node[leaf])


def flat_keys(config: ml_collections.ConfigDict) -> list[str]:
    """Lists every leaf key of a ConfigDict as a dotted path."""
    return [key for key, _ in _flat_items(config)]


def _parse_value(key: str, raw: str, default: Any) -> Any:
    """Parses an override string into the type of the default value."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, tuple | list):
        if isinstance(value, int | float):
            value = (value,)
        if isinstance(value, tuple | list):
            return tuple(value)
    elif isinstance(default, str):
        return raw
    else:
        return value
    raise ValueError(
        f"config key {key!r} expects a {type(default).__name__}, got {raw!r}"
    )


def to_json(config: ml_collections.ConfigDict) -> str:
    """Serializes a config to JSON (tuples become lists)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
    """Rebuilds a config saved with :func:`to_json` on top of the current defaults.

    Unknown keys in the file are an error; keys missing from it keep their defaults,
    so workdirs written by older versions still load.
    """
    saved = json.loads(text)
    config = base_config()
    _merge(config, saved, "")
    return config


def _merge(config: ml_collections.ConfigDict, saved: dict, prefix: str) -> None:
    for name, value in saved.items():
        if name not in config:
            raise ValueError(f"saved config has unknown key {prefix + name!r}")
        if isinstance(config[name], ml_collections.ConfigDict):
            _merge(config[name], value, prefix + name + ".")
        elif isinstance(config[name], tuple):
            config[name] = tuple(value)
        else:
            config[name] = value


def checkpoint_mismatches(
    saved: ml_collections.ConfigDict, current: ml_collections.ConfigDict
) -> list[str]:
    """Lists the checkpoint-defining keys whose values differ between two configs."""
    saved_flat = dict(_flat_items(saved))
    current_flat = dict(_flat_items(current))
    diffs = []
    for key in sorted(current_flat):
        defining = key.split(".")[0] in CHECKPOINT_DEFINING_SECTIONS
        if not (defining or key in CHECKPOINT_DEFINING_KEYS) or key in CHECKPOINT_NEUTRAL_KEYS:
            continue
        if saved_flat.get(key) != current_flat[key]:
            diffs.append(
                f"{key}: checkpoint has {saved_flat.get(key)!r}, config has {current_flat[key]!r}"
            )
    return diffs


def _flat_items(config: ml_collections.ConfigDict, prefix: str = ""):
    """Yields (dotted key, value) for every leaf; lists become tuples."""
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _flat_items(value, prefix + name + ".")
        else:
            yield prefix + name, tuple(value) if isinstance(value, list) else value
