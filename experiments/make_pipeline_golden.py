"""diffusers' Stable Diffusion pipelines on the tiny folders: goldens for the JAX pipeline.

For ``tests/data/tiny_sd1`` (SD 1.x-like, eps) and ``tests/data/tiny_sd2`` (SD 2.x-like,
v-prediction) this runs diffusers' ``StableDiffusionPipeline`` (float32, CPU) once per
scheduler class of issue 13 (PNDM, DDIM, DDPM, Euler, Euler ancestral, LMS,
DPMSolverMultistep, DPMSolverSinglestep, UniPC, LCM; swapped in with
``Scheduler.from_config(pipe.scheduler.config)`` as users do), plus DDIM with ``eta=0.5``
and DDIM with ``guidance_rescale=0.7`` (txt2img's ``rescale_noise_cfg``),
and ``StableDiffusionImg2ImgPipeline`` for a few classes at ``strength=0.6``. Every case
uses two prompts, guidance 7.5, an 8x8 image (4x4 latents: the tiny VAE halves the size;
diffusers' pipelines want multiples of 8) and given initial ``latents`` (unit noise).

Recorded per case (``<pipe>/<case>/...``; arrays NHWC, diffjax's layout):
``config`` (the scheduler config JSON), ``steps``, ``guidance``, ``eta``, ``prompts`` and
``negative_prompts`` (JSON; ``null`` for diffusers' default ``""``), ``guidance_rescale``
(txt2img), ``noise`` (the unit
``latents`` given), ``step_noise`` (what the scheduler drew through ``randn_tensor`` for
its stochastic steps, one row per draw, only for the classes that use it), ``latents``
(final, via ``callback_on_step_end``) and ``images`` (``output_type='np'``, in [0, 1]).
img2img cases add ``image`` (the uint8 inputs), ``strength``, ``posterior_noise`` (the
VAE's ``latent_dist.sample`` draw) and ``start_noise`` (the noise ``add_noise`` mixed in).

Needs torch, diffusers, transformers (the parity extra)::

    python experiments/make_pipeline_golden.py
"""

from __future__ import annotations

import importlib
import json
import os

import diffusers
import numpy as np
import torch
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
OUT = os.path.join(ROOT, "sd_pipeline_golden.npz")
SIZE = 8
GUIDANCE = 7.5
PROMPTS = ["a photo of a cat", "the quick brown fox jumps over the lazy dog"]
NEGATIVES = {"sd1": ["blurry", "a dog"], "sd2": None}
STEPS = {"sd1": 6, "sd2": 5}
CLASSES = (
    "PNDMScheduler", "DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler", "LCMScheduler",
)
# Classes whose step draws noise that it uses (Euler discrete draws but ignores it at
# s_churn = 0; DDIM uses it only for eta > 0).
STOCHASTIC = ("DDPMScheduler", "EulerAncestralDiscreteScheduler", "LCMScheduler")
IMG2IMG = {"sd1": ("PNDMScheduler", "EulerAncestralDiscreteScheduler"),
           "sd2": ("DDIMScheduler", "DPMSolverMultistepScheduler")}
STRENGTH = 0.6
_SCHEDULER_MODULES = [
    "diffusers.schedulers.scheduling_" + m
    for m in ("ddim", "ddpm", "euler_ancestral_discrete", "lcm", "dpmsolver_multistep",
              "dpmsolver_singlestep", "euler_discrete")
]
_VAE_MODULE = "diffusers.models.autoencoders.vae"
_IMG2IMG_MODULE = "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img"


class Recorder:
    """Wraps ``randn_tensor`` in the given modules; ``draws[module]`` lists what each drew."""

    def __init__(self, modules: list[str]):
        self.modules = [importlib.import_module(m) for m in modules]
        self.draws: dict[str, list[torch.Tensor]] = {m.__name__: [] for m in self.modules}
        self.originals = {}

    def __enter__(self) -> Recorder:
        for module in self.modules:
            original = module.randn_tensor
            self.originals[module] = original

            def randn_tensor(*args, _orig=original, _name=module.__name__, **kwargs):
                z = _orig(*args, **kwargs)
                self.draws[_name].append(z.clone())
                return z

            module.randn_tensor = randn_tensor
        return self

    def __exit__(self, *exc) -> None:
        for module, original in self.originals.items():
            module.randn_tensor = original

    def stacked(self, names: list[str]) -> np.ndarray | None:
        draws = [d for n in names for d in self.draws[n]]
        return torch.stack(draws).numpy() if draws else None


