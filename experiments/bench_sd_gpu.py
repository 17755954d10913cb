"""GPU: SD 1.5 text-to-image throughput, diffjax (bfloat16) against diffusers (torch fp16, SDPA).

One script, one JSON. The SD 1.5 architecture (:mod:`sd15_arch`: UNet 859.5M, VAE 83.7M,
CLIP ViT-L/14 text tower 123.1M parameters) with torch's default random init, seeded; the
torch modules' state dicts go through diffjax's state-dict loaders (the same mapping as
``load_pipeline``), so both pipelines hold the same weights: diffjax's in bfloat16,
diffusers' in float16. 512x512, ``--steps`` DPM-Solver++(2M) steps with classifier-free
guidance 7.5, one prompt times ``--batch`` images, uint8 images back on the host:

- diffjax: :func:`diffjax.stable_diffusion.pipeline.txt2img` with ``sampler='dpm++2m'``
  (diffjax's DPM-Solver++(2M) on the folder's schedule; text encoder, one ``lax.scan``
  of the guided UNet, VAE decode). Compile time separately: the jitted sampling function
  lowered and compiled ahead of time (``.lower(...).compile()``, the persistent cache
  off), with its ``memory_analysis()`` (the GPU's peak-memory figure); then the first
  ``txt2img`` call (which compiles the text encoder and re-traces) and ``--repeats``
  timed calls.
- diffusers: ``StableDiffusionPipeline`` with ``DPMSolverMultistepScheduler.from_config``
  (dpmsolver++, order 2) of SD 1.5's scheduler config, ``torch.float16``, diffusers'
  default attention processor (``AttnProcessor2_0``: ``F.scaled_dot_product_attention``),
  ``output_type='np'``; one warm-up call, then ``--repeats`` timed calls.

Calls alternate between the two (ours, theirs, the order flipped each round).
``--attention xla cudnn`` also times diffjax with ``jax.nn.dot_product_attention``
routed to cuDNN's fused kernel where it applies (head dim a multiple of 8 and <= 128,
half precision; SD 1.5's 1280-wide blocks have 160-channel heads and stay on XLA's
path): the library passes no ``implementation``, which in JAX 0.10 means XLA's
unfused softmax(QK^T)V. Sized to take under 8 minutes on an H100 with the defaults
(not yet run on a GPU).

``--tiny``: the tiny architecture, 2 steps (the fewest DPM-Solver++(2M) takes), batch 1,
one repeat, on whatever device is there (torch float32 on a CPU, which has no fast
float16): a dry run of every code path.

Usage (on a GPU machine with jax[cuda], torch and diffusers; from the repo root):
  python experiments/bench_sd_gpu.py --json sd_gpu.json
  python experiments/bench_sd_gpu.py --tiny        # CPU dry run, under a minute
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from bench_sd_unet_vs_torch import numpy_state, torch_kwargs
from diffusers import AutoencoderKL as TorchVAE
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
from diffusers import UNet2DConditionModel as TorchUNet
from sd15_arch import SD15, TINY, configs, run_record, write_record
from sd_memory import image_side, memory_figures
from transformers import CLIPTextConfig as HFTextConfig
from transformers import CLIPTextModel
from transformers import CLIPTokenizer as HFTokenizer

from diffjax import SamplerSpec
from diffjax.stable_diffusion import pipeline as sd_pipeline
from diffjax.stable_diffusion.text_encoder import load_tokenizer, params_from_hf_text_state_dict
from diffjax.stable_diffusion.unet import unet_params_from_state_dict
from diffjax.stable_diffusion.vae import params_from_diffusers_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "tests", "data", "tiny_sd1")  # any CLIP BPE vocabulary will do
PROMPT = "an astronaut riding a horse on the moon, detailed, photograph"
GUIDANCE = 7.5
SEED = 0
SAMPLER = SamplerSpec("dpm++2m")  # DPM-Solver++(2M), diffusers' DPMSolverMultistep default
_ATTENTION = jax.nn.dot_product_attention


def torch_pipeline(arch: dict[str, dict], device: str) -> StableDiffusionPipeline:
    """diffusers' pipeline of ``arch``, random float32 weights (seeded), on ``device``."""
    torch.manual_seed(SEED)
    text = {k: v for k, v in arch["text_encoder"].items()
            if k not in ("architectures", "model_type")}
    with torch.device(device):
        unet = TorchUNet(**torch_kwargs(arch["unet"]))
        vae = TorchVAE(**torch_kwargs(arch["vae"]))
        text_encoder = CLIPTextModel(HFTextConfig(**text))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder,
        tokenizer=HFTokenizer.from_pretrained(TOKENIZER, subfolder="tokenizer"), unet=unet,
        scheduler=DPMSolverMultistepScheduler.from_config(arch["scheduler"]),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffjax_pipeline(pipe: StableDiffusionPipeline, arch: dict[str, dict],
                     dtype: Any) -> sd_pipeline.StableDiffusionPipeline:
    """diffjax's pipeline with the torch pipeline's weights (diffjax's loaders' mapping)."""
    unet_cfg, vae_cfg, text_cfg = configs(arch)
    to_jax = functools.partial(jax.tree.map, lambda a: jnp.asarray(a, dtype))
    unet = to_jax(unet_params_from_state_dict(numpy_state(pipe.unet), unet_cfg))
    vae = to_jax(params_from_diffusers_state_dict(numpy_state(pipe.vae), vae_cfg))
    text = to_jax(params_from_hf_text_state_dict(numpy_state(pipe.text_encoder), text_cfg))
    return sd_pipeline.StableDiffusionPipeline(
        unet, unet_cfg, vae, vae_cfg, text, text_cfg, dict(arch["scheduler"]),
        load_tokenizer(TOKENIZER), dtype, None,
    )


