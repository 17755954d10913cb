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
from diffjax.samplers.diffusers_compat import (
    diffusers_ddim_timesteps,
    img2img_start,
    replay_noise,
)
from diffjax.samplers.diffusers_ddpm import guidance_scale_embedding
from diffjax.samplers.diffusers_multistep import diffusers_dpm_grid, singlestep_order_list
from diffjax.samplers.driver import sample
from diffjax.samplers.euler import ancestral_sigmas, diffusers_sigmas, lms_coefficients
from diffjax.samplers.pndm import pndm_timesteps
from diffjax.stable_diffusion.schedulers import (
    SUPPORTED_SCHEDULERS,
    diffusers_alphas_cumprod,
    img2img_sampler_from_scheduler_config,
    load_scheduler_config,
    prediction_type_from_scheduler_config,
    sampler_from_scheduler_config,
    schedule_from_scheduler_config,
)

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "scheduler_golden.npz")
_DATA = dict(np.load(GOLDEN))
IMG2IMG_PREFIX = "img2img."
CASES = sorted({k.split("/")[0] for k in _DATA if "/" in k and not k.startswith(IMG2IMG_PREFIX)})
# img2img groups: one config and step count, several strengths ("img2img.<group>.<k>/...").
IMG2IMG_GROUPS = sorted({k.split("/")[0].rsplit(".", 1)[0][len(IMG2IMG_PREFIX):]
                         for k in _DATA if k.startswith(IMG2IMG_PREFIX)})
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


def img2img_runs(group: str) -> list[dict]:
    names = sorted(k.split("/")[0] for k in _DATA if k.startswith(f"{IMG2IMG_PREFIX}{group}."))
    return [golden(name) for name in dict.fromkeys(names)]


def build_img2img(config: dict, num_steps: int, strength: object, eta: float,
                  step_noise: object) -> tuple:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SD 1.5's PNDM config carries DDIM's clip_sample
        return img2img_sampler_from_scheduler_config(
            config, num_steps, strength, eta=eta, noise_fn=replay_noise(step_noise)
        )


@pytest.mark.parametrize("group", IMG2IMG_GROUPS)
def test_img2img_matches_diffusers(group: str) -> None:
    """diffusers' img2img start point and loop, every strength through one compilation.

    Skipped calls make no network call: the model times seen are exactly diffusers'.
    """
    chex.clear_trace_counter()
    runs = img2img_runs(group)
    config = json.loads(str(runs[0]["config"]))
    n, eta = int(runs[0]["num_steps"]), float(runs[0]["eta"])
    schedule = schedule_from_scheduler_config(config)
    denoise = make_denoiser(analytic_model, schedule, prediction_type_from_scheduler_config(config))
    full = build_img2img(config, n, 1.0, eta, np.zeros((1, *runs[0]["image"].shape)))[0]
    seen: list[float] = []

    def recording(x: jax.Array, t: jax.Array, cond: object) -> object:
        jax.debug.callback(lambda v: seen.append(float(v)), t, ordered=True)
        return denoise(x, t, cond)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(strength, image, noise, step_noise):
        sampler, add_noise = build_img2img(config, n, strength, eta, step_noise)
        assert sampler.num_steps == full.num_steps
        x_start = add_noise(image, noise)
        return x_start, sample(sampler, recording, x_start, jax.random.key(0))

    for g in runs:
        step_noise = np.zeros((full.num_steps, *g["image"].shape), np.float32)
        if "step_noise" in g:
            step_noise[: len(g["step_noise"])] = g["step_noise"]
        seen.clear()
        x_start, final = run(jnp.float32(g["strength"]), g["image"], g["noise"], step_noise)
        jax.effects_barrier()
        want_start = g.get("start", g["image"])  # no timestep left: the image itself
        want_final = g.get("final", g["image"])
        want_t = g.get("timesteps", np.zeros(0)).astype(np.float32)
        label = f"{group} strength {float(g['strength'])}"
        if "karras" in group:
            np.testing.assert_allclose(seen, want_t, rtol=0, atol=FRACTIONAL_T_ATOL, err_msg=label)
        else:
            np.testing.assert_array_equal(np.asarray(seen, np.float32), want_t, err_msg=label)
        chex.assert_trees_all_close(np.asarray(x_start), want_start, rtol=1e-6, atol=1e-6)
        scale = max(1.0, float(np.abs(want_final).max()))
        err = float(np.abs(np.asarray(final) - want_final).max())
        assert err <= RTOL * scale, f"{label}: max abs error {err:.3g}"


