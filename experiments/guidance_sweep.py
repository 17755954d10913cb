"""Classifier-free guidance sweep of a trained class-conditional workdir.

For each guidance scale, N samples with balanced labels from the same noise are
evaluated (class agreement of the workdir's evaluation classifier, FID@N / KID /
precision / recall on its features against the training set), for three variants:
plain guidance, guidance rescale (Lin et al. 2024) and guidance limited to an interval
of noise levels (Kynkaanniemi et al. 2024, given as EDM sigmas and mapped to model
timesteps). Writes ``guidance.csv``, ``guidance.json``, ``guidance.md``,
``guidance_sweep.png`` (metrics against w), ``samples_by_scale.png`` (two samples per class
at every scale, plain guidance) and ``grids/`` (8 samples per class for every point).

The README's guidance picture and ``experiments/results/guidance_digits`` come from::

  cp -r /tmp/diffjax_demo_workdir/model /tmp/guidance_model   # `diffjax demo` output
  python experiments/guidance_sweep.py --workdir /tmp/guidance_model \\
      --out experiments/results/guidance_digits

(the workdir is written to only when its evaluation classifier or reference statistics
are not cached yet in ``WORKDIR/eval/``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from diffjax.app import images
from diffjax.app.evaluate import load_evaluation_context, machine_description
from diffjax.app.guidance_sweep import (
    format_guidance_table,
    guidance_interval_for_sigmas,
    guidance_sweep,
    plot_guidance_grids,
    plot_guidance_sweep,
    write_guidance_sweep,
)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> None:
    """Runs the sweep and writes the result files."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/diffjax_demo_workdir/model")
    parser.add_argument("--out", default="experiments/results/guidance_digits")
    parser.add_argument("--scales", default="0,0.5,1,2,3,5,8")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--sampler", default="dpm++2m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rescale", type=float, default=0.7)
    parser.add_argument("--interval-sigmas", default="0.28,5.42",
                        help="EDM noise levels LO,HI where guidance applies")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    ctx = load_evaluation_context(args.workdir, seed=args.seed)
    interval = guidance_interval_for_sigmas(ctx.schedule, *_floats(args.interval_sigmas))
    variants = [
        {},
        {"guidance_rescale": args.rescale},
        {"guidance_interval": interval},
    ]
    rows, sweeps = [], []
    for options in variants:
        sweep = guidance_sweep(
            ctx, _floats(args.scales), sampler=args.sampler, num_steps=args.steps,
            num_samples=args.num_samples, seed=args.seed, **options,
        )
        sweeps.append(sweep)
        rows += sweep.rows
        for row, grid in zip(sweep.rows, sweep.grids, strict=True):
            name = row["variant"].split(",")[0].split(" ")[0]
            images.save_grid(
                os.path.join(args.out, "grids", f"{name}_w{row['guidance_scale']:g}.png"),
                grid, ncols=sweep.grid_per_class, upscale=4,
            )
        print(f"{rows[-1]['variant']}: done after {time.perf_counter() - start:.0f} s",
              flush=True)
    meta = {
        "command": "python " + shlex.join(sys.argv),
        "workdir": os.path.abspath(args.workdir),
        "reference": ctx.reference_description,
        "guidance_interval_sigmas": _floats(args.interval_sigmas),
        "guidance_interval_timesteps": list(interval),
        "machine": machine_description(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_guidance_sweep(args.out, rows, meta=meta)
    title = (f"{args.sampler}, {args.steps} steps, N={args.num_samples} per point; "
             f"reference: {ctx.reference_description}")
    plot_guidance_sweep(rows, os.path.join(args.out, "guidance_sweep.png"), title=title)
    plot_guidance_grids(sweeps[0], os.path.join(args.out, "samples_by_scale.png"), per_class=2)
    print(format_guidance_table(rows))
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
