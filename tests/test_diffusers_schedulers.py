"""diffusers' scheduler classes as diffjax samplers, against diffusers' own loops.

Goldens: ``tests/data/scheduler_golden.npz`` from ``python experiments/make_scheduler_golden.py``
(diffusers' ``set_timesteps`` / ``scale_model_input`` / ``step`` loop with the analytic
model below). Every case runs through :func:`diffjax.samplers.sample` (one ``lax.scan``)
with the same model written in JAX; the timesteps the model sees must equal diffusers'
exactly, the final latents to 1e-5 relative to their scale, and ``nfe`` must equal the
counted denoiser calls. No torch needed.
"""

from __future__ import annotations

import json
import os
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.parameterization import make_denoiser
from diffjax.samplers.diffusers_compat import diffusers_ddim_timesteps, replay_noise
from diffjax.samplers.driver import sample
from diffjax.samplers.euler import ancestral_sigmas, diffusers_sigmas, lms_coefficients
from diffjax.samplers.pndm import pndm_timesteps
from diffjax.stable_diffusion.schedulers import (
    SUPPORTED_SCHEDULERS,
    diffusers_alphas_cumprod,
    load_scheduler_config,
    prediction_type_from_scheduler_config,
    sampler_from_scheduler_config,
    schedule_from_scheduler_config,
)

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "scheduler_golden.npz")
_DATA = dict(np.load(GOLDEN))
CASES = sorted({key.split("/")[0] for key in _DATA if "/" in key})
RTOL = 1e-5
# Karras/exponential sigmas map back to fractional timesteps through diffusers' sigma table,
# which torch computes with its CPU float32 sqrt; that sqrt is not correctly rounded (errors
# up to 1.5 ulp, platform dependent), and the log-linear inversion amplifies one ulp of
# sigma to ~6e-5 of a timestep. Those grids match to this; all others bit for bit.
FRACTIONAL_T_ATOL = 2e-4
# Zero-SNR Euler starts at sigma = 4096 (alpha_bar = 2**-24): the first Euler step cancels
# samples of size ~1e4 in float32 (diffusers' own formula loses ~2e-4 there), so the run's
# error is relative to that scale, not to the O(1) final latents.
RTOL_BY_CASE = {"euler_v_zero_snr_7": 5e-5}


def golden(case: str) -> dict:
    prefix = f"{case}/"
    return {k[len(prefix):]: v for k, v in _DATA.items() if k.startswith(prefix)}


def analytic_model(x: jax.Array, t: jax.Array, cond: object = None) -> jax.Array:
    """The golden script's model: ``W x / (1 + t / 1000) + 0.1 sin(0.01 t + c)`` (NCHW)."""
    del cond
    c = jnp.arange(4, dtype=jnp.float32)
    w = 0.8 * jnp.eye(4) + 0.05 * (jnp.mod(c[:, None] - c[None, :], 4.0) - 1.5)
    t = jnp.asarray(t, jnp.float32)[:, None, None, None]
    mixed = jnp.einsum("cd,bdhw->bchw", w, x) / (1.0 + t / 1000.0)
    return mixed + 0.1 * jnp.sin(0.01 * t + c[None, :, None, None])


def run_case(case: str) -> tuple[dict, np.ndarray, list[float], object]:
    g = golden(case)
    config = json.loads(str(g["config"]))
    noise_fn = replay_noise(g["step_noise"]) if "step_noise" in g else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SD 1.5's PNDM config carries DDIM's clip_sample
        sampler = sampler_from_scheduler_config(
            config, int(g["num_steps"]), eta=float(g["eta"]), noise_fn=noise_fn
        )
    schedule = schedule_from_scheduler_config(config)
    denoise = make_denoiser(analytic_model, schedule, prediction_type_from_scheduler_config(config))
    seen: list[float] = []

    def recording(x: jax.Array, t: jax.Array, cond: object) -> object:
        jax.debug.callback(lambda v: seen.append(float(v)), t, ordered=True)
        return denoise(x, t, cond)

    run = jax.jit(lambda noise: sample(sampler, recording, noise, jax.random.key(0)))
    final = np.asarray(run(jnp.asarray(g["noise"])))
    jax.effects_barrier()
    return g, final, seen, sampler


