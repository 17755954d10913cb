"""The Stable Diffusion pipeline against diffusers' (tests/data/sd_pipeline_golden.npz).

Goldens: ``python experiments/make_pipeline_golden.py`` (diffusers' StableDiffusionPipeline
and StableDiffusionImg2ImgPipeline on tests/data/tiny_sd1 and tiny_sd2, every scheduler
class of issue 13, given latents and recorded noise). No torch needed here.

Compiling the whole pipeline costs seconds per scheduler class on CPU, so the per-class
parity runs the pipeline's own pieces (its guided UNet function, jitted once per pipeline
and batch; its VAE encode/decode) with the sampler stepped eagerly, the same arithmetic
as one ``lax.scan``; :func:`test_jitted_txt2img_matches_diffusers_and_shards` and
:func:`test_jitted_img2img_matches_diffusers` run the jitted ``txt2img`` / ``img2img``
(sharded over the session's two CPU devices) on each folder's own scheduler.
"""

from __future__ import annotations

import functools
import json
import os
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.app.sampler_specs import parse_sampler
from diffjax.parameterization import make_denoiser
from diffjax.samplers.diffusers_compat import replay_noise
from diffjax.stable_diffusion import pipeline as P
from diffjax.stable_diffusion import schedulers as S

DATA = os.path.join(os.path.dirname(__file__), "data")
GOLDEN = dict(np.load(os.path.join(DATA, "sd_pipeline_golden.npz")))
CASES = sorted({tuple(k.split("/")[:2]) for k in GOLDEN if k.count("/") == 2})
# Latents: relative to their scale (the tiny eps UNet drives sd1's latents to ~50).
LATENT_RTOL = 1e-4
IMAGE_ATOL = 1e-4


def golden(pipe_name: str, case: str) -> dict:
    prefix = f"{pipe_name}/{case}/"
    return {k[len(prefix):]: v for k, v in GOLDEN.items() if k.startswith(prefix)}


@functools.cache
def pipeline(name: str) -> P.StableDiffusionPipeline:
    return P.load_pipeline(os.path.join(DATA, f"tiny_{name}"))


@functools.cache
def guided_unet(name: str):
    spec = pipeline(name).spec
    return jax.jit(lambda p, x, t, ctx, unc, w, phi: P.guided_model_fn(spec, True, p, w, phi)(
        x, t, (ctx, unc)))


def _text(g: dict) -> tuple[list[str], list[str] | None]:
    return json.loads(str(g["prompts"])), json.loads(str(g["negative_prompts"]))


def _config(g: dict) -> dict:
    config = json.loads(str(g["config"]))
    assert config["_class_name"] in S.SUPPORTED_SCHEDULERS, config["_class_name"]
    return config


def _check(name: str, case: str, latents, images, g: dict) -> tuple[float, float]:
    scale = max(1.0, float(np.abs(g["latents"]).max()))
    err_l = float(np.abs(np.asarray(latents) - g["latents"]).max())
    err_i = float(np.abs(np.asarray(images) - g["images"]).max())
    assert err_l <= LATENT_RTOL * scale, f"{name}/{case}: latents off by {err_l:.3g}"
    assert err_i <= IMAGE_ATOL, f"{name}/{case}: images off by {err_i:.3g}"
    want = np.round(g["images"] * 255).astype(np.uint8)
    got = np.round(np.asarray(images) * 255).astype(np.uint8)
    assert np.abs(got.astype(int) - want).max() <= 1
    return err_l, err_i


def _denoiser(name: str, g: dict, config: dict):
    pipe = pipeline(name)
    prompts, negatives = _text(g)
    ctx = P._embeddings(pipe, prompts, None)
    unc = P._embeddings(pipe, negatives or [""] * len(prompts), None)
    unet = guided_unet(name)
    w = jnp.float32(g["guidance"])
    phi = jnp.float32(g.get("guidance_rescale", 0.0))
    return make_denoiser(lambda x, t, c: unet(pipe.unet_params, x, t, ctx, unc, w, phi),
                         S.schedule_from_scheduler_config(config),
                         S.prediction_type_from_scheduler_config(config))


def _eager_sample(name: str, g: dict, loop, x, start: int = 0) -> jax.Array:
    """``sample``'s loop (calls ``start ..`` of a DiffusersLoop), stepped eagerly."""
    denoise = _denoiser(name, g, json.loads(str(g["config"])))
    state, key = loop.init(jnp.asarray(x)), jax.random.key(0)
    for i in range(start, loop.num_steps):
        new = loop.step(denoise, state, jnp.int32(i), jnp.int32(i - start),
                        jax.random.fold_in(key, i), None)
        state = jax.tree.map(lambda a, b: jnp.asarray(a, jnp.result_type(b)), new, state)
    return loop.finalize(state)


