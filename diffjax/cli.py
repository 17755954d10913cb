"""The ``diffjax`` command: ``train``, ``sample`` and ``demo``.

Examples::

  diffjax demo
  diffjax train --config experiments/configs/digits.py --workdir workdirs/digits
  diffjax train --config experiments/configs/digits.py:tiny --workdir /tmp/t
      --config.training.num_steps=40
  diffjax sample --workdir workdirs/digits --guidance 3 --labels 0,1,2 --out samples.png
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import jax
import numpy as np

from diffjax import builders, images
from diffjax.config import apply_overrides, load_config
from diffjax.generate import SAMPLER_NAMES


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates ``--config.key=value`` overrides from the other arguments."""
    overrides, rest = [], []
    for arg in argv:
        (overrides if arg.startswith("--config.") else rest).append(arg)
    return overrides, rest


def _parse_labels(text: str | None) -> np.ndarray | None:
    if text is None:
        return None
    try:
        return np.asarray([int(v) for v in text.split(",") if v.strip()], np.int32)
    except ValueError:
        raise ValueError(f"--labels={text!r} must be comma-separated integers") from None


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> None:
    """Trains (or resumes) a run from a config file."""
    from diffjax.training import train

    config = load_config(args.config)
    apply_overrides(config, overrides)
    state = train(config, args.workdir)
    step = int(state.step)
    if step == config.training.num_steps:
        print(f"trained to step {step}; checkpoints in {args.workdir}")


def cmd_sample(args: argparse.Namespace) -> None:
    """Samples a trained workdir to a PNG grid and an .npz."""
    from diffjax.generate import generate
    from diffjax.training import load_trained

    config, model, params, info = load_trained(args.workdir, args.step)
    labels = _parse_labels(args.labels)
    if labels is not None and args.num_per_label > 1:
        labels = np.repeat(labels, args.num_per_label)
    if labels is None and model.num_classes is not None:
        labels = np.repeat(np.arange(model.num_classes), args.num_per_label).astype(np.int32)
    samples = generate(
        model,
        params,
        builders.build_schedule(config.diffusion),
        prediction_type=config.diffusion.prediction_type,
        image_shape=tuple(info["image_shape"]),
        key=jax.random.key(args.seed),
        labels=labels,
        num_samples=args.num_per_label,
        sampler=args.sampler,
        num_steps=args.steps,
        guidance_scale=args.guidance,
        eta=args.eta,
        p_uncond=config.diffusion.p_uncond,
    )
    samples = np.asarray(samples)
    out = args.out or os.path.join(args.workdir, "samples.png")
    ncols = args.num_per_label if labels is not None else min(len(samples), 10)
    images.save_grid(out, samples, ncols=ncols, upscale=args.upscale)
    npz = os.path.splitext(out)[0] + ".npz"
    np.savez(npz, images=samples, labels=labels if labels is not None else np.zeros(0))
    print(f"wrote {len(samples)} samples to {out} and {npz}")


def cmd_demo(args: argparse.Namespace, overrides: list[str]) -> None:
    """Trains the digits model, samples a grid and prints the fidelity report."""
    from diffjax.demo import format_report, run_demo

    report = run_demo(
        args.workdir,
        overrides=[o.removeprefix("--config.") for o in overrides],
        variant=args.variant,
        num_per_class=args.num_per_class,
    )
    print(format_report(report))
    print(f"report and samples in {args.workdir}/")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``diffjax`` command."""
    parser = argparse.ArgumentParser(prog="diffjax", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train or resume a run; --config.key=value overrides")
    train.add_argument("--config", required=True, help="config file, optionally file.py:variant")
    train.add_argument("--workdir", required=True)

    sample = sub.add_parser("sample", help="sample a trained workdir to PNG + npz")
    sample.add_argument("--workdir", required=True)
    sample.add_argument("--sampler", default="ddim", choices=SAMPLER_NAMES)
    sample.add_argument("--steps", type=int, default=50)
    sample.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale w (omit for none)")
    sample.add_argument("--eta", type=float, default=0.0)
    sample.add_argument("--labels", default=None, help="comma-separated class labels")
    sample.add_argument("--num-per-label", type=int, default=10)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    sample.add_argument("--out", default=None, help="PNG path (default WORKDIR/samples.png)")
    sample.add_argument("--upscale", type=int, default=4)

    demo = sub.add_parser("demo", help="train + sample + fidelity report on bundled digits")
    demo.add_argument("--workdir", default="demo_out")
    demo.add_argument("--variant", default="", help="digits config variant ('' or 'tiny')")
    demo.add_argument("--num-per-class", type=int, default=50)
    return parser


def enable_compilation_cache() -> None:
    """Turns on JAX's persistent compilation cache for command-line runs.

    XLA:CPU takes tens of seconds to compile a UNet train step; the cache makes a
    second ``diffjax`` run (a resume, a re-sample) skip that. The folder is
    ``$DIFFJAX_COMPILATION_CACHE`` (empty string: off), default ``~/.cache/diffjax/xla``.
    """
    default = os.path.join(os.path.expanduser("~"), ".cache", "diffjax", "xla")
    path = os.environ.get("DIFFJAX_COMPILATION_CACHE", default)
    if path and jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``diffjax`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    enable_compilation_cache()
    overrides, rest = _split_overrides(argv)
    args = build_parser().parse_args(rest)
    try:
        if args.command == "train":
            cmd_train(args, overrides)
        elif args.command == "demo":
            cmd_demo(args, overrides)
        elif overrides:
            raise ValueError(f"--config overrides apply to train and demo only: {overrides}")
        else:
            cmd_sample(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"diffjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
