"""Sweeps the re-noising level of 2-step consistency sampling on a consistency workdir.

The CM, iCT and ECT papers sample 2 steps through sigma = 0.821 (found by search on
CIFAR-10); this measures FID@N (classifier features) and class agreement of 2-step
sampling over a grid of levels, at several seeds, for one workdir:

  python experiments/consistency_levels.py --workdir runs/digits_ict \\
      --levels 0.2,0.4,0.821,1.5,3 --seeds 0,1,2 --num-samples 500
"""

import argparse

import jax
import numpy as np

from diffjax.app import builders
from diffjax.app.evaluate import evaluate_samples, load_evaluation_context
from diffjax.consistency import consistency_denoiser
from diffjax.samplers import StaticThresholding, consistency_multistep, sample


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--levels", default="0.2,0.4,0.821,1.5,3")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--num-samples", type=int, default=500)
    args = parser.parse_args()
    ctx = load_evaluation_context(args.workdir)
    param = builders.consistency_parameterization(ctx.config, ctx.schedule, ctx.image_shape)
    denoise = consistency_denoiser(
        builders.build_denoiser(ctx.model, ctx.params, ctx.schedule,
                                ctx.config.diffusion.prediction_type),
        ctx.schedule, param,
    )
    labels = np.arange(args.num_samples) % ctx.model.num_classes
    print("| level | FID (mean +- sd) | class agreement |\n|---|---|---|")
    for level in (float(v) for v in args.levels.split(",")):
        sampler = consistency_multistep(
            ctx.schedule, sigmas=[level], sigma_min=param.sigma_min, sigma_max=param.sigma_max,
            thresholding=StaticThresholding(1.0),
        )
        run = jax.jit(lambda key, s=sampler: sample(
            s, denoise, jax.random.normal(key, (args.num_samples, *ctx.image_shape)),
            jax.random.fold_in(key, 1), cond=labels,
        ))
        fids, agree = [], []
        for seed in (int(s) for s in args.seeds.split(",")):
            x = np.asarray(run(jax.random.key(seed)))
            m = evaluate_samples(x, labels, image_shape=ctx.image_shape,
                                 extractor=ctx.extractor, reference=ctx.reference,
                                 classifier=ctx.classifier, seed=seed)
            fids.append(m["fid"])
            agree.append(m["class_agreement"])
        print(f"| {level:g} | {np.mean(fids):.2f} +- {np.std(fids, ddof=1):.2f} | "
              f"{np.mean(agree):.1%} |", flush=True)


if __name__ == "__main__":
    main()
