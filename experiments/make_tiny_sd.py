"""Tiny random Stable Diffusion folders (diffusers' layout) and their torch goldens.

Writes, under ``tests/data/``:

- ``tiny_sd1/``: an SD 1.x-like ``StableDiffusionPipeline`` saved with diffusers'
  ``save_pretrained(safe_serialization=True)``: ``model_index.json``, ``unet/``
  (``UNet2DConditionModel``: CrossAttnDownBlock2D/DownBlock2D, UpBlock2D/CrossAttnUpBlock2D,
  an integer ``attention_head_dim``, ``cross_attention_dim`` 32), ``vae/``
  (``AutoencoderKL``, 2 blocks, 4 latent channels, 4 norm groups), ``text_encoder/``
  (transformers ``CLIPTextModel``: width 32, 3 layers, 4 heads, quick_gelu, 77 positions),
  ``tokenizer/`` (transformers ``CLIPTokenizer`` on the tiny BPE files of
  ``tests/data/clip_tiny/``), ``scheduler/`` (``PNDMScheduler`` with SD 1.5's
  ``scheduler_config.json``). The UNet and the VAE also as ``variant="fp16"`` files
  (``diffusion_pytorch_model.fp16.safetensors``).
- ``tiny_sd2/``: an SD 2.x-like one: ``DDIMScheduler`` with SD 2's config
  (``prediction_type="v_prediction"``), a UNet with ``use_linear_projection=True`` and
  per-block ``attention_head_dim`` (2, 4), 2 norm groups in the UNet and the VAE, a text
  encoder with ``hidden_act="gelu"`` whose ``model.safetensors`` keys carry the
  ``text_model.`` prefix of transformers 4 and released checkpoints (transformers 5 writes
  them without; the loader reads both).
- ``tiny_sd_goldens.npz``: per pipeline (``sd1/...``, ``sd2/...``), for three prompts,
  transformers' token ids (padded to 77), the text encoder's ``last_hidden_state`` (after
  ``final_layer_norm``), the raw penultimate hidden state ``hidden_states[-2]`` and the
  one diffusers' pipeline uses for ``clip_skip=1`` (``final_layer_norm(hidden_states[-2])``);
  the VAE's ``encode(x).latent_dist.mean`` / ``.logvar`` for ``x`` uniform in [-1, 1]
  (2x16x16x3) and ``decode(z).sample`` for ``z`` standard normal (2x8x8x4). Images and
  latents are stored NHWC (diffjax's layout).

Widths are smaller than real checkpoints' (8 and 16 channels, so 4 and 2 GroupNorm groups
rather than SD's 32) so that every weight file stays well under 1 MB; the code paths are
the same. Norm scales and biases are perturbed away from their 1/0 init so that they are
tested. Needs torch, diffusers and transformers (the ``parity`` extra); rerunnable:

    python experiments/make_tiny_sd.py
"""

from __future__ import annotations

import copy
import importlib.metadata
import os
import shutil

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
BPE_DIR = os.path.join(ROOT, "clip_tiny")
PROMPTS = ["a photo of a cat", "the quick brown fox jumps over the lazy dog", ""]
SCALING_FACTOR = 0.18215

# SD 1.5's scheduler/scheduler_config.json (runwayml/stable-diffusion-v1-5).
SD1_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, trained_betas=None,
)
# SD 2's (stabilityai/stable-diffusion-2, 768-v).
SD2_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    clip_sample=False, prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1,
    trained_betas=None,
)

SPECS = {
    "sd1": dict(groups=4, head_dim=4, linear_proj=False, act="quick_gelu", scheduler="pndm",
                fp16=True, prefixed_text_keys=False, seed=1),
    "sd2": dict(groups=2, head_dim=(2, 4), linear_proj=True, act="gelu", scheduler="ddim",
                fp16=False, prefixed_text_keys=True, seed=2),
}
CHANNELS = (8, 16)


def perturb_norms(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Norm scales 1 + 0.1 N(0, 1), norm and other biases 0.1 N(0, 1): all tested."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.GroupNorm | torch.nn.LayerNorm):
                module.weight.add_(0.1 * torch.randn(module.weight.shape, generator=gen))
                module.bias.add_(0.1 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, torch.nn.Linear | torch.nn.Conv2d) and module.bias is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))


def prefix_text_encoder_keys(path: str) -> None:
    """Rewrites a CLIPTextModel file with ``text_model.`` keys, as transformers 4 (and every
    released SD checkpoint) stored them; transformers 5 writes them without the prefix."""
    tensors = load_file(path)
    save_file({f"text_model.{k}": v for k, v in tensors.items()}, path, metadata={"format": "pt"})
    reloaded = CLIPTextModel.from_pretrained(os.path.dirname(path))
    for key, value in reloaded.state_dict().items():
        if key in tensors:
            assert torch.equal(value, tensors[key]), key


