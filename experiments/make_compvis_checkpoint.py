"""The tiny Stable Diffusion pipelines as original CompVis single-file checkpoints.

Writes ``tests/data/compvis_tiny_sd1.safetensors`` and ``compvis_tiny_sd2.safetensors``:
the weights of ``tests/data/tiny_sd1`` / ``tiny_sd2`` (diffusers folders written by
``experiments/make_tiny_sd.py``) renamed to the layout CompVis/stable-diffusion and
Stability-AI/stablediffusion save (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.*`` for SD 1.x, the OpenCLIP ``cond_stage_model.model.*`` with
fused ``in_proj`` attention for SD 2.x) by diffjax's own table
(:func:`diffjax.stable_diffusion.single_file.to_compvis_state_dict`). Like the released
files they also hold what is not a model weight: the DDPM schedule buffers (``betas``,
``alphas_cumprod``, ``alphas_cumprod_prev``, computed in float64 as ``ldm``'s
``make_beta_schedule`` does), SD 1.x's ``position_ids`` buffer, SD 2.x's
``text_projection`` and ``logit_scale``.

Then each file is read back by diffusers' own single-file reader
(``StableDiffusionPipeline.from_single_file(file, config=<the folder>)``), and every tensor
of its UNet, VAE and text encoder must equal the folder's (``torch.equal``, same key set);
the script fails loudly otherwise. That check does not use diffjax's mapping, so the
checkpoints are a golden for diffjax's reader (``tests/test_sd_single_file.py``). Needs the
``parity`` extra (torch, diffusers, transformers); rerunnable, deterministic:

    python experiments/make_compvis_checkpoint.py
"""

from __future__ import annotations

import os
import sys

import numpy as np

from diffjax.networks.safetensors_io import write_safetensors
from diffjax.stable_diffusion import single_file as S
from diffjax.stable_diffusion.folder import open_folder

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
NAMES = {"sd1": "tiny_sd1", "sd2": "tiny_sd2"}


def schedule_buffers(num_timesteps: int = 1000, start: float = 0.00085, end: float = 0.012):
    """``ldm.modules.diffusionmodules.util.make_beta_schedule("linear", ...)`` and its products."""
    betas = np.linspace(start**0.5, end**0.5, num_timesteps, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    previous = np.append(1.0, alphas_cumprod[:-1])
    return {k: v.astype(np.float32) for k, v in
            (("betas", betas), ("alphas_cumprod", alphas_cumprod),
             ("alphas_cumprod_prev", previous))}


def compvis_checkpoint(folder_path: str, openclip: bool) -> dict[str, np.ndarray]:
    """The folder's weights in the CompVis layout, plus the buffers released files hold."""
    folder = open_folder(folder_path)
    unet, vae, text = (folder.weights(n) for n in ("unet", "vae", "text_encoder"))
    text = {k.removeprefix("text_model."): v for k, v in text.items()}  # either layout
    out = {}
    out.update(S.to_compvis_state_dict(unet, S.unet_compvis_names(unet)))
    out.update(S.to_compvis_state_dict(vae, S.vae_compvis_names(vae)))
    if openclip:
        out.update(S.to_compvis_state_dict(text, S.openclip_compvis_names(text)))
        width = text["embeddings.token_embedding.weight"].shape[1]
        rng = np.random.default_rng(13)
        out[S.OPENCLIP_PREFIX + "text_projection"] = rng.standard_normal(
            (width, width)).astype(np.float32)
        out[S.OPENCLIP_PREFIX + "logit_scale"] = np.asarray(np.log(1 / 0.07), np.float32)
    else:
        out.update(S.to_compvis_state_dict(text, S.clip_compvis_names(text)))
        positions = text["embeddings.position_embedding.weight"].shape[0]
        out[S.CLIP_PREFIX + "text_model.embeddings.position_ids"] = np.arange(
            positions, dtype=np.int64)[None]
    out.update(schedule_buffers())
    return dict(sorted(out.items()))


def verify_with_diffusers(path: str, folder_path: str) -> int:
    """Asserts diffusers' reader gives the folder's tensors; returns how many were compared."""
    import torch
    from diffusers import StableDiffusionPipeline

    reference = StableDiffusionPipeline.from_pretrained(folder_path, safety_checker=None,
                                                        torch_dtype=torch.float32)
    loaded = StableDiffusionPipeline.from_single_file(
        path, config=folder_path, local_files_only=True, safety_checker=None,
        torch_dtype=torch.float32)
    compared = 0
    for component in ("unet", "vae", "text_encoder"):
        want = getattr(reference, component).state_dict()
        got = getattr(loaded, component).state_dict()
        if set(want) != set(got):
            raise SystemExit(f"{path}: {component} keys differ: only in folder "
                             f"{sorted(set(want) - set(got))[:5]}, only in single file "
                             f"{sorted(set(got) - set(want))[:5]}")
        bad = [k for k in want if not torch.equal(want[k], got[k])]
        if bad:
            raise SystemExit(f"{path}: diffusers reads {component} tensors {bad[:5]} "
                             "differently from the folder")
        compared += len(want)
    return compared


def main() -> int:
    for tag, name in NAMES.items():
        folder_path = os.path.join(ROOT, name)
        path = os.path.join(ROOT, f"compvis_tiny_{tag}.safetensors")
        checkpoint = compvis_checkpoint(folder_path, openclip=tag == "sd2")
        write_safetensors(path, checkpoint, metadata={"source": f"tests/data/{name}"})
        n = verify_with_diffusers(path, folder_path)
        print(f"{path}: {len(checkpoint)} tensors, {os.path.getsize(path)} bytes; diffusers' "
              f"from_single_file gives the folder's {n} UNet/VAE/text tensors exactly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
