"""Samplers by name: a frozen spec parsed once from ``'dpm++2m@logsnr'``.

The command line, configs, sweeps and :func:`diffjax.app.generate.generate` name
samplers with short strings. :func:`parse_sampler` turns a name into a
:class:`SamplerSpec` once; the spec is hashable (a static ``jit`` argument), builds the
:class:`~diffjax.samplers.Sampler` on a schedule and step count, and knows in closed form
how many network evaluations (NFE) a step count costs and how many steps a budget buys.
The built sampler carries the same count (``Sampler.nfe``; tests check both agree).

Names (:data:`SAMPLER_NAMES`): 'ddim'; 'ddpm' (posterior variance) and 'ddpm_beta'
(variance beta); DPM-Solver++ 'dpm++2m', 'dpm++3m' (multistep, data prediction; the
third-order update consistent with the Taylor expansion, globally third order),
'dpm++3m-reference' (the third-order update of the official DPM-Solver code, diffusers
and k-diffusion, ``third_order='reference'``: globally second order), 'sde-dpm++2m',
'dpm++2s' (singlestep); DPM-Solver 'dpm2', 'dpm3' (singlestep, noise prediction) and
'dpm-fast'; 'unipc' (bh2, data prediction: diffusers' defaults); 'edm-heun'; 'cm' (multistep
consistency sampling, one evaluation per step, for consistency models; 'cm@1.5' spreads
its re-noising levels around 1.5 instead of the papers' 0.821).

Grids: DDIM and DDPM use the trailing grid down to the clean point (t = -1); the
DPM-Solver family and UniPC the linspace grid (data-prediction solvers down to t = -1
with a first-order last step, as diffusers' ``final_sigmas_type='zero'``;
noise-prediction DPM-Solver down to t = 0), or with the suffix ``'@logsnr'`` DPM-Solver's
logSNR-uniform grid from t = T-1 to t = 0 (sigma_min), which keeps multistep solvers at
their order to the end (experiments/results/quality_vs_nfe.md). 'dpm-fast' allocates its
own logSNR grid for a budget of network calls; 'edm-heun' takes Karras noise levels
(rho 7) over the schedule's range and then sigma = 0.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from diffjax._checks import check_int, is_int
from diffjax.samplers import (
    TWO_STEP_LEVEL,
    Sampler,
    StaticThresholding,
    consistency_multistep,
    ddim,
    ddpm,
    dpm_solver_fast,
    dpm_solver_fast_timesteps,
    dpm_solver_multistep,
    dpm_solver_singlestep,
    edm_heun,
    edm_sigma_range,
    karras_sigmas,
    unipc,
)
from diffjax.samplers.driver import check_nonnegative_scalar, concrete_value
from diffjax.schedules import DiscreteSchedule, linspace_timesteps, trailing_timesteps

__all__ = [
    "ETA_SAMPLER_NAMES",
    "GRID_NAMES",
    "PIXEL_DATA_RANGE",
    "SAMPLER_NAMES",
    "SamplerSpec",
    "check_num_steps",
    "default_clip_x0",
    "parse_sampler",
    "sampling_timesteps",
    "solver_timesteps",
]

# Sampler names of the command line and configs: (family, options).
_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("ddim", {}),
    "ddpm": ("ddpm", {"variance": "beta_tilde"}),
    "ddpm_beta": ("ddpm", {"variance": "beta"}),
    "dpm++2m": ("multistep", {"order": 2, "prediction": "data"}),
    "dpm++3m": ("multistep", {"order": 3, "prediction": "data"}),
    # The third-order update of the official DPM-Solver code, diffusers and k-diffusion
    # (globally second order; see diffjax.samplers.multistep).
    "dpm++3m-reference": (
        "multistep",
        {"order": 3, "prediction": "data", "third_order": "reference"},
    ),
    "sde-dpm++2m": ("multistep", {"order": 2, "prediction": "data", "sde": True}),
    "dpm++2s": ("singlestep", {"order": 2, "prediction": "data"}),
    "dpm2": ("singlestep", {"order": 2, "prediction": "noise"}),
    "dpm3": ("singlestep", {"order": 3, "prediction": "noise"}),
    "dpm-fast": ("fast", {"order": 3, "prediction": "noise"}),
    "unipc": ("unipc", {"order": 2, "prediction": "data"}),
    "edm-heun": ("edm", {}),
    # Multistep consistency sampling (Song et al. 2023, Algorithm 1), for the consistency
    # models of diffjax.consistency; its re-noising levels are
    # diffjax.samplers.default_consistency_levels.
    "cm": ("consistency", {}),
}
SAMPLER_NAMES = tuple(_SAMPLERS)
# Sampler families whose stochasticity ``eta`` sets (DDIM's); others take no eta.
_ETA_FAMILIES = ("ddim",)
ETA_SAMPLER_NAMES = tuple(n for n, (family, _) in _SAMPLERS.items() if family in _ETA_FAMILIES)
GRID_NAMES = ("linspace", "logsnr")
_GRID_FAMILIES = ("multistep", "singlestep", "unipc")


def check_num_steps(num_steps: Any) -> int:
    """Returns ``num_steps`` as an int, or raises a ValueError naming it.

    Raises:
      ValueError: unless ``num_steps`` is an int (not a bool) ``>= 1``.
    """
    return check_int("num_steps", num_steps, minimum=1, what="the number of sampler steps")


def sampling_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """Trailing grid of ``num_steps`` model times ending in the clean point t = -1."""
    return np.append(trailing_timesteps(num_timesteps, num_steps), -1)


def solver_timesteps(num_timesteps: int, num_steps: int, clean_target: bool) -> np.ndarray:
    """The DPM-Solver family's grid: ``num_steps`` linspace evaluation times plus the target.

    The target is the clean point ``t = -1`` (``clean_target``, data-prediction solvers,
    diffusers' ``final_sigmas_type='zero'``) or ``t = 0`` (sigma_min, noise-prediction
    solvers). Linspace spacing fits at most ``T - 1`` distinct evaluation times above 0;
    with a clean target ``num_steps = T`` is also valid and evaluates every training
    timestep ``T-1, ..., 0``.

    Raises:
      ValueError: naming ``num_steps`` when it is too many for the grid.
    """
    T = num_timesteps
    limit = T if clean_target else T - 1
    if is_int(num_steps) and num_steps > limit:
        target = "the clean point t = -1" if clean_target else "t = 0 (sigma_min)"
        raise ValueError(
            f"num_steps={num_steps} is too many for a {T}-step schedule: this sampler's "
            f"grid ends at {target}, so at most {limit} distinct steps fit"
        )
    if clean_target and num_steps == T:
        evaluations = np.arange(T - 1, -1, -1, dtype=np.int64)
    else:
        evaluations = linspace_timesteps(T, num_steps)
    return np.append(evaluations, -1 if clean_target else 0)


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """A sampler by name: hashable, so it is a static ``jit`` argument.

    Attributes:
      name: one of :data:`SAMPLER_NAMES`.
      grid: one of :data:`GRID_NAMES` for the DPM-Solver family and UniPC ('linspace'
        when not given); for 'cm' the 2-step re-noising level as text ('1.5'; None: the
        papers' 0.821); ``None`` for the samplers with a grid of their own (DDIM/DDPM:
        trailing; 'dpm-fast': its logSNR allocation; 'edm-heun': Karras sigmas), which
        take no grid.
    """

    name: str
    grid: str | None = None

    def __post_init__(self) -> None:
        if self.name not in _SAMPLERS:
            raise ValueError(
                f"unknown sampler={self.name!r}; expected one of {SAMPLER_NAMES}, optionally "
                f"with a grid suffix @{'|@'.join(GRID_NAMES)} for the DPM-Solver family and "
                "UniPC"
            )
        if self.grid is None:
            if self.family in _GRID_FAMILIES:
                object.__setattr__(self, "grid", "linspace")
            return
        text = f"{self.name}@{self.grid}"
        if self.family == "consistency":
            try:
                level = float(self.grid)
            except ValueError:
                level = math.nan
            if not (math.isfinite(level) and level > 0):
                raise ValueError(
                    f"sampler={text!r}: after 'cm@' comes the 2-step re-noising level, a "
                    "number > 0 (EDM units), e.g. 'cm@1.5'"
                )
            return
        if self.grid not in GRID_NAMES:
            raise ValueError(
                f"unknown grid {self.grid!r} in sampler={text!r}; expected one of {GRID_NAMES}"
            )
        if self.family not in _GRID_FAMILIES:
            raise ValueError(
                f"sampler={text!r}: a grid suffix applies to the DPM-Solver family and "
                f"UniPC; {self.name!r} uses its own grid"
            )

    def __str__(self) -> str:
        return self.name if self.grid in (None, "linspace") else f"{self.name}@{self.grid}"

    @property
    def family(self) -> str:
        """'ddim', 'ddpm', 'multistep', 'singlestep', 'fast', 'unipc', 'edm' or 'consistency'."""
        return _SAMPLERS[self.name][0]

    @property
    def takes_eta(self) -> bool:
        """Whether ``eta`` (DDIM's stochasticity) means something to this sampler."""
        return self.family in _ETA_FAMILIES

    @property
    def _clean_target(self) -> bool:
        """Whether the grid ends at the clean point (data prediction on linspace)."""
        data = _SAMPLERS[self.name][1].get("prediction") == "data"
        return self.family in _GRID_FAMILIES and data and self.grid == "linspace"

    @property
    def min_steps(self) -> int:
        """The fewest steps the sampler accepts (a multistep order-k start needs k)."""
        if self.family == "fast":
            return 3  # DPM-Solver-fast's order-3 allocation needs three evaluations
        if self.family in ("multistep", "unipc"):
            return _SAMPLERS[self.name][1]["order"]
        return 1

    def max_steps(self, num_timesteps: int) -> int | None:
        """The most steps a ``num_timesteps`` schedule allows (``None``: no limit)."""
        if self.family in ("ddim", "ddpm"):
            return num_timesteps
        if self.family in _GRID_FAMILIES and self.grid == "linspace":
            return num_timesteps if self._clean_target else num_timesteps - 1
        return None

    def nfe(self, num_steps: int) -> int:
        """Network evaluations of ``build(schedule, num_steps)`` (equals ``Sampler.nfe``).

        One per step for DDIM, DDPM and the multistep solvers (UniPC's corrector reuses
        the next step's evaluation); ``k`` per order-``k`` singlestep step, except that
        a data-prediction solver's last step onto ``t = -1`` is first order;
        ``num_steps`` itself for 'dpm-fast' (a budget); ``2 num_steps - 1`` for
        'edm-heun' (Heun steps and a final Euler step).
        """
        num_steps = check_num_steps(num_steps)
        if self.family == "edm":
            return 2 * num_steps - 1
        if self.family == "singlestep":
            k = _SAMPLERS[self.name][1]["order"]
            return k * num_steps - (k - 1) * self._clean_target
        return num_steps

    def steps_for_nfe(self, nfe: int, num_timesteps: int) -> tuple[int, int] | None:
        """The most steps whose network evaluations fit in ``nfe``, in closed form.

        Args:
          nfe: the evaluation budget (``>= 1``).
          num_timesteps: the schedule's length (bounds the linspace grids).

        Returns:
          ``(num_steps, nfe used)``, or ``None`` when no step count the sampler accepts
          fits the budget.
        """
        nfe = check_int("nfe", nfe, minimum=1)
        if self.family == "edm":
            steps = (nfe + 1) // 2
        elif self.family == "singlestep":
            k = _SAMPLERS[self.name][1]["order"]
            steps = (nfe + k - 1) // k if self._clean_target else nfe // k
        else:
            steps = nfe
        limit = self.max_steps(num_timesteps)
        if limit is not None:
            steps = min(steps, limit)
        if steps < self.min_steps:
            return None
        return steps, self.nfe(steps)

    def check_eta(self, eta: Any) -> None:
        """Checks ``eta`` when it is concrete (a traced eta passes).

        Raises:
          ValueError: naming ``eta`` for a non-scalar, non-finite or negative value, and
            naming the sampler for a nonzero eta it does not take.
        """
        value = concrete_value(eta)
        if value is None:
            return
        deterministic = check_nonnegative_scalar("eta", eta)
        if not deterministic and not self.takes_eta:
            takers = " or ".join(repr(n) for n in ETA_SAMPLER_NAMES)
            raise ValueError(
                f"eta={float(value)!r} was given, but sampler={str(self)!r} takes no eta (it "
                f"would be ignored); only {takers} takes eta: use sampler={takers} or leave "
                "eta=0"
            )

    def timesteps(self, schedule: DiscreteSchedule, num_steps: int) -> np.ndarray | None:
        """The static time grid ``build`` uses (``num_steps + 1`` model times), or ``None``.

        ``None`` for 'dpm-fast' (its own allocation), 'edm-heun' (Karras sigmas) and
        'cm' (its re-noising levels).
        """
        family, options = _SAMPLERS[self.name]
        num_steps = check_num_steps(num_steps)
        T = schedule.num_timesteps
        if family in ("ddim", "ddpm"):
            return sampling_timesteps(T, num_steps)
        if family not in _GRID_FAMILIES:
            return None
        if self.grid == "logsnr":
            return np.asarray(dpm_solver_fast_timesteps(schedule, num_steps))
        return solver_timesteps(T, num_steps, clean_target=options["prediction"] == "data")

    def build(
        self,
        schedule: DiscreteSchedule,
        num_steps: int,
        *,
        eta: float | jax.Array = 0.0,
        clip_x0: float | None = 1.0,
        start_step: int = 0,
        sigma_range: tuple[float, float] | None = None,
    ) -> Sampler:
        """Builds the sampler on ``schedule`` with ``num_steps`` steps.

        ``num_steps`` is the number of solver steps (:meth:`nfe` gives the network
        calls), except for 'dpm-fast', where it is the budget of network calls. ``eta``
        is DDIM's. ``clip_x0`` has one meaning for every sampler that forms x0 (DDIM,
        DDPM, DPM-Solver++, UniPC, 'cm'): x0 is clipped to ``[-clip_x0, clip_x0]``
        (:class:`~diffjax.samplers.StaticThresholding`); ``None`` does not clip. The
        default 1.0 is :func:`default_clip_x0` of pixel data in [-1, 1]; a latent
        model's is None. 'edm-heun' and the noise-prediction solvers form no x0 and
        never clip (as in Karras et al. and Lu et al.). ``start_step > 0`` builds the
        sampler on the grid :meth:`timesteps` ``[start_step:]`` (img2img: the last
        ``num_steps - start_step`` steps; ``x_T`` is then the sample at that grid's
        first time); only samplers with a grid take it. ``sigma_range`` is a consistency
        model's ``(sigma_min, sigma_max)`` for 'cm' (default
        :func:`~diffjax.samplers.consistency_sigma_range`).

        Raises:
          ValueError: for ``num_steps`` that is not an int ``>= 1`` (or too many for the
            grid), or a concrete ``eta`` that is negative, non-finite, or nonzero for a
            sampler other than DDIM; a ``start_step`` outside ``[0, num_steps)`` or given
            to a sampler without a grid.
        """
        family, options = _SAMPLERS[self.name]
        num_steps = check_num_steps(num_steps)
        self.check_eta(eta)
        start_step = check_int("start_step", start_step, minimum=0, maximum=num_steps - 1)
        clip = None if clip_x0 is None else StaticThresholding(max_value=clip_x0)
        grid = self.timesteps(schedule, num_steps)
        if grid is None:
            if start_step:
                raise ValueError(
                    f"sampler={str(self)!r} has no time grid to start part-way on "
                    f"(start_step={start_step}); use a grid sampler such as 'ddim' or "
                    "'dpm++2m'"
                )
            if family == "fast":
                return dpm_solver_fast(schedule, num_steps, **options)
            if family == "consistency":
                lo, hi = (None, None) if sigma_range is None else sigma_range
                level = TWO_STEP_LEVEL if self.grid is None else float(self.grid)
                return consistency_multistep(
                    schedule, num_steps, sigma_min=lo, sigma_max=hi, level=level,
                    thresholding=clip,
                )
            return edm_heun(schedule, karras_sigmas(num_steps, *edm_sigma_range(schedule)))
        grid = grid[start_step:]
        if family == "ddim":
            return ddim(schedule, grid, eta=eta, thresholding=clip)
        if family == "ddpm":
            return ddpm(schedule, grid, thresholding=clip, **options)
        thresholding = clip if options["prediction"] == "data" else None
        build = {
            "multistep": dpm_solver_multistep,
            "singlestep": dpm_solver_singlestep,
            "unipc": unipc,
        }[family]
        return build(schedule, grid, thresholding=thresholding, **options)


PIXEL_DATA_RANGE = (-1.0, 1.0)
"""The range every pixel model here trains on: images scaled to [-1, 1]."""


def default_clip_x0(data_range: tuple[float, float] | None = PIXEL_DATA_RANGE) -> float | None:
    """The ``clip_x0`` a model's data range calls for: ``c`` for data in [-c, c], else None.

    Pixel models train on images scaled to [-1, 1] (:data:`PIXEL_DATA_RANGE`), where
    clipping the predicted x0 to that range is safe and helps few-step samplers, so
    they clip at 1.0. A latent model's latents are unbounded (``data_range=None``):
    clipping them would distort every sample, so it never clips; nor does data with an
    asymmetric range, which a clip to [-c, c] would not fit.
    """
    if data_range is None:
        return None
    lo, hi = (float(v) for v in data_range)
    return hi if -lo == hi > 0 else None


def parse_sampler(sampler: str | SamplerSpec) -> SamplerSpec:
    """Parses ``'dpm++2m@logsnr'`` into a :class:`SamplerSpec` (a spec is returned as is).

    No suffix is the sampler's default grid ('linspace' for the DPM-Solver family and
    UniPC).

    Raises:
      ValueError: naming the sampler for an unknown sampler or grid, or a grid suffix on
        a sampler with its own grid (DDIM/DDPM: trailing; 'dpm-fast': its logSNR
        allocation; 'edm-heun': Karras sigmas).
    """
    if isinstance(sampler, SamplerSpec):
        return sampler
    text = str(sampler)
    base, sep, grid = text.partition("@")
    if base not in _SAMPLERS:
        return SamplerSpec(text)  # raises, naming the whole text
    return SamplerSpec(base, grid if sep else None)  # checks the grid
