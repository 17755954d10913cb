"""Goldens for tests/test_diffusers_schedulers.py from diffusers' own scheduler loops.

Rerun with ``python experiments/make_scheduler_golden.py`` (needs torch and diffusers, the
parity extra). For every case (a scheduler config and a step count) it runs diffusers'
loop as ``StableDiffusionPipeline`` does (``set_timesteps``, ``latents = noise *
init_noise_sigma``, ``scale_model_input``, the model, ``step``) with a deterministic
analytic model (:func:`analytic_model`, the same formula the test implements in JAX) on a
2x4x4x4 latent, and records the unit noise, the initial latents, every timestep passed to
the model, the noise diffusers drew inside ``step`` (wrapping ``randn_tensor``) and the
final latents, plus diffusers' ``alphas_cumprod`` (with the first case of each distinct
table). The img2img cases
(:data:`IMG2IMG_CASES`, keys ``img2img.<name>.<k>/``) run the start point of diffusers'
``StableDiffusionImg2ImgPipeline`` (:func:`run_img2img_case`) from a fixed image latent,
one per strength; ``guidance_embedding_<d>`` is the LCM pipeline's guidance-scale
embedding of scales 1.5 and 8. Writes ``tests/data/scheduler_golden.npz``.
"""

from __future__ import annotations

import json
import os

