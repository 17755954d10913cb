"""Golden outputs of diffusers' torch UNet2DConditionModel (tiny random configs).

Writes, under ``tests/data/``:

- ``sd_unet/<name>/``: diffusers ``unet/`` folders (``save_pretrained``, safetensors) of
  seeded random ``UNet2DConditionModel``s, weights stored in float16 (real checkpoints
  often are; it keeps each file under 0.5 MB):

  * ``sd1``: SD 1.x-like: CrossAttnDownBlock2D + DownBlock2D, ``attention_head_dim=8``
    (an int: 8 heads), 1x1-conv projections, block widths (16, 32), 16 norm groups, one
    layer per block, cross_attention_dim 32.
  * ``sd2``: SD 2.x-like: per-block heads ``(2, 4)``, ``use_linear_projection``, 2 norm
    groups, ``upcast_attention``; saved as the ``fp16`` variant
    (``diffusion_pytorch_model.fp16.safetensors``).
  * ``lcm``: ``sd1`` plus ``time_cond_proj_dim=16`` (LCM's guidance embedding).
  * ``sdxl``: SDXL-like: DownBlock2D first, ``transformer_layers_per_block=(1, 2)``,
    ``layers_per_block=2``, widths (8, 16), 4 norm groups, linear projections,
    ``addition_embed_type='text_time'`` (pooled text width 24, 6 time ids of 8 channels).

  Norm scales and all biases are perturbed away from their 1 / 0 init, so that a swapped
  or dropped tensor shows in the output.
- ``sd_unet_golden.npz``: per model (keys ``<name>/...``): NHWC ``sample`` (2, 8, 8, 4),
  ``timesteps`` [999, 10], ``encoder_hidden_states`` (2, 7, 32), ``timestep_cond`` (lcm),
  ``text_embeds`` / ``time_ids`` (sdxl), the NHWC ``output`` of the float32 model (its
  weights the float16-rounded stored ones), and ``param_count`` (diffusers' count).

Needs torch and diffusers (the ``parity`` extra):

    python experiments/make_sd_unet_golden.py
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil

import numpy as np
import torch
from diffusers import UNet2DConditionModel

SEED = 1313
BASE = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "cross_attention_dim": 32,
    "norm_num_groups": 16,
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
}
MODELS = {
    "sd1": {"attention_head_dim": 8},
    "sd2": {"attention_head_dim": (2, 4), "use_linear_projection": True, "norm_num_groups": 2,
            "upcast_attention": True},
    "lcm": {"attention_head_dim": 8, "time_cond_proj_dim": 16},
    "sdxl": {
        "attention_head_dim": (2, 4),
        "use_linear_projection": True,
        "block_out_channels": (8, 16),
        "norm_num_groups": 4,
        "layers_per_block": 2,
        "transformer_layers_per_block": (1, 2),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 24 + 6 * 8,
    },
}
VARIANTS = {"sd2": "fp16"}
TEXT_EMBED_DIM = 24


def build(name: str, seed: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    model = UNet2DConditionModel(**{**BASE, **MODELS[name]}).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # norm scales and biases: not 1 / 0
                p.add_(0.2 * torch.randn_like(p))
            # Round to float16 (the stored dtype), so the float32 golden uses those values.
            p.copy_(p.half().float())
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = os.path.join(os.path.dirname(__file__), "..", "tests", "data")
    parser.add_argument("--out", default=root)
    args = parser.parse_args()
    golden: dict[str, np.ndarray] = {}
    for k, name in enumerate(MODELS):
        model = build(name, SEED + k)
        folder = os.path.join(args.out, "sd_unet", name)
        shutil.rmtree(folder, ignore_errors=True)
        model.half().save_pretrained(folder, safe_serialization=True,
                                     variant=VARIANTS.get(name))
        model.float()
        g = torch.Generator().manual_seed(SEED + 100 + k)
        sample = torch.randn(2, 4, 8, 8, generator=g)
        t = torch.tensor([999.0, 10.0])
        context = torch.randn(2, 7, 32, generator=g)
        kwargs = {}
        if model.config.time_cond_proj_dim:
            kwargs["timestep_cond"] = torch.randn(2, model.config.time_cond_proj_dim,
                                                  generator=g)
        if model.config.addition_embed_type == "text_time":
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.randn(2, TEXT_EMBED_DIM, generator=g),
                "time_ids": torch.tensor([[512.0, 512, 0, 0, 512, 512],
                                          [768.0, 1024, 16, 8, 1024, 1024]]),
            }
        with torch.no_grad():
            out = model(sample, t, context, **kwargs).sample
        p = f"{name}/"
        golden[p + "sample"] = sample.permute(0, 2, 3, 1).numpy()
        golden[p + "timesteps"] = t.numpy()
        golden[p + "encoder_hidden_states"] = context.numpy()
        if "timestep_cond" in kwargs:
            golden[p + "timestep_cond"] = kwargs["timestep_cond"].numpy()
        if "added_cond_kwargs" in kwargs:
            for key, v in kwargs["added_cond_kwargs"].items():
                golden[p + key] = v.numpy()
        golden[p + "output"] = out.permute(0, 2, 3, 1).numpy()
        golden[p + "param_count"] = np.array(sum(q.numel() for q in model.parameters()))
        print(f"{name}: {golden[p + 'param_count']} params, output std "
              f"{out.std().item():.3f}, |out| max {out.abs().max().item():.3f}")
    golden["versions"] = np.array(
        [f"torch {torch.__version__}", f"diffusers {importlib.metadata.version('diffusers')}"]
    )
    np.savez_compressed(os.path.join(args.out, "sd_unet_golden.npz"), **golden)


if __name__ == "__main__":
    main()
