"""Samplers: pure ``init/step/finalize`` bundles run by one ``lax.scan`` driver."""

from diffjax.samplers.analytic import GaussianMixture
from diffjax.samplers.ancestral import DDPM_VARIANCES, DDPMState, ddpm
from diffjax.samplers.ddim import DDIMState, ddim
from diffjax.samplers.diffusers_compat import (
    DiffusersDDIMState,
    diffusers_ddim,
    diffusers_ddim_timesteps,
    replay_noise,
)
from diffjax.samplers.dpm_solver import (
    SinglestepState,
    dpm_solver_fast,
    dpm_solver_fast_orders,
    dpm_solver_fast_timesteps,
    dpm_solver_singlestep,
)
from diffjax.samplers.driver import (
    Sampler,
    check_denoised,
    check_same_schedule,
    check_timesteps,
    sample,
    schedule_mismatch,
    transition_beta,
)
from diffjax.samplers.edm import EDMState, edm_heun, edm_sigma_range, karras_sigmas
from diffjax.samplers.euler import (
    EulerState,
    LMSState,
    euler_ancestral_discrete,
    euler_discrete,
    lms_discrete,
)
from diffjax.samplers.exponential import (
    DPM_SOLVER_TYPES,
    LOWER_ORDER_FINAL_RULES,
    PREDICTIONS,
    DynamicThresholding,
    StaticThresholding,
    dynamic_threshold,
    multistep_orders,
)
from diffjax.samplers.inversion import DDIMInversionState, ddim_inversion
from diffjax.samplers.multistep import THIRD_ORDER_UPDATES, MultistepState, dpm_solver_multistep
from diffjax.samplers.pndm import PNDMState, pndm, pndm_timesteps
from diffjax.samplers.unipc import UNIPC_VARIANTS, UniPCState, unipc, unipc_corrector_orders

__all__ = [
    "DDPM_VARIANCES",
    "DPM_SOLVER_TYPES",
    "LOWER_ORDER_FINAL_RULES",
    "PREDICTIONS",
    "THIRD_ORDER_UPDATES",
    "UNIPC_VARIANTS",
    "DDIMInversionState",
    "DDIMState",
    "DDPMState",
    "DiffusersDDIMState",
    "DynamicThresholding",
    "EDMState",
    "EulerState",
    "GaussianMixture",
    "LMSState",
    "MultistepState",
    "PNDMState",
    "Sampler",
    "SinglestepState",
    "StaticThresholding",
    "UniPCState",
    "check_denoised",
    "check_same_schedule",
    "check_timesteps",
    "ddim",
    "ddim_inversion",
    "ddpm",
    "diffusers_ddim",
    "diffusers_ddim_timesteps",
    "dpm_solver_fast",
    "dpm_solver_fast_orders",
    "dpm_solver_fast_timesteps",
    "dpm_solver_multistep",
    "dpm_solver_singlestep",
    "dynamic_threshold",
    "edm_heun",
    "edm_sigma_range",
    "euler_ancestral_discrete",
    "euler_discrete",
    "karras_sigmas",
    "lms_discrete",
    "multistep_orders",
    "pndm",
    "pndm_timesteps",
    "replay_noise",
    "sample",
    "schedule_mismatch",
    "transition_beta",
    "unipc",
    "unipc_corrector_orders",
]
