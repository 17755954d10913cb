"""Golden values for DDIM inversion from diffusers' ``DDIMInverseScheduler`` (dev-only).

diffusers' deterministic scheduler harness (docs/design.md): the sample ``arange(768) / 768``
reshaped ``(C=3, H=8, W=8, B=4)``, the "model" ``eps(x, t) = x * t / (t + 1)``, T = 1000,
linear betas 1e-4..0.02. ``DDIMInverseScheduler`` with leading spacing (offset 0),
``set_alpha_to_one=True`` and no x0 clipping visits t = 0, 100, ..., 900, evaluating the
model at each target time; this is diffjax's ``ddim_inversion`` on the DDIM sampling grid
``[900, ..., 0, -1]``. Prints sum |x| and mean |x| of the inverted latent for 10 and 50
steps; ``tests/test_inversion.py`` stores them as constants.

Usage (the ``parity`` extra)::

  python experiments/make_inversion_golden.py
"""

from __future__ import annotations

import torch
from diffusers import DDIMInverseScheduler


def harness_sample() -> torch.Tensor:
    """The harness sample, batch-first ``(4, 3, 8, 8)``."""
    x = torch.arange(768, dtype=torch.float32) / 768
    return x.reshape(3, 8, 8, 4).permute(3, 0, 1, 2).contiguous()


def invert(num_steps: int) -> torch.Tensor:
    """Runs diffusers' DDIM inversion of the harness sample."""
    scheduler = DDIMInverseScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
    )
    scheduler.set_timesteps(num_steps)
    x = harness_sample()
    for t in scheduler.timesteps:
        eps = x * t / (t + 1)
        x = scheduler.step(eps, t, x).prev_sample
    return x


def main() -> None:
    """Prints the goldens."""
    for n in (10, 50):
        x = invert(n)
        timesteps = DDIMInverseScheduler(timestep_spacing="leading")
        timesteps.set_timesteps(n)
        print(
            f"steps={n} timesteps={timesteps.timesteps[:3].tolist()}...{timesteps.timesteps[-1]} "
            f"sum|x|={x.abs().sum().item():.6f} mean|x|={x.abs().mean().item():.8f}"
        )


if __name__ == "__main__":
    main()