import diffusers
import numpy as np
import torch
from diffusers.schedulers import (
    scheduling_ddim,
    scheduling_ddpm,
    scheduling_dpmsolver_multistep,
    scheduling_dpmsolver_singlestep,
    scheduling_euler_ancestral_discrete,
    scheduling_lcm,
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
SD15_DPM = {**SD15, "_class_name": "DPMSolverMultistepScheduler", "steps_offset": 1}
SD15_DPMS = {k: v for k, v in SD15.items() if k != "steps_offset"}
SD15_DPMS["_class_name"] = "DPMSolverSinglestepScheduler"
SD15_UNIPC = {**SD15, "_class_name": "UniPCMultistepScheduler"}
SD15_DDPM = {**SD15, "_class_name": "DDPMScheduler", "clip_sample": False}
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
    "dpm_sd15_25": (SD15_DPM, 25, 0.0),
    "dpm_sd15_7": (SD15_DPM, 7, 0.0),
    "dpm_3m_heun_10": ({**SD15_DPM, "solver_order": 3, "solver_type": "heun"}, 10, 0.0),
    "dpm_3m_karras_20": ({**SD15_DPM, "solver_order": 3, "use_karras_sigmas": True}, 20, 0.0),
    "dpm_v_trailing_7": ({**SD15_DPM, **V_TRAIL}, 7, 0.0),
    "dpm_noise_sigma_min_heun_7": (
        {**SD15_DPM, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min",
         "solver_type": "heun"}, 7, 0.0),
    "dpm_noise_3_sigma_min_16": (
        {**SD15_DPM, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min",
         "solver_order": 3, "timestep_spacing": "leading"}, 16, 0.0),
    "dpm_sde_7": ({**SD15_DPM, "algorithm_type": "sde-dpmsolver++"}, 7, 0.0),
    "dpm_sde_heun_3_16": ({**SD15_DPM, "algorithm_type": "sde-dpmsolver++", "solver_type": "heun",
                           "solver_order": 3}, 16, 0.0),
    "dpm_lu_euler_final_16": (
        {**SD15_DPM, "use_lu_lambdas": True, "euler_at_final": True,
         "final_sigmas_type": "sigma_min", "timestep_spacing": "leading"}, 16, 0.0),
    "dpm_exponential_x0_threshold_9": (
        {**SD15_DPM, "use_exponential_sigmas": True, "prediction_type": "sample",
         "thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
        9, 0.0),
    "dpm_v_zero_snr_7": ({**SD15_DPM, **V_TRAIL, "rescale_betas_zero_snr": True}, 7, 0.0),
    "dpm_cos_clip_1_8": (
        {"_class_name": "DPMSolverMultistepScheduler", "beta_schedule": "squaredcos_cap_v2",
         "lambda_min_clipped": -5.1, "solver_order": 1}, 8, 0.0),
    "dpms_sd15_20": (SD15_DPMS, 20, 0.0),
    "dpms_3_heun_10": ({**SD15_DPMS, "solver_order": 3, "solver_type": "heun"}, 10, 0.0),
    "dpms_3_sigma_min_9": ({**SD15_DPMS, "solver_order": 3, "final_sigmas_type": "sigma_min"},
                           9, 0.0),
    "dpms_2_sigma_min_8": ({**SD15_DPMS, "final_sigmas_type": "sigma_min"}, 8, 0.0),
    "dpms_v_karras_8": ({**SD15_DPMS, "prediction_type": "v_prediction",
                         "use_karras_sigmas": True}, 8, 0.0),
    "dpms_sde_3_7": ({**SD15_DPMS, "algorithm_type": "sde-dpmsolver++", "solver_order": 3},
                     7, 0.0),
    "dpms_noise_3_sigma_min_11": (
        {**SD15_DPMS, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min",
         "solver_order": 3, "lower_order_final": True}, 11, 0.0),
    "unipc_sd15_20": (SD15_UNIPC, 20, 0.0),
    "unipc_sd15_7": (SD15_UNIPC, 7, 0.0),
    "unipc_bh1_3_10": ({**SD15_UNIPC, "solver_type": "bh1", "solver_order": 3,
                        "final_sigmas_type": "sigma_min"}, 10, 0.0),
    "unipc_v_trailing_7": ({**SD15_UNIPC, **V_TRAIL}, 7, 0.0),
    "unipc_noise_karras_sigma_min_8": (
        {**SD15_UNIPC, "predict_x0": False, "use_karras_sigmas": True,
         "final_sigmas_type": "sigma_min"}, 8, 0.0),
    "unipc_3_disable_x0_threshold_9": (
        {**SD15_UNIPC, "solver_order": 3, "disable_corrector": [0, 3],
         "lower_order_final": False, "prediction_type": "sample", "thresholding": True,
         "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5,
         "final_sigmas_type": "sigma_min"}, 9, 0.0),
    "unipc_exponential_leading_10": (
        {**SD15_UNIPC, "use_exponential_sigmas": True, "timestep_spacing": "leading",
         "sigma_min": 0.05, "sigma_max": 12.0}, 10, 0.0),
    "unipc_v_zero_snr_7": ({**SD15_UNIPC, **V_TRAIL, "rescale_betas_zero_snr": True}, 7, 0.0),
    "ddpm_sd15_10": (SD15_DDPM, 10, 0.0),
    "ddpm_v_trailing_small_log_7": ({**SD15_DDPM, **V_TRAIL, "variance_type": "fixed_small_log"},
                                    7, 0.0),
    "ddpm_large_clip_x0_linspace_7": (
        {**SD15_DDPM, "variance_type": "fixed_large", "prediction_type": "sample",
         "clip_sample": True, "clip_sample_range": 0.8, "timestep_spacing": "linspace"}, 7, 0.0),
    "ddpm_threshold_v_zero_snr_7": (
        {**SD15_DDPM, **V_TRAIL, "rescale_betas_zero_snr": True, "thresholding": True,
         "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}, 7, 0.0),
    "lcm_4": ({"_class_name": "LCMScheduler"}, 4, 0.0),
    "lcm_v_zero_snr_8": ({"_class_name": "LCMScheduler", "prediction_type": "v_prediction",
                          "rescale_betas_zero_snr": True}, 8, 0.0),
    "lcm_x0_threshold_orig25_6": (
        {"_class_name": "LCMScheduler", "prediction_type": "sample", "thresholding": True,
         "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5,
         "original_inference_steps": 25, "timestep_scaling": 5.0, "beta_schedule": "linear",
         "beta_start": 0.0001, "beta_end": 0.02}, 6, 0.0),
}

# img2img: name -> (config, num_steps, strengths, eta). Strengths where int(n * s)
# truncates (0.55 of 10, 0.5 of 7), where float32(s) * n < int(n * s) (0.7 of 10), 1.0, and
# ones that leave no step (0.05 of 10: PNDM still makes one call, the others none).
IMG2IMG_PREFIX = "img2img."
STRENGTHS = (0.05, 0.3, 0.55, 0.7, 1.0)
IMG2IMG_CASES: dict[str, tuple[dict, int, tuple[float, ...], float]] = {
    "pndm_sd15_10": (SD15_PNDM, 10, STRENGTHS, 0.0),
    "pndm_prk_10": ({"_class_name": "PNDMScheduler", "steps_offset": 1}, 10, (0.55, 1.0), 0.0),
    "ddim_sd15_10": (SD15_DDIM, 10, STRENGTHS, 0.0),
    "ddim_eta1_trailing_7": (
        {**SD15_DDIM, "timestep_spacing": "trailing", "steps_offset": 0}, 7, (0.5, 1.0), 1.0),
    "euler_sd15_10": (SD15_EULER, 10, STRENGTHS, 0.0),
    "euler_karras_v_7": ({**SD15_EULER, **V_TRAIL, "use_karras_sigmas": True}, 7,
                         (0.5, 1.0), 0.0),
    "euler_ancestral_sd15_10": (SD15_EA, 10, (0.55, 1.0), 0.0),
    "lms_sd15_10": (SD15_LMS, 10, (0.3, 0.55, 1.0), 0.0),
    "dpm_3m_10": ({**SD15_DPM, "solver_order": 3}, 10, (0.3, 0.55, 1.0), 0.0),
    "dpm_sde_v_7": ({**SD15_DPM, **V_TRAIL, "algorithm_type": "sde-dpmsolver++"}, 7,
                    (0.5, 1.0), 0.0),
    "dpms_3_10": ({**SD15_DPMS, "solver_order": 3}, 10, (0.3, 0.55, 0.7, 1.0), 0.0),
    "unipc_3_10": ({**SD15_UNIPC, "solver_order": 3}, 10, (0.3, 0.55, 1.0), 0.0),
    "ddpm_sd15_10": (SD15_DDPM, 10, (0.3, 1.0), 0.0),
    "lcm_8": ({"_class_name": "LCMScheduler"}, 8, (0.5, 1.0), 0.0),
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


# Classes whose step() takes the generator (their noise is recorded through randn_tensor).
_STOCHASTIC_MODULES = (scheduling_ddim, scheduling_euler_ancestral_discrete, scheduling_ddpm,
                       scheduling_dpmsolver_multistep, scheduling_dpmsolver_singlestep,
                       scheduling_lcm)
_NO_GENERATOR = ("PNDMScheduler", "EulerDiscreteScheduler", "LMSDiscreteScheduler",
                 "UniPCMultistepScheduler")


def run_loop(sched, latents: torch.Tensor, timesteps, eta: float, gen: torch.Generator):
    """diffusers' denoising loop over ``timesteps``: (final, model times, drawn noise)."""
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

    for module in _STOCHASTIC_MODULES:
        recording(module)
    name = type(sched).__name__
    try:
        kwargs = {"generator": gen}
        if name == "DDIMScheduler":
            kwargs["eta"] = eta
        elif name in _NO_GENERATOR:
            kwargs = {}
        for t in timesteps:
            times.append(float(t))
            inp = sched.scale_model_input(latents, t)
            out = analytic_model(inp, t)
            latents = sched.step(out, t, latents, **kwargs).prev_sample
    finally:
        for module, original in originals.items():
            module.randn_tensor = original
    return latents, times, drawn


def run_case(config: dict, num_steps: int, eta: float, seed: int) -> dict[str, np.ndarray]:
    cls = getattr(diffusers, config["_class_name"])
    sched = cls.from_config(config)
    sched.set_timesteps(num_steps)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(SHAPE, generator=gen, dtype=torch.float32)
    latents = noise * sched.init_noise_sigma
    final, times, drawn = run_loop(sched, latents.clone(), sched.timesteps, eta, gen)
    result = {
        "config": np.array(json.dumps(config)),
        "num_steps": np.array(num_steps),
        "eta": np.array(eta, np.float32),
        "noise": noise.numpy(),
        "init": latents.numpy(),
        "timesteps": np.array(times, np.float64),
        "final": final.numpy(),
        "alphas_cumprod": sched.alphas_cumprod.numpy().astype(np.float32),
        "init_noise_sigma": np.array(float(sched.init_noise_sigma), np.float32),
    }
    if drawn:
        result["step_noise"] = torch.stack(drawn).numpy()
    return result


def run_img2img_case(
    config: dict, num_steps: int, strength: float, eta: float, seed: int
) -> dict[str, np.ndarray]:
    """``StableDiffusionImg2ImgPipeline``'s start point and loop (``get_timesteps``,
    ``set_begin_index``, ``add_noise`` at ``timesteps[:1]``) on a fixed image latent.

    A strength that leaves no timestep (diffusers fails there) records no loop.
    """
    cls = getattr(diffusers, config["_class_name"])
    sched = cls.from_config(config)
    sched.set_timesteps(num_steps)
    gen = torch.Generator().manual_seed(seed)
    image = 0.5 * torch.randn(SHAPE, generator=gen, dtype=torch.float32) + 0.2
    noise = torch.randn(SHAPE, generator=gen, dtype=torch.float32)
    init_timestep = min(int(num_steps * strength), num_steps)
    t_start = max(num_steps - init_timestep, 0)
    timesteps = sched.timesteps[t_start * sched.order:]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(t_start * sched.order)
    result = {
        "config": np.array(json.dumps(config)),
        "num_steps": np.array(num_steps),
        "strength": np.array(strength, np.float64),
        "eta": np.array(eta, np.float32),
        "image": image.numpy(),
        "noise": noise.numpy(),
    }
    if len(timesteps) == 0:
        return result
    start = sched.add_noise(image, noise, timesteps[:1].repeat(SHAPE[0]))
    final, times, drawn = run_loop(sched, start.clone(), timesteps, eta, gen)
    result.update(
        start=start.numpy(), timesteps=np.array(times, np.float64), final=final.numpy()
    )
    if drawn:
        result["step_noise"] = torch.stack(drawn).numpy()
    return result


def main() -> None:
    arrays: dict[str, np.ndarray] = {}
    tables: list[np.ndarray] = []
    for k, (name, (config, steps, eta)) in enumerate(CASES.items()):
        result = run_case(config, steps, eta, seed=k)
        if any(np.array_equal(result["alphas_cumprod"], t) for t in tables):
            del result["alphas_cumprod"]  # kept once per distinct table
        else:
            tables.append(result["alphas_cumprod"])
        for field, value in result.items():
            arrays[f"{name}/{field}"] = value
        print(f"{name}: {len(arrays[f'{name}/timesteps'])} model calls, "
              f"|final| max {np.abs(arrays[f'{name}/final']).max():.4f}")
    for k, (name, (config, steps, strengths, eta)) in enumerate(IMG2IMG_CASES.items()):
        for m, strength in enumerate(strengths):
            case = f"{IMG2IMG_PREFIX}{name}.{m}"
            result = run_img2img_case(config, steps, strength, eta, seed=100 + k)
            for field, value in result.items():
                arrays[f"{case}/{field}"] = value
            calls = len(result.get("timesteps", ()))
            print(f"{case}: strength {strength}, {calls} model calls")
    w = torch.tensor([1.5, 8.0]) - 1.0
    for dim in (256, 7):
        emb = diffusers.LatentConsistencyModelPipeline.get_guidance_scale_embedding(
            None, w, embedding_dim=dim)
        arrays[f"guidance_embedding_{dim}"] = emb.numpy()
    arrays["diffusers_version"] = np.array(diffusers.__version__)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
