"""CPU: one call of the real SD 1.5 UNet, diffjax (XLA:CPU) against diffusers (torch), fp32.

The architecture is runwayml/stable-diffusion-v1-5's ``unet/config.json`` (``SD15_UNET`` in
experiments/sd15_arch.py:
859.5M parameters, block widths 320/640/1280/1280, 8 heads, cross-attention width 768).
diffusers' ``UNet2DConditionModel`` is built with torch's default random init (seeded);
its state dict goes through :func:`diffjax.stable_diffusion.unet.unet_params_from_state_dict`
(the folder loader's mapping, so this also proves the mapping at full size), which gives
both frameworks the same weights. Inputs: a 64x64x4 latent (a 512x512 image), batch 2
(one classifier-free-guidance pair), timesteps (999, 500), a 77x768 text context.

Measured, in this order:

1. trace + lower and XLA compile of our jitted forward (``jax.jit(...).lower(...)`` then
   ``.compile()``, the persistent compilation cache off, so cold);
2. one warm-up call of each, and the sanity line: our output against diffusers'
   (max abs difference relative to diffusers' max abs output, and the RMS ratio);
3. ``--repeats`` rounds of interleaved calls (ours then theirs, the order flipped every
   round, so that both see the same machine load), median of each and ours / theirs
   (and each round's ratio: a pair that saw the same load).

Threads: torch uses ``torch.get_num_threads()`` intra-op threads (``--threads``; default
every core), XLA:CPU one device with its own Eigen pool over every core. Both models'
fp32 weights (3.4 GB each) are resident at once; peak RSS was 13.3 GiB (the conversion's
copy included).

Needs torch and diffusers (the ``parity`` extra); the library never imports them.

Usage:
  python experiments/bench_sd_unet_vs_torch.py --repeats 3 \
      --json experiments/results/sd_bench/unet_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from diffusers import UNet2DConditionModel as TorchUNet
from sd15_arch import SD15_UNET, run_record, write_record

from diffjax.nn.unet_condition import UNet2DConditionModel, UNetConditionConfig, param_count
from diffjax.stable_diffusion.unet import unet_params_from_state_dict

SEED = 0


def torch_kwargs(config: dict) -> dict:
    """A diffusers config dict as ``UNet2DConditionModel(**kwargs)`` (no ``_`` keys)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def build_torch_unet(config: dict, seed: int) -> TorchUNet:
    """diffusers' UNet with torch's default random init, float32, eval mode."""
    torch.manual_seed(seed)
    return TorchUNet(**torch_kwargs(config)).eval()


def numpy_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """A torch module's state dict as float32 numpy arrays (on the host)."""
    return {k: v.detach().float().cpu().numpy() for k, v in module.state_dict().items()}


def flax_params_from_torch(model: torch.nn.Module, config: UNetConditionConfig,
                           dtype=jnp.float32):
    """The torch model's weights as diffjax UNet params (through the folder loader's mapping)."""
    params = unet_params_from_state_dict(numpy_state(model), config,
                                         what="the torch SD 1.5 UNet")
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), params)


