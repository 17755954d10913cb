"""Goldens for tests/test_diffusers_schedulers.py from diffusers' own scheduler loops.

Rerun with ``python experiments/make_scheduler_golden.py`` (needs torch and diffusers, the
parity extra). For every case (a scheduler config and a step count) it runs diffusers'
loop as ``StableDiffusionPipeline`` does (``set_timesteps``, ``latents = noise *
init_noise_sigma``, ``scale_model_input``, the model, ``step``) with a deterministic
analytic model (:func:`analytic_model`, the same formula the test implements in JAX) on a
2x4x4x4 latent, and records the unit noise, the initial latents, every timestep passed to
the model, the noise diffusers drew inside ``step`` (wrapping ``randn_tensor``) and the
final latents, plus diffusers' ``alphas_cumprod`` for each config. Writes
``tests/data/scheduler_golden.npz``.
"""

from __future__ import annotations

import json
import os

import diffusers
import numpy as np
import torch
from diffusers.schedulers import (
    scheduling_ddim,
    scheduling_euler_ancestral_discrete,
)

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "scheduler_golden.npz")
SHAPE = (2, 4, 4, 4)

SD15 = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "trained_betas": None, "steps_offset": 1,
}
SD15_PNDM = {**SD15, "_class_name": "PNDMScheduler", "set_alpha_to_one": False,
             "skip_prk_steps": True, "clip_sample": False}
SD15_DDIM = {**SD15, "_class_name": "DDIMScheduler", "set_alpha_to_one": False,
             "clip_sample": False}
SD15_EULER = {**SD15, "_class_name": "EulerDiscreteScheduler", "timestep_spacing": "leading"}
SD15_EA = {**SD15, "_class_name": "EulerAncestralDiscreteScheduler",
           "timestep_spacing": "leading"}
SD15_LMS = {**SD15, "_class_name": "LMSDiscreteScheduler", "timestep_spacing": "leading"}
V_TRAIL = {"prediction_type": "v_prediction", "timestep_spacing": "trailing", "steps_offset": 0}