def build(spec: dict, tokenizer: CLIPTokenizer) -> StableDiffusionPipeline:
    torch.manual_seed(spec["seed"])
    gen = torch.Generator().manual_seed(spec["seed"])
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=CHANNELS,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=spec["head_dim"],
        norm_num_groups=spec["groups"], use_linear_projection=spec["linear_proj"],
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=CHANNELS, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, norm_num_groups=spec["groups"], sample_size=16,
        scaling_factor=SCALING_FACTOR,
    )
    vocab = tokenizer.get_vocab()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=77, hidden_act=spec["act"],
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    for model in (unet, vae, text_encoder):
        perturb_norms(model, gen)
        model.eval()
    if spec["scheduler"] == "pndm":
        scheduler = PNDMScheduler(**SD1_SCHEDULER)
    else:
        scheduler = DDIMScheduler(**SD2_SCHEDULER)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


@torch.no_grad()
def goldens(pipe: StableDiffusionPipeline, seed: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    ids = pipe.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    enc = pipe.text_encoder(ids, output_hidden_states=True)
    penultimate = enc.hidden_states[-2]
    out["input_ids"] = ids.numpy().astype(np.int32)
    out["last_hidden_state"] = enc.last_hidden_state.numpy()
    out["penultimate_raw"] = penultimate.numpy()
    # diffusers' clip_skip=1: final_layer_norm(hidden_states[-(clip_skip + 1)]). Its pipeline
    # reaches the norm as text_encoder.text_model.final_layer_norm, which transformers 5's
    # flattened CLIPTextModel no longer has, so the same two steps are done here.
    out["penultimate"] = pipe.text_encoder.final_layer_norm(penultimate).numpy()
    # The pipeline's own encode_prompt (clip_skip=None): what it feeds the UNet.
    embeds, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
    out["prompt_embeds"] = embeds.numpy()
    gen = torch.Generator().manual_seed(100 + seed)
    x = torch.rand((2, 3, 16, 16), generator=gen) * 2 - 1
    z = torch.randn((2, 4, 8, 8), generator=gen)
    dist = pipe.vae.encode(x).latent_dist
    out["vae_x"] = x.permute(0, 2, 3, 1).numpy()
    out["vae_mean"] = dist.mean.permute(0, 2, 3, 1).numpy()
    out["vae_logvar"] = dist.logvar.permute(0, 2, 3, 1).numpy()
    out["vae_z"] = z.permute(0, 2, 3, 1).numpy()
    out["vae_decoded"] = pipe.vae.decode(z).sample.permute(0, 2, 3, 1).numpy()
    return out


def main() -> None:
    tokenizer = CLIPTokenizer(os.path.join(BPE_DIR, "vocab.json"),
                              os.path.join(BPE_DIR, "merges.txt"), model_max_length=77)
    arrays: dict[str, np.ndarray] = {}
    for name, spec in SPECS.items():
        folder = os.path.join(ROOT, f"tiny_{name}")
        shutil.rmtree(folder, ignore_errors=True)
        pipe = build(spec, tokenizer)
        pipe.save_pretrained(folder, safe_serialization=True)
        # transformers 5 writes only tokenizer.json; real SD folders (and diffjax's reader)
        # have the BPE files too.
        for f in ("vocab.json", "merges.txt"):
            shutil.copy(os.path.join(BPE_DIR, f), os.path.join(folder, "tokenizer", f))
        if spec["prefixed_text_keys"]:
            prefix_text_encoder_keys(os.path.join(folder, "text_encoder", "model.safetensors"))
        if spec["fp16"]:
            for part in ("unet", "vae"):
                half = copy.deepcopy(getattr(pipe, part)).to(torch.float16)
                half.save_pretrained(os.path.join(folder, part), variant="fp16",
                                     safe_serialization=True)
        arrays.update({f"{name}/{k}": v for k, v in goldens(pipe, spec["seed"]).items()})
    arrays["versions"] = np.array([
        f"{p}=={importlib.metadata.version(p)}" for p in ("torch", "diffusers", "transformers")
    ])
    np.savez_compressed(os.path.join(ROOT, "tiny_sd_goldens.npz"), **arrays)
    for name in SPECS:
        folder = os.path.join(ROOT, f"tiny_{name}")
        for dirpath, _, files in sorted(os.walk(folder)):
            for f in sorted(files):
                path = os.path.join(dirpath, f)
                print(f"{os.path.relpath(path, ROOT):60s} {os.path.getsize(path):>8d}")
    print({k: v.shape for k, v in arrays.items()})


if __name__ == "__main__":
    main()
