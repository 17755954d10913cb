"""Original CompVis / Stability single-file checkpoints onto diffjax's Stable Diffusion models.

CompVis/stable-diffusion and Stability-AI/stablediffusion save the whole ``LatentDiffusion``
module (Rombach et al. 2022) as one file: ``sd-v1-5.safetensors``, ``v2-1_768-ema-pruned.ckpt``.
Its tensors are grouped by prefix:

- ``model.diffusion_model.*``: the UNet, in the ``openaimodel.py`` layout
  (``input_blocks.N.M``, ``middle_block.M``, ``output_blocks.N.M``, ``time_embed``, ``out``);
- ``first_stage_model.*``: the KL autoencoder (``encoder.down.i.block.j``,
  ``decoder.up.i`` numbered from the lowest resolution, ``mid.attn_1.{q,k,v,proj_out}`` as
  1x1 convolutions, ``nin_shortcut``);
- ``cond_stage_model.transformer.*``: SD 1.x's text encoder, transformers' ``CLIPTextModel``
  state dict as it is (``text_model.encoder.layers.i...``);
- ``cond_stage_model.model.*``: SD 2.x's OpenCLIP ViT-H text tower
  (``transformer.resblocks.i.attn.in_proj_weight`` holding q, k and v stacked,
  ``ln_1``/``ln_2``, ``mlp.c_fc``/``mlp.c_proj``, ``ln_final``, ``positional_embedding``);
  SD 2.x conditions on the penultimate block (``layer="penultimate"``), so the last block
  of the file is not part of the text encoder, as in diffusers' conversion (23 layers);
- the DDPM schedule buffers (``betas``, ``alphas_cumprod``, ...), EMA copies
  (``model_ema.*``, flattened names) and training state, none of which is a model weight.

Loading is a renaming: each diffusers tensor of the configured model has one CompVis source
(:class:`CompVisTensor`: a key and which part of it), computed by a pure function over the
diffusers key set (:func:`unet_compvis_names`, :func:`vae_compvis_names`,
:func:`clip_compvis_names`, :func:`openclip_compvis_names`); the checkpoint becomes the
diffusers state dicts (:func:`to_diffusers_state_dict`) that the folder loaders of
:mod:`~diffjax.stable_diffusion.unet`, :mod:`~diffjax.stable_diffusion.vae` and
:mod:`~diffjax.stable_diffusion.text_encoder` turn into the same Flax param trees. The same
table maps back (:func:`to_compvis_state_dict`). Every tensor is accounted for: a missing,
left-over or mis-shaped one is named (its CompVis key, the diffusers name, both shapes).

The architecture comes from ``config`` (a diffusers folder, or a dict of component
configs); without it the standard SD 1.x / SD 2.x architectures are inferred from the
tensor shapes (:func:`infer_configs`): what the weights do not hold (head counts, group
norms) is taken from those two releases, so other architectures need ``config``. The
scheduler is CompVis' default (:func:`compvis_scheduler_config`) unless the config folder
has one; SD 2.x exists as epsilon (512-base) and v-prediction (768-v) models with the same
tensors, so its ``prediction_type`` must be given. A checkpoint holds no tokenizer and
nothing is downloaded: it comes from a folder.

``.safetensors`` files are read with numpy. Pickled ``.ckpt`` files need torch (the
``convert`` extra) and are read with ``torch.load(weights_only=True)``, which refuses to
run code from the file.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.networks.clip import CLIPTextConfig
from diffjax.networks.clip_tokenizer import CLIPTokenizer
from diffjax.networks.safetensors_io import read_safetensors
from diffjax.networks.torch_layout import state_dict_shapes
from diffjax.nn.autoencoder import AutoencoderKLConfig
from diffjax.nn.unet_condition import UNetConditionConfig
from diffjax.stable_diffusion.folder import MODEL_INDEX, open_folder
from diffjax.stable_diffusion.schedulers import diffusers_alphas_cumprod
from diffjax.stable_diffusion.text_encoder import (
    _param_shapes as _text_param_shapes,
)
from diffjax.stable_diffusion.text_encoder import (
    _text_param,
    load_tokenizer,
    params_from_hf_text_state_dict,
    text_config_from_dict,
)
from diffjax.stable_diffusion.unet import unet_params_from_state_dict, unet_state_dict_shapes
from diffjax.stable_diffusion.vae import (
    diffusers_vae_param,
    params_from_diffusers_state_dict,
    vae_param_shapes,
)

__all__ = [
    "CLIP_PREFIX",
    "OPENCLIP_PREFIX",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "CompVisTensor",
    "SingleFileComponents",
    "clip_compvis_names",
    "components_from_state_dict",
    "compvis_scheduler_config",
    "compvis_shape",
    "infer_configs",
    "load_single_file",
    "openclip_compvis_names",
    "read_checkpoint",
    "to_compvis_state_dict",
    "to_diffusers_state_dict",
    "unet_compvis_names",
    "vae_compvis_names",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x: transformers' CLIPTextModel
OPENCLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP's text tower
EMA_PREFIX = "model_ema."
PARTS = ("whole", "1x1", "q", "k", "v")
_HF_TEXT = "text_model."

# Tensors of a LatentDiffusion checkpoint that are not model weights.
_SCHEDULE_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "lvlb_weights", "scale_factor",
})
# OpenCLIP tensors CLIPTextModel has no place for (the contrastive head, a causal mask).
_OPENCLIP_UNUSED = frozenset({"text_projection", "logit_scale", "attn_mask"})
_CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")

# SD 1.x / SD 2.x: what the weights do not tell (diffusers' configs of those releases).
_SCALED_LINEAR = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "trained_betas": None}
_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_STANDARD_CONTEXT = {768: "SD 1.x", 1024: "SD 2.x"}


class CompVisTensor(NamedTuple):
    """Where a diffusers tensor lives in a CompVis checkpoint.

    Attributes:
      key: The CompVis key, prefix included (``model.diffusion_model.out.2.weight``).
      part: ``"whole"`` (the tensor as it is); ``"1x1"`` (stored as a 1x1 convolution
        ``(O, I, 1, 1)``, a Linear ``(O, I)`` in diffusers: the VAE's mid attention);
        ``"q"`` / ``"k"`` / ``"v"`` (the first / second / third third of the rows of a
        fused ``in_proj`` tensor: OpenCLIP's attention).
    """

    key: str
    part: str = "whole"


# ----------------------------------------------------------------------------- naming rules

_UNET_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0",
             "conv_out": "out.2"}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3",
                "conv_shortcut": "skip_connection"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                  "to_out.0": "proj_out"}
_OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc",
                   "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj"}


def _no_name(key: str, model: str) -> ValueError:
    return ValueError(f"diffusers {model} tensor {key!r} has no counterpart in the CompVis "
                      "checkpoint layout (a model this loader does not map).")


def _layer_counts(parts: list[list[str]], blocks: str, layers: str) -> dict[int, int]:
    """``{block i: number of layers}`` for keys ``<blocks>.i.<layers>.j.*``."""
    counts: dict[int, int] = {}
    for p in parts:
        if len(p) > 3 and p[0] == blocks and p[2] == layers:
            i, j = int(p[1]), int(p[3])
            counts[i] = max(counts.get(i, 0), j + 1)
    return counts


def _rename(table: Mapping[str, str], rest: list[str]) -> str:
    """``rest`` joined, with its leading one- or two-part name renamed by ``table``."""
    for n in (2, 1):
        head = ".".join(rest[:n])
        if len(rest) > n and head in table:
            return ".".join([table[head], *rest[n:]])
    return ".".join(rest)


def unet_compvis_names(keys: Iterable[str]) -> dict[str, CompVisTensor]:
    """The CompVis source of each diffusers ``UNet2DConditionModel`` tensor.

    ``openaimodel.py`` numbers the encoder's blocks in one list: ``input_blocks.0`` is
    ``conv_in``, then each level's ResNets (``.0``, with their attention at ``.1``) and its
    downsampler (``.0.op``); ``output_blocks`` likewise, the upsampler following the last
    layer of a level (``.1.conv`` or, after an attention, ``.2.conv``); ``middle_block`` is
    ResNet, attention, ResNet. The counts come from ``keys`` itself.

    Args:
      keys: The diffusers state-dict keys of the model (e.g. of
        :func:`~diffjax.stable_diffusion.unet.unet_state_dict_shapes`).

    Raises:
      ValueError: A key with no CompVis counterpart (class or addition embeddings).
    """
    keys = sorted(keys)
    parts = [k.split(".") for k in keys]
    down = _layer_counts(parts, "down_blocks", "resnets")
    up = _layer_counts(parts, "up_blocks", "resnets")
    downsamplers = {int(p[1]) for p in parts if p[0] == "down_blocks" and p[2] == "downsamplers"}
    up_attention = {(int(p[1]), int(p[3])) for p in parts
                    if p[0] == "up_blocks" and p[2] == "attentions"}
    first_in, index = {}, 1
    for i in sorted(down):
        first_in[i] = index
        index += down[i] + (i in downsamplers)
    first_out, index = {}, 0
    for i in sorted(up):
        first_out[i] = index
        index += up[i]

    def name(key: str, p: list[str]) -> str:
        head = ".".join(p[:-1])
        if head in _UNET_TOP:
            return f"{_UNET_TOP[head]}.{p[-1]}"
        if p[0] in ("down_blocks", "up_blocks") and len(p) > 4:
            i, kind, j = int(p[1]), p[2], int(p[3])
            if p[0] == "down_blocks":
                if kind == "downsamplers":
                    return f"input_blocks.{first_in[i] + down[i]}.0.op.{p[-1]}"
                block = f"input_blocks.{first_in[i] + j}"
            else:
                if kind == "upsamplers":
                    last = up[i] - 1
                    slot = 2 if (i, last) in up_attention else 1
                    return f"output_blocks.{first_out[i] + last}.{slot}.conv.{p[-1]}"
                block = f"output_blocks.{first_out[i] + j}"
            if kind == "resnets":
                return f"{block}.0.{_rename(_UNET_RESNET, p[4:])}"
            if kind == "attentions":
                return f"{block}.1.{'.'.join(p[4:])}"
        if p[0] == "mid_block" and len(p) > 3 and p[1] in ("resnets", "attentions"):
            j = int(p[2])
            if p[1] == "resnets":
                return f"middle_block.{2 * j}.{_rename(_UNET_RESNET, p[3:])}"
            return f"middle_block.{2 * j + 1}.{'.'.join(p[3:])}"
        raise _no_name(key, "UNet")

    return {k: CompVisTensor(UNET_PREFIX + name(k, p)) for k, p in zip(keys, parts, strict=True)}


def vae_compvis_names(keys: Iterable[str]) -> dict[str, CompVisTensor]:
    """The CompVis source of each diffusers ``AutoencoderKL`` tensor.

    ``encoder.down_blocks.i.resnets.j`` -> ``encoder.down.i.block.j``; the decoder's
    ``up_blocks.i`` -> ``decoder.up.<n-1-i>`` (CompVis numbers levels from the lowest
    resolution); ``mid_block.resnets.j`` -> ``mid.block_<j+1>``; the mid attention's
    ``group_norm`` / ``to_q`` / ``to_k`` / ``to_v`` / ``to_out.0`` -> ``mid.attn_1.norm`` /
    ``q`` / ``k`` / ``v`` / ``proj_out`` (weights stored as 1x1 convolutions);
    ``conv_shortcut`` -> ``nin_shortcut``; ``conv_norm_out`` -> ``norm_out``.

    Raises:
      ValueError: A key with no CompVis counterpart.
    """
    keys = sorted(keys)
    parts = [k.split(".") for k in keys]
    n_up = len({p[2] for p in parts if p[:2] == ["decoder", "up_blocks"]})
    resnet = {"conv_shortcut": "nin_shortcut"}

    def name(key: str, p: list[str]) -> CompVisTensor:
        side, rest = p[0], p[1:]
        if side in ("quant_conv", "post_quant_conv") and len(p) == 2:
            return CompVisTensor(key)
        if side not in ("encoder", "decoder") or not rest:
            raise _no_name(key, "VAE")
        kind = rest[0]
        if kind in ("down_blocks", "up_blocks") and len(rest) > 4:
            level = int(rest[1]) if kind == "down_blocks" else n_up - 1 - int(rest[1])
            stem = f"{side}.{'down' if kind == 'down_blocks' else 'up'}.{level}"
            if rest[2] == "resnets":
                return CompVisTensor(f"{stem}.block.{rest[3]}.{_rename(resnet, rest[4:])}")
            if rest[2] in ("downsamplers", "upsamplers"):
                sampler = "downsample" if kind == "down_blocks" else "upsample"
                return CompVisTensor(f"{stem}.{sampler}.{'.'.join(rest[4:])}")
        if kind == "mid_block" and len(rest) > 3:
            if rest[1] == "resnets":
                block = f"block_{int(rest[2]) + 1}"
                return CompVisTensor(f"{side}.mid.{block}.{_rename(resnet, rest[3:])}")
            if rest[1] == "attentions" and rest[2] == "0":
                layer = ".".join(rest[3:-1])
                if layer in _VAE_ATTENTION:
                    part = "1x1" if layer != "group_norm" and rest[-1] == "weight" else "whole"
                    return CompVisTensor(
                        f"{side}.mid.attn_1.{_VAE_ATTENTION[layer]}.{rest[-1]}", part)
        if kind in ("conv_in", "conv_out") and len(rest) == 2:
            return CompVisTensor(key)
        if kind == "conv_norm_out" and len(rest) == 2:
            return CompVisTensor(f"{side}.norm_out.{rest[1]}")
        raise _no_name(key, "VAE")

    return {k: CompVisTensor(VAE_PREFIX + t.key, t.part)
            for k, p in zip(keys, parts, strict=True) for t in [name(k, p)]}


def clip_compvis_names(keys: Iterable[str], prefix: str = CLIP_PREFIX + _HF_TEXT
                       ) -> dict[str, CompVisTensor]:
    """SD 1.x: transformers' ``CLIPTextModel`` keys (without ``text_model.``) under ``prefix``.

    Args:
      keys: The text encoder's keys, ``embeddings.token_embedding.weight`` etc.
      prefix: ``cond_stage_model.transformer.text_model.`` in every released checkpoint.
    """
    return {k: CompVisTensor(prefix + k.removeprefix(_HF_TEXT)) for k in keys}


def openclip_compvis_names(keys: Iterable[str]) -> dict[str, CompVisTensor]:
    """SD 2.x: the OpenCLIP source of each transformers ``CLIPTextModel`` tensor.

    ``embeddings.token_embedding.weight`` -> ``token_embedding.weight``;
    ``embeddings.position_embedding.weight`` -> ``positional_embedding``;
    ``final_layer_norm`` -> ``ln_final``; ``encoder.layers.i`` ->
    ``transformer.resblocks.i`` with ``self_attn.{q,k,v}_proj`` the thirds of
    ``attn.in_proj_{weight,bias}``, ``self_attn.out_proj`` -> ``attn.out_proj``,
    ``layer_norm1/2`` -> ``ln_1/2``, ``mlp.fc1/fc2`` -> ``mlp.c_fc/c_proj``.

    Args:
      keys: The text encoder's keys, with or without ``text_model.``.

    Raises:
      ValueError: A key with no OpenCLIP counterpart.
    """
    fixed = {"embeddings.token_embedding.weight": "token_embedding.weight",
             "embeddings.position_embedding.weight": "positional_embedding",
             "final_layer_norm.weight": "ln_final.weight",
             "final_layer_norm.bias": "ln_final.bias"}
    layer = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
    out = {}
    for key in keys:
        k = key.removeprefix(_HF_TEXT)
        m = layer.match(k)
        if k in fixed:
            out[key] = CompVisTensor(OPENCLIP_PREFIX + fixed[k])
        elif m and m[2] in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            out[key] = CompVisTensor(
                f"{OPENCLIP_PREFIX}transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}", m[2][10])
        elif m and m[2] in _OPENCLIP_LAYER:
            out[key] = CompVisTensor(
                f"{OPENCLIP_PREFIX}transformer.resblocks.{m[1]}.{_OPENCLIP_LAYER[m[2]]}.{m[3]}")
        else:
            raise _no_name(key, "text encoder")
    return out


# ------------------------------------------------------------------- the tensors themselves

def compvis_shape(shape: tuple[int, ...], part: str) -> tuple[int, ...]:
    """The CompVis shape holding a diffusers tensor of ``shape`` as ``part``."""
    shape = tuple(shape)
    if part == "whole":
        return shape
    if part == "1x1":
        return (*shape, 1, 1)
    if part in ("q", "k", "v"):
        return (3 * shape[0], *shape[1:])
    raise ValueError(f"unknown CompVis tensor part {part!r}; known: {', '.join(PARTS)}")


def _listed(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def to_diffusers_state_dict(
    checkpoint: Mapping[str, Any],
    names: Mapping[str, CompVisTensor],
    shapes: Mapping[str, tuple[int, ...]],
    *,
    what: str,
    unexpected: Iterable[str] = (),
) -> dict[str, np.ndarray]:
    """The diffusers state dict of one model, taken from a CompVis checkpoint.

    Args:
      checkpoint: CompVis key -> array.
      names: diffusers key -> :class:`CompVisTensor` (a ``*_compvis_names`` table).
      shapes: diffusers key -> the (torch-layout) shape the config needs.
      what: The model and file, for messages.
      unexpected: CompVis keys of this model that ``names`` has no place for (found by
        the caller), reported in the same error as the missing ones.

    Returns:
      diffusers key -> array (the stored dtype; ``1x1`` squeezed, ``q/k/v`` sliced).

    Raises:
      KeyError: CompVis tensors missing (listed, with the diffusers names) or
        ``unexpected`` ones (listed).
      ValueError: A tensor of the wrong shape (its CompVis key, the diffusers name, the
        stored and the expected shapes).
    """
    out, missing = {}, {}
    for name, (key, part) in names.items():
        if key not in checkpoint:
            missing.setdefault(key, name)
            continue
        value = np.asarray(checkpoint[key])
        want = tuple(shapes[name])
        expected = compvis_shape(want, part)
        if part == "1x1" and value.shape == want:  # already stored as a Linear
            expected = want
        if value.shape != expected:
            raise ValueError(
                f"{what}: tensor {key!r} (diffusers {name!r}) has shape {value.shape}, but "
                f"the config needs {expected}."
            )
        if part == "1x1" and value.ndim == len(want) + 2:
            value = value[..., 0, 0]
        elif part in ("q", "k", "v"):
            i, n = "qkv".index(part), want[0]
            value = value[i * n:(i + 1) * n]
        out[name] = value
    unexpected = sorted(unexpected)
    if missing or unexpected:
        problems = []
        if missing:
            listed = [f"{k} (diffusers {v})" for k, v in sorted(missing.items())]
            problems.append(f"{len(missing)} tensors missing: {_listed(listed)}")
        if unexpected:
            problems.append(f"{len(unexpected)} tensors the config has no place for: "
                            f"{_listed(unexpected)}")
        raise KeyError(f"{what} does not match the config: " + "; ".join(problems))
    return out


def to_compvis_state_dict(
    state_dict: Mapping[str, Any], names: Mapping[str, CompVisTensor]
) -> dict[str, np.ndarray]:
    """The inverse of :func:`to_diffusers_state_dict`: diffusers tensors -> CompVis keys.

    ``1x1`` parts gain their trailing ``(1, 1)``; ``q``, ``k``, ``v`` are stacked in that
    order into one ``in_proj`` tensor.

    Raises:
      KeyError: A diffusers tensor of ``names`` absent from ``state_dict`` (named).
    """
    absent = sorted(n for n in names if n not in state_dict)
    if absent:
        raise KeyError(f"diffusers state dict lacks {len(absent)} tensors: {_listed(absent)}")
    out: dict[str, np.ndarray] = {}
    fused: dict[str, dict[str, np.ndarray]] = {}
    for name, (key, part) in names.items():
        value = np.asarray(state_dict[name])
        if part in ("q", "k", "v"):
            fused.setdefault(key, {})[part] = value
        else:
            out[key] = value[..., None, None] if part == "1x1" else value
    for key, thirds in fused.items():
        out[key] = np.concatenate([thirds[p] for p in "qkv"], axis=0)
    return out


def _left_over(checkpoint: Mapping[str, Any], prefix: str, used: Iterable[str],
               ignore: Iterable[str]) -> list[str]:
    """The ``prefix`` tensors of ``checkpoint`` that are neither ``used`` nor ``ignore``d."""
    known = set(used) | set(ignore)
    return sorted(k for k in checkpoint if k.startswith(prefix) and k not in known)


# --------------------------------------------------------------------------------- reading

def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads a single-file checkpoint into numpy arrays.

    ``.safetensors``: with numpy. ``.ckpt`` / ``.pt`` / ``.pth``: with
    ``torch.load(map_location="cpu", weights_only=True)`` (a ``"state_dict"`` entry is
    unwrapped; entries that are not tensors, such as ``global_step``, are dropped;
    bfloat16 tensors come back as ``ml_dtypes.bfloat16``).

    Raises:
      FileNotFoundError: The file does not exist.
      ValueError: Another suffix, or a pickle holding no tensor dict.
      ImportError: A pickled file without torch installed (naming the ``convert`` extra).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist.")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        return read_safetensors(path)
    if suffix not in _CHECKPOINT_SUFFIXES:
        raise ValueError(f"checkpoint {path!r}: unknown suffix {suffix!r}; expected one of "
                         f"{', '.join(_CHECKPOINT_SUFFIXES)}.")
    try:
        import torch  # the convert extra
    except ImportError as e:
        raise ImportError(
            f"reading the pickled checkpoint {path!r} needs torch: pip install "
            "'diffjax[convert]' (or convert the file to .safetensors once)."
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"checkpoint {path!r}: torch.load(weights_only=True) refused it ({e}); it holds "
            "objects other than tensors. Convert it to .safetensors with a tool you trust."
        ) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {path!r} holds a {type(obj).__name__}, not a state dict.")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            out[key] = value.view(torch.int16).numpy().view(jnp.bfloat16)
        else:
            out[key] = value.numpy()
    if not out:
        raise ValueError(f"checkpoint {path!r} holds no tensors.")
    return out


# ------------------------------------------------------------------ architecture inference

def _need(shapes: Mapping[str, tuple[int, ...]], key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise KeyError(f"{what}: tensor {key!r} is missing; it is needed to infer the "
                       "architecture (or pass config=).")
    return tuple(shapes[key])


def _infer_unet(shapes: Mapping[str, tuple[int, ...]], v_model: bool) -> dict[str, Any]:
    u = {k[len(UNET_PREFIX):]: tuple(v) for k, v in shapes.items() if k.startswith(UNET_PREFIX)}
    what = "UNet (model.diffusion_model.*)"
    if not u:
        raise KeyError(f"the checkpoint has no {what} tensors.")
    conv_in = _need(u, "input_blocks.0.0.weight", what)
    levels: list[list[tuple[int, bool]]] = [[]]
    i = 1
    while True:
        if f"input_blocks.{i}.0.op.weight" in u:
            levels.append([])
        elif f"input_blocks.{i}.0.in_layers.2.weight" in u:
            channels = u[f"input_blocks.{i}.0.in_layers.2.weight"][0]
            levels[-1].append((channels, f"input_blocks.{i}.1.norm.weight" in u))
        else:
            break
        i += 1
    counts = {len(level) for level in levels}
    if 0 in counts or any(len({c for c, _ in level}) != 1 for level in levels):
        raise ValueError(f"{what}: input_blocks are not a standard ResNet-per-level layout.")
    context = {v[1] for k, v in u.items() if k.endswith("attn2.to_k.weight")}
    if len(context) != 1:
        raise ValueError(f"{what}: cross-attention context dims {sorted(context)}; expected one.")
    (cross,) = context
    channels = [level[0][0] for level in levels]
    if cross not in _STANDARD_CONTEXT:
        raise ValueError(
            f"cannot infer the UNet's attention heads and group norms from the weights: "
            f"cross_attention_dim={cross}, block_out_channels={channels} is neither SD 1.x "
            f"(768) nor SD 2.x (1024). Pass config=<a diffusers folder or dict of component "
            "configs> giving the architecture."
        )
    n = len(levels)
    per_level = sorted(counts)[0] if len(counts) == 1 else [len(level) for level in levels]
    out_attention = []
    index = 0
    for level in reversed(range(n)):
        depth = len(levels[level]) + 1
        out_attention.append(any(f"output_blocks.{index + j}.1.norm.weight" in u
                                 for j in range(depth)))
        index += depth
    proj = next(v for k, v in u.items() if k.endswith("proj_in.weight"))
    depth = len({k.split(".")[4] for k in u
                 if k.startswith("input_blocks.1.1.transformer_blocks.")}) or 1
    sd2 = cross == 1024
    return {
        "_class_name": "UNet2DConditionModel",
        "sample_size": 96 if sd2 and v_model else 64,
        "in_channels": conv_in[1],
        "out_channels": _need(u, "out.2.weight", what)[0],
        "block_out_channels": channels,
        "layers_per_block": per_level,
        "down_block_types": ["CrossAttnDownBlock2D" if any(a for _, a in level)
                             else "DownBlock2D" for level in levels],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in out_attention],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": cross,
        "attention_head_dim": [c // 64 for c in channels] if sd2 else 8,
        "use_linear_projection": len(proj) == 2,
        "transformer_layers_per_block": depth,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "act_fn": "silu",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "downsample_padding": 1,
        "center_input_sample": False,
        "mid_block_scale_factor": 1,
    }


def _infer_vae(shapes: Mapping[str, tuple[int, ...]], latent_size: int) -> dict[str, Any]:
    v = {k[len(VAE_PREFIX):]: tuple(s) for k, s in shapes.items() if k.startswith(VAE_PREFIX)}
    what = "VAE (first_stage_model.*)"
    if not v:
        raise KeyError(f"the checkpoint has no {what} tensors.")
    channels = []
    while f"encoder.down.{len(channels)}.block.0.conv1.weight" in v:
        channels.append(v[f"encoder.down.{len(channels)}.block.0.conv1.weight"][0])
    layers = 0
    while f"encoder.down.0.block.{layers}.conv1.weight" in v:
        layers += 1
    if not channels:
        raise KeyError(f"{what}: no encoder.down.0.block.0.conv1.weight; not a KL autoencoder.")
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": _need(v, "encoder.conv_in.weight", what)[1],
        "out_channels": _need(v, "decoder.conv_out.weight", what)[0],
        "block_out_channels": channels,
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "layers_per_block": layers,
        "latent_channels": _need(v, "decoder.conv_in.weight", what)[1],
        "norm_num_groups": 32,
        "act_fn": "silu",
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in v,
        "use_quant_conv": "quant_conv.weight" in v,
        "use_post_quant_conv": "post_quant_conv.weight" in v,
        "scaling_factor": 0.18215,
        "sample_size": latent_size * 2 ** (len(channels) - 1),
    }


def _count(shapes: Mapping[str, Any], pattern: str) -> int:
    n = 0
    while pattern.format(n) in shapes:
        n += 1
    return n


def _infer_text(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    if any(k.startswith(OPENCLIP_PREFIX) for k in shapes):
        what, p = "text encoder (cond_stage_model.model.*, OpenCLIP)", OPENCLIP_PREFIX
        vocab, hidden = _need(shapes, p + "token_embedding.weight", what)
        positions = _need(shapes, p + "positional_embedding", what)[0]
        blocks = _count(shapes, p + "transformer.resblocks.{}.ln_1.weight")
        inner = _need(shapes, p + "transformer.resblocks.0.mlp.c_fc.weight", what)[0]
        layers, act, projection = blocks - 1, "gelu", 512  # the penultimate block's output
    else:
        p = CLIP_PREFIX + _HF_TEXT
        what = "text encoder (cond_stage_model.transformer.*, CLIP)"
        vocab, hidden = _need(shapes, p + "embeddings.token_embedding.weight", what)
        positions = _need(shapes, p + "embeddings.position_embedding.weight", what)[0]
        layers = _count(shapes, p + "encoder.layers.{}.layer_norm1.weight")
        inner = _need(shapes, p + "encoder.layers.0.mlp.fc1.weight", what)[0]
        act, projection = "quick_gelu", 768
    return {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
        "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inner,
        "num_hidden_layers": layers, "num_attention_heads": hidden // 64,
        "max_position_embeddings": positions, "hidden_act": act, "layer_norm_eps": 1e-5,
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "projection_dim": projection,
    }


def infer_configs(
    shapes: Mapping[str, tuple[int, ...]], prediction_type: str | None = None
) -> dict[str, dict[str, Any]]:
    """The diffusers config dicts of a standard SD 1.x / SD 2.x checkpoint, from its shapes.

    The weights give the levels, widths, layers, attention placement, context dim,
    projection kind (1x1 convolution or Linear) and text tower size; the rest is that of
    the two releases: 8 heads (SD 1.x, context 768) or 64-channel heads (SD 2.x, context
    1024), 32 GroupNorm groups, ``scaling_factor`` 0.18215, 64-channel CLIP heads,
    quick_gelu (CLIP ViT-L) or gelu (OpenCLIP ViT-H, whose last block SD 2.x skips).

    Args:
      shapes: CompVis key -> shape of the whole checkpoint.
      prediction_type: Only sets the default resolution (``sample_size``) of SD 2.x:
        768 px for the v-prediction models (``None`` too), 512 px for ``"epsilon"``.

    Returns:
      ``{"unet": ..., "vae": ..., "text_encoder": ...}`` in diffusers' / transformers'
      ``config.json`` form.

    Raises:
      ValueError: Not a standard architecture (e.g. another context dim): pass ``config``.
      KeyError: A tensor the inference needs is missing (named).
    """
    unet = _infer_unet(shapes, v_model=prediction_type != "epsilon")
    text = _infer_text(shapes)
    if text["hidden_size"] != unet["cross_attention_dim"]:
        raise ValueError(f"the text encoder's width {text['hidden_size']} is not the UNet's "
                         f"cross_attention_dim {unet['cross_attention_dim']}.")
    return {"unet": unet, "vae": _infer_vae(shapes, unet["sample_size"]),
            "text_encoder": text}


def compvis_scheduler_config(prediction_type: str, sd2: bool = False) -> dict[str, Any]:
    """The scheduler CompVis' scripts sample with, as a diffusers scheduler config.

    Both releases train with ``scaled_linear`` betas ``0.00085 .. 0.012`` over 1000 steps
    (``linear_start`` / ``linear_end`` of ``v1-inference.yaml``, ``v2-inference.yaml``);
    their samplers step ``leading`` timesteps shifted by ``steps_offset=1`` and end on
    ``alphas_cumprod[0]`` (``set_alpha_to_one=False``). SD 1.x: PLMS
    (``PNDMScheduler``, ``skip_prk_steps``), as diffusers' SD 1.x folders; SD 2.x: DDIM,
    Stability's ``txt2img.py`` default.
    """
    if prediction_type not in _PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} is not one of "
                         f"{', '.join(_PREDICTION_TYPES)}.")
    common = {**_SCALED_LINEAR, "prediction_type": prediction_type, "set_alpha_to_one": False,
              "steps_offset": 1, "timestep_spacing": "leading"}
    if sd2:
        return {"_class_name": "DDIMScheduler", **common, "clip_sample": False}
    return {"_class_name": "PNDMScheduler", **common, "skip_prk_steps": True}


# -------------------------------------------------------------------------------- loading

@dataclasses.dataclass(frozen=True)
class SingleFileComponents:
    """What a Stable Diffusion pipeline needs, from one checkpoint file.

    The fields are those of :class:`~diffjax.stable_diffusion.pipeline.StableDiffusionPipeline`
    before its ``dtype``, in its order.

    Attributes:
      unet_params / vae_params / text_params: The Flax ``params`` trees (JAX arrays).
      unet_config / vae_config / text_config: Their configs.
      scheduler_config: A diffusers scheduler config dict
        (:func:`~diffjax.stable_diffusion.schedulers.sampler_from_scheduler_config`).
      tokenizer: The CLIP tokenizer (from a folder).
    """

    unet_params: Any
    unet_config: UNetConditionConfig
    vae_params: Any
    vae_config: AutoencoderKLConfig
    text_params: Any
    text_config: CLIPTextConfig
    scheduler_config: dict[str, Any]
    tokenizer: CLIPTokenizer


def _configs_from(config: Any) -> tuple[dict[str, Any], str | None]:
    """``({"unet": .., "vae": .., "text_encoder": .., ["scheduler": ..]}, folder or None)``."""
    if isinstance(config, str | os.PathLike):
        path = os.fspath(config)
        if not os.path.isfile(os.path.join(path, MODEL_INDEX)):
            raise FileNotFoundError(f"config {path!r} is not a diffusers folder (no "
                                    f"{MODEL_INDEX}).")
        folder = open_folder(path)
        out = {name: folder.config(name) for name in ("unet", "vae", "text_encoder")}
        if "scheduler" in folder.components:
            out["scheduler"] = folder.config("scheduler")
        return out, path
    if isinstance(config, Mapping):
        absent = [n for n in ("unet", "vae", "text_encoder") if n not in config]
        if absent:
            raise ValueError(f"config dict lacks {', '.join(absent)} (it needs the unet, vae "
                             "and text_encoder config dicts; scheduler is optional).")
        return dict(config), None
    raise TypeError(f"config must be a diffusers folder path or a dict of component configs, "
                    f"got {type(config).__name__}.")


def _tokenizer(tokenizer: Any, folder: str | None) -> CLIPTokenizer:
    if isinstance(tokenizer, CLIPTokenizer):
        return tokenizer
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    if folder is not None and "tokenizer" in open_folder(folder).components:
        return load_tokenizer(folder)
    raise ValueError(
        "a CompVis checkpoint holds no tokenizer and nothing is downloaded: pass "
        "tokenizer=<a diffusers folder or its tokenizer/ folder> (or config=<a diffusers "
        "folder with a tokenizer/>)."
    )


def _ema_key(key: str) -> str:
    """``model.diffusion_model.out.2.weight`` -> ``model_ema.diffusion_modelout2weight``."""
    return EMA_PREFIX + key.removeprefix("model.").replace(".", "")


def _check_schedule(checkpoint: Mapping[str, Any], scheduler: Mapping[str, Any],
                    what: str) -> None:
    """Warns when the file's ``alphas_cumprod`` buffer is not the scheduler's schedule."""
    if "alphas_cumprod" not in checkpoint:
        return
    stored = np.asarray(checkpoint["alphas_cumprod"], np.float64)
    try:
        expected = np.asarray(diffusers_alphas_cumprod(scheduler), np.float64)
    except (KeyError, ValueError, NotImplementedError):
        return
    if stored.shape != expected.shape or not np.allclose(stored, expected, rtol=1e-4, atol=0):
        diff = (np.abs(stored - expected).max() if stored.shape == expected.shape
                else f"length {stored.shape} vs {expected.shape}")
        warnings.warn(f"{what}: the checkpoint's alphas_cumprod buffer differs from the "
                      f"scheduler config's schedule (max difference {diff}); the model was "
                      "trained with another noise schedule: pass config= with its scheduler.",
                      stacklevel=3)


def _scheduler(configs: Mapping[str, Any], prediction_type: str | None, sd2: bool,
               what: str) -> dict[str, Any]:
    if "scheduler" in configs:
        out = dict(configs["scheduler"])
        if prediction_type is not None:
            if prediction_type not in _PREDICTION_TYPES:
                raise ValueError(f"prediction_type {prediction_type!r} is not one of "
                                 f"{', '.join(_PREDICTION_TYPES)}.")
            out["prediction_type"] = prediction_type
        return out
    if prediction_type is None and sd2:
        raise ValueError(
            f"{what}: SD 2.x checkpoints are epsilon models (512-base) or v-prediction "
            "models (768-v) with the same tensors, so the weights cannot tell: pass "
            "prediction_type='v_prediction' or 'epsilon' (or config= with a scheduler)."
        )
    return compvis_scheduler_config(prediction_type or "epsilon", sd2)


def _text_names(checkpoint: Mapping[str, Any], config: CLIPTextConfig, keys: Iterable[str],
                what: str) -> tuple[dict[str, CompVisTensor], str, set[str]]:
    """The text encoder's table, its prefix and the tensors under it that are skipped."""
    if any(k.startswith(OPENCLIP_PREFIX) for k in checkpoint):
        names = openclip_compvis_names(keys)
        skipped = {OPENCLIP_PREFIX + k for k in _OPENCLIP_UNUSED}
        last = f"{OPENCLIP_PREFIX}transformer.resblocks.{config.num_hidden_layers}."
        # SD 2.x uses the penultimate block: the file's last one is not the text encoder's.
        if f"{OPENCLIP_PREFIX}transformer.resblocks.{config.num_hidden_layers + 1}.ln_1.weight" \
                not in checkpoint:
            skipped |= {k for k in checkpoint if k.startswith(last)}
        return names, OPENCLIP_PREFIX, skipped
    if any(k.startswith(CLIP_PREFIX) for k in checkpoint):
        inner = CLIP_PREFIX + (_HF_TEXT if any(k.startswith(CLIP_PREFIX + _HF_TEXT)
                                               for k in checkpoint) else "")
        skipped = {k for k in checkpoint if k.startswith(CLIP_PREFIX)
                   and k.endswith("position_ids")}
        return clip_compvis_names(keys, inner), CLIP_PREFIX, skipped
    raise KeyError(f"{what}: no text encoder tensors ({CLIP_PREFIX}* for SD 1.x, "
                   f"{OPENCLIP_PREFIX}* for SD 2.x).")


def _component(checkpoint: Mapping[str, Any], names: Mapping[str, CompVisTensor],
               shapes: Mapping[str, tuple[int, ...]], prefix: str, ignore: Iterable[str],
               what: str) -> dict[str, np.ndarray]:
    """One model's diffusers state dict; every ``prefix`` tensor must be used or ignored."""
    extra = _left_over(checkpoint, prefix, (t.key for t in names.values()), ignore)
    return to_diffusers_state_dict(checkpoint, names, shapes, what=what, unexpected=extra)


def components_from_state_dict(
    checkpoint: Mapping[str, Any],
    *,
    config: Any = None,
    tokenizer: Any = None,
    prediction_type: str | None = None,
    dtype: Any = jnp.float32,
    ema: bool = False,
    what: str = "the CompVis checkpoint",
) -> SingleFileComponents:
    """The Stable Diffusion components of a CompVis state dict (see :func:`load_single_file`).

    Args:
      checkpoint: CompVis key -> numpy array (:func:`read_checkpoint`).
      config: A diffusers folder or ``{"unet", "vae", "text_encoder"[, "scheduler"]}``
        config dicts; ``None`` infers a standard SD 1.x / 2.x (:func:`infer_configs`).
      tokenizer: A folder (pipeline or ``tokenizer/``) or a :class:`CLIPTokenizer`;
        ``None`` takes the config folder's.
      prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``; overrides the
        config folder's scheduler. Needed for SD 2.x without a scheduler config.
      dtype: The parameters' dtype.
      ema: Take the UNet from the EMA copy (``model_ema.*``) instead.
      what: The checkpoint, for messages.
    """
    if config is None:
        configs = infer_configs({k: np.shape(v) for k, v in checkpoint.items()},
                                prediction_type)
        folder = None
    else:
        configs, folder = _configs_from(config)
    unet_config = UNetConditionConfig.from_diffusers_dict(configs["unet"])
    vae_config = AutoencoderKLConfig.from_diffusers(configs["vae"])
    text_config = text_config_from_dict(configs["text_encoder"])
    tok = _tokenizer(tokenizer, folder)
    sd2 = any(k.startswith(OPENCLIP_PREFIX) for k in checkpoint)
    scheduler = _scheduler(configs, prediction_type, sd2, what)
    _check_schedule(checkpoint, scheduler, what)

    unet_shapes = unet_state_dict_shapes(unet_config)
    unet_names = unet_compvis_names(unet_shapes)
    unet_prefix, unet_ignore = UNET_PREFIX, set()
    if ema:
        unet_names = {d: CompVisTensor(_ema_key(t.key), t.part) for d, t in unet_names.items()}
        unet_prefix, unet_ignore = EMA_PREFIX, {EMA_PREFIX + "decay", EMA_PREFIX + "num_updates"}
    unet_state = _component(checkpoint, unet_names, unet_shapes, unet_prefix, unet_ignore,
                            f"{what} (UNet{', EMA' if ema else ''})")
    unet = unet_params_from_state_dict(unet_state, unet_config, what=f"the UNet of {what}")

    flax_vae = vae_param_shapes(vae_config)
    vae_shapes = state_dict_shapes(flax_vae, lambda p: diffusers_vae_param(p, flax_vae[p]))
    vae_state = _component(checkpoint, vae_compvis_names(vae_shapes), vae_shapes, VAE_PREFIX,
                           (), f"{what} (VAE)")
    vae = params_from_diffusers_state_dict(vae_state, vae_config, what=f"the VAE of {what}",
                                           dtype=None)

    text_shapes = state_dict_shapes(_text_param_shapes(text_config), _text_param(""))
    text_names, text_prefix, skipped = _text_names(checkpoint, text_config, text_shapes, what)
    text_state = _component(checkpoint, text_names, text_shapes, text_prefix, skipped,
                            f"{what} (text encoder)")
    text = params_from_hf_text_state_dict(text_state, text_config,
                                          what=f"the text encoder of {what}", dtype=None)

    claimed = (UNET_PREFIX, EMA_PREFIX, VAE_PREFIX, CLIP_PREFIX, OPENCLIP_PREFIX)
    other = sorted(k for k in checkpoint
                   if not k.startswith(claimed) and k not in _SCHEDULE_BUFFERS)
    if other:
        warnings.warn(f"{what}: {len(other)} tensors outside the UNet, VAE and text encoder "
                      f"were not loaded: {_listed(other)}", stacklevel=2)

    def cast(tree):
        return jax.tree.map(lambda v: jnp.asarray(v, dtype), tree)

    return SingleFileComponents(cast(unet), unet_config, cast(vae), vae_config, cast(text),
                                text_config, scheduler, tok)


def load_single_file(
    path: str | os.PathLike[str],
    *,
    config: Any = None,
    tokenizer: Any = None,
    prediction_type: str | None = None,
    dtype: Any = jnp.float32,
    ema: bool = False,
) -> SingleFileComponents:
    """Loads an original CompVis / Stability Stable Diffusion checkpoint file.

    Args:
      path: A ``.safetensors`` file (or ``.ckpt`` / ``.pt`` with torch installed).
      config: The architecture: a diffusers folder (its ``unet``, ``vae``,
        ``text_encoder`` configs, and its ``scheduler`` and ``tokenizer`` when present) or
        a dict of those config dicts. ``None`` infers SD 1.x / SD 2.x from the shapes.
      tokenizer: A tokenizer folder or :class:`CLIPTokenizer`, required unless ``config``
        is a folder with one.
      prediction_type: The model's parameterization (overrides the folder's scheduler);
        required for SD 2.x without a scheduler config: ``"v_prediction"`` for the 768-v
        models, ``"epsilon"`` for 512-base.
      dtype: The parameters' dtype (``jnp.bfloat16`` halves memory on accelerators).
      ema: Load the UNet's EMA weights (``model_ema.*``, in full training checkpoints).

    Returns:
      :class:`SingleFileComponents`: the same param trees and configs the folder loaders
      give for the same weights in diffusers' layout, the tokenizer and a scheduler config.

    Raises:
      FileNotFoundError: The file, the config folder or its components (named).
      KeyError: Tensors missing or left over (their CompVis keys, listed).
      ValueError: A tensor of the wrong shape (its key, both shapes); an architecture
        that cannot be inferred; no tokenizer; SD 2.x without ``prediction_type``.
      ImportError: A ``.ckpt`` without torch (the ``convert`` extra).
    """
    path = os.fspath(path)
    return components_from_state_dict(
        read_checkpoint(path), config=config, tokenizer=tokenizer,
        prediction_type=prediction_type, dtype=dtype, ema=ema, what=repr(path),
    )