@pytest.mark.parametrize("case", CASES)
def test_matches_diffusers_loop(case: str) -> None:
    g, final, seen, sampler = run_case(case)
    seen_t, want_t = np.asarray(seen, np.float32), g["timesteps"].astype(np.float32)
    if "karras" in case or "exponential" in case:
        np.testing.assert_allclose(seen_t, want_t, rtol=0, atol=FRACTIONAL_T_ATOL)
    else:
        np.testing.assert_array_equal(seen_t, want_t)
    assert sampler.nfe == len(seen) == len(g["timesteps"])
    assert sampler.num_steps == len(g["timesteps"])
    scale = max(1.0, float(np.abs(g["final"]).max()))
    err = float(np.abs(final - g["final"]).max())
    tol = RTOL_BY_CASE.get(case, RTOL) * scale
    assert err <= tol, f"{case}: max abs error {err:.3g} (scale {scale:.3g})"
    init = np.asarray(sampler.init(jnp.asarray(g["noise"])).x)
    chex.assert_trees_all_close(init, g["init"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_alphas_cumprod_match_diffusers(case: str) -> None:
    g = golden(case)
    config = json.loads(str(g["config"]))
    table = diffusers_alphas_cumprod(config)
    if config.get("rescale_betas_zero_snr") and "Euler" in config["_class_name"]:
        table[-1] = np.float32(2.0**-24)  # diffusers' Euler classes clamp the zero SNR
    if config.get("rescale_betas_zero_snr"):  # goes through torch's inexact float32 sqrt
        np.testing.assert_allclose(table, g["alphas_cumprod"], rtol=1e-6, atol=1e-9)
    else:  # torch.linspace and torch.cumprod reproduced bit for bit
        np.testing.assert_array_equal(table, g["alphas_cumprod"])


def test_timestep_grids() -> None:
    # DDIM's target t - T // n is not the next grid time for trailing spacing, T % n != 0.
    grid = diffusers_ddim_timesteps(1000, 7, "trailing")
    np.testing.assert_array_equal(grid, golden("ddim_trailing_7")["timesteps"])
    assert not np.array_equal(grid[1:], grid[:-1] - 1000 // 7)
    ts, prk = pndm_timesteps(1000, 7, skip_prk_steps=True, steps_offset=1)
    np.testing.assert_array_equal(ts, golden("pndm_sd15_7")["timesteps"])
    assert len(prk) == 0 and ts[1] == ts[2]  # the 2-evaluation warm-up repeats a time
    ts, prk = pndm_timesteps(1000, 7, skip_prk_steps=False, steps_offset=1)
    assert len(prk) == 12 and len(ts) == 7 + 9
    # Karras sigmas are mapped back to fractional model timesteps.
    config = json.loads(str(golden("euler_karras_25")["config"]))
    t, sigmas, _ = diffusers_sigmas(
        diffusers_alphas_cumprod(config), 25, timestep_spacing="leading", steps_offset=1,
        sigma_schedule="karras",
    )
    chex.assert_shape((t, sigmas), [(25,), (26,)])
    assert np.any(t != np.round(t)) and sigmas[-1] == 0.0


def test_ancestral_variance_is_ddpm_posterior() -> None:
    """sigma_up**2 is the DDPM posterior variance in sigma space (VP one / alpha_bar_s)."""
    config = json.loads(str(golden("euler_ancestral_sd15_25")["config"]))
    schedule = schedule_from_scheduler_config(config)
    ac = np.asarray(schedule.alphas_cumprod, np.float64)
    t = np.array([981, 741, 501, 261, 41])
    s = t - 40
    sig = lambda a: np.sqrt((1 - a) / a)  # noqa: E731
    up, down = ancestral_sigmas(sig(ac[t]), sig(ac[s]))
    posterior = np.asarray(schedule.posterior_variance(jnp.asarray(t), jnp.asarray(s)))
    np.testing.assert_allclose(up.astype(np.float64) ** 2, posterior / ac[s], rtol=1e-4)
    np.testing.assert_allclose(up**2 + down**2, sig(ac[s]) ** 2, rtol=1e-5)


def test_lms_coefficients_are_the_integrals() -> None:
    sigmas = np.array([14.6, 9.0, 5.2, 2.9, 1.4, 0.5, 0.0])
    coeffs = lms_coefficients(sigmas)
    for i, j in [(0, 0), (1, 1), (3, 0), (3, 3), (5, 2)]:
        k = min(i + 1, 4)
        # The Lagrange basis polynomial, integrated exactly with numpy's polynomials.
        poly = np.poly1d([1.0])
        for m in range(k):
            if m != j:
                poly = poly * np.poly1d([1.0, -sigmas[i - m]]) / (sigmas[i - j] - sigmas[i - m])
        antideriv = np.polyint(poly)
        exact = antideriv(sigmas[i + 1]) - antideriv(sigmas[i])
        np.testing.assert_allclose(coeffs[i, j], exact, rtol=1e-12, atol=1e-12)
    assert np.all(coeffs[0, 1:] == 0)  # the first step is Euler


SD15_PNDM = {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear",
             "beta_start": 0.00085, "beta_end": 0.012, "skip_prk_steps": True}


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"_class_name": "DPMSolverMultistepScheduler"},
         "DPMSolverMultistepScheduler.*PNDMScheduler"),
        ({"_class_name": None}, "not supported; supported classes"),
        ({"_class_name": "EulerDiscreteScheduler", "interpolation_type": "log_linear"},
         "interpolation_type='log_linear'"),
        ({"_class_name": "EulerDiscreteScheduler", "timestep_type": "continuous"},
         "timestep_type"),
        ({"_class_name": "LMSDiscreteScheduler", "use_beta_sigmas": True}, "use_beta_sigmas"),
        ({**SD15_PNDM, "beta_schedule": "sigmoid"}, "beta_schedule='sigmoid'"),
        ({**SD15_PNDM, "prediction_type": "flow"}, "prediction_type='flow'"),
        ({**SD15_PNDM, "prediction_type": "sample"}, "PNDMScheduler supports"),
        ({**SD15_PNDM, "timestep_spacing": "karras"}, "timestep_spacing='karras'"),
        ({"_class_name": "PNDMScheduler", "steps_offset": 200}, "leave \\[0, 999\\]"),
        ({"_class_name": "DDIMScheduler", "steps_offset": 200}, "outside \\[0, 999\\]"),
        ({"_class_name": "DDIMScheduler", "trained_betas": [0.1, 0.2]}, "trained_betas has shape"),
        ({"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True,
          "use_exponential_sigmas": True}, "cannot both"),
        ({"_class_name": "EulerAncestralDiscreteScheduler", "prediction_type": "sample"},
         "not 'sample'"),
    ],
)
def test_bad_configs_raise_clearly(config: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sampler_from_scheduler_config(config, 10)


def test_unused_keys_warn_and_missing_file(tmp_path: os.PathLike) -> None:
    with pytest.warns(UserWarning, match="clip_sample"):
        sampler_from_scheduler_config({**SD15_PNDM, "clip_sample": False}, 10)
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        load_scheduler_config(tmp_path)
    path = os.path.join(tmp_path, "scheduler_config.json")
    with open(path, "w") as f:
        json.dump(SD15_PNDM, f)
    assert load_scheduler_config(tmp_path)["_class_name"] == "PNDMScheduler"
    assert set(SUPPORTED_SCHEDULERS) >= {"PNDMScheduler", "DDIMScheduler", "LMSDiscreteScheduler"}
