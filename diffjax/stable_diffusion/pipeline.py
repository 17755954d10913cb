"""The Stable Diffusion pipeline: text-to-image and image-to-image, as diffusers runs them.

Latent diffusion (Rombach et al. 2022, Sec. 3-4): prompts become CLIP hidden states
``c = tau(y)``; a sampler integrates the cross-attention UNet from noise ``z_T`` in the
VAE's latent space (``B x H/f x W/f x 4``, NHWC here; diffusers' NCHW) under
classifier-free guidance; the VAE decodes ``x = D(z_0 / scaling_factor)``.

Guidance is diffusers' (Ho & Salimans 2021 with ``w`` counted from 1): one UNet call on
the batch ``[uncond, cond]`` and ``out = out_u + w (out_c - out_u)`` on the *raw* network
output (eps or v). With ``guidance_scale <= 1`` (a concrete Python value) no
unconditional batch is built, as in diffusers; this is diffjax's
:func:`~diffjax.guidance.classifier_free_guidance` with ``w_diffjax = w - 1`` (which
blends eps and x0, the same up to round-off), written out here so the parity path
follows diffusers' arithmetic. LCM checkpoints (a UNet with ``time_cond_proj_dim``) get
the guidance-scale embedding ``timestep_cond`` instead (diffusers'
``get_guidance_scale_embedding``) and no unconditional batch.

Samplers: ``sampler=None`` uses the folder's ``scheduler_config.json`` through
:func:`~diffjax.stable_diffusion.schedulers.sampler_from_scheduler_config` (diffusers'
step loop, float32 round-off); a :class:`diffjax.SamplerSpec` (``SamplerSpec('dpm++2m')``,
``'ddim'``, ``'unipc'``, ``'edm-heun'``, ...; names are parsed by the application layer,
which this module does not import) runs diffjax's own sampler on
:func:`~diffjax.stable_diffusion.schedulers.schedule_from_scheduler_config` with the
folder's prediction type, without x0 clipping (latents are unbounded).

Compilation: one jitted function per (resolution, batch, sampler, steps, guided or not,
output kind); prompt embeddings, guidance scale, key, eta and (for the diffusers-exact
img2img) strength are traced arguments, so new prompts, seeds or scales never retrace.
:func:`sampling_function` returns that function for a :class:`PipelineSpec`, which
needs no weights (``jax.eval_shape`` / ``.lower`` on shape structs works).

img2img (diffusers' ``StableDiffusionImg2ImgPipeline``): the image is VAE-encoded
(a posterior draw ``mean + std * n``, or its mean), times ``scaling_factor``; with
``n_start = min(int(steps * strength), steps)`` the loop runs the last ``n_start``
steps of the ``steps``-step schedule from ``add_noise(latents, noise, t_start)``. For
the diffusers-exact schedulers this is
:func:`~diffjax.stable_diffusion.schedulers.img2img_sampler_from_scheduler_config`
(``strength`` traced); diffjax's native samplers are built on the truncated grid
(``strength`` static: one compilation per strength) and start from
``alpha(t) z + sigma(t) n`` at the grid's first time.

Devices: when the batch divides evenly over all devices, latents and prompt states are
sharded over a one-axis :class:`jax.sharding.Mesh` (``'data'``) and the weights
replicated, so one call fills a TPU host or a multi-GPU box.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffjax._checks import check_choice, check_int
from diffjax.guidance import guidance_rescale_correction
from diffjax.networks.clip import CLIPTextConfig
from diffjax.networks.clip_tokenizer import CLIPTokenizer
from diffjax.nn.autoencoder import (
    AutoencoderKL,
    AutoencoderKLConfig,
    scale_latents,
    unscale_latents,
)
from diffjax.nn.unet_condition import UNet2DConditionModel, UNetConditionConfig
from diffjax.parameterization import make_denoiser
from diffjax.samplers import sample
from diffjax.samplers.diffusers_compat import replay_noise
from diffjax.samplers.diffusers_ddpm import guidance_scale_embedding
from diffjax.samplers.driver import concrete_value
from diffjax.stable_diffusion import schedulers as sd_schedulers
from diffjax.stable_diffusion.folder import open_folder
from diffjax.stable_diffusion.hub import download_pipeline_folder, looks_like_repo_id
from diffjax.stable_diffusion.schedulers import (
    prediction_type_from_scheduler_config,
    sampler_from_scheduler_config,
    schedule_from_scheduler_config,
)
from diffjax.stable_diffusion.text_encoder import (
    encode_prompt,
    load_text_encoder,
    load_tokenizer,
    tokenize_prompts,
)
from diffjax.stable_diffusion.unet import load_unet
from diffjax.stable_diffusion.vae import load_vae

__all__ = [
    "OUTPUT_KINDS",
    "PipelineSpec",
    "StableDiffusionPipeline",
    "decode_latents",
    "encode_image",
    "guidance_scale_embedding",
    "guided_model_fn",
    "img2img",
    "load_pipeline",
    "sampling_function",
    "txt2img",
]

OUTPUT_KINDS = ("uint8", "float", "latents")
IMG2IMG_MODES = ("sample", "mean")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def _dtype_name(dtype: Any) -> str:
    name = jnp.dtype(dtype).name
    if name not in _DTYPES:
        raise ValueError(f"dtype={name!r} is not supported; expected one of {list(_DTYPES)}")
    return name


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """The static (hashable) part of a pipeline: configs and the compute dtype.

    Attributes:
      unet: The UNet's config.
      vae: The VAE's config.
      scheduler_json: The scheduler config as sorted JSON (``scheduler_config``).
      dtype: Compute and weight dtype name (``'float32'``, ``'bfloat16'``).
      attention_chunk: The UNet's attention over query chunks of this many tokens (the
        same images, score memory bounded by the chunk;
        :func:`~diffjax.nn.attention.chunked_dot_product_attention`); ``None``: whole.
    """

    unet: UNetConditionConfig
    vae: AutoencoderKLConfig
    scheduler_json: str
    dtype: str = "float32"
    attention_chunk: int | None = None

    @property
    def scheduler_config(self) -> dict[str, Any]:
        """The scheduler config dict."""
        return json.loads(self.scheduler_json)

    @property
    def vae_factor(self) -> int:
        """Image side / latent side (8 for SD)."""
        return self.vae.downsample_factor

    @property
    def size_multiple(self) -> int:
        """What height and width must be multiples of: VAE factor x the UNet's."""
        return self.vae.downsample_factor * self.unet.downsampling_factor


