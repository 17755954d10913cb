"""``diffjax txt2img`` / ``diffjax img2img``: a Stable Diffusion folder to a PNG grid.

Examples::

  diffjax txt2img --model /models/stable-diffusion-v1-5 --prompt "an astronaut riding a horse"
      --negative-prompt blurry --sampler dpm++2m --steps 25 --guidance 7.5 --seed 0
      --height 512 --width 512 --num-images 4 --out astronaut.png
  diffjax img2img --model DIR --image in.png --strength 0.6 --prompt "..." --out out.png

The sampling loop is one ``lax.scan``, so there is no per-step progress; the command
prints its phases instead: loading, compiling (seconds), sampling + decoding (seconds),
the file written.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["add_arguments", "read_image", "run_img2img", "run_txt2img"]

DTYPES = ("float32", "bfloat16")


def add_arguments(parser: argparse.ArgumentParser, img2img: bool) -> None:
    """The flags of ``txt2img`` (and, with ``img2img``, ``--image`` / ``--strength``)."""
    parser.add_argument("--model", required=True,
                        help="a diffusers Stable Diffusion folder (model_index.json, unet/, ...), "
                        "a CompVis single-file checkpoint (.safetensors, .ckpt), or a Hugging "
                        "Face Hub repo id owner/name (the hub extra)")
    parser.add_argument("--revision", default=None,
                        help="Hub repo ids: a branch, tag or commit")
    parser.add_argument("--config", default=None,
                        help="single files: a diffusers folder with the architecture, scheduler "
                        "and tokenizer (default: infer SD 1.x / 2.x; then --tokenizer)")
    parser.add_argument("--tokenizer", default=None,
                        help="single files: a folder holding tokenizer/ when --config has none")
    parser.add_argument("--prediction-type", default=None,
                        choices=("epsilon", "v_prediction"),
                        help="single files: SD 2.x 768-v checkpoints are v_prediction")
    if img2img:
        parser.add_argument("--image", required=True, help="the input image (PNG/JPEG)")
        parser.add_argument("--strength", type=float, default=0.8,
                            help="in [0, 1]: how much of the schedule is run from the image")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default=None, help="default: '' (diffusers')")
    parser.add_argument("--sampler", default=None,
                        help="a diffjax sampler (ddim, dpm++2m, unipc, ...); default: the "
                        "folder's scheduler, exact to diffusers")
    parser.add_argument("--steps", type=int, default=50, help="inference steps")
    parser.add_argument("--guidance", type=float, default=7.5,
                        help="classifier-free guidance scale (<= 1: none)")
    parser.add_argument("--seed", type=int, default=0)
    if not img2img:
        parser.add_argument("--guidance-rescale", type=float, default=0.0,
                            help="diffusers' guidance_rescale in [0, 1] (0.7 for zero-SNR v "
                            "models; Lin et al. 2024)")
        parser.add_argument("--height", type=int, default=None,
                            help="default: the UNet's sample_size x the VAE factor")
        parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--num-images", type=int, default=1, help="images for the prompt")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="weights and compute (the sampler state stays float32)")
    parser.add_argument("--variant", default=None, help="weight files variant, e.g. fp16")
    parser.add_argument("--attention-chunk", type=int, default=None,
                        help="UNet attention in query chunks of this many tokens (same images, "
                        "less memory; e.g. 1024 at 512x512)")
    parser.add_argument("--out", required=True, help="the PNG grid to write")


def read_image(path: str) -> np.ndarray:
    """An image file as uint8 ``(H, W, 3)`` (alpha dropped, gray repeated).

    Raises:
      FileNotFoundError: No such file.
      ValueError: Not a readable image.
    """
    import os

    import matplotlib.image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--image {path!r} does not exist")
    try:
        img = np.asarray(matplotlib.image.imread(path))
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"--image {path!r} is not a readable image ({e})") from None
    if img.dtype != np.uint8:
        img = np.clip(np.round(img.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
        raise ValueError(f"--image {path!r} has shape {img.shape}; expected an RGB image")
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return img[..., :3]


def _check(args: argparse.Namespace) -> None:
    if args.steps < 1:
        raise ValueError(f"--steps={args.steps} must be >= 1")
    if args.attention_chunk is not None and args.attention_chunk < 1:
        raise ValueError(f"--attention-chunk={args.attention_chunk} must be >= 1")
    if args.num_images < 1:
        raise ValueError(f"--num-images={args.num_images} must be >= 1")
    if not math.isfinite(args.guidance):
        raise ValueError(f"--guidance={args.guidance} must be a finite number")
    if not args.out.lower().endswith(".png"):
        raise ValueError(f"--out={args.out!r} must be a .png file")
    rescale = getattr(args, "guidance_rescale", 0.0)
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"--guidance-rescale={rescale} must lie in [0, 1]")
    strength = getattr(args, "strength", None)
    if strength is not None and not 0.0 <= strength <= 1.0:
        raise ValueError(f"--strength={args.strength} must lie in [0, 1]")


def _say(line: str) -> None:
    print(f"diffjax: {line}", file=sys.stdout, flush=True)


def _run(args: argparse.Namespace, generate: Callable[..., Any], what: str) -> None:
    import jax.numpy as jnp

    from diffjax.app import images
    from diffjax.app.sampler_specs import parse_sampler
    from diffjax.stable_diffusion.pipeline import load_pipeline

    _check(args)
    sampler = None if args.sampler is None else parse_sampler(args.sampler)
    t0 = time.perf_counter()
    pipe = load_pipeline(args.model, dtype=getattr(jnp, args.dtype), variant=args.variant,
                         config=args.config, tokenizer=args.tokenizer,
                         prediction_type=args.prediction_type, revision=args.revision,
                         attention_chunk=args.attention_chunk)
    _say(f"loaded {args.model} ({pipe.scheduler_config.get('_class_name')}, {args.dtype}) in "
         f"{time.perf_counter() - t0:.1f} s")
    out = generate(
        pipe, args.prompt, negative_prompt=args.negative_prompt, sampler=sampler,
        steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
        num_images_per_prompt=args.num_images, output="float", progress=_say,
    )
    pixels = np.asarray(out, np.float32) * 2.0 - 1.0
    images.save_grid(args.out, pixels, ncols=math.ceil(math.sqrt(len(pixels))))
    _say(f"wrote {len(pixels)} {what} image(s) {pixels.shape[2]}x{pixels.shape[1]} to "
         f"{args.out}")


def run_txt2img(args: argparse.Namespace) -> None:
    """``diffjax txt2img``: prompt -> PNG grid."""
    from diffjax.stable_diffusion.pipeline import txt2img

    def generate(pipe, prompt, **kwargs):
        return txt2img(pipe, prompt, height=args.height, width=args.width,
                       guidance_rescale=args.guidance_rescale, **kwargs)

    _run(args, generate, "txt2img")


def run_img2img(args: argparse.Namespace) -> None:
    """``diffjax img2img``: image + prompt -> PNG grid."""
    from diffjax.stable_diffusion.pipeline import img2img

    _check(args)
    image = read_image(args.image)

    def generate(pipe, prompt, **kwargs):
        return img2img(pipe, image, prompt, strength=args.strength, **kwargs)

    _run(args, generate, "img2img")
