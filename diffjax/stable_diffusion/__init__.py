"""Stable Diffusion in JAX: diffusers and CompVis model folders, schedulers, pipelines.

Latent diffusion (Rombach et al. 2022): a KL autoencoder (:mod:`diffjax.nn.autoencoder`),
a cross-attention UNet (:mod:`diffjax.nn.unet_condition`) and a CLIP text encoder
(:mod:`diffjax.networks.clip`), loaded from a diffusers-layout folder with no torch at
run time (:func:`open_folder`, :func:`load_vae`, :func:`load_unet`,
:func:`load_text_encoder`, :func:`load_tokenizer`); prompts encoded as diffusers'
pipeline does (:func:`tokenize_prompts`, :func:`encode_prompt`); a folder's
``scheduler_config.json`` as the diffjax sampler that reproduces that scheduler class's
step loop (:func:`sampler_from_scheduler_config`, img2img start points with
:func:`img2img_sampler_from_scheduler_config`: PNDM, DDIM, DDPM, Euler, Euler ancestral,
LMS, DPM-Solver multistep and singlestep, UniPC, LCM); an original CompVis single-file
checkpoint onto the same models (:func:`load_single_file`); the pipeline
(:func:`load_pipeline`, :func:`txt2img`, :func:`img2img`). Names are imported on first use.
"""

from typing import TYPE_CHECKING

from diffjax._lazy import lazy_attributes

if TYPE_CHECKING:  # the names, for type checkers and IDEs
    from diffjax.stable_diffusion.folder import (
        ModelFolder,
        open_folder,
        read_component_config,
        read_component_weights,
    )
    from diffjax.stable_diffusion.pipeline import (
        PipelineSpec,
        StableDiffusionPipeline,
        decode_latents,
        encode_image,
        img2img,
        load_pipeline,
        sampling_function,
        txt2img,
    )
    from diffjax.stable_diffusion.schedulers import (
        SUPPORTED_SCHEDULERS,
        img2img_sampler_from_scheduler_config,
        load_scheduler_config,
        prediction_type_from_scheduler_config,
        sampler_from_scheduler_config,
        schedule_from_scheduler_config,
    )
    from diffjax.stable_diffusion.single_file import SingleFileComponents, load_single_file
    from diffjax.stable_diffusion.text_encoder import (
        encode_prompt,
        load_text_encoder,
        load_tokenizer,
        tokenize_prompts,
    )
    from diffjax.stable_diffusion.unet import load_unet, read_unet_config
    from diffjax.stable_diffusion.vae import load_vae

_LAZY = {
    "PipelineSpec": "diffjax.stable_diffusion.pipeline",
    "StableDiffusionPipeline": "diffjax.stable_diffusion.pipeline",
    "decode_latents": "diffjax.stable_diffusion.pipeline",
    "encode_image": "diffjax.stable_diffusion.pipeline",
    "img2img": "diffjax.stable_diffusion.pipeline",
    "load_pipeline": "diffjax.stable_diffusion.pipeline",
    "sampling_function": "diffjax.stable_diffusion.pipeline",
    "txt2img": "diffjax.stable_diffusion.pipeline",
    "ModelFolder": "diffjax.stable_diffusion.folder",
    "SUPPORTED_SCHEDULERS": "diffjax.stable_diffusion.schedulers",
    "SingleFileComponents": "diffjax.stable_diffusion.single_file",
    "encode_prompt": "diffjax.stable_diffusion.text_encoder",
    "img2img_sampler_from_scheduler_config": "diffjax.stable_diffusion.schedulers",
    "load_scheduler_config": "diffjax.stable_diffusion.schedulers",
    "load_single_file": "diffjax.stable_diffusion.single_file",
    "load_text_encoder": "diffjax.stable_diffusion.text_encoder",
    "load_tokenizer": "diffjax.stable_diffusion.text_encoder",
    "load_unet": "diffjax.stable_diffusion.unet",
    "load_vae": "diffjax.stable_diffusion.vae",
    "open_folder": "diffjax.stable_diffusion.folder",
    "prediction_type_from_scheduler_config": "diffjax.stable_diffusion.schedulers",
    "read_component_config": "diffjax.stable_diffusion.folder",
    "read_component_weights": "diffjax.stable_diffusion.folder",
    "read_unet_config": "diffjax.stable_diffusion.unet",
    "sampler_from_scheduler_config": "diffjax.stable_diffusion.schedulers",
    "schedule_from_scheduler_config": "diffjax.stable_diffusion.schedulers",
    "tokenize_prompts": "diffjax.stable_diffusion.text_encoder",
}

__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)

__all__ = [
    "SUPPORTED_SCHEDULERS",
    "ModelFolder",
    "PipelineSpec",
    "SingleFileComponents",
    "StableDiffusionPipeline",
    "decode_latents",
    "encode_image",
    "encode_prompt",
    "img2img",
    "img2img_sampler_from_scheduler_config",
    "load_pipeline",
    "load_scheduler_config",
    "load_single_file",
    "load_text_encoder",
    "load_tokenizer",
    "load_unet",
    "load_vae",
    "open_folder",
    "prediction_type_from_scheduler_config",
    "read_component_config",
    "read_component_weights",
    "read_unet_config",
    "sampler_from_scheduler_config",
    "sampling_function",
    "schedule_from_scheduler_config",
    "tokenize_prompts",
    "txt2img",
]