@dataclasses.dataclass(frozen=True, eq=False)
class StableDiffusionPipeline:
    """A loaded Stable Diffusion model: plain parameter pytrees plus configs.

    Attributes:
      unet_params / vae_params / text_params: Parameter trees (JAX arrays, ``dtype``).
      unet_config / vae_config / text_config: Their configs.
      scheduler_config: The scheduler config dict (``_class_name`` and options).
      tokenizer: The CLIP tokenizer (77-token window).
      dtype: The weights' and compute dtype (the sampler state stays float32).
      path: Where it was loaded from (for messages), or ``None``.
      attention_chunk: :attr:`PipelineSpec.attention_chunk` (``dataclasses.replace(pipe,
        attention_chunk=1024)`` or ``load_pipeline(..., attention_chunk=1024)``).
    """

    unet_params: Any
    unet_config: UNetConditionConfig
    vae_params: Any
    vae_config: AutoencoderKLConfig
    text_params: Any
    text_config: CLIPTextConfig
    scheduler_config: Mapping[str, Any]
    tokenizer: CLIPTokenizer
    dtype: Any = jnp.float32
    path: str | None = None
    attention_chunk: int | None = None
    _replicated: dict = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.attention_chunk is not None:
            check_int("attention_chunk", self.attention_chunk, minimum=1)

    @property
    def spec(self) -> PipelineSpec:
        """The static :class:`PipelineSpec` (what compilation depends on)."""
        return PipelineSpec(
            self.unet_config, self.vae_config,
            json.dumps(dict(self.scheduler_config), sort_keys=True), _dtype_name(self.dtype),
            self.attention_chunk,
        )

    @property
    def params(self) -> dict[str, Any]:
        """``{'unet': ..., 'vae': ...}``: the arguments of :func:`sampling_function`'s fn."""
        return {"unet": self.unet_params, "vae": self.vae_params}

    def with_scheduler(self, config: Mapping[str, Any]) -> StableDiffusionPipeline:
        """The same weights with another scheduler config (diffusers' ``from_config`` swap)."""
        sd_schedulers.prediction_type_from_scheduler_config(config)  # checks it early
        return dataclasses.replace(self, scheduler_config=dict(config), _replicated={})

    def placed_params(self, mesh: Mesh | None) -> dict[str, Any]:
        """:attr:`params`, replicated over ``mesh`` (cached per mesh)."""
        if mesh is None:
            return self.params
        if mesh not in self._replicated:
            self._replicated[mesh] = jax.device_put(
                self.params, NamedSharding(mesh, PartitionSpec())
            )
        return self._replicated[mesh]


SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt")