def random_inputs(batch: int, size: int, context: tuple[int, int], seed: int):
    """NHWC latents, timesteps and text context as numpy (the same for both frameworks)."""
    rng = np.random.default_rng(seed)
    sample = rng.standard_normal((batch, size, size, 4), np.float32)
    timesteps = np.linspace(999, 500, batch).round().astype(np.float32)
    ctx = rng.standard_normal((batch, *context), np.float32)
    return sample, timesteps, ctx


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    torch.set_num_threads(args.threads)
    log = run_record("bench_sd_unet_vs_torch.py")
    log.update({
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "batch": args.batch, "latent": [64, 64, 4], "context": [77, 768],
    })

    def say(text: str) -> None:
        print(text, flush=True)

    say(json.dumps(log))
    config = UNetConditionConfig.from_diffusers_dict(SD15_UNET)
    t0 = time.perf_counter()
    theirs_model = build_torch_unet(SD15_UNET, SEED)
    log["torch_init_s"] = round(time.perf_counter() - t0, 1)
    log["torch_attention"] = type(
        theirs_model.down_blocks[0].attentions[0].transformer_blocks[0].attn1.processor
    ).__name__
    t0 = time.perf_counter()
    params = flax_params_from_torch(theirs_model, config)
    log["convert_s"] = round(time.perf_counter() - t0, 1)
    log["params"] = param_count(params)
    log["torch_params"] = sum(p.numel() for p in theirs_model.parameters())
    say(f"params ours {log['params']:,} theirs {log['torch_params']:,}; torch init "
        f"{log['torch_init_s']} s, conversion {log['convert_s']} s; RSS {_rss_gb():.1f} GiB")

    sample, timesteps, ctx = random_inputs(args.batch, 64, (77, 768), SEED + 1)
    ours_model = UNet2DConditionModel(config)
    forward = jax.jit(lambda p, x, t, c: ours_model.apply({"params": p}, x, t, c))
    xs, ts, cs = jnp.asarray(sample), jnp.asarray(timesteps), jnp.asarray(ctx)
    t0 = time.perf_counter()
    lowered = forward.lower(params, xs, ts, cs)
    log["lower_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    compiled = lowered.compile()
    log["compile_s"] = round(time.perf_counter() - t0, 1)
    say(f"ours: trace+lower {log['lower_s']} s, XLA compile {log['compile_s']} s")

    x_t = torch.from_numpy(sample).permute(0, 3, 1, 2).contiguous()
    t_t, c_t = torch.from_numpy(timesteps), torch.from_numpy(ctx)

    def ours() -> np.ndarray:
        return np.asarray(jax.block_until_ready(compiled(params, xs, ts, cs)))

    def theirs() -> np.ndarray:
        with torch.inference_mode():
            out = theirs_model(x_t, t_t, encoder_hidden_states=c_t).sample
        return out.permute(0, 2, 3, 1).numpy()

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out

    first_ours, out_ours = timed(ours)
    first_theirs, out_theirs = timed(theirs)
    err = float(np.max(np.abs(out_ours - out_theirs)))
    scale = float(np.max(np.abs(out_theirs)))
    rms = float(np.sqrt(np.mean((out_ours - out_theirs) ** 2)) / np.sqrt(np.mean(out_theirs**2)))
    log.update(first_call_ours_s=round(first_ours, 2), first_call_theirs_s=round(first_theirs, 2),
               max_abs_diff=err, max_abs_theirs=scale, rel_max_diff=err / scale,
               rel_rms_diff=rms)
    say(f"warm-up: ours {first_ours:.2f} s, theirs {first_theirs:.2f} s; output max |diff| "
        f"{err:.3g} (theirs max |out| {scale:.3g}: relative {err / scale:.2e}, RMS ratio "
        f"{rms:.2e})")

    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for i in range(args.repeats):
        order = (("ours", ours), ("theirs", theirs))
        for name, fn in order if i % 2 == 0 else order[::-1]:
            times[name].append(timed(fn)[0])
        say(f"round {i + 1}: ours {times['ours'][-1]:.2f} s, theirs {times['theirs'][-1]:.2f} s")
    med = {k: statistics.median(v) for k, v in times.items()}
    log.update(
        times_ours_s=[round(v, 3) for v in times["ours"]],
        times_theirs_s=[round(v, 3) for v in times["theirs"]],
        median_ours_s=round(med["ours"], 3), median_theirs_s=round(med["theirs"], 3),
        ratio_ours_over_theirs=round(med["ours"] / med["theirs"], 3),
        round_ratios=[round(a / b, 3) for a, b in zip(times["ours"], times["theirs"],
                                                       strict=True)],
        load_average_end=round(os.getloadavg()[0], 2), peak_rss_gib=round(_rss_gb(), 1),
    )
    say(f"median of {args.repeats}: ours {med['ours']:.2f} s, theirs {med['theirs']:.2f} s, "
        f"ours/theirs {log['ratio_ours_over_theirs']:.2f}; per round {log['round_ratios']} "
        f"(load average "
        f"{log['load_average_start']} -> {log['load_average_end']}, peak RSS "
        f"{log['peak_rss_gib']} GiB)")
    write_record(log, args.json)


if __name__ == "__main__":
    main()