def nhwc(x: np.ndarray) -> np.ndarray:
    """NCHW (or a stack of NCHW) to NHWC."""
    return np.moveaxis(np.asarray(x, np.float32), -3, -1)


def scheduler_config(pipe, name: str) -> dict:
    sched = getattr(diffusers, name).from_config(pipe.scheduler.config)
    pipe.scheduler = sched
    return {k: v for k, v in dict(sched.config).items()}


def images_uint8(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (len(PROMPTS), SIZE, SIZE, 3), dtype=np.uint8)
    return base


def run(pipe_name: str, pipe, name: str, case: str, *, eta: float = 0.0,
        img2img: bool = False, guidance_rescale: float = 0.0) -> dict[str, np.ndarray]:
    config = scheduler_config(pipe, name)
    steps = STEPS[pipe_name]
    gen = torch.Generator().manual_seed(len(case))
    h = SIZE // pipe.vae_scale_factor
    seen = []

    def callback(p, i, t, kwargs):
        seen.append(kwargs["latents"].clone())
        return kwargs

    common = dict(prompt=PROMPTS, negative_prompt=NEGATIVES[pipe_name], guidance_scale=GUIDANCE,
                  num_inference_steps=steps, generator=gen, output_type="np", eta=eta,
                  callback_on_step_end=callback)
    out: dict[str, np.ndarray] = {}
    modules = _SCHEDULER_MODULES + ([_VAE_MODULE, _IMG2IMG_MODULE] if img2img else [])
    with Recorder(modules) as rec, torch.no_grad():
        if img2img:
            image = images_uint8(7)
            sub = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)
            result = sub(image=[Image.fromarray(im) for im in image], strength=STRENGTH,
                         **common)
            out["image"] = image
            out["strength"] = np.float32(STRENGTH)
            out["posterior_noise"] = nhwc(rec.stacked([_VAE_MODULE])[0])
            out["start_noise"] = nhwc(rec.stacked([_IMG2IMG_MODULE])[0])
        else:
            noise = torch.randn((len(PROMPTS), 4, h, h), generator=gen)
            result = pipe(latents=noise.clone(), height=SIZE, width=SIZE,
                          guidance_rescale=guidance_rescale, **common)
            out["noise"] = nhwc(noise.numpy())
            out["guidance_rescale"] = np.float32(guidance_rescale)
        step_noise = rec.stacked(_SCHEDULER_MODULES)
    if step_noise is not None and (name in STOCHASTIC or eta > 0):
        out["step_noise"] = nhwc(step_noise)
    out.update(
        config=np.array(json.dumps(config)), steps=np.int32(steps),
        guidance=np.float32(GUIDANCE), eta=np.float32(eta),
        prompts=np.array(json.dumps(PROMPTS)),
        negative_prompts=np.array(json.dumps(NEGATIVES[pipe_name])),
        latents=nhwc(seen[-1].numpy()), images=np.asarray(result.images, np.float32),
    )
    return out


def main() -> None:
    torch.manual_seed(0)
    arrays: dict[str, np.ndarray] = {}
    for pipe_name in ("sd1", "sd2"):
        folder = os.path.join(ROOT, f"tiny_{pipe_name}")
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        cases = [(n, n, {}) for n in CLASSES]
        cases.append(("DDIMScheduler", "DDIMScheduler_eta", {"eta": 0.5}))
        cases.append(("DDIMScheduler", "DDIMScheduler_rescale", {"guidance_rescale": 0.7}))
        cases += [(n, f"img2img_{n}", {"img2img": True}) for n in IMG2IMG[pipe_name]]
        for name, case, kwargs in cases:
            for field, value in run(pipe_name, pipe, name, case, **kwargs).items():
                arrays[f"{pipe_name}/{case}/{field}"] = value
            lat = arrays[f"{pipe_name}/{case}/latents"]
            print(f"{pipe_name}/{case}: |latents| max {np.abs(lat).max():.4f}"
                  + (" (step noise)" if f"{pipe_name}/{case}/step_noise" in arrays else ""))
    arrays["diffusers_version"] = np.array(diffusers.__version__)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
