"""Golden values for the EDM Heun sampler from k-diffusion's ``sample_heun`` (dev-only).

The analytic case: 2-D Gaussian data ``N(mu, S)`` whose exact EDM denoiser is
``D(x; sigma) = mu + S (S + sigma^2 I)^-1 (x - mu)``, on the noise range of diffjax's
default continuous ``LinearVPSchedule`` (beta 0.1..20, t in [1e-3, 1]):
``sigma_edm(t) = sigma_vp(t) / alpha(t)``. k-diffusion's ``get_sigmas_karras`` (rho 7)
and ``sample_heun`` (Algorithm 1: Heun steps, Euler onto sigma = 0; no churn) run in
float64 from ``x = x_T / alpha(1) = x_T sqrt(1 + sigma_max^2)``, the EDM form of the VP
noise ``x_T`` that diffjax's driver starts from. Because the denoiser depends on sigma
alone, this pins down the sampler's semantics (grid, steps, final Euler step, scalings)
independently of how a model's time is derived from sigma.

Prints the sigma grid and the final samples for the fixed ``x_T`` below;
``tests/test_edm.py`` stores them as constants.

Usage (k-diffusion 0.1.1.post1; its package ``__init__`` imports training-time
dependencies the sampler does not need, so only ``k_diffusion.sampling`` is loaded)::

  pip install --no-deps --target /tmp/kdiff k-diffusion==0.1.1.post1 torchdiffeq \\
      torchsde trampoline
  PYTHONPATH=/tmp/kdiff python experiments/make_edm_golden.py
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types

import numpy as np
import torch

MU = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.6], [0.6, 0.5]])
X_T = np.array([[0.3, -1.2], [1.5, 0.7], [-0.4, 0.1]])
NUM_STEPS = (4, 8)


def load_k_diffusion_sampling() -> types.ModuleType:
    """Imports ``k_diffusion.sampling`` without running the package's ``__init__``.

    ``k_diffusion.utils`` imports torchvision for its image helpers; when torchvision is
    absent a stub stands in for it (no sampler calls those helpers).
    """
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        raise SystemExit("k-diffusion is not importable; see the usage in this docstring")
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["k_diffusion"] = package
    if importlib.util.find_spec("torchvision") is None:
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
        sys.modules["torchvision.transforms"].functional = sys.modules[
            "torchvision.transforms.functional"
        ]
    import k_diffusion.sampling as sampling

    return sampling


def linear_vp_sigma_edm(t: float) -> float:
    """``sigma_vp(t) / alpha(t)`` of the default LinearVPSchedule (beta 0.1..20)."""
    log_alpha = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    return math.sqrt(math.expm1(-2.0 * log_alpha))


def main() -> None:
    sampling = load_k_diffusion_sampling()
    torch.set_default_dtype(torch.float64)
    mu, cov = torch.tensor(MU), torch.tensor(COV)

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = float(sigma[0]) ** 2
        gain = cov @ torch.linalg.inv(cov + s2 * torch.eye(2))
        return mu + (x - mu) @ gain.T

    sigma_min, sigma_max = linear_vp_sigma_edm(1e-3), linear_vp_sigma_edm(1.0)
    print(f"sigma_min = {sigma_min!r}, sigma_max = {sigma_max!r}")
    for n in NUM_STEPS:
        sigmas = sampling.get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0)
        x = torch.tensor(X_T) * math.sqrt(1.0 + sigma_max**2)
        out = sampling.sample_heun(denoiser, x, sigmas, disable=True)
        print(f"num_steps {n}: sigmas {sigmas.tolist()}")
        print(f"num_steps {n}: x0 {out.tolist()}")


if __name__ == "__main__":
    main()