def use_attention(kind: str) -> None:
    """Routes ``jax.nn.dot_product_attention`` to ``kind`` (``'xla'``: the library's default).

    ``'cudnn'``: cuDNN's fused kernel for half-precision heads of a multiple of 8 channels,
    at most 128; XLA's path for the rest. Clears the pipeline's compiled functions.
    """
    if kind == "xla":
        jax.nn.dot_product_attention = _ATTENTION
    else:
        def attention(q, k, v, *args, **kwargs):
            d = q.shape[-1]
            fused = d % 8 == 0 and d <= 128 and q.dtype in (jnp.bfloat16, jnp.float16)
            return _ATTENTION(q, k, v, *args, implementation="cudnn" if fused else "xla",
                              **kwargs)

        jax.nn.dot_product_attention = attention
    sd_pipeline._compiled.cache_clear()
    jax.clear_caches()


def compile_sampling(pipe: sd_pipeline.StableDiffusionPipeline, batch: int, side: int,
                     steps: int) -> dict[str, Any]:
    """Lowers and compiles the jitted sampling function; seconds and memory figures."""
    fn = sd_pipeline.sampling_function(pipe.spec, batch=batch, height=side, width=side,
                                       sampler=SAMPLER, num_steps=steps, guided=True)
    u, f32 = pipe.unet_config, jnp.float32
    states = jax.ShapeDtypeStruct((batch, 77, pipe.text_config.hidden_size), pipe.dtype)
    latents = jax.ShapeDtypeStruct((batch, side // pipe.spec.vae_factor,
                                    side // pipe.spec.vae_factor, u.in_channels), f32)
    scalar = jax.ShapeDtypeStruct((), f32)
    key = jax.eval_shape(lambda: jax.random.key(0))
    start = time.perf_counter()
    lowered = fn.lower(pipe.params, states, states, scalar, key, scalar, scalar, latents,
                       scalar, scalar, scalar)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    return {"lower_s": round(lower_s, 2), "compile_s": round(time.perf_counter() - start, 2),
            "memory_gb": memory_figures(compiled)}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_batch(ours_pipe, theirs_pipe, batch: int, side: int, steps: int, repeats: int,
                attention: list[str], device: str) -> dict[str, Any]:
    """Compile, warm up and time both pipelines at ``batch`` images per call."""
    seeds = iter(range(10**6))

    def ours() -> np.ndarray:
        return np.asarray(sd_pipeline.txt2img(
            ours_pipe, PROMPT, sampler=SAMPLER, steps=steps, guidance_scale=GUIDANCE,
            seed=next(seeds), height=side, width=side, num_images_per_prompt=batch,
            mesh=None))

    def theirs() -> np.ndarray:
        out = theirs_pipe(PROMPT, height=side, width=side, num_inference_steps=steps,
                          guidance_scale=GUIDANCE, num_images_per_prompt=batch,
                          output_type="np",
                          generator=torch.Generator(device).manual_seed(next(seeds))).images
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    def ours_variant(kind: str) -> dict[str, Any]:
        use_attention(kind)
        entry = compile_sampling(ours_pipe, batch, side, steps)
        entry["first_call_s"] = round(_timed(ours), 3)
        ours_times: list[float] = []
        for i in range(repeats):
            pair = ((ours_times, ours), (theirs_times, theirs))
            for times, fn in pair if i % 2 == 0 else pair[::-1]:
                times.append(_timed(fn))
        med = statistics.median(ours_times)
        entry.update(times_s=[round(t, 4) for t in ours_times], median_s=round(med, 4),
                     images_per_s=round(batch / med, 3))
        print(f"batch {batch} ours ({kind} attention): compile {entry['compile_s']} s, "
              f"peak {entry['memory_gb']['peak']:.2f} GB, {entry['images_per_s']} img/s",
              flush=True)
        return entry

    result: dict[str, Any] = {"batch": batch}
    theirs_times: list[float] = []
    with torch.inference_mode():
        result["theirs_first_call_s"] = round(_timed(theirs), 3)
        for kind in attention:
            try:
                result[f"ours_{kind}"] = ours_variant(kind)
            except Exception as e:  # a variant that fails to compile is a result too
                if kind == "xla":
                    raise
                result[f"ours_{kind}"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
                print(f"batch {batch} ours ({kind} attention) failed: {e}", flush=True)
    use_attention("xla")
    med = statistics.median(theirs_times)
    result.update(theirs_times_s=[round(t, 4) for t in theirs_times],
                  theirs_median_s=round(med, 4), theirs_images_per_s=round(batch / med, 3))
    for kind in attention:
        entry = result[f"ours_{kind}"]
        if "images_per_s" in entry:
            entry["speed_ours_over_theirs"] = round(
                entry["images_per_s"] / result["theirs_images_per_s"], 3)
    print(f"batch {batch} theirs: {result['theirs_images_per_s']} img/s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--attention", nargs="+", default=["xla", "cudnn"],
                        choices=["xla", "cudnn"])
    parser.add_argument("--tiny", action="store_true",
                        help="tiny architecture, 2 steps, batch 1, 1 repeat (a dry run)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.tiny:
        args.batch, args.steps, args.repeats = [1], 2, 1  # 2M needs 2 steps
    jax.config.update("jax_enable_compilation_cache", False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = device == "cuda" and jax.default_backend() == "gpu"
    attention = args.attention if gpu else ["xla"]  # cuDNN's kernel needs a GPU
    arch = TINY if args.tiny else SD15
    torch_dtype = torch.float16 if device == "cuda" else torch.float32
    log = run_record("bench_sd_gpu.py")
    log.update({
        "torch": torch.__version__,
        "torch_device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "arch": "tiny" if args.tiny else "sd15", "steps": args.steps,
        "guidance_scale": GUIDANCE, "ours_dtype": "bfloat16",
        "theirs_dtype": str(torch_dtype).removeprefix("torch."),
        "sampler_ours": "dpm++2m", "scheduler_theirs": "DPMSolverMultistepScheduler",
    })
    print(json.dumps(log), flush=True)
    start = time.perf_counter()
    theirs_pipe = torch_pipeline(arch, device)
    ours_pipe = diffjax_pipeline(theirs_pipe, arch, jnp.bfloat16)
    theirs_pipe.to(device, torch_dtype)
    log["setup_s"] = round(time.perf_counter() - start, 1)
    log["theirs_attention"] = sorted({type(p).__name__
                                      for p in theirs_pipe.unet.attn_processors.values()})
    side = image_side(ours_pipe.spec)
    log["image"] = [side, side]
    log["runs"] = [bench_batch(ours_pipe, theirs_pipe, b, side, args.steps, args.repeats,
                               attention, device) for b in args.batch]
    log["total_s"] = round(time.perf_counter() - start, 1)
    write_record(log, args.json)


if __name__ == "__main__":
    main()