def load_pipeline(
    path: str | os.PathLike[str],
    *,
    dtype: Any = jnp.float32,
    variant: str | None = None,
    config: Any = None,
    tokenizer: Any = None,
    prediction_type: str | None = None,
    revision: str | None = None,
    attention_chunk: int | None = None,
) -> StableDiffusionPipeline:
    """Loads a diffusers Stable Diffusion folder, or a CompVis single-file checkpoint.

    Args:
      path: The folder (``save_pretrained`` layout: ``model_index.json`` + components),
        an original CompVis checkpoint file (``.safetensors``; ``.ckpt`` / ``.pt``
        through the ``convert`` extra), read by
        :func:`~diffjax.stable_diffusion.single_file.load_single_file`, or a Hugging
        Face Hub repo id (``"owner/name"``, where no such local path exists; the ``hub``
        extra, :mod:`diffjax.stable_diffusion.hub`).
      dtype: Weight and compute dtype: ``jnp.float32``, or ``jnp.bfloat16`` for
        accelerators (sampler state and guidance arithmetic stay float32).
      variant: ``"fp16"`` for the ``*.fp16.safetensors`` files (folders only).
      config: Single files only: a diffusers folder (or dict of component configs)
        giving the architecture, scheduler and tokenizer; ``None`` infers the standard
        SD 1.x / 2.x architecture from the tensor shapes.
      tokenizer: Single files only: the tokenizer (or a folder holding ``tokenizer/``)
        when ``config`` has none.
      prediction_type: Single files only: ``'epsilon'`` or ``'v_prediction'`` (SD 2.x
        768-v checkpoints are v; the weights cannot tell).
      revision: Hub repo ids only: a branch, tag or commit.
      attention_chunk: The UNet's attention in query chunks of this many tokens
        (:attr:`PipelineSpec.attention_chunk`; e.g. 1024 at 512x512 quarters the largest
        score buffers); ``None``: whole.

    Raises:
      FileNotFoundError: A missing folder, file or component (its name and path), or a
        Hub lookup that failed.
      ImportError: A repo id without huggingface_hub installed (the pip command).
      ValueError / KeyError: Unsupported classes or configs, mismatched tensors (named),
        or single-file options given for a folder.
    """
    path = os.fspath(path)
    dtype_name = _dtype_name(dtype)
    if looks_like_repo_id(path):
        path = download_pipeline_folder(path, variant=variant, revision=revision)
    elif revision is not None:
        raise ValueError(f"revision={revision!r} applies to Hub repo ids; {path!r} is local")
    if os.path.isfile(path) and path.endswith(SINGLE_FILE_SUFFIXES):
        from diffjax.stable_diffusion.single_file import load_single_file

        if variant is not None:
            raise ValueError(f"variant={variant!r} applies to folders, not to a single file")
        parts = load_single_file(path, config=config, tokenizer=tokenizer,
                                 prediction_type=prediction_type, dtype=dtype)
        fields = [getattr(parts, f.name) for f in dataclasses.fields(parts)]
        return StableDiffusionPipeline(*fields, _DTYPES[dtype_name], path, attention_chunk)
    given = {"config": config, "tokenizer": tokenizer, "prediction_type": prediction_type}
    extra = sorted(k for k, v in given.items() if v is not None)
    if extra:
        raise ValueError(
            f"{extra} apply to single-file checkpoints ({', '.join(SINGLE_FILE_SUFFIXES)}); "
            f"{path} is read as a diffusers folder, which carries its own"
        )
    folder = open_folder(path)
    for name in _COMPONENTS:
        folder.component_dir(name)  # FileNotFoundError naming the component and path
    unet_params, unet_config = load_unet(folder.component_dir("unet"), dtype=dtype,
                                         variant=variant)
    vae_params, vae_config = load_vae(path, dtype=dtype, variant=variant)
    text_params, text_config = load_text_encoder(path, dtype=dtype, variant=variant)
    scheduler_config = sd_schedulers.load_scheduler_config(folder.component_dir("scheduler"))
    prediction_type_from_scheduler_config(scheduler_config)
    return StableDiffusionPipeline(
        unet_params, unet_config, vae_params, vae_config, text_params, text_config,
        scheduler_config, load_tokenizer(path), _DTYPES[dtype_name], path, attention_chunk,
    )


# --------------------------------------------------------------------------------------
# The jitted function.


@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything one compiled function depends on (the cache key)."""

    spec: PipelineSpec
    latent_shape: tuple[int, int, int, int]  # (B, h, w, c)
    sampler: Any  # a SamplerSpec; None: the scheduler config, diffusers-exact
    num_steps: int
    guided: bool
    output: str
    decode_batch_size: int | None
    replay: bool  # step noise given (parity)
    img2img: str | None  # None (txt2img), 'sample' or 'mean'
    native_strength: float | None  # the native samplers' static strength


def guided_model_fn(
    spec: PipelineSpec, guided: bool, unet_params: Any, guidance_scale: Any,
    guidance_rescale: Any = 0.0,
) -> Callable[[jax.Array, jax.Array, Any], jax.Array]:
    """The raw UNet output under diffusers' guidance: ``fn(x, t, (context, uncond))``.

    With ``guided``, one UNet call on ``[x, x]`` with ``[uncond, context]`` and
    ``out_u + w (out_c - out_u)``; else the conditional output. A UNet with
    ``time_cond_proj_dim`` (LCM) gets :func:`guidance_scale_embedding` ``(w - 1)``.
    ``guidance_rescale > 0`` (traced) adds diffusers' ``rescale_noise_cfg`` of the raw
    output (eps or v; :func:`~diffjax.guidance.guidance_rescale_correction`), as
    ``StableDiffusionPipeline`` does. Wrap it with
    :func:`~diffjax.parameterization.make_denoiser` for the samplers.
    """
    dtype = _DTYPES[spec.dtype]
    cfg = spec.unet
    unet = UNet2DConditionModel(cfg, dtype=dtype, param_dtype=dtype,
                                query_chunk_size=spec.attention_chunk)

    def call(x, t, context, batch):
        t_cond = None
        if cfg.time_cond_proj_dim is not None:
            scale = jnp.broadcast_to(jnp.asarray(guidance_scale, jnp.float32), (batch,))
            t_cond = guidance_scale_embedding(scale, cfg.time_cond_proj_dim, dtype)
        return unet.apply({"params": unet_params}, x, t, context, t_cond)

    def fn(x: jax.Array, t: jax.Array, cond: Any) -> jax.Array:
        context, uncond = cond
        b = x.shape[0]
        if not guided:
            return call(x, t, context, b)
        both = call(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                    jnp.concatenate([uncond, context]), 2 * b)
        out_u, out_c = both[:b], both[b:]
        out = out_u + jnp.asarray(guidance_scale, jnp.float32) * (out_c - out_u)
        phi = jnp.asarray(guidance_rescale, jnp.float32)
        return jnp.where(phi > 0, out + guidance_rescale_correction(out, out_c, phi), out)

    return fn


def _decode(spec: PipelineSpec, k: int | None, vae_params: Any, latents: jax.Array) -> jax.Array:
    """``vae.decode(latents / scaling_factor)``, in slices of ``k`` images (``lax.map``)."""
    dtype = _DTYPES[spec.dtype]
    vae = AutoencoderKL(spec.vae, dtype=dtype)

    def decode(z: jax.Array) -> jax.Array:
        return vae.apply({"params": vae_params}, z.astype(dtype), method=AutoencoderKL.decode)

    z = unscale_latents(latents, spec.vae)
    b = z.shape[0]
    if k is None or k >= b:
        return decode(z).astype(jnp.float32)
    pad = -b % k
    z = jnp.concatenate([z, jnp.zeros((pad, *z.shape[1:]), z.dtype)]) if pad else z
    chunks = jax.lax.map(decode, z.reshape(-1, k, *z.shape[1:]))
    return chunks.reshape(-1, *chunks.shape[2:])[:b].astype(jnp.float32)


def _images(x: jax.Array, output: str) -> jax.Array:
    """Diffusers' postprocess: ``(x / 2 + 0.5).clip(0, 1)``; uint8 ``round(255 v)``."""
    v = jnp.clip(x / 2 + 0.5, 0.0, 1.0)
    if output == "float":
        return v
    return jnp.round(v * 255.0).astype(jnp.uint8)