def _noise_fn(g: dict):
    return replay_noise(g["step_noise"]) if "step_noise" in g else None


@pytest.mark.parametrize(("name", "case"), CASES, ids=["/".join(c) for c in CASES])
def test_matches_diffusers(name: str, case: str) -> None:
    g = golden(name, case)
    config = _config(g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keys a swapped-in class does not read
        loop = S.loop_from_scheduler_config(config, int(g["steps"]), eta=float(g["eta"]),
                                            noise_fn=_noise_fn(g))
    start = 0
    if "image" in g:  # img2img: the loop from diffusers' t_start (the jitted test: lax.cond)
        strength = float(g["strength"])
        _, add_noise = S.img2img_sampler_from_scheduler_config(config, int(g["steps"]), strength)
        start = P._native_start(strength, int(g["steps"]))
        z0 = P.encode_image(pipeline(name), g["image"], posterior_noise=g["posterior_noise"])
        x = add_noise(z0, jnp.asarray(g["start_noise"]))
    else:
        x = jnp.asarray(g["noise"]) * loop.init_noise_sigma
    latents = _eager_sample(name, g, loop, x, start)
    images = P.decode_latents(pipeline(name), latents, output="float")
    err_l, err_i = _check(name, case, latents, images, g)
    print(f"{name}/{case}: max abs error latents {err_l:.2e}, images {err_i:.2e}")


def _txt2img_case(name: str, case: str, **kwargs):
    g = golden(name, case)
    prompts, negatives = _text(g)
    pipe = pipeline(name).with_scheduler(_config(g))
    return g, P.txt2img(
        pipe, prompts, negative_prompt=negatives, steps=int(g["steps"]),
        guidance_scale=float(g["guidance"]), latents=g["noise"], height=8, width=8,
        output="float", return_latents=True, **kwargs)


def test_jitted_txt2img_matches_diffusers_and_shards(monkeypatch) -> None:
    """DDIM with guidance_rescale through the jitted pipeline (sharded); new prompt, scale,
    rescale and seed: no retrace. (PNDM, the folder's default, runs jitted in img2img.)"""
    monkeypatch.setattr(P, "_run", chex.assert_max_traces(P._run, n=1))
    P._compiled.cache_clear()
    case = "DDIMScheduler_rescale"
    g = golden("sd1", case)
    assert float(g["guidance_rescale"]) == np.float32(0.7)
    g, (images, latents) = _txt2img_case("sd1", case, guidance_rescale=0.7)
    _check("sd1", case, latents, images, g)
    assert len(latents.sharding.device_set) == jax.device_count() == 2
    pipe = pipeline("sd1").with_scheduler(_config(g))
    other = P.txt2img(pipe, ["a dog", "a cat"], negative_prompt="blurry", steps=6,
                      guidance_scale=3.0, seed=5, height=8, width=8, output="float")
    again = P.txt2img(pipe, ["a dog", "a cat"], negative_prompt="blurry", steps=6,
                      guidance_scale=3.0, seed=jax.random.key(5), height=8, width=8,
                      output="float", guidance_rescale=0.0)
    chex.assert_shape(other, (2, 8, 8, 3))
    np.testing.assert_array_equal(np.asarray(other), np.asarray(again))
    assert float(np.abs(np.asarray(other) - np.asarray(images)).max()) > 1e-3
    P._compiled.cache_clear()


def test_jitted_img2img_matches_diffusers() -> None:
    """The folder's PNDM img2img, jitted (strength traced: skipped calls under lax.cond)."""
    g = golden("sd1", "img2img_PNDMScheduler")
    prompts, negatives = _text(g)
    images, latents = P.img2img(
        pipeline("sd1"), g["image"], prompts, strength=float(g["strength"]),
        negative_prompt=negatives, steps=int(g["steps"]), guidance_scale=float(g["guidance"]),
        noise=g["start_noise"], posterior_noise=g["posterior_noise"], output="float",
        return_latents=True)
    _check("sd1", "img2img_PNDMScheduler", latents, images, g)


def test_native_sampler_in_bfloat16_near_float32() -> None:
    """'dpm++2m' (diffjax's own) in bfloat16, jitted, against float32 stepped eagerly."""
    g = golden("sd2", "DDIMScheduler")
    prompts, negatives = _text(g)
    pipe16 = P.load_pipeline(os.path.join(DATA, "tiny_sd2"), dtype=jnp.bfloat16)
    assert jax.tree.leaves(pipe16.unet_params)[0].dtype == jnp.bfloat16
    lat16 = P.txt2img(pipe16, prompts, negative_prompt=negatives,
                      sampler=parse_sampler("dpm++2m"), steps=5, latents=g["noise"], height=8,
                      width=8, output="latents")
    chex.assert_shape(lat16, g["latents"].shape)
    assert lat16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(lat16)))
    config = pipeline("sd2").scheduler_config
    sampler = parse_sampler("dpm++2m").build(S.schedule_from_scheduler_config(config), 5,
                                             clip_x0=None)
    denoise = _denoiser("sd2", g, config)
    state = sampler.init(jnp.asarray(g["noise"]))
    for i in range(sampler.num_steps):
        state = sampler.step(denoise, state, jnp.int32(i), jax.random.key(i), None)
    lat32 = sampler.finalize(state)
    err = float(jnp.abs(lat16 - lat32).max())
    print(f"dpm++2m bfloat16 vs float32: max abs {err:.3g} (latents up to "
          f"{float(jnp.abs(lat32).max()):.3g})")
    assert 0 < err < 0.1 * float(jnp.abs(lat32).max())