def test_img2img_concrete_strength_runs_only_its_calls() -> None:
    g = img2img_runs("euler_ancestral_sd15_10")[0]  # strength 0.55: 5 of 10 calls
    config = json.loads(str(g["config"]))
    sampler, add_noise = build_img2img(config, 10, float(g["strength"]), 0.0, g["step_noise"])
    assert (sampler.num_steps, sampler.nfe) == (10, 5)
    denoise = make_denoiser(analytic_model, schedule_from_scheduler_config(config), "eps")
    final = sample(sampler, denoise, add_noise(g["image"], g["noise"]), jax.random.key(0))
    chex.assert_trees_all_close(np.asarray(final), g["final"], rtol=RTOL, atol=RTOL)
    full, _ = build_img2img(config, 10, 1.0, 0.0, g["step_noise"])
    assert full.nfe == 10
    with pytest.raises(ValueError, match="strength must be in \\[0, 1\\]"):
        build_img2img(config, 10, 1.5, 0.0, g["step_noise"])


@pytest.mark.parametrize("n", [7, 10, 25, 50, 100])
def test_traced_strength_start_is_diffusers_rule(n: int) -> None:
    """float32 strengths give diffusers' t_start = n - int(n * s) for every 3-digit decimal,
    where float32(s) * n alone would not (e.g. 0.7 of 10, 0.57 of 100)."""
    decimals = [k / 1000 for k in range(1001)]
    want = np.array([n - min(int(n * s), n) for s in decimals])
    got = np.asarray(jax.jit(lambda s: img2img_start(n, s))(jnp.asarray(decimals, jnp.float32)))
    np.testing.assert_array_equal(got, want)
    assert [img2img_start(n, s) for s in decimals[::97]] == list(want[::97])  # concrete
    naive = n - np.minimum(np.floor(np.float32(decimals) * np.float64(n)), n)
    if n in (10, 100):
        assert np.any(naive != want)


@pytest.mark.parametrize("case", [c for c in CASES if f"{c}/alphas_cumprod" in _DATA])
def test_alphas_cumprod_match_diffusers(case: str) -> None:
    g = golden(case)
    config = json.loads(str(g["config"]))
    table = diffusers_alphas_cumprod(config)
    clamps = ("Euler", "DPMSolverMultistep", "UniPC")  # classes that clamp the zero SNR
    if config.get("rescale_betas_zero_snr") and config["_class_name"].startswith(clamps):
        table[-1] = np.float32(2.0**-24)
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
        ({"_class_name": "HeunDiscreteScheduler"}, "HeunDiscreteScheduler.*PNDMScheduler"),
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
        ({"_class_name": "DDPMScheduler", "variance_type": "learned_range"},
         "variance_type='learned_range'"),
        ({"_class_name": "DPMSolverMultistepScheduler", "variance_type": "learned"},
         "variance_type='learned'"),
        ({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver"},
         "algorithm_type='sde-dpmsolver'"),
        ({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver"},
         "final_sigmas_type='zero' is not supported"),
        ({"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True,
          "use_lu_lambdas": True}, "only one of"),
        ({"_class_name": "DPMSolverMultistepScheduler", "solver_order": 4}, "solver_order"),
        ({"_class_name": "DPMSolverSinglestepScheduler", "use_flow_sigmas": True},
         "use_flow_sigmas"),
        ({"_class_name": "UniPCMultistepScheduler", "solver_type": "bh3"}, "bh1"),
        ({"_class_name": "UniPCMultistepScheduler", "solver_p": "DDIM"}, "solver_p"),
        ({"_class_name": "LCMScheduler", "original_inference_steps": 5},
         "original_inference_steps=5"),
    ],
)
def test_bad_configs_raise_clearly(config: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sampler_from_scheduler_config(config, 10)


@pytest.mark.parametrize("dim", [256, 7])
def test_lcm_guidance_embedding_matches_diffusers(dim: int) -> None:
    emb = guidance_scale_embedding(jnp.asarray([1.5, 8.0]), dim)
    chex.assert_shape(emb, (2, dim))
    # sin/cos of arguments up to 7000 rad: one float32 ulp of the argument is 5e-4.
    chex.assert_trees_all_close(np.asarray(emb), _DATA[f"guidance_embedding_{dim}"],
                                rtol=0, atol=1e-3)
    low = np.abs(np.asarray(emb)[:, :3] - _DATA[f"guidance_embedding_{dim}"][:, :3])
    assert float(low.max()) < 1e-5  # small arguments: round-off only


def test_singlestep_orders_and_dpm_grid() -> None:
    """diffusers' singlestep order lists; DPM's leading grid divides by n + 1."""
    assert singlestep_order_list(10, 3, False, "zero") == [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
    assert singlestep_order_list(9, 3, True, "sigma_min") == [1, 2, 3, 1, 2, 3, 1, 2, 1]
    assert singlestep_order_list(8, 2, False, "sigma_min") == [1, 2] * 4
    config = json.loads(str(golden("dpm_noise_3_sigma_min_16")["config"]))
    ts, sigmas = diffusers_dpm_grid(diffusers_alphas_cumprod(config), 16,
                                    timestep_spacing="leading", steps_offset=1,
                                    final_sigmas_type="sigma_min")
    np.testing.assert_array_equal(ts, golden("dpm_noise_3_sigma_min_16")["timesteps"])
    assert ts[0] == 1000 // 17 * 16 + 1 and sigmas[-1] > 0


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
