"""Samplers: pure ``init/step/finalize`` bundles run by one ``lax.scan`` driver."""

from diffjax.samplers.ancestral import DDPM_VARIANCES, DDPMState, ddpm
from diffjax.samplers.ddim import DDIMState, ddim
from diffjax.samplers.driver import Sampler, check_timesteps, sample, transition_beta

__all__ = [
    "DDPM_VARIANCES",
    "DDIMState",
    "DDPMState",
    "Sampler",
    "check_timesteps",
    "ddim",
    "ddpm",
    "sample",
    "transition_beta",
]
