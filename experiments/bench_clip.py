"""Throughput of the Flax CLIP image tower at ViT-B/32 size (the CLIP score's cost).

Usage:
  python experiments/bench_clip.py --out experiments/results/bench_clip.txt

Measures images/s of ``CLIP.get_image_features`` (vision transformer + projection) with
transformers' default (ViT-B/32) config and random weights (throughput does not depend
on the weight values, so no download): (a) on preprocessed 224x224 inputs, (b) through
:func:`diffjax.networks.clip.clip_image_features` from 256x256 images in [-1, 1] (bicubic
resize to 224 included). Batch 32 by default. The first call (trace + compile + run) is
timed separately, then ``--repeats`` calls; the median is reported. The persistent
compilation cache is off, so compile times are cold. ``--torch`` adds transformers'
``CLIPVisionModelWithProjection`` (float32, eager) on the same CPU for reference.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from random_weights import init_clip_params
from timing import time_calls

from diffjax.networks.clip import CLIP, CLIPConfig, clip_image_features


def _torch_reference(batch, repeats, threads):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.set_num_threads(threads)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig()).eval()
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        model(pixel_values=x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(pixel_values=x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch", action="store_true", help="also time transformers (torch)")
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    say("$ python experiments/bench_clip.py " + " ".join(sys.argv[1:]))
    say(f"# {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    say(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    config = CLIPConfig()  # transformers' defaults: ViT-B/32 (patch 32, width 768, 12 layers)
    start = time.perf_counter()
    params = init_clip_params(config)
    n_vision = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(
        [params["vision_model"], params["visual_projection"]]))
    say(f"ViT-B/32 image tower: {n_vision / 1e6:.2f}M parameters "
        f"(random init {time.perf_counter() - start:.1f} s)")
    b = args.batch
    model = CLIP(config)
    tower = jax.jit(lambda p, x: model.apply({"params": p}, x, method=CLIP.get_image_features))
    pixels = jax.random.normal(jax.random.key(1), (b, 224, 224, 3), jnp.float32)
    first, med, _ = time_calls(lambda: tower(params, pixels), args.repeats)
    say(f"(a) image tower, preprocessed 224x224, batch {b}: first call {first:.1f} s; "
        f"{med:.3f} s/batch = {b / med:.1f} images/s")

    images = np.asarray(jax.random.uniform(jax.random.key(2), (b, 256, 256, 3),
                                           minval=-1.0, maxval=1.0))
    first, med, _ = time_calls(lambda: clip_image_features(params, config, images, batch_size=b),
                       args.repeats)
    say(f"(b) clip_image_features from 256x256 in [-1, 1] (resize + crop + normalize + "
        f"tower), batch {b}: first call {first:.1f} s; {med:.3f} s/batch = "
        f"{b / med:.1f} images/s")
    if args.torch:
        med = _torch_reference(b, args.repeats, os.cpu_count())
        say(f"(ref) transformers CLIPVisionModelWithProjection (torch eager, float32), "
            f"batch {b}: {med:.3f} s/batch = {b / med:.1f} images/s")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