def test_sliced_decode_equals_whole() -> None:
    g = golden("sd1", "PNDMScheduler")
    pipe = pipeline("sd1")
    whole = np.asarray(P.decode_latents(pipe, g["latents"], output="float"))
    sliced = P.decode_latents(pipe, g["latents"], decode_batch_size=1)  # lax.map, uint8
    assert sliced.dtype == jnp.uint8
    assert np.abs(np.asarray(sliced, int) - np.round(whole * 255)).max() <= 1


def test_guidance_embedding_formula() -> None:
    guidance_scale = jnp.asarray([1.0, 7.5])  # w = guidance_scale - 1 = 0 and 6.5
    emb = P.guidance_scale_embedding(guidance_scale, 7)
    chex.assert_shape(emb, (2, 7))
    f = np.exp(np.arange(3) * -(np.log(10000.0) / 2))
    np.testing.assert_allclose(emb[1, :3], np.sin(6500.0 * f), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(emb[0], [0, 0, 0, 1, 1, 1, 0])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: P.txt2img(p, "x", height=10, width=8), "height=10 is not a multiple of 4"),
        (lambda p: P.txt2img(p, "x", num_images_per_prompt=0), "num_images_per_prompt"),
        (lambda p: P.txt2img(p, "x", output="png"), "output"),
        (lambda p: P.txt2img(p, "x", guidance_rescale=1.5), r"guidance_rescale must lie in"),
        (lambda p: P.txt2img(p, "x", sampler=parse_sampler("dpm++2m"), eta=0.5),
         "takes no eta"),
        (lambda p: P.txt2img(p, "x", latents=np.zeros((1, 4, 4, 4)), height=16, width=16),
         "latents must have shape"),
        (lambda p: P.txt2img(p, ["a", "b"], negative_prompt=["c", "d", "e"]),
         "negative_prompt has 3"),
        (lambda p: P.img2img(p, np.zeros((8, 8, 3), np.uint8), "x", strength=1.5), "strength"),
        (lambda p: P.img2img(p, np.zeros((8, 8, 3), np.uint8), "x", strength=0.1, steps=5),
         "leaves no step"),
        (lambda p: P.img2img(p, np.zeros((8, 8, 4), np.uint8), "x"), "image must be"),
        (lambda p: P.img2img(p, np.zeros((6, 8, 3), np.uint8), "x"), "not a multiple of 4"),
        (lambda p: P.img2img(p, np.zeros((8, 8, 3)) + 2.0, "x"), r"\[-1, 1\]"),
        (lambda p: P.img2img(p, np.zeros((8, 8, 3), np.uint8), "x", steps=2,
                             sampler=parse_sampler("edm-heun")), "no time grid"),
    ],
)
def test_bad_inputs(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(pipeline("sd1"))


def test_sampler_names_need_a_spec() -> None:
    with pytest.raises(TypeError, match=r"SamplerSpec\('dpm\+\+2m'\)"):
        P.txt2img(pipeline("sd1"), "x", sampler="dpm++2m")


def test_missing_component_and_long_prompt(tmp_path) -> None:
    import shutil

    folder = tmp_path / "sd"
    shutil.copytree(os.path.join(DATA, "tiny_sd1"), folder)
    shutil.rmtree(folder / "vae")
    with pytest.raises(FileNotFoundError, match="'vae'"):
        P.load_pipeline(folder)
    with pytest.warns(UserWarning, match="tokens were dropped"):
        P._embeddings(pipeline("sd1"), ["cat " * 100], None)
