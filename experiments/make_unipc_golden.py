"""Golden values for UniPC from diffusers' ``UniPCMultistepScheduler`` (dev-only script).

Runs diffusers' deterministic scheduler harness (docs/design.md): the sample is
``arange(768) / 768`` reshaped to (C=3, H=8, W=8, B=4) and moved batch-first, the model
is ``eps(x, t) = x * t / (t + 1)`` with the integer timestep, T = 1000 linear betas
1e-4..0.02, ``timestep_spacing='linspace'``, 10 steps. Every case starts from the
scheduler's defaults (``solver_type='bh2'``, ``predict_x0=True``, ``solver_order=2``,
``lower_order_final=True``, ``final_sigmas_type='zero'``, ``disable_corrector=[]``) and
changes only what its name says. ``sigma_min`` is diffusers' own test configuration
(``tests/schedulers/test_scheduler_unipc.py``, which publishes mean |x| = 0.2464 for
eps and 0.1014 for v), printed here as a check that this harness is diffusers'.

Prints the sum and mean of ``|x|`` of the final sample for each case, twice: as diffusers
computes it (float32) and with the scheduler's sigmas and the sample in float64 (the
same algorithm without float32 round-off; ``tests/test_unipc.py`` stores these). The two
agree to about 1e-6 except where diffusers' float32 round-off shows (order 3 without
lower-order final steps: 8.6e-5).

Usage (needs the ``parity`` extra: torch + diffusers):
  python experiments/make_unipc_golden.py
"""

from __future__ import annotations

import diffusers
import numpy as np
import torch
from diffusers import UniPCMultistepScheduler

CASES = {
    # name: (prediction_type, scheduler options)
    "default-eps": ("epsilon", {}),
    "default-v": ("v_prediction", {}),
    "order3-eps": ("epsilon", {"solver_order": 3}),
    "order1-eps": ("epsilon", {"solver_order": 1}),
    "sigma_min-eps": ("epsilon", {"final_sigmas_type": "sigma_min"}),
    "sigma_min-v": ("v_prediction", {"final_sigmas_type": "sigma_min"}),
    "order3-no-lof-sigma_min-eps": (
        "epsilon",
        {"solver_order": 3, "lower_order_final": False, "final_sigmas_type": "sigma_min"},
    ),
    # bh1 with final_sigmas_type='zero' is NaN in diffusers (B(h) = h = -inf times a zero
    # correction on the last step), so the bh1 golden uses sigma_min.
    "bh1-sigma_min-eps": ("epsilon", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    "noise-prediction-sigma_min-eps": (
        "epsilon",
        {"predict_x0": False, "final_sigmas_type": "sigma_min"},
    ),
    "no-corrector-at-3-5-eps": ("epsilon", {"disable_corrector": [3, 5]}),
    "thresholding-eps": (
        "epsilon",
        {"thresholding": True, "dynamic_thresholding_ratio": 0.87, "sample_max_value": 0.5},
    ),
}


def harness_sample() -> torch.Tensor:
    """diffusers' ``dummy_sample_deter``: (B=4, C=3, H=8, W=8)."""
    x = torch.arange(768, dtype=torch.float32) / 768
    return x.reshape(3, 8, 8, 4).permute(3, 0, 1, 2)


def harness_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """diffusers' ``dummy_model``: ``x * t / (t + 1)``."""
    t = t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return x * t / (t + 1)


def float64_sigmas(scheduler: UniPCMultistepScheduler) -> torch.Tensor:
    """The scheduler's ``sigmas`` recomputed in float64 from the same linear betas."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    alphas_cumprod = np.cumprod(1.0 - betas)
    sigmas = np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)
    timesteps = scheduler.timesteps.numpy()
    last = sigmas[0] if scheduler.config.final_sigmas_type == "sigma_min" else 0.0
    return torch.tensor(np.append(sigmas[timesteps], last), dtype=torch.float64)


def run(prediction_type: str, options: dict, dtype: torch.dtype) -> tuple[float, float]:
    """Runs the harness loop; float64 swaps in float64 sigmas and a float64 sample."""
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        timestep_spacing="linspace",
        prediction_type=prediction_type,
        **options,
    )
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
    if dtype == torch.float64:
        scheduler.sigmas = float64_sigmas(scheduler)
    x = harness_sample().to(dtype)
    for t in scheduler.timesteps:
        x = scheduler.step(harness_model(x, t), t, x).prev_sample
    assert x.dtype == dtype
    return float(x.abs().sum()), float(x.abs().mean())


def main() -> None:
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}")
    defaults = UniPCMultistepScheduler().config
    print(
        "UniPCMultistepScheduler defaults: "
        + ", ".join(
            f"{k}={defaults[k]!r}"
            for k in (
                "solver_order",
                "solver_type",
                "predict_x0",
                "lower_order_final",
                "final_sigmas_type",
                "disable_corrector",
                "timestep_spacing",
            )
        )
    )
    print("timesteps [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]")
    header = ("case", "float32 sum|x|", "mean|x|", "float64 sum|x|", "mean|x|")
    print("{:<32} {:>15} {:>11} {:>15} {:>11}".format(*header))
    for name, (prediction_type, options) in CASES.items():
        s32, m32 = run(prediction_type, options, torch.float32)
        s64, m64 = run(prediction_type, options, torch.float64)
        print(f"{name:<32} {s32:>15.6f} {m32:>11.8f} {s64:>15.6f} {m64:>11.8f}")


if __name__ == "__main__":
    main()
