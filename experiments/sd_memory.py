"""Peak memory of 512x512 Stable Diffusion 1.5 text-to-image in bfloat16, from XLA's compiler.

No weights and no run: every parameter is a :class:`jax.ShapeDtypeStruct` (``jax.eval_shape``
of each module's init, :func:`sd15_arch.param_structs`), and ``jax.jit(f).lower(...)
.compile().memory_analysis()`` reports what the compiled program needs: its arguments
(weights, prompt states, noise), its outputs, its temporaries (activations, the sampler's
state and history, the attention matrices, XLA's scratch) and its generated code.

Measured for each ``--batch`` (images; the UNet runs on twice that under classifier-free
guidance):

- ``pipeline``: what users run, diffjax's
  :func:`diffjax.stable_diffusion.pipeline.sampling_function` (the jitted function behind
  ``txt2img``): ``--steps`` DPM-Solver++(2M) steps (diffjax's ``dpm++2m`` on SD 1.5's
  scaled-linear schedule) in one ``lax.scan`` of the guided UNet, then the VAE decode and
  uint8 images. Its arguments are the UNet and VAE weights; the prompt states come from
  the text encoder's own jitted call (``encode_prompt``), before it.
- ``text_encoder``: that call (CLIP ViT-L/14's text tower, 12 layers, width 768) on the
  prompts and negative prompts.
- ``one_function``: both as ONE jitted function (token ids in, images out: text encoder,
  the sampling scan and the decode), all three models' weights as arguments: the peak of
  the whole text-to-image step in one program.

``peak = arguments + outputs + temporaries - aliased`` (what XLA allocates at once; the
generated code is listed apart). On a CPU the figures are the CPU backend's buffer
assignment: XLA:CPU computes bfloat16 convolutions and matmuls in float32 and keeps
float32 copies of the weights (hoisted out of the scan), about 3.5 GB more temporaries
than ``--dtype float32`` has; XLA's attention (``jax.nn.dot_product_attention`` without
an ``implementation``) materializes float32 ``(2B, 8, 4096, 4096)`` scores at the 64x64
level. The GPU's figures come from experiments/bench_sd_gpu.py, which prints the same
analysis there.

``--attention-chunk N`` compiles the UNet's attention over query chunks of ``N`` tokens
(:func:`diffjax.nn.attention.chunked_dot_product_attention`; the same images).

Usage:
  python experiments/sd_memory.py --batch 1 4 --json experiments/results/sd_bench/memory_cpu.json
  python experiments/sd_memory.py --batch 1 4 --attention-chunk 1024 \
      --json experiments/results/sd_bench/memory_cpu_chunk1024.json
  python experiments/sd_memory.py --batch 1 --dtype float32   # the same without casts
  python experiments/sd_memory.py --tiny   # the tiny architecture, a dry run
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import jax
import jax.numpy as jnp
from sd15_arch import SD15, TINY, configs, param_structs, run_record, write_record

from diffjax import SamplerSpec
from diffjax.networks.clip import CLIPTextTransformer
from diffjax.stable_diffusion.pipeline import PipelineSpec, sampling_function

GB = 1e9
T4_BYTES = 16 * GB  # a Colab T4: 16 GB (15.1 GiB usable after the driver's reservation)
FIELDS = ("argument", "output", "alias", "temp", "generated_code")


def pipeline_spec(arch: dict[str, dict], dtype: str = "bfloat16",
                  attention_chunk: int | None = None) -> PipelineSpec:
    """The :class:`PipelineSpec` of ``arch`` (configs, scheduler JSON, compute dtype)."""
    unet, vae, _ = configs(arch)
    return PipelineSpec(unet, vae, json.dumps(arch["scheduler"], sort_keys=True), dtype,
                        attention_chunk)


def image_side(spec: PipelineSpec) -> int:
    """The default image side: the UNet's ``sample_size`` times the VAE's factor (512)."""
    return spec.unet.sample_size * spec.vae_factor


def memory_figures(compiled: Any) -> dict[str, float]:
    """``compiled.memory_analysis()`` in GB (1e9 bytes), plus ``peak``."""
    stats = compiled.memory_analysis()
    out = {f: getattr(stats, f"{f}_size_in_bytes") / GB for f in FIELDS}
    out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return {k: round(v, 4) for k, v in out.items()}


def _compile(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def text_states(text_cfg: Any, text_params: Any, ids: jax.Array) -> jax.Array:
    """``last_hidden_state`` of the CLIP text tower (``encode_prompt`` with ``skip=0``)."""
    return CLIPTextTransformer(text_cfg).apply({"params": text_params}, ids)["last_hidden_state"]


def txt2img_function(spec: PipelineSpec, text_cfg: Any, batch: int, steps: int,
                     sampler: str) -> tuple[Any, Any]:
    """``(sampling_fn, one_fn)``: the pipeline's jitted function, and it after the encoder.

    ``one_fn(text_params, params, ids, negative_ids, guidance_scale, key, latents)``
    returns ``(latents, uint8 images)``.
    """
    side = image_side(spec)
    fn = sampling_function(spec, batch=batch, height=side, width=side,
                           sampler=SamplerSpec(sampler),
                           num_steps=steps, guided=True, output="uint8")

    def one_fn(text_params, params, ids, negative_ids, guidance_scale, key, latents):
        states = text_states(text_cfg, text_params, jnp.concatenate([ids, negative_ids]))
        zero = jnp.zeros((), jnp.float32)
        return fn(params, states[:batch], states[batch:], guidance_scale, key, zero,
                  jnp.ones((), jnp.float32), latents, zero, zero, zero)

    return fn, one_fn


def measure(arch: dict[str, dict], batch: int, steps: int, sampler: str,
            dtype: str = "bfloat16", attention_chunk: int | None = None) -> dict[str, Any]:
    """Compiles the three functions (module doc) for ``batch`` images; their figures."""
    spec = pipeline_spec(arch, dtype, attention_chunk)
    _, _, text_cfg = configs(arch)
    params = param_structs(arch, jnp.dtype(dtype))
    fn, one_fn = txt2img_function(spec, text_cfg, batch, steps, sampler)
    sds = jax.ShapeDtypeStruct
    f32 = jnp.float32
    ids = sds((batch, text_cfg.max_position_embeddings), jnp.int32)
    states = jax.eval_shape(lambda p, i: text_states(text_cfg, p, i), params["text"], ids)
    key = jax.eval_shape(lambda: jax.random.key(0))
    u = spec.unet
    latents = sds((batch, u.sample_size, u.sample_size, u.in_channels), f32)
    scalar = sds((), f32)
    unet_vae = {"unet": params["unet"], "vae": params["vae"]}
    result: dict[str, Any] = {"batch": batch, "unet_batch": 2 * batch,
                              "context_dtype": str(states.dtype)}
    runs = {
        "text_encoder": (lambda p, i: text_states(text_cfg, p, i), params["text"],
                         sds((2 * batch, ids.shape[1]), jnp.int32)),
        "pipeline": (fn, unet_vae, states, states, scalar, key, scalar, scalar, latents,
                     scalar, scalar, scalar),
        "one_function": (one_fn, params["text"], unet_vae, ids, ids, scalar, key, latents),
    }
    for name, (f, *args) in runs.items():
        compiled, seconds = _compile(f, *args)
        result[name] = {**memory_figures(compiled), "compile_s": round(seconds, 1)}
        print(f"  batch {batch} {name:13s} " + " ".join(
            f"{k} {v:.3f}" for k, v in result[name].items() if k != "compile_s")
            + f" GB (compile {seconds:.1f} s)", flush=True)
    return result


def weight_bytes(arch: dict[str, dict], dtype: Any = jnp.bfloat16) -> dict[str, float]:
    """GB of each model's weights in ``dtype``."""
    trees = param_structs(arch, dtype)
    return {k: round(sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(v)) / GB, 4)
            for k, v in trees.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--sampler", default="dpm++2m")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="weights and compute (float32: the comparison without casts)")
    parser.add_argument("--tiny", action="store_true", help="the tiny architecture")
    parser.add_argument("--attention-chunk", type=int, default=None,
                        help="the UNet's attention in query chunks of this many tokens")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    arch = TINY if args.tiny else SD15
    log = run_record("sd_memory.py")
    log.update({
        "arch": "tiny" if args.tiny else "sd15",
        "image": image_side(pipeline_spec(arch)), "steps": args.steps, "sampler": args.sampler,
        "dtype": args.dtype, "attention_chunk": args.attention_chunk,
        "units": "GB (1e9 bytes)",
        "weights_gb": weight_bytes(arch, jnp.dtype(args.dtype)),
    })
    print(json.dumps(log), flush=True)
    log["runs"] = [measure(arch, b, args.steps, args.sampler, args.dtype, args.attention_chunk)
                   for b in args.batch]
    for run in log["runs"]:
        if run["batch"] == 1:
            log["fits_16gb_t4_at_batch_1"] = run["one_function"]["peak"] * GB < T4_BYTES
    write_record(log, args.json)


if __name__ == "__main__":
    main()