def _encode(spec: PipelineSpec, mode: str, vae_params: Any, image: jax.Array,
            posterior_noise: jax.Array) -> jax.Array:
    """``scaling_factor * z`` with ``z = mean + std * n`` (``'sample'``) or ``mean``."""
    dtype = _DTYPES[spec.dtype]
    vae = AutoencoderKL(spec.vae, dtype=dtype)
    mean, logvar = vae.apply({"params": vae_params}, image.astype(dtype),
                             method=AutoencoderKL.encode)
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    z = mean if mode == "mean" else mean + jnp.exp(0.5 * logvar) * posterior_noise
    return scale_latents(z, spec.vae)


def _native_start(strength: float, num_steps: int) -> int:
    """Diffusers' ``t_start = n - min(int(n * strength), n)``."""
    return num_steps - min(int(num_steps * strength), num_steps)


def _build_sampler(static: _Static, eta: Any, strength: Any, step_noise: Any):
    """The sampler and (img2img) the start-point function ``add_noise(z0, noise)``."""
    config = static.spec.scheduler_config
    noise_fn = replay_noise(step_noise) if static.replay else None
    if static.sampler is None:
        if static.img2img is None:
            return sampler_from_scheduler_config(
                config, static.num_steps, eta=eta, noise_fn=noise_fn), None
        build = getattr(sd_schedulers, "img2img_sampler_from_scheduler_config", None)
        if build is None:  # pragma: no cover - until the schedulers module provides it
            raise NotImplementedError(
                "img2img with the folder's scheduler needs "
                "diffjax.stable_diffusion.schedulers.img2img_sampler_from_scheduler_config; "
                "pass a diffjax sampler name (sampler='ddim', 'dpm++2m', ...) instead"
            )
        return build(config, static.num_steps, strength, eta=eta, noise_fn=noise_fn)
    spec = static.sampler
    schedule = schedule_from_scheduler_config(config)
    eta = eta if spec.takes_eta else 0.0
    if static.img2img is None:
        return spec.build(schedule, static.num_steps, eta=eta, clip_x0=None), None
    start = _native_start(static.native_strength, static.num_steps)
    built = spec.build(schedule, static.num_steps, eta=eta, clip_x0=None, start_step=start)
    t0 = jnp.asarray(spec.timesteps(schedule, static.num_steps)[start], jnp.float32)

    def add_noise(z0: jax.Array, noise: jax.Array) -> jax.Array:
        return schedule.alpha(t0) * z0 + schedule.sigma(t0) * noise

    return built, add_noise


def _run(
    static: _Static,
    params: Any,
    context: jax.Array,
    uncond: jax.Array,
    guidance_scale: jax.Array,
    key: jax.Array,
    eta: jax.Array,
    strength: jax.Array,
    start: jax.Array,
    start_noise: jax.Array,
    posterior_noise: jax.Array,
    step_noise: jax.Array,
    guidance_rescale: jax.Array | float = 0.0,
) -> tuple[jax.Array, jax.Array | None]:
    """One pipeline run: (img2img: encode, add noise), sample, decode.

    ``start`` is the unit noise ``z_T`` (txt2img) or the image in [-1, 1] (img2img).
    """
    spec = static.spec
    schedule = schedule_from_scheduler_config(spec.scheduler_config)
    model_fn = guided_model_fn(spec, static.guided, params["unet"], guidance_scale,
                               guidance_rescale)
    denoise = make_denoiser(model_fn, schedule,
                            prediction_type_from_scheduler_config(spec.scheduler_config))
    sampler, add_noise = _build_sampler(static, eta, strength, step_noise)
    if static.img2img is None:
        x_T = start
    else:
        z0 = _encode(spec, static.img2img, params["vae"], start, posterior_noise)
        x_T = add_noise(z0, start_noise)
    latents = sample(sampler, denoise, x_T, key, cond=(context, uncond))
    if static.output == "latents":
        return latents, None
    decoded = _decode(spec, static.decode_batch_size, params["vae"], latents)
    return latents, _images(decoded, static.output)


@functools.partial(jax.jit, static_argnames=("spec", "decode_batch_size", "output"))
def _decode_images(vae_params, latents, *, spec, decode_batch_size, output):
    return _images(_decode(spec, decode_batch_size, vae_params, latents), output)


@functools.partial(jax.jit, static_argnames=("spec", "mode"))
def _encode_jit(vae_params, image, posterior_noise, *, spec, mode):
    return _encode(spec, mode, vae_params, image, posterior_noise)