# name -> (config, num_steps, eta)
CASES: dict[str, tuple[dict, int, float]] = {
    "pndm_sd15_25": (SD15_PNDM, 25, 0.0),
    "pndm_sd15_7": (SD15_PNDM, 7, 0.0),
    "pndm_prk_7": ({"_class_name": "PNDMScheduler", "steps_offset": 1}, 7, 0.0),
    "pndm_prk_linear_linspace_10": (
        {"_class_name": "PNDMScheduler", "timestep_spacing": "linspace", "beta_end": 0.02},
        10, 0.0),
    "pndm_v_trailing_7": ({**SD15_PNDM, **V_TRAIL, "set_alpha_to_one": True}, 7, 0.0),
    "ddim_sd15_25": (SD15_DDIM, 25, 0.0),
    "ddim_trailing_7": ({**SD15_DDIM, "timestep_spacing": "trailing", "steps_offset": 0}, 7, 0.0),
    "ddim_linspace_7": ({**SD15_DDIM, "timestep_spacing": "linspace"}, 7, 0.0),
    "ddim_v_zero_snr_7": (
        {**SD15_DDIM, **V_TRAIL, "rescale_betas_zero_snr": True, "set_alpha_to_one": True}, 7, 0.0),
    "ddim_eta1_clip_cos_7": (
        {"_class_name": "DDIMScheduler", "beta_schedule": "squaredcos_cap_v2",
         "clip_sample": True, "clip_sample_range": 0.5}, 7, 1.0),
    "ddim_threshold_x0_7": (
        {**SD15_DDIM, "prediction_type": "sample", "thresholding": True,
         "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}, 7, 0.5),
    "euler_sd15_25": (SD15_EULER, 25, 0.0),
    "euler_linspace_7": ({**SD15_EULER, "timestep_spacing": "linspace"}, 7, 0.0),
    "euler_karras_25": ({**SD15_EULER, "use_karras_sigmas": True}, 25, 0.0),
    "euler_exponential_7": ({**SD15_EULER, "use_exponential_sigmas": True,
                             "timestep_spacing": "linspace"}, 7, 0.0),
    "euler_v_zero_snr_7": ({**SD15_EULER, **V_TRAIL, "rescale_betas_zero_snr": True}, 7, 0.0),
    "euler_sigma_min_x0_7": (
        {**SD15_EULER, "final_sigmas_type": "sigma_min", "prediction_type": "sample",
         "use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0}, 7, 0.0),
    "euler_ancestral_sd15_25": (SD15_EA, 25, 0.0),
    "euler_ancestral_linspace_7": ({**SD15_EA, "timestep_spacing": "linspace"}, 7, 0.0),
    "euler_ancestral_v_trailing_7": ({**SD15_EA, **V_TRAIL}, 7, 0.0),
    "lms_sd15_25": (SD15_LMS, 25, 0.0),
    "lms_linspace_7": ({**SD15_LMS, "timestep_spacing": "linspace"}, 7, 0.0),
    "lms_karras_7": ({**SD15_LMS, "use_karras_sigmas": True}, 7, 0.0),
    "lms_v_trailing_7": ({**SD15_LMS, **V_TRAIL}, 7, 0.0),
}


def analytic_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``out = W x / (1 + t / 1000) + 0.1 sin(0.01 t + c)`` (channel mix, NCHW, float32).

    ``W = 0.8 I + 0.05 ((c - d) mod 4 - 1.5)``; the test implements the same formula.
    """
    c = torch.arange(4, dtype=torch.float32)
    w = 0.8 * torch.eye(4) + 0.05 * (((c[:, None] - c[None, :]) % 4) - 1.5)
    t = torch.as_tensor(t, dtype=torch.float32)
    mixed = torch.einsum("cd,bdhw->bchw", w, x) / (1.0 + t / 1000.0)
    return mixed + 0.1 * torch.sin(0.01 * t + c)[None, :, None, None]


def run_case(config: dict, num_steps: int, eta: float, seed: int) -> dict[str, np.ndarray]:
    cls = getattr(diffusers, config["_class_name"])
    sched = cls.from_config(config)
    sched.set_timesteps(num_steps)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(SHAPE, generator=gen, dtype=torch.float32)
    latents = noise * sched.init_noise_sigma
    init = latents.clone()
    drawn, times = [], []
    originals = {}

    def recording(module):
        original = module.randn_tensor

        def randn_tensor(*args, **kwargs):
            z = original(*args, **kwargs)
            drawn.append(z.clone())
            return z

        originals[module] = original
        module.randn_tensor = randn_tensor

    for module in (scheduling_ddim, scheduling_euler_ancestral_discrete):
        recording(module)
    try:
        kwargs = {"generator": gen}
        if config["_class_name"] == "DDIMScheduler":
            kwargs["eta"] = eta
        elif config["_class_name"] in ("PNDMScheduler", "EulerDiscreteScheduler",
                                       "LMSDiscreteScheduler"):
            kwargs = {}
        for t in sched.timesteps:
            times.append(float(t))
            inp = sched.scale_model_input(latents, t)
            out = analytic_model(inp, t)
            latents = sched.step(out, t, latents, **kwargs).prev_sample
    finally:
        for module, original in originals.items():
            module.randn_tensor = original
    result = {
        "config": np.array(json.dumps(config)),
        "num_steps": np.array(num_steps),
        "eta": np.array(eta, np.float32),
        "noise": noise.numpy(),
        "init": init.numpy(),
        "timesteps": np.array(times, np.float64),
        "final": latents.numpy(),
        "alphas_cumprod": sched.alphas_cumprod.numpy().astype(np.float32),
        "init_noise_sigma": np.array(float(sched.init_noise_sigma), np.float32),
    }
    if drawn:
        result["step_noise"] = torch.stack(drawn).numpy()
    return result


def main() -> None:
    arrays: dict[str, np.ndarray] = {}
    for k, (name, (config, steps, eta)) in enumerate(CASES.items()):
        for field, value in run_case(config, steps, eta, seed=k).items():
            arrays[f"{name}/{field}"] = value
        print(f"{name}: {len(arrays[f'{name}/timesteps'])} model calls, "
              f"|final| max {np.abs(arrays[f'{name}/final']).max():.4f}")
    arrays["diffusers_version"] = np.array(diffusers.__version__)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
