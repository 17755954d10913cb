"""Max abs error per diffusers scheduler class against tests/data/scheduler_golden.npz.

Runs every txt2img case and every img2img strength of tests/test_diffusers_schedulers.py
(the same analytic model, the same diffjax samplers; no torch) and prints, per class, the
number of runs and the largest ``max |diffjax - diffusers|`` of the final latents (with
its size relative to the latents' scale). Run from the repository root::

    python experiments/scheduler_parity_report.py
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path[:0] = [os.path.join(os.path.dirname(__file__), "..", "tests")]
import test_diffusers_schedulers as T  # noqa: E402

from diffjax.parameterization import make_denoiser  # noqa: E402
from diffjax.samplers.driver import sample  # noqa: E402
from diffjax.stable_diffusion.schedulers import (  # noqa: E402
    prediction_type_from_scheduler_config,
    schedule_from_scheduler_config,
)


def img2img_errors(group: str) -> tuple[str, list[float], list[float]]:
    runs = T.img2img_runs(group)
    config = json.loads(str(runs[0]["config"]))
    n, eta = int(runs[0]["num_steps"]), float(runs[0]["eta"])
    denoise = make_denoiser(T.analytic_model, schedule_from_scheduler_config(config),
                            prediction_type_from_scheduler_config(config))
    full = T.build_img2img(config, n, 1.0, eta, np.zeros((1, *runs[0]["image"].shape)))[0]

    @jax.jit
    def run(strength, image, noise, step_noise):
        sampler, add_noise = T.build_img2img(config, n, strength, eta, step_noise)
        return sample(sampler, denoise, add_noise(image, noise), jax.random.key(0))

    errs, rels = [], []
    for g in runs:
        step_noise = np.zeros((full.num_steps, *g["image"].shape), np.float32)
        if "step_noise" in g:
            step_noise[: len(g["step_noise"])] = g["step_noise"]
        final = run(jnp.float32(g["strength"]), g["image"], g["noise"], step_noise)
        want = g.get("final", g["image"])
        errs.append(float(np.abs(np.asarray(final) - want).max()))
        rels.append(errs[-1] / max(1.0, float(np.abs(want).max())))
    return config["_class_name"], errs, rels


def main() -> None:
    table: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for case in T.CASES:
        g, final, _, _ = T.run_case(case)
        err = float(np.abs(final - g["final"]).max())
        errs, rels = table.setdefault((json.loads(str(g["config"]))["_class_name"], "txt2img"),
                                      ([], []))
        errs.append(err)
        rels.append(err / max(1.0, float(np.abs(g["final"]).max())))
    for group in T.IMG2IMG_GROUPS:
        name, errs, rels = img2img_errors(group)
        table.setdefault((name, "img2img"), ([], []))[0].extend(errs)
        table[(name, "img2img")][1].extend(rels)
    for (name, kind), (errs, rels) in sorted(table.items()):
        print(f"{name:34s} {kind}: {len(errs):2d} runs, max abs error {max(errs):.2e} "
              f"(relative {max(rels):.2e})")


if __name__ == "__main__":
    main()