def encode_image(
    pipe: StableDiffusionPipeline, image: Any, *, mode: str = "sample",
    posterior_noise: Any = None, seed: int | jax.Array = 0,
) -> jax.Array:
    """img2img's image latents: ``scaling_factor * z``, ``z ~ q(z | x)`` or its mean.

    Args:
      pipe: The pipeline.
      image: As :func:`img2img`'s (uint8 pixels or float in [-1, 1], NHWC).
      mode: ``'sample'`` (diffusers' ``latent_dist.sample``) or ``'mean'``.
      posterior_noise: The draw's unit noise ``(N, H/f, W/f, C)``; default
        ``normal(seed)``.
      seed: An int seed or a PRNG key for the default noise.
    """
    check_choice("mode", mode, IMG2IMG_MODES)
    x = _image_array(pipe, image)
    f = pipe.vae_config.downsample_factor
    if x.shape[1] % f or x.shape[2] % f:
        raise ValueError(f"image size {x.shape[1]}x{x.shape[2]} is not a multiple of the "
                         f"VAE's factor {f}")
    shape = (x.shape[0], x.shape[1] // f, x.shape[2] // f, pipe.vae_config.latent_channels)
    if posterior_noise is None:
        posterior_noise = jax.random.normal(_key(seed), shape, jnp.float32)
    n = jnp.asarray(posterior_noise, jnp.float32)
    if n.shape != shape:
        raise ValueError(f"posterior_noise must have shape {shape}, got {n.shape}")
    return _encode_jit(pipe.vae_params, x, n, spec=pipe.spec, mode=mode)


def decode_latents(
    pipe: StableDiffusionPipeline,
    latents: Any,
    *,
    output: str = "uint8",
    decode_batch_size: int | None = None,
) -> jax.Array:
    """Images of final latents (``(B, h, w, C)`` NHWC), as the pipeline decodes them.

    ``vae.decode(latents / scaling_factor)``, then ``(x / 2 + 0.5).clip(0, 1)``
    (``output='float'``) or its uint8 ``round(255 v)`` (``'uint8'``).
    """
    check_choice("output", output, OUTPUT_KINDS[:2])
    if decode_batch_size is not None:
        decode_batch_size = check_int("decode_batch_size", decode_batch_size, minimum=1)
    z = jnp.asarray(latents, jnp.float32)
    c = pipe.vae_config.latent_channels
    if z.ndim != 4 or z.shape[-1] != c:
        raise ValueError(f"latents must be (B, h, w, {c}) NHWC, got shape {z.shape}")
    return _decode_images(pipe.vae_params, z, spec=pipe.spec,
                          decode_batch_size=decode_batch_size, output=output)


@functools.lru_cache(maxsize=64)
def _compiled(static: _Static) -> Callable:
    return jax.jit(functools.partial(_run, static))


def sampling_function(
    spec: PipelineSpec,
    *,
    batch: int,
    height: int,
    width: int,
    sampler: Any = None,
    num_steps: int = 50,
    guided: bool = True,
    output: str = "uint8",
    decode_batch_size: int | None = None,
    replay_step_noise: bool = False,
    img2img: str | None = None,
    native_strength: float | None = None,
) -> Callable:
    """The pipeline's jitted function for these statics (cached: one per key).

    The function is ``fn(params, context, uncond, guidance_scale, key, eta, strength,
    start, start_noise, posterior_noise, step_noise[, guidance_rescale]) -> (latents,
    images | None)`` with ``params = {'unet': ..., 'vae': ...}``, ``context`` / ``uncond``
    the ``(B, L, D)``
    prompt and negative-prompt states, ``start`` the ``(B, h, w, c)`` unit noise
    (txt2img) or the ``(B, H, W, 3)`` image in ``[-1, 1]`` (img2img); unused arguments
    may be zeros of any shape. It lowers on :class:`jax.ShapeDtypeStruct` arguments.

    Raises:
      ValueError: Bad sizes or options (named).
    """
    batch = check_int("batch", batch, minimum=1)
    m = spec.size_multiple
    for name, value in (("height", height), ("width", width)):
        check_int(name, value, minimum=1)
        if value % m:
            raise ValueError(
                f"{name}={value} is not a multiple of {m} (the VAE's factor "
                f"{spec.vae_factor} times the UNet's {spec.unet.downsampling_factor})"
            )
    check_choice("output", output, OUTPUT_KINDS)
    if img2img is not None:
        check_choice("mode", img2img, IMG2IMG_MODES)
    if decode_batch_size is not None:
        decode_batch_size = check_int("decode_batch_size", decode_batch_size, minimum=1)
    f = spec.vae_factor
    static = _Static(
        spec, (batch, height // f, width // f, spec.unet.in_channels),
        _sampler_spec(sampler),
        check_int("steps", num_steps, minimum=1), bool(guided), output, decode_batch_size,
        bool(replay_step_noise), img2img,
        None if native_strength is None else float(native_strength),
    )
    return _compiled(static)


# --------------------------------------------------------------------------------------
# The Python API.


def _sampler_spec(sampler: Any) -> Any:
    """``None``, or a :class:`diffjax.SamplerSpec` (anything with its ``build``/``timesteps``).

    Names are parsed by the application layer (``diffjax.SamplerSpec('dpm++2m')``,
    ``diffjax.app.sampler_specs.parse_sampler('dpm++2m@logsnr')``), which this library
    module does not import.
    """
    if sampler is None:
        return None
    if isinstance(sampler, str):
        raise TypeError(
            f"sampler={sampler!r}: pass diffjax.SamplerSpec({sampler!r}) (or "
            f"diffjax.app.sampler_specs.parse_sampler({sampler!r})) for a diffjax sampler, "
            "or None for the folder's scheduler"
        )
    missing = [a for a in ("build", "timesteps", "takes_eta", "check_eta")
               if not hasattr(sampler, a)]
    if missing:
        raise TypeError(f"sampler must be None or a diffjax.SamplerSpec, got {sampler!r}")
    return sampler


def _prompts(prompt: str | Sequence[str], name: str) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    prompts = list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"{name} must be a string or a non-empty list of strings, got "
                        f"{prompt!r}")
    return prompts


def _embeddings(pipe: StableDiffusionPipeline, prompts: list[str], clip_skip: int | None):
    ids = tokenize_prompts(pipe.tokenizer, prompts)
    return encode_prompt(pipe.text_params, pipe.text_config, ids, skip=clip_skip or 0)


def _key(seed: int | jax.Array) -> jax.Array:
    if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return seed
    if isinstance(seed, jax.Array | np.ndarray) and seed.dtype == np.uint32:
        return jax.random.wrap_key_data(jnp.asarray(seed))
    return jax.random.key(check_int("seed", seed))


def _mesh(mesh: Mesh | str | None, batch: int) -> Mesh | None:
    if mesh == "auto":
        devices = jax.devices()
        if len(devices) < 2 or batch % len(devices):
            return None
        return Mesh(np.asarray(devices), ("data",))
    if mesh is None or isinstance(mesh, Mesh):
        if mesh is not None and batch % mesh.devices.size:
            raise ValueError(f"the batch ({batch} images) does not divide over the mesh's "
                             f"{mesh.devices.size} devices")
        return mesh
    raise TypeError(f"mesh must be 'auto', None or a jax.sharding.Mesh, got {mesh!r}")


def _shard(mesh: Mesh | None, *arrays: Any) -> list[Any]:
    """Batch-first arrays split over the mesh's first axis (unchanged without a mesh)."""
    if mesh is None:
        return list(arrays)
    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    return [jax.device_put(a, sharding) for a in arrays]


def _check_scalar(name: str, value: Any, lo: float | None = None, hi: float | None = None):
    v = concrete_value(value)
    if v is None:
        return None
    if v.ndim != 0 or not np.isfinite(float(v)):
        raise ValueError(f"{name} must be a finite number, got {name}={value!r}")
    f = float(v)
    if (lo is not None and f < lo) or (hi is not None and f > hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got {name}={f}")
    return f


def _generate(
    pipe: StableDiffusionPipeline,
    prompt: str | Sequence[str],
    *,
    negative_prompt: str | Sequence[str] | None,
    sampler: Any,
    steps: int,
    guidance_scale: float,
    seed: int | jax.Array,
    num_images_per_prompt: int,
    eta: float,
    output: str,
    clip_skip: int | None,
    decode_batch_size: int | None,
    step_noise: Any,
    mesh: Mesh | str | None,
    return_latents: bool,
    height: int,
    width: int,
    start: Callable[[int, jax.Array], jax.Array],
    img2img: str | None = None,
    strength: float = 1.0,
    start_noise: Any = None,
    posterior_noise: Any = None,
    progress: Callable[[str], None] | None = None,
    guidance_rescale: float = 0.0,
) -> Any:
    """The shared body of :func:`txt2img` and :func:`img2img`."""
    prompts = _prompts(prompt, "prompt")
    n = check_int("num_images_per_prompt", num_images_per_prompt, minimum=1)
    negatives = [""] * len(prompts) if negative_prompt is None else _prompts(
        negative_prompt, "negative_prompt")
    if len(negatives) == 1 and len(prompts) > 1:
        negatives = negatives * len(prompts)
    if len(negatives) != len(prompts):
        raise ValueError(f"negative_prompt has {len(negatives)} entries for {len(prompts)} "
                         "prompts")
    w = _check_scalar("guidance_scale", guidance_scale)
    if w is None:
        raise ValueError("guidance_scale must be a concrete number (it decides whether an "
                         "unconditional batch is built); it is traced inside the pipeline")
    _check_scalar("eta", eta, 0.0)
    _check_scalar("guidance_rescale", guidance_rescale, 0.0, 1.0)
    if clip_skip is not None:
        check_int("clip_skip", clip_skip, minimum=0)
    spec_sampler = _sampler_spec(sampler)
    if spec_sampler is not None:
        spec_sampler.check_eta(eta)
    batch = len(prompts) * n
    guided = w > 1.0 and pipe.unet_config.time_cond_proj_dim is None
    native_strength = strength if (img2img is not None and spec_sampler is not None) else None
    fn = sampling_function(
        pipe.spec, batch=batch, height=height, width=width, sampler=spec_sampler,
        num_steps=steps, guided=guided, output=output, decode_batch_size=decode_batch_size,
        replay_step_noise=step_noise is not None, img2img=img2img,
        native_strength=native_strength,
    )
    key = _key(seed)
    k_start, k_noise, k_post, k_sample = jax.random.split(key, 4)
    f = pipe.vae_config.downsample_factor
    latent_shape = (batch, height // f, width // f, pipe.unet_config.in_channels)
    context = jnp.repeat(_embeddings(pipe, prompts, clip_skip), n, axis=0)
    uncond = (jnp.repeat(_embeddings(pipe, negatives, clip_skip), n, axis=0) if guided
              else jnp.zeros((batch, 1, 1), jnp.float32))

    def noise(value: Any, k: jax.Array, name: str) -> jax.Array:
        if value is None:
            return jax.random.normal(k, latent_shape, jnp.float32)
        value = jnp.asarray(value, jnp.float32)
        if value.shape != latent_shape:
            raise ValueError(f"{name} must have shape {latent_shape} (B, H/{f}, W/{f}, C; "
                             f"NHWC), got {value.shape}")
        return value

    x_start = start(batch, k_start)
    if img2img is None:
        x_start = noise(x_start, k_start, "latents")
        start_noise = posterior_noise = jnp.zeros((), jnp.float32)
    else:
        start_noise = noise(start_noise, k_noise, "noise")
        posterior_noise = noise(posterior_noise, k_post, "posterior_noise")
    replay = jnp.zeros((), jnp.float32) if step_noise is None else jnp.asarray(step_noise)
    placed = _mesh(mesh, batch)
    context, uncond, x_start = _shard(placed, context, uncond, x_start)
    if img2img is not None:
        start_noise, posterior_noise = _shard(placed, start_noise, posterior_noise)
    args = (pipe.placed_params(placed), context, uncond, jnp.float32(w), k_sample,
            jnp.float32(eta), jnp.float32(strength), x_start, start_noise, posterior_noise,
            replay, jnp.float32(guidance_rescale))
    if progress is None:
        latents, images = fn(*args)
    else:
        latents, images = _timed(fn, args, progress, f"{batch} image(s), {steps} steps")
    result = latents if output == "latents" else images
    return (result, latents) if return_latents and output != "latents" else result


def _timed(fn: Any, args: tuple, progress: Callable[[str], None], what: str) -> Any:
    """Runs ``fn(*args)`` compiled ahead of time, reporting compile and run seconds."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    progress(f"compiled in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    progress(f"sampled and decoded {what} in {time.perf_counter() - t0:.1f} s")
    return out


def _size(pipe: StableDiffusionPipeline, height: int | None, width: int | None):
    f = pipe.vae_config.downsample_factor
    default = (pipe.unet_config.sample_size or 64) * f
    return (default if height is None else height), (default if width is None else width)


def txt2img(
    pipe: StableDiffusionPipeline,
    prompt: str | Sequence[str],
    *,
    negative_prompt: str | Sequence[str] | None = None,
    sampler: Any = None,
    steps: int = 50,
    guidance_scale: float = 7.5,
    seed: int | jax.Array = 0,
    height: int | None = None,
    width: int | None = None,
    num_images_per_prompt: int = 1,
    latents: Any = None,
    eta: float = 0.0,
    guidance_rescale: float = 0.0,
    output: str = "uint8",
    clip_skip: int | None = None,
    decode_batch_size: int | None = None,
    step_noise: Any = None,
    mesh: Mesh | str | None = "auto",
    return_latents: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Any:
    """Text to image, as diffusers' ``StableDiffusionPipeline.__call__``.

    Args:
      pipe: From :func:`load_pipeline`.
      prompt: A prompt or a list of prompts.
      negative_prompt: The unconditional prompt(s); ``None`` is ``""`` (diffusers').
      sampler: ``None`` for the folder's scheduler (diffusers-exact), or a diffjax
        sampler as a :class:`diffjax.SamplerSpec` (``diffjax.SamplerSpec('dpm++2m')``).
      steps: diffusers' ``num_inference_steps`` (the sampler's step count).
      guidance_scale: ``w`` of ``out_u + w (out_c - out_u)``; ``<= 1`` builds no
        unconditional batch. Traced (a new value above 1 does not recompile).
      seed: An int seed or a JAX PRNG key (traced).
      height: Image height (default ``unet.sample_size * vae factor``), a multiple of
        :attr:`PipelineSpec.size_multiple`.
      width: Image width (the same default and rule).
      num_images_per_prompt: Images per prompt (batch ``len(prompts) * n``, grouped by
        prompt as diffusers does).
      latents: Optional ``(B, H/f, W/f, C)`` unit noise ``z_T`` (NHWC; diffusers'
        ``latents`` transposed); default ``normal(key)``.
      eta: DDIM's stochasticity (traced).
      guidance_rescale: diffusers' ``guidance_rescale`` ``phi`` in ``[0, 1]`` (Lin et al.
        2024, Sec. 3.4: the guided output rescaled to the conditional one's std, blended
        by ``phi``; for zero-SNR v models); traced, no effect without guidance.
      output: ``'uint8'`` (diffusers' ``pil``/``numpy`` as uint8), ``'float'`` (its
        ``np`` output in [0, 1]) or ``'latents'``.
      clip_skip: diffusers' ``clip_skip``.
      decode_batch_size: Decode the VAE this many images at a time (``lax.map``).
      step_noise: Noise for the stochastic steps, ``(sampler steps, B, h, w, C)``
        (replays another implementation's draws; see
        :func:`~diffjax.samplers.diffusers_compat.replay_noise`).
      mesh: ``'auto'`` shards the batch over all devices when it divides evenly;
        ``None`` never shards; or a :class:`~jax.sharding.Mesh` (first axis).
      return_latents: Also return the final latents: ``(images, latents)``.
      progress: Optional ``progress(line)`` for phase reports (compile and run seconds,
        the compile then done ahead of time, as the command line does).

    Returns:
      ``(B, H, W, 3)`` uint8 or float32 images, or ``(B, h, w, C)`` latents.

    Raises:
      ValueError / TypeError: A bad argument, naming it and its value.
    """
    height, width = _size(pipe, height, width)
    return _generate(
        pipe, prompt, negative_prompt=negative_prompt, sampler=sampler, steps=steps,
        guidance_scale=guidance_scale, seed=seed, num_images_per_prompt=num_images_per_prompt,
        eta=eta, output=output, clip_skip=clip_skip, decode_batch_size=decode_batch_size,
        step_noise=step_noise, mesh=mesh, return_latents=return_latents, height=height,
        width=width, start=lambda batch, key: latents, progress=progress,
        guidance_rescale=guidance_rescale,
    )


def _image_array(pipe: StableDiffusionPipeline, image: Any) -> jax.Array:
    """uint8 ``(H, W, C)`` / ``(N, H, W, C)`` or float in [-1, 1] -> float32 NHWC in [-1, 1]."""
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr[None]
    c = pipe.vae_config.in_channels
    if arr.ndim != 4 or arr.shape[-1] != c:
        raise ValueError(f"image must be (H, W, {c}) or (N, H, W, {c}) (NHWC), got shape "
                         f"{np.shape(image)}")
    if arr.dtype == np.uint8:
        return jnp.asarray(arr.astype(np.float32) / np.float32(255.0) * 2 - 1)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"image must be uint8 or float in [-1, 1], got dtype {arr.dtype}")
    if arr.size and (arr.min() < -1.0 - 1e-6 or arr.max() > 1.0 + 1e-6):
        raise ValueError(f"a float image must lie in [-1, 1], got [{arr.min():.3g}, "
                         f"{arr.max():.3g}] (pass uint8 for 0..255 pixels)")
    return jnp.asarray(arr, jnp.float32)


def img2img(
    pipe: StableDiffusionPipeline,
    image: Any,
    prompt: str | Sequence[str],
    *,
    strength: float = 0.8,
    mode: str = "sample",
    negative_prompt: str | Sequence[str] | None = None,
    sampler: Any = None,
    steps: int = 50,
    guidance_scale: float = 7.5,
    seed: int | jax.Array = 0,
    num_images_per_prompt: int = 1,
    noise: Any = None,
    posterior_noise: Any = None,
    eta: float = 0.0,
    output: str = "uint8",
    clip_skip: int | None = None,
    decode_batch_size: int | None = None,
    step_noise: Any = None,
    mesh: Mesh | str | None = "auto",
    return_latents: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Any:
    """Image to image, as diffusers' ``StableDiffusionImg2ImgPipeline.__call__``.

    Args:
      pipe: From :func:`load_pipeline`.
      image: uint8 ``(H, W, 3)`` / ``(N, H, W, 3)`` pixels, or float in ``[-1, 1]``; one
        image (used for every output) or one per output image. ``H``, ``W`` multiples of
        :attr:`PipelineSpec.size_multiple`.
      prompt: A prompt or a list of prompts.
      strength: In ``[0, 1]``: the loop runs the last ``min(int(steps * strength),
        steps)`` steps (at least one). Traced for the folder's scheduler, static (one
        compilation each) for diffjax's native samplers.
      mode: ``'sample'`` draws ``z ~ q(z | x)`` (diffusers' ``latent_dist.sample``) with
        ``posterior_noise``; ``'mean'`` takes the posterior mean.
      noise: The unit noise added at the start time, ``(B, H/f, W/f, C)``; default
        ``normal(key)``.
      posterior_noise: The posterior draw's unit noise, same shape; default
        ``normal(key)``.
      negative_prompt: As :func:`txt2img`'s.
      sampler: As :func:`txt2img`'s (native samplers need a time grid: not
        'dpm-fast' / 'edm-heun').
      steps: As :func:`txt2img`'s (before ``strength``).
      guidance_scale: As :func:`txt2img`'s.
      seed: As :func:`txt2img`'s.
      num_images_per_prompt: As :func:`txt2img`'s.
      eta: As :func:`txt2img`'s.
      output: As :func:`txt2img`'s.
      clip_skip: As :func:`txt2img`'s.
      decode_batch_size: As :func:`txt2img`'s.
      step_noise: As :func:`txt2img`'s (one row per step run, from the start).
      mesh: As :func:`txt2img`'s.
      return_latents: As :func:`txt2img`'s.
      progress: As :func:`txt2img`'s.

    Returns:
      As :func:`txt2img`.

    Raises:
      ValueError / TypeError: A bad argument (image size or channels, strength, ...).
    """
    s = _check_scalar("strength", strength, 0.0, 1.0)
    steps = check_int("steps", steps, minimum=1)
    if s is None:
        raise ValueError("strength must be a concrete number in [0, 1]")
    if min(int(steps * s), steps) < 1:
        raise ValueError(f"strength={s} with steps={steps} leaves no step to run "
                         f"(int(steps * strength) = {int(steps * s)}); raise either")
    check_choice("mode", mode, IMG2IMG_MODES)
    x = _image_array(pipe, image)
    m = pipe.spec.size_multiple
    if x.shape[1] % m or x.shape[2] % m:
        raise ValueError(f"image size {x.shape[1]}x{x.shape[2]} is not a multiple of {m} "
                         f"(the VAE's factor {pipe.spec.vae_factor} times the UNet's "
                         f"{pipe.unet_config.downsampling_factor})")

    def start(batch: int, key: jax.Array) -> jax.Array:
        del key
        if x.shape[0] == batch:
            return x
        if x.shape[0] != 1:
            raise ValueError(f"{x.shape[0]} images given for a batch of {batch} outputs; "
                             "give one image or one per output")
        return jnp.broadcast_to(x, (batch, *x.shape[1:]))

    return _generate(
        pipe, prompt, negative_prompt=negative_prompt, sampler=sampler, steps=steps,
        guidance_scale=guidance_scale, seed=seed, num_images_per_prompt=num_images_per_prompt,
        eta=eta, output=output, clip_skip=clip_skip, decode_batch_size=decode_batch_size,
        step_noise=step_noise, mesh=mesh, return_latents=return_latents,
        height=int(x.shape[1]), width=int(x.shape[2]), start=start, img2img=mode,
        strength=s, start_noise=noise, posterior_noise=posterior_noise, progress=progress,
    )
