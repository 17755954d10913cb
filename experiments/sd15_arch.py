"""Stable Diffusion 1.5's architecture for the benchmarks: configs and weightless params.

The config dicts are the ones runwayml/stable-diffusion-v1-5 ships (``unet/config.json``,
``vae/config.json``, ``text_encoder/config.json``, ``scheduler/scheduler_config.json``),
in diffusers' / transformers' keys, so both diffjax and the torch reference build from
the same dict. ``TINY`` holds a pipeline of the same block types but a few thousand
parameters, for dry runs of the benchmark scripts on CPU.

Used by experiments/bench_sd_unet_vs_torch.py, sd_memory.py and bench_sd_gpu.py. Nothing
here imports torch.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

from diffjax.networks.clip import CLIPTextConfig, CLIPTextTransformer
from diffjax.nn.autoencoder import AutoencoderKL, AutoencoderKLConfig
from diffjax.nn.unet_condition import UNet2DConditionModel, UNetConditionConfig
from diffjax.stable_diffusion.text_encoder import text_config_from_dict

__all__ = ["SD15", "TINY", "configs", "param_structs", "run_record", "write_record"]

SD15_UNET = {  # runwayml/stable-diffusion-v1-5 unet/config.json
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"],
}
SD15_VAE = {  # vae/config.json
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD15_TEXT = {  # text_encoder/config.json (openai/clip-vit-large-patch14's text tower)
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
}
SD15_SCHEDULER = {  # scheduler/scheduler_config.json
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
}
SD15 = {"unet": SD15_UNET, "vae": SD15_VAE, "text_encoder": SD15_TEXT,
        "scheduler": SD15_SCHEDULER}

TINY = {  # the same block types, tiny widths (a 64x64 image: 8x8 latents)
    "unet": {**SD15_UNET, "block_out_channels": [32, 64], "attention_head_dim": 4,
             "cross_attention_dim": 32, "layers_per_block": 1, "norm_num_groups": 8,
             "sample_size": 8, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]},
    "vae": {**SD15_VAE, "block_out_channels": [16, 32, 32, 32], "layers_per_block": 1,
            "norm_num_groups": 8, "sample_size": 64},
    "text_encoder": {**SD15_TEXT, "hidden_size": 32, "intermediate_size": 37,
                     "num_attention_heads": 4, "num_hidden_layers": 2, "projection_dim": 32},
    "scheduler": SD15_SCHEDULER,
}


def configs(arch: dict[str, dict]) -> tuple[UNetConditionConfig, AutoencoderKLConfig,
                                             CLIPTextConfig]:
    """diffjax's configs of ``arch`` (:data:`SD15` or :data:`TINY`): unet, vae, text."""
    return (UNetConditionConfig.from_diffusers_dict(arch["unet"]),
            AutoencoderKLConfig.from_diffusers(arch["vae"]),
            text_config_from_dict(arch["text_encoder"]))


def param_structs(arch: dict[str, dict], dtype: Any = jnp.bfloat16) -> dict[str, Any]:
    """``{'unet', 'vae', 'text'}`` parameter trees of :class:`jax.ShapeDtypeStruct` (no memory).

    Built with ``jax.eval_shape`` of each module's ``init``; every leaf cast to ``dtype``
    (the pipeline's ``load_pipeline(dtype=...)`` stores every weight in that dtype).
    """
    unet_cfg, vae_cfg, text_cfg = configs(arch)
    key = jax.random.key(0)
    f = vae_cfg.downsample_factor
    trees = {
        "unet": jax.eval_shape(UNet2DConditionModel(unet_cfg).init_params, key),
        "vae": jax.eval_shape(AutoencoderKL(vae_cfg).init, key, jax.ShapeDtypeStruct(
            (1, f, f, vae_cfg.in_channels), jnp.float32))["params"],
        "text": jax.eval_shape(CLIPTextTransformer(text_cfg).init, key, jax.ShapeDtypeStruct(
            (1, 1), jnp.int32))["params"],
    }
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), trees)


def run_record(script: str) -> dict[str, Any]:
    """The start of a benchmark's JSON: its command line, date, machine and JAX."""
    return {
        "command": f"python experiments/{script} " + " ".join(sys.argv[1:]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_start": round(os.getloadavg()[0], 2),
        "jax": jax.__version__, "jax_backend": jax.default_backend(),
        "jax_device": jax.devices()[0].device_kind, "jax_devices": len(jax.devices()),
    }


def write_record(record: dict[str, Any], path: str | None) -> None:
    """Prints the JSON record and, with ``path``, writes it there (folders made)."""
    text = json.dumps(record, indent=1)
    print(text, flush=True)
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")
