"""The configuration tree of a diffjax run, its defaults, loading and overrides.

Each config file's ``get_config()`` starts from :func:`base_config` and overrides
what it needs. Every key a run can take is listed here, so an override of an
unknown key (``--config.model.chanels=64``) fails with an error naming it.

Config files are ``ml_collections`` files with a ``get_config(variant='')`` function;
``path/to/file.py:tiny`` selects a variant. :func:`validate_config` checks a whole run
config (keys, types, ranges, names) and reports every problem in one error.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import numbers
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ml_collections

from diffjax.nn.groups import DEFAULT_NUM_GROUPS, embedding_erasing_widths

# Keys that define what a checkpoint contains; a run resumed with different values
# would load parameters that mean something else.
CHECKPOINT_DEFINING_SECTIONS = ("model", "diffusion", "consistency", "latent")
CHECKPOINT_DEFINING_KEYS = ("task", "data.name")
# What a run of each `task` trains, and the sections that define its checkpoint.
TASKS = ("diffusion", "autoencoder")
TASK_DEFINING_SECTIONS = {
    "diffusion": CHECKPOINT_DEFINING_SECTIONS,
    "autoencoder": ("autoencoder",),
}
# Keys of the defining sections that say how the model runs, not what it is: the same
# parameters serve any value, so a resumed run may change them.
CHECKPOINT_NEUTRAL_KEYS = ("model.dtype", "model.remat", "latent.cache")
# Keys older versions had and saved, that said how the model ran (never what it is); a
# saved config that has them still loads, and they are ignored.
REMOVED_KEYS = ("model.conv_weight_grad",)
# Keys newer versions added, with the value that the behaviour of the versions before
# them had: a saved config without one loads with that value, not the new default, so
# an older workdir's checkpoint still matches its model.
ADDED_KEYS = {"model.scale_shift_norm": False}


def base_config() -> ml_collections.ConfigDict:
    """Returns the full default configuration tree."""
    config = ml_collections.ConfigDict()
    # 'diffusion': a UNet denoiser (`model`, `diffusion`, `consistency`); 'autoencoder': the
    # KL autoencoder of latent diffusion (`autoencoder`).
    config.task = "diffusion"

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
    # The time/class embedding scales and shifts each residual block's second GroupNorm
    # (ADM) instead of being added before it (DDPM); an added one is erased at widths
    # of at most 32 channels (one channel per GroupNorm group), which validation refuses.
    config.model.scale_shift_norm = True
    config.model.dtype = "float32"  # compute dtype: 'float32' | 'bfloat16'
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
    # Longest wait for a checkpoint write (a preempted run's last save included) before
    # the run fails with the newest committed checkpoint standing: a hung filesystem
    # must not keep a preempted job alive forever.
    config.training.save_timeout_s = 600.0
    config.training.progress_bar = True
    # Microbatches per step (gradient accumulation); batch_size must split into
    # devices * grad_accum_steps equal parts. The update equals that of the whole batch.
    config.training.grad_accum_steps = 1

    # Consistency models (diffjax.consistency): '' trains a diffusion model; 'cd' distils
    # the diffusion model in `teacher`, 'ect' tunes it into a consistency model, 'ict'
    # trains one from scratch. The defaults are iCT's (Song & Dhariwal 2023);
    # `diffjax distill` applies CONSISTENCY_PRESETS for 'cd' and 'ect'.
    config.consistency = ml_collections.ConfigDict()
    config.consistency.method = ""  # '' | 'cd' | 'ict' | 'ect'
    config.consistency.teacher = ""  # cd, ect: the diffusion workdir (absolute path)
    config.consistency.teacher_step = 0  # the teacher's checkpoint; 0 = its newest
    config.consistency.sigma_data = 0.5
    # The largest level (capped at the schedule's); 0 = 80 sqrt(H W C / 3072), the papers'
    # 80 at CIFAR-10's dimension (diffjax.consistency.dimension_matched_sigma_max).
    config.consistency.sigma_max = 0.0
    config.consistency.distance = "pseudo_huber"  # 'l2' | 'l1' | 'pseudo_huber' | 'l2_norm'
    config.consistency.huber_c = 0.0  # 0 = iCT's 0.00054 sqrt(H W C)
    config.consistency.weighting = "reciprocal_gap"  # 'uniform' | 'reciprocal_gap' | 'snr_plus_k'
    config.consistency.target_ema = 0.0  # cd: the target network's EMA rate mu (0 = online)
    config.consistency.num_scales = 18  # cd: Karras levels N
    config.consistency.rho = 7.0
    config.consistency.teacher_sampler = "heun"  # cd: 'heun' | 'ddim' | 'dpm++'
    config.consistency.guidance_scale = 0.0  # cd: the teacher's guidance w, distilled in
    config.consistency.p_mean = -1.1  # ict, ect: the lognormal of the noise levels
    config.consistency.p_std = 2.0
    config.consistency.s0 = 10  # ict: the curriculum's first and last level counts
    config.consistency.s1 = 1280
    config.consistency.ect_q = 2.0  # ect: Delta t shrinks by q per stage
    config.consistency.ect_k = 8.0
    config.consistency.ect_b = 1.0
    config.consistency.ect_stage_steps = 0  # ect: steps per stage; 0 = num_steps // 8

    # Latent diffusion (Rombach et al. 2022): the UNet learns the scaled latents of a
    # frozen KL autoencoder (a workdir of task 'autoencoder', absolute path); samples are
    # decoded by it. '' trains on pixels.
    config.latent = ml_collections.ConfigDict()
    config.latent.autoencoder = ""
    config.latent.autoencoder_step = 0  # its checkpoint; 0 = its newest
    # The latents are z * scaling_factor; 0 = 1 / std of posterior samples of the first
    # latent.scale_images training images, measured when the run starts (run_info.json).
    config.latent.scaling_factor = 0.0
    config.latent.scale_images = 10_000
    # '' encodes each batch in the train step; a path (absolute, .npz) encodes the training
    # set once into that file (reused by later runs of the same autoencoder and data).
    config.latent.cache = ""

    # The KL autoencoder (task 'autoencoder'; diffjax.nn.AutoencoderKL, diffusers' layout):
    # one level per entry of block_out_channels, each but the last halving the side.
    config.autoencoder = ml_collections.ConfigDict()
    config.autoencoder.block_out_channels = (64, 128)
    config.autoencoder.layers_per_block = 1
    config.autoencoder.latent_channels = 4
    config.autoencoder.norm_num_groups = 32
    config.autoencoder.mid_block_attention = True
    config.autoencoder.kl_weight = 1e-6  # beta of the KL term (LDM's KL-f4/f8: 1e-6)
    config.autoencoder.reconstruction = "l1"  # 'l1' (LDM) | 'l2'

    config.sampling = ml_collections.ConfigDict()
    config.sampling.sampler = "ddim"  # a name of diffjax.app.sampler_specs, e.g. 'dpm++2m@logsnr'
    config.sampling.num_steps = 50
    config.sampling.eta = 0.0
    config.sampling.guidance_scale = 0.0
    config.sampling.clip_x0 = 1.0
    return config


CONSISTENCY_PRESETS: dict[str, dict[str, Any]] = {
    # The CM paper's CD (Song et al. 2023, Table 3): 18 Karras levels, Heun's teacher
    # step, a target EMA of 0.95, lambda = 1; pseudo-Huber in place of LPIPS (which
    # needs weights diffjax cannot ship).
    "cd": {"target_ema": 0.95, "weighting": "uniform", "num_scales": 18,
           "teacher_sampler": "heun", "distance": "pseudo_huber"},
    # ECT (Geng et al. 2024): lognormal levels, 1 / (t - r), pseudo-Huber, no target EMA.
    "ect": {"target_ema": 0.0, "weighting": "reciprocal_gap", "distance": "pseudo_huber"},
    "ict": {"target_ema": 0.0, "weighting": "reciprocal_gap", "distance": "pseudo_huber"},
}
"""The ``consistency`` keys each method sets (``diffjax distill``; iCT's are the defaults)."""


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
    config.model.scale_shift_norm = True  # 8 channels: an added embedding would be erased
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


def make_tiny_autoencoder(
    config: ml_collections.ConfigDict, num_levels: int
) -> ml_collections.ConfigDict:
    """Shrinks an autoencoder config in place to a seconds-long run (the same downsampling).

    ``num_levels`` levels of 8 channels (GroupNorm of 4 groups), no mid-block attention;
    4 steps of batch 8, a log line and a checkpoint every 2.
    """
    config.autoencoder.block_out_channels = (8,) * num_levels
    config.autoencoder.norm_num_groups = 4
    config.autoencoder.mid_block_attention = False
    config.optim.warmup_steps = 0
    config.training.batch_size = 8
    config.training.num_steps = 4
    config.training.log_every = 2
    config.training.checkpoint_every = 2
    return config


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads ``get_config()`` from a config file; ``file.py:variant`` passes a variant.

    Args:
      spec: path to a Python config file, optionally followed by ``:variant``.

    Returns:
      The ConfigDict the file returns.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file has no ``get_config``, does not parse (file and line named),
        fails while it runs, or does not return a ConfigDict.
    """
    path, _, variant = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location("diffjax_user_config", path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"cannot import config file {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ValueError(
            f"config file {path!r}, line {e.lineno}: syntax error: {e.msg}"
        ) from None
    except Exception as e:
        raise ValueError(f"config file {path!r} failed to run: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} defines no get_config()")
    try:
        config = module.get_config(variant) if variant else module.get_config()
    except ValueError:
        raise  # the file's own message (an unknown variant, say)
    except Exception as e:
        raise ValueError(
            f"get_config({variant!r}) of config file {path!r} failed: {type(e).__name__}: {e}"
        ) from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(
            f"get_config() of {path!r} returned {type(config).__name__}, not a ConfigDict"
        )
    return config


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


# Leaves whose default is a number but which may also be None.
NULLABLE_KEYS = ("sampling.clip_x0",)
# training.seed feeds jax.random.key, which takes a signed 64-bit integer.
MAX_SEED = 2**63 - 1


def validate_config(config: ml_collections.ConfigDict, *, image_size: int | None = None) -> None:
    """Checks a full run config before anything is built or written, reporting every problem.

    Checks the key tree against :func:`base_config` (no unknown keys, with the closest
    known ones suggested; no missing sections or keys), the type of every leaf (that of
    its default: ``bool`` is not an ``int``, an ``int`` is a valid ``float``, the
    channel multipliers and attention resolutions are sequences of ints), that every
    float is finite, and the allowed values and ranges of every key, including the
    cross-key ones (``beta_start <= beta_end``, ``training.batch_size`` a multiple of
    ``training.grad_accum_steps``, ``model.num_heads`` dividing the channels of the
    middle attention block, ``sampling.num_steps <= diffusion.num_timesteps``). The
    names allowed are those the builders accept (schedules, dtypes, losses, data
    sources, samplers). What depends on the devices or the data (the batch split over
    devices, the batch against the number of images) is checked where those are known.

    Args:
      config: the full run config.
      image_size: side of the training images, when known (the data is open). Adds the
        checks that depend on it: the side halves exactly at every UNet level, and
        ``model.num_heads`` divides the channels of every level with attention.

    Raises:
      ValueError: one error listing every problem found, one per line, each naming the
        dotted key, its value and what is allowed.
    """
    reference = base_config()
    problems: list[str] = []
    values: dict[str, Any] = {}
    known = flat_keys(reference) + list(_section_paths(reference))
    _check_tree(config, reference, "", known, problems, values)
    _check_values(values, problems, image_size)
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise ValueError(f"invalid config ({count}):\n  " + "\n  ".join(problems))


def _section_paths(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
    """Yields the dotted path of every section (non-leaf) below ``config``."""
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield prefix + name
            yield from _section_paths(value, prefix + name + ".")


def _did_you_mean(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _check_tree(
    node: Any,
    reference: ml_collections.ConfigDict,
    prefix: str,
    known: Sequence[str],
    problems: list[str],
    values: dict[str, Any],
) -> None:
    """Checks keys and leaf types of ``node`` against ``reference``; collects good leaves."""
    for name, default in reference.items():
        key = prefix + name
        if name not in node:
            kind = "section" if isinstance(default, ml_collections.ConfigDict) else "key"
            problems.append(f"missing config {kind} {key!r}")
            continue
        value = node[name]
        if isinstance(default, ml_collections.ConfigDict):
            if isinstance(value, ml_collections.ConfigDict):
                _check_tree(value, default, key + ".", known, problems, values)
            else:
                problems.append(
                    f"{key}={value!r}: expected a section (ConfigDict) with keys "
                    f"{', '.join(default.keys())}"
                )
            continue
        expected = _type_problem(key, value, default)
        if expected:
            problems.append(f"{key}={value!r} ({type(value).__name__}): expected {expected}")
        elif isinstance(value, numbers.Real) and not math.isfinite(value):
            problems.append(f"{key}={value!r}: expected a finite number")
        else:
            values[key] = tuple(value) if isinstance(value, list) else value
    for name in node:
        if name not in reference:
            key = prefix + name
            kind = "section" if isinstance(node[name], ml_collections.ConfigDict) else "key"
            problems.append(f"unknown config {kind} {key!r}{_did_you_mean(key, known)}")


def _type_problem(key: str, value: Any, default: Any) -> str:
    """What type ``value`` should have (the type of ``default``), or '' if it has it."""
    from diffjax._checks import is_int  # config.py imports nothing of diffjax at load
    if value is None and key in NULLABLE_KEYS:
        return ""
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "a bool"
    elif isinstance(default, int):
        ok, expected = is_int(value), "an int"
    elif isinstance(default, float):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        expected = "a float"
    elif isinstance(default, tuple | list):
        ok = isinstance(value, tuple | list) and all(is_int(v) for v in value)
        expected = "a tuple of ints"
    elif isinstance(default, str):
        ok, expected = isinstance(value, str), "a str"
    else:  # pragma: no cover - base_config holds only the types above
        ok, expected = True, ""
    if key in NULLABLE_KEYS:
        expected += " or None"
    return "" if ok else expected


def _check_values(values: dict[str, Any], problems: list[str], image_size: int | None) -> None:
    """Appends the range and allowed-value problems of the well-typed leaves in ``values``."""
    # Imported here: config.py itself stays free of jax/flax imports.
    from diffjax.app.builders import BETA_RANGE_SCHEDULES, DTYPES
    from diffjax.app.sampler_specs import parse_sampler
    from diffjax.data import SOURCE_NAMES, TFDS_PREFIX
    from diffjax.losses import LOSS_WEIGHTINGS, PREDICTION_TYPES
    from diffjax.schedules import SCHEDULE_NAMES

    def check(key: str, ok: Callable[[Any], bool], allowed: str) -> bool:
        """Records a problem unless ``ok(value)``; False if the key is absent or bad."""
        if key not in values:
            return False
        if ok(values[key]):
            return True
        problems.append(f"{key}={values[key]!r}: expected {allowed}")
        return False

    def at_least(key: str, low: int | float, what: str = "an int") -> bool:
        return check(key, lambda v: v >= low, f"{what} >= {low}")

    def choice(key: str, names: Sequence[str]) -> bool:
        if key not in values:
            return False
        if values[key] in names:
            return True
        hint = _did_you_mean(str(values[key]), names)
        problems.append(
            f"{key}={values[key]!r}: expected one of {', '.join(map(repr, names))}{hint}"
        )
        return False

    # data
    name_ok = choice("data.name", SOURCE_NAMES)
    size_ok = at_least("data.image_size", 0)
    if name_ok and size_ok and not values["data.name"].startswith(TFDS_PREFIX):
        check(
            "data.image_size",
            lambda v: v == 0,
            f"0 for {values['data.name']!r} (data.image_size resizes TFDS datasets only)",
        )
    check("data.split", lambda v: v != "", "a split name such as 'train'")
    at_least("data.num_threads", 0)  # 0 reads in the calling thread
    at_least("data.prefetch_batches", 0)

    # model
    channels_ok = check(
        "model.base_channels", lambda v: v >= 4, "an int >= 4 (the timestep embedding's width)"
    )
    mults_ok = check(
        "model.channel_mults",
        lambda v: len(v) > 0 and all(m >= 1 for m in v),
        "a non-empty tuple of ints >= 1",
    )
    at_least("model.num_res_blocks", 1)
    check(
        "model.attention_resolutions",
        lambda v: all(r >= 1 for r in v),
        "a tuple of image sides (ints >= 1), possibly empty",
    )
    check("model.dropout", lambda v: 0 <= v < 1, "a float in [0, 1)")
    # The UNet's fit to the images matters only when the run trains the UNet.
    unet_image_size = image_size if values.get("task") == "diffusion" else None
    if at_least("model.num_heads", 1) and channels_ok and mults_ok:
        _check_heads(values, problems, unet_image_size)
    if channels_ok and mults_ok and "model.scale_shift_norm" in values:
        _check_embedding(values, problems)
    choice("model.dtype", tuple(DTYPES))

    # diffusion
    timesteps_ok = at_least("diffusion.num_timesteps", 2)
    if choice("diffusion.schedule", SCHEDULE_NAMES) and (
        values["diffusion.schedule"] in BETA_RANGE_SCHEDULES
    ):
        start_ok = check("diffusion.beta_start", lambda v: 0 < v < 1, "a float in (0, 1)")
        end_ok = check("diffusion.beta_end", lambda v: 0 < v < 1, "a float in (0, 1)")
        if start_ok and end_ok and values["diffusion.beta_start"] > values["diffusion.beta_end"]:
            problems.append(
                f"diffusion.beta_start={values['diffusion.beta_start']!r}: expected at most "
                f"diffusion.beta_end={values['diffusion.beta_end']!r}"
            )
    choice("diffusion.prediction_type", PREDICTION_TYPES)
    choice("diffusion.loss_weighting", LOSS_WEIGHTINGS)
    check("diffusion.min_snr_gamma", lambda v: v > 0, "a float > 0")
    check("diffusion.p_uncond", lambda v: 0 <= v < 1, "a float in [0, 1)")

    # optim
    check("optim.learning_rate", lambda v: v > 0, "a float > 0")
    at_least("optim.warmup_steps", 0)
    at_least("optim.weight_decay", 0, "a float")
    check("optim.b1", lambda v: 0 <= v < 1, "a float in [0, 1)")
    check("optim.b2", lambda v: 0 <= v < 1, "a float in [0, 1)")
    check("optim.grad_clip_norm", lambda v: v >= 0, "a float >= 0 (0 disables clipping)")

    # training
    batch_ok = at_least("training.batch_size", 1)
    at_least("training.num_steps", 1)
    at_least("training.log_every", 1)
    at_least("training.checkpoint_every", 1)
    at_least("training.max_checkpoints_to_keep", 1)
    check("training.save_timeout_s", lambda v: v > 0, "a float > 0 (seconds)")
    accum_ok = at_least("training.grad_accum_steps", 1)
    if batch_ok and accum_ok:
        accum = values["training.grad_accum_steps"]
        check(
            "training.batch_size",
            lambda v: v % accum == 0,
            f"a multiple of training.grad_accum_steps={accum} (each device's share of the "
            "batch splits into that many microbatches)",
        )
    check("training.ema_decay", lambda v: 0 <= v <= 1, "a float in [0, 1]")
    check("training.seed", lambda v: 0 <= v <= MAX_SEED, f"an int in [0, {MAX_SEED}]")

    # consistency
    _check_consistency(values, problems, choice, check, at_least)

    # task, autoencoder
    task_ok = choice("task", TASKS)
    _check_autoencoder(values, problems, choice, check, at_least)
    levels = values.get("autoencoder.block_out_channels")
    if task_ok and values["task"] == "autoencoder" and image_size and levels:
        factor = 2 ** (len(levels) - 1)
        check("autoencoder.block_out_channels", lambda v: image_size % factor == 0,
              f"at most as many levels as halve the {image_size}-pixel side exactly "
              f"({len(levels)} levels downsample by {factor})")
    if task_ok and values["task"] == "autoencoder" and values.get("consistency.method"):
        problems.append(
            f"consistency.method={values['consistency.method']!r}: expected '' for "
            "task='autoencoder' (consistency models are diffusion runs)"
        )
    latent = values.get("latent.autoencoder")
    if latent:
        check("latent.autoencoder", os.path.isabs,
              "an absolute path (the autoencoder's workdir), or '' for pixel diffusion")
        if task_ok and values["task"] != "diffusion":
            problems.append(f"latent.autoencoder={latent!r}: expected '' for "
                            f"task={values['task']!r} (latents are what a diffusion run learns)")
        if values.get("consistency.method"):
            problems.append(f"latent.autoencoder={latent!r}: consistency models of latents are "
                            "not built yet; expected '' with consistency.method set")
    cache = values.get("latent.cache")
    if cache:
        check("latent.cache", lambda v: os.path.isabs(v) and v.endswith(".npz"),
              "an absolute path of an .npz file, or '' to encode on the fly")
        if not latent:
            problems.append(f"latent.cache={cache!r}: expected '' without latent.autoencoder")
        if values.get("data.random_flip"):
            problems.append(f"latent.cache={cache!r}: expected '' with data.random_flip=True "
                            "(a flipped latent is not the latent of the flipped image)")
    at_least("latent.autoencoder_step", 0)
    at_least("latent.scaling_factor", 0, "a float")
    at_least("latent.scale_images", 1)

    # sampling
    if "sampling.sampler" in values:
        try:
            parse_sampler(values["sampling.sampler"])
        except ValueError as e:
            problems.append(f"sampling.sampler={values['sampling.sampler']!r}: {e}")
    if at_least("sampling.num_steps", 1) and timesteps_ok:
        limit = values["diffusion.num_timesteps"]
        check(
            "sampling.num_steps",
            lambda v: v <= limit,
            f"at most diffusion.num_timesteps={limit}",
        )
    check("sampling.eta", lambda v: v >= 0, "a float >= 0")
    check("sampling.clip_x0", lambda v: v is None or v > 0, "a float > 0, or None for no clipping")


def _check_consistency(
    values: dict[str, Any], problems: list[str], choice: Callable, check: Callable,
    at_least: Callable,
) -> None:
    """The ``consistency`` section's allowed values and ranges."""
    from diffjax.consistency import CONSISTENCY_DISTANCES, CONSISTENCY_WEIGHTINGS
    from diffjax.training.consistency_step import CONSISTENCY_METHODS, TEACHER_SAMPLERS

    method_ok = choice("consistency.method", ("", *CONSISTENCY_METHODS))
    method = values.get("consistency.method", "") if method_ok else None
    choice("consistency.distance", CONSISTENCY_DISTANCES)
    choice("consistency.weighting", CONSISTENCY_WEIGHTINGS)
    choice("consistency.teacher_sampler", TEACHER_SAMPLERS)
    at_least("consistency.teacher_step", 0)
    check("consistency.sigma_data", lambda v: v > 0, "a float > 0")
    check("consistency.sigma_max", lambda v: v >= 0,
          "a float >= 0 (EDM units; 0: matched to the data's dimension)")
    check("consistency.huber_c", lambda v: v >= 0, "a float >= 0 (0: iCT's 0.00054 sqrt(d))")
    check("consistency.target_ema", lambda v: 0 <= v < 1, "a float in [0, 1)")
    at_least("consistency.num_scales", 2)
    check("consistency.rho", lambda v: v > 0, "a float > 0")
    check("consistency.guidance_scale", lambda v: v >= 0, "a float >= 0")
    check("consistency.p_std", lambda v: v > 0, "a float > 0")
    s0_ok = at_least("consistency.s0", 1)
    if at_least("consistency.s1", 1) and s0_ok:
        s0 = values["consistency.s0"]
        check("consistency.s1", lambda v: v >= s0, f"an int >= consistency.s0={s0}")
    check("consistency.ect_q", lambda v: v > 1, "a float > 1")
    check("consistency.ect_k", lambda v: v >= 0, "a float >= 0")
    check("consistency.ect_b", lambda v: v >= 0, "a float >= 0")
    at_least("consistency.ect_stage_steps", 0)
    if method in ("cd", "ect"):
        check("consistency.teacher", lambda v: v != "",
              f"the teacher's workdir (method {method!r} starts from a diffusion model)")
    elif method is not None:
        check("consistency.teacher", lambda v: v == "",
              f"'' (method {method!r} takes no teacher)")
    if method is not None and method != "cd":
        check("consistency.target_ema", lambda v: v == 0,
              "0 (a target EMA is CD's; iCT and ECT train against the online network)")
        check("consistency.guidance_scale", lambda v: v == 0,
              "0 (guidance is distilled from a teacher: method 'cd')")


def _check_autoencoder(
    values: dict[str, Any], problems: list[str], choice: Callable[..., bool],
    check: Callable[..., bool], at_least: Callable[..., bool],
) -> None:
    """The ``autoencoder`` section's ranges (its widths and GroupNorm groups)."""
    from diffjax.training.autoencoder_step import RECONSTRUCTION_LOSSES

    widths_ok = check("autoencoder.block_out_channels",
                      lambda v: len(v) > 0 and all(c >= 1 for c in v),
                      "a non-empty tuple of ints >= 1")
    at_least("autoencoder.layers_per_block", 1)
    at_least("autoencoder.latent_channels", 1)
    if at_least("autoencoder.norm_num_groups", 1) and widths_ok:
        groups = values["autoencoder.norm_num_groups"]
        check("autoencoder.block_out_channels", lambda v: all(c % groups == 0 for c in v),
              f"widths divisible by autoencoder.norm_num_groups={groups}")
    check("autoencoder.kl_weight", lambda v: v >= 0, "a float >= 0")
    choice("autoencoder.reconstruction", RECONSTRUCTION_LOSSES)


def _check_embedding(values: dict[str, Any], problems: list[str]) -> None:
    """An embedding added before GroupNorm must survive it at every residual-block width."""
    if values["model.scale_shift_norm"]:
        return
    erased = embedding_erasing_widths(
        values["model.base_channels"], values["model.channel_mults"], DEFAULT_NUM_GROUPS
    )
    if erased:
        problems.append(
            f"model.scale_shift_norm=False: residual blocks of width {erased} have one "
            f"channel per GroupNorm group ({DEFAULT_NUM_GROUPS} groups), which removes an "
            "added time/class embedding, so the model would ignore t and labels there; set "
            "model.scale_shift_norm=True (or model.base_channels so that every level has "
            f"more than {DEFAULT_NUM_GROUPS} channels)"
        )


def _check_heads(values: dict[str, Any], problems: list[str], image_size: int | None) -> None:
    """``model.num_heads`` must divide the channels of every attention block of the UNet.

    The middle block always has attention (at the last level's channels); the levels do
    where the image side there is in ``model.attention_resolutions``, which needs
    ``image_size``.
    """
    heads = values["model.num_heads"]
    base = values["model.base_channels"]
    mults = values["model.channel_mults"]
    attended = {f"the {base * mults[-1]} channels of the middle block": base * mults[-1]}
    if image_size is not None:
        factor = 2 ** (len(mults) - 1)
        if image_size % factor:
            problems.append(
                f"model.channel_mults={mults!r}: {len(mults)} levels need an image side "
                f"divisible by {factor}, got {image_size}"
            )
        resolutions = values.get("model.attention_resolutions", ())
        for level, mult in enumerate(mults):
            side = image_size // 2**level
            if side in resolutions:
                attended[f"the {base * mult} channels of level {level} ({side}x{side})"] = (
                    base * mult
                )
    for where, channels in attended.items():
        if channels % heads:
            problems.append(
                f"model.num_heads={heads!r}: expected a divisor of the channels of every "
                f"attention block; {where} are not divisible by it"
            )


def _parse_value(key: str, raw: str, default: Any) -> Any:
    """Parses an override string into the type of the default value."""
    from diffjax._checks import is_int  # config.py imports nothing of diffjax at load

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
        if is_int(value):
            return value
    elif isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # what float() reads but literal_eval does not: nan, inf, -inf
                return float(value)
            except ValueError:
                pass
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

    Unknown keys in the file are an error; keys missing from it keep their defaults (the
    :data:`ADDED_KEYS` their older behaviour) and :data:`REMOVED_KEYS` are ignored, so
    workdirs written by older versions still load as the same model.
    """
    saved = json.loads(text)
    config = base_config()
    for key, legacy in ADDED_KEYS.items():
        section, name = key.rsplit(".", 1)
        if name not in saved.get(section, {}):
            config[section][name] = legacy
    _merge(config, saved, "")
    return config


def _merge(config: ml_collections.ConfigDict, saved: dict, prefix: str) -> None:
    for name, value in saved.items():
        if prefix + name in REMOVED_KEYS:
            continue
        if name not in config:
            raise ValueError(f"saved config has unknown key {prefix + name!r}")
        if isinstance(config[name], ml_collections.ConfigDict):
            _merge(config[name], value, prefix + name + ".")
        elif isinstance(config[name], tuple):
            config[name] = tuple(value)
        else:
            config[name] = value


def checkpoint_mismatches(
    saved: ml_collections.ConfigDict,
    current: ml_collections.ConfigDict,
    sections: Sequence[str] | None = None,
    keys: Sequence[str] = CHECKPOINT_DEFINING_KEYS,
) -> list[str]:
    """Lists the checkpoint-defining keys whose values differ between two configs.

    ``sections`` and ``keys`` say which keys define the checkpoint (by default the
    sections of ``current``'s task, :data:`TASK_DEFINING_SECTIONS`, and
    :data:`CHECKPOINT_DEFINING_KEYS`); the :data:`CHECKPOINT_NEUTRAL_KEYS` never do.
    """
    if sections is None:
        sections = TASK_DEFINING_SECTIONS.get(current.task, CHECKPOINT_DEFINING_SECTIONS)
    saved_flat = dict(_flat_items(saved))
    current_flat = dict(_flat_items(current))
    diffs = []
    for key in sorted(current_flat):
        defining = key.split(".")[0] in sections
        if not (defining or key in keys) or key in CHECKPOINT_NEUTRAL_KEYS:
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
