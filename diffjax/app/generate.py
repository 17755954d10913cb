"""Sampling from a trained UNet: pick a sampler by name, add guidance, run the scan.

``generate`` is jitted once per (model, sampler, step count, batch shape, guided or
not); the guidance scale, guidance rescale, guidance interval, eta, labels and key are
traced arguments, so sweeping them never recompiles.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.app import builders
from diffjax.guidance import classifier_free_guidance
from diffjax.nn import UNet
from diffjax.samplers import (
    DynamicThresholding,
    ddim,
    ddpm,
    dpm_solver_fast,
    dpm_solver_fast_timesteps,
    dpm_solver_multistep,
    dpm_solver_singlestep,
    edm_heun,
    edm_sigma_range,
    karras_sigmas,
    sample,
    unipc,
)
from diffjax.samplers.driver import check_nonnegative_scalar, concrete_value
from diffjax.schedules import DiscreteSchedule, linspace_timesteps, trailing_timesteps

# Sampler names of the command line and configs: (family, options).
_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("ddim", {}),
    "ddpm": ("ddpm", {"variance": "beta_tilde"}),
    "ddpm_beta": ("ddpm", {"variance": "beta"}),
    "dpm++2m": ("multistep", {"order": 2, "algorithm": "dpmsolver++"}),
    "dpm++3m": ("multistep", {"order": 3, "algorithm": "dpmsolver++"}),
    "sde-dpm++2m": ("multistep", {"order": 2, "algorithm": "sde-dpmsolver++"}),
    "dpm++2s": ("singlestep", {"order": 2, "algorithm": "dpmsolver++"}),
    "dpm2": ("singlestep", {"order": 2, "algorithm": "dpmsolver"}),
    "dpm3": ("singlestep", {"order": 3, "algorithm": "dpmsolver"}),
    "dpm-fast": ("fast", {"order": 3, "algorithm": "dpmsolver"}),
    "unipc": ("unipc", {"order": 2}),
    "edm-heun": ("edm", {}),
}
SAMPLER_NAMES = tuple(_SAMPLERS)
# Sampler families whose stochasticity ``eta`` sets (DDIM's); others take no eta.
_ETA_FAMILIES = ("ddim",)
ETA_SAMPLER_NAMES = tuple(n for n, (family, _) in _SAMPLERS.items() if family in _ETA_FAMILIES)
# Time grids a sampler name may choose with a suffix, ``'dpm++2m@logsnr'``: 'linspace' is
# the default below; 'logsnr' is DPM-Solver's logSNR-uniform grid from t = T-1 to t = 0
# (sigma_min, no final step onto sigma = 0).
GRID_NAMES = ("linspace", "logsnr")
_GRID_FAMILIES = ("multistep", "singlestep", "unipc")


def parse_sampler_name(name: str) -> tuple[str, str]:
    """Splits ``'dpm++2m@logsnr'`` into ``('dpm++2m', 'logsnr')``; no suffix is 'linspace'.

    Raises:
      ValueError: naming the sampler for an unknown sampler or grid, or a grid suffix on
        a sampler with its own grid (DDIM/DDPM: trailing; 'dpm-fast': its logSNR
        allocation; 'edm-heun': Karras sigmas).
    """
    base, sep, grid = str(name).partition("@")
    if base not in _SAMPLERS:
        raise ValueError(
            f"unknown sampler={name!r}; expected one of {SAMPLER_NAMES}, optionally with a "
            f"grid suffix @{'|@'.join(GRID_NAMES)} for the DPM-Solver family and UniPC"
        )
    if not sep:
        return base, "linspace"
    if grid not in GRID_NAMES:
        raise ValueError(f"unknown grid {grid!r} in sampler={name!r}; expected one of {GRID_NAMES}")
    if _SAMPLERS[base][0] not in _GRID_FAMILIES:
        raise ValueError(
            f"sampler={name!r}: a grid suffix applies to the DPM-Solver family and UniPC; "
            f"{base!r} uses its own grid"
        )
    return base, grid


def check_num_steps(num_steps: Any) -> int:
    """Returns ``num_steps`` as an int, or raises a ValueError naming it.

    Raises:
      ValueError: unless ``num_steps`` is an int (not a bool) ``>= 1``.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
        raise ValueError(
            f"num_steps must be an int >= 1 (the number of sampler steps), got "
            f"num_steps={num_steps!r} of type {type(num_steps).__name__}"
        )
    if num_steps < 1:
        raise ValueError(
            f"num_steps must be an int >= 1 (the number of sampler steps), got {num_steps=}"
        )
    return int(num_steps)


def check_sampler_eta(name: str, eta: Any) -> None:
    """Checks ``eta`` against sampler ``name`` when it is concrete (a traced eta passes).

    Only DDIM (``ETA_SAMPLER_NAMES``) has an ``eta``; any other sampler would silently
    ignore one, so a nonzero eta for it is refused.

    Raises:
      ValueError: naming ``eta`` for a non-scalar, non-finite or negative value, and
        naming the sampler for a nonzero eta it does not take.
    """
    base, _ = parse_sampler_name(name)
    value = concrete_value(eta)
    if value is None:
        return
    deterministic = check_nonnegative_scalar("eta", eta)
    if not deterministic and _SAMPLERS[base][0] not in _ETA_FAMILIES:
        takers = " or ".join(repr(n) for n in ETA_SAMPLER_NAMES)
        raise ValueError(
            f"eta={float(value)!r} was given, but sampler={name!r} takes no eta (it would be "
            f"ignored); only {takers} takes eta: use sampler={takers} or leave eta=0"
        )


def network_evaluations(name: str, num_steps: int) -> int:
    """Network evaluations of ``make_sampler(name, schedule, num_steps)`` (static).

    One per step for DDIM, DDPM and the multistep solvers (UniPC's corrector reuses the
    next step's evaluation); ``k`` per order-``k`` singlestep step, except that a
    data-prediction solver's last step onto ``t = -1`` is first order; ``num_steps``
    itself for 'dpm-fast' (a budget); ``2 num_steps - 1`` for 'edm-heun' (Heun steps and
    a final Euler step). On the '@logsnr' grid every singlestep step is full order (its
    target is sigma_min, not the clean point).
    """
    base, grid = parse_sampler_name(name)
    family, options = _SAMPLERS[base]
    if family == "edm":
        return 2 * num_steps - 1
    if family == "singlestep":
        clean_last = options["algorithm"] != "dpmsolver" and grid == "linspace"
        return options["order"] * num_steps - (options["order"] - 1) * clean_last
    return num_steps


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
    if isinstance(num_steps, int | np.integer) and num_steps > limit:
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


def make_sampler(
    name: str,
    schedule: DiscreteSchedule,
    num_steps: int,
    *,
    eta: float | jax.Array = 0.0,
    clip_x0: float | None = 1.0,
) -> Any:
    """Builds a sampler by name (see ``SAMPLER_NAMES``; a ``'@logsnr'`` suffix picks the grid).

    Grids: DDIM and DDPM use the trailing grid down to the clean point (t = -1); the
    DPM-Solver family and UniPC use the linspace grid (DPM-Solver++ and UniPC down to
    t = -1 with a first-order last step, as diffusers' ``final_sigmas_type='zero'``;
    noise-prediction DPM-Solver down to t = 0); with the suffix ``'@logsnr'``
    (``'dpm++2m@logsnr'``) they use DPM-Solver's logSNR-uniform grid from t = T-1 to
    t = 0 (sigma_min) instead, which keeps multistep solvers at their order to the end
    (experiments/results/quality_vs_nfe.md). 'unipc' is UniPC with the second-order
    predictor (bh2, data prediction: diffusers' defaults). 'edm-heun'
    takes ``num_steps`` Karras noise levels (rho 7) over the schedule's range and then
    sigma = 0. ``num_steps`` is the number of solver steps
    (:func:`network_evaluations` gives the network calls), except for 'dpm-fast', where
    it is the budget of network calls. ``eta`` is DDIM's. ``clip_x0`` clips x0 for
    DDIM/DDPM and becomes dynamic thresholding with that maximum for DPM-Solver++ and
    UniPC; 'edm-heun' does not clip (as in Karras et al.).

    Raises:
      ValueError: for an unknown sampler or grid, ``num_steps`` that is not an int
        ``>= 1`` (or too many for the grid), or a concrete ``eta`` that is negative,
        non-finite, or nonzero for a sampler other than DDIM.
    """
    base, grid = parse_sampler_name(name)
    family, options = _SAMPLERS[base]
    num_steps = check_num_steps(num_steps)
    check_sampler_eta(name, eta)
    T = schedule.num_timesteps
    if family == "ddim":
        return ddim(schedule, sampling_timesteps(T, num_steps), eta=eta, clip_x0=clip_x0)
    if family == "ddpm":
        return ddpm(schedule, sampling_timesteps(T, num_steps), clip_x0=clip_x0, **options)
    if family == "fast":
        return dpm_solver_fast(schedule, num_steps, **options)
    if family == "edm":
        return edm_heun(schedule, karras_sigmas(num_steps, *edm_sigma_range(schedule)))
    data_prediction = family == "unipc" or options["algorithm"] != "dpmsolver"
    if grid == "logsnr":
        timesteps = dpm_solver_fast_timesteps(schedule, num_steps)
    else:
        timesteps = solver_timesteps(T, num_steps, clean_target=data_prediction)
    thresholding = (
        DynamicThresholding(ratio=0.995, max_value=clip_x0)
        if data_prediction and clip_x0 is not None
        else None
    )
    build = {
        "multistep": dpm_solver_multistep,
        "singlestep": dpm_solver_singlestep,
        "unipc": unipc,
    }[family]
    return build(schedule, timesteps, thresholding=thresholding, **options)


def parse_guidance_interval(text: str | None) -> tuple[float, float] | None:
    """Parses ``'LO,HI'`` (model timesteps) into ``(lo, hi)``; ``None`` stays ``None``.

    Raises:
      ValueError: naming ``--guidance-interval`` unless it is two numbers with
        ``lo <= hi``.
    """
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(
            f"--guidance-interval={text!r} must be two comma-separated numbers LO,HI "
            "(model timesteps)"
        ) from None
    if not lo <= hi:
        raise ValueError(f"--guidance-interval={text!r} needs LO <= HI")
    return lo, hi


def check_guidance_supported(model: UNet, p_uncond: float) -> None:
    """Raises ValueError when a model cannot do classifier-free guidance."""
    if model.num_classes is None:
        raise ValueError(
            "classifier-free guidance needs a class-conditional model with a null class; "
            "this model is unconditional"
        )
    if p_uncond <= 0:
        raise ValueError(
            "classifier-free guidance needs a model trained with conditioning dropout "
            f"(diffusion.p_uncond > 0); this model was trained with p_uncond={p_uncond}, "
            "so its null class was never learned"
        )


def check_guidance_scale(guidance_scale: Any) -> None:
    """Checks a concrete guidance scale (a traced one passes).

    Raises:
      ValueError: naming ``guidance_scale`` unless it is a finite scalar.
    """
    scale = concrete_value(guidance_scale)
    if scale is None:
        return
    try:
        finite = scale.ndim == 0 and math.isfinite(float(scale))
    except (TypeError, ValueError):
        finite = False
    if not finite:
        raise ValueError(
            f"guidance_scale must be a finite number, got {guidance_scale=!r} (None runs "
            "the conditional model without guidance)"
        )


def check_labels(labels: Any, num_classes: int | None) -> np.ndarray | None:
    """Validates requested class labels (concrete values) against the model.

    Returns:
      The labels as int32, or ``None`` for an unconditional model.

    Raises:
      ValueError: for labels given to an unconditional model, none given to a
        conditional one, an empty array (no samples requested), or labels that are not
        a 1-D integer array in ``[0, num_classes)``.
    """
    if num_classes is None:
        if labels is not None:
            raise ValueError("labels given to an unconditional model")
        return None
    if labels is None:
        raise ValueError(f"a class-conditional model needs labels in [0, {num_classes})")
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError(
            f"labels is empty (shape {labels.shape}): no samples requested; give at least one "
            f"class label in [0, {num_classes})"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype}{labels.shape}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(f"labels {sorted(set(bad.tolist()))} out of range [0, {num_classes})")
    return labels.astype(np.int32)


class _StaticSchedule:
    """A schedule as a static jit argument, hashed and compared by its values.

    Samplers build their time grids from concrete schedule values (DPM-Solver-fast's
    log-SNR grid needs them on the host), so the schedule enters ``_generate`` as a
    compile-time constant; equal schedules share one compiled function.
    """

    def __init__(self, schedule: DiscreteSchedule):
        self.schedule = schedule
        self._key = np.asarray(schedule.alphas_cumprod).tobytes()

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _StaticSchedule) and other._key == self._key


@functools.partial(
    jax.jit,
    static_argnames=(
        "static_schedule", "model", "prediction_type", "sampler_name", "num_steps", "guided",
        "clip_x0", "image_shape", "batch_size",
    ),
)
def _generate(
    params: Any,
    labels: jax.Array | None,
    key: jax.Array,
    guidance_scale: jax.Array,
    guidance_rescale: jax.Array,
    guidance_interval: jax.Array,
    eta: jax.Array,
    *,
    static_schedule: _StaticSchedule,
    model: UNet,
    prediction_type: str,
    sampler_name: str,
    num_steps: int,
    guided: bool,
    clip_x0: float | None,
    image_shape: tuple[int, ...],
    batch_size: int,
) -> jax.Array:
    schedule = static_schedule.schedule
    denoise = builders.build_denoiser(model, params, schedule, prediction_type)
    if guided:
        denoise = classifier_free_guidance(
            denoise,
            guidance_scale,
            jnp.full_like(labels, model.num_classes),
            rescale=guidance_rescale,
            interval=(guidance_interval[0], guidance_interval[1]),
            schedule=schedule,
        )
    sampler = make_sampler(sampler_name, schedule, num_steps, eta=eta, clip_x0=clip_x0)
    noise_key, sample_key = jax.random.split(key)
    x_T = jax.random.normal(noise_key, (batch_size, *image_shape), jnp.float32)
    return sample(sampler, denoise, x_T, sample_key, cond=labels)


def generate(
    model: UNet,
    params: Any,
    schedule: DiscreteSchedule,
    *,
    prediction_type: str,
    image_shape: tuple[int, ...],
    key: jax.Array,
    labels: Any = None,
    num_samples: int | None = None,
    sampler: str = "ddim",
    num_steps: int = 50,
    guidance_scale: float | None = None,
    guidance_rescale: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    eta: float = 0.0,
    clip_x0: float | None = 1.0,
    p_uncond: float = 0.1,
) -> jax.Array:
    """Samples images from a trained UNet.

    Args:
      model: the UNet.
      params: its (EMA) parameters.
      schedule: the discrete schedule it was trained with.
      prediction_type: 'eps', 'x0' or 'v', as trained.
      image_shape: (H, W, C).
      key: PRNG key for x_T and any sampler noise.
      labels: class labels (B,) for a conditional model.
      num_samples: batch size of an unconditional model (ignored when labels given).
      sampler: one of ``SAMPLER_NAMES`` (see :func:`make_sampler`).
      num_steps: number of denoising steps (static; sets the compiled loop length).
      guidance_scale: classifier-free guidance weight w; guided eps =
        (1 + w) eps_cond - w eps_uncond. None runs the conditional model alone (one
        network call per step); any number, 0 included, runs the batched guided path,
        and changing it does not recompile.
      guidance_rescale: guidance rescale factor in [0, 1] (Lin et al. 2024; 0 is plain
        guidance); needs ``guidance_scale``. Traced: changing it does not recompile.
      guidance_interval: ``(t_lo, t_hi)`` in model timesteps: guidance applies only
        where ``t_lo <= t <= t_hi`` (Kynkaanniemi et al. 2024), the conditional model
        elsewhere; needs ``guidance_scale``. Traced (None is the whole range).
      eta: DDIM stochasticity (0 = deterministic).
      clip_x0: clip the predicted x0 to [-c, c]; None to disable.
      p_uncond: the conditioning dropout the model was trained with (for the check).

    Returns:
      float32 images (B, H, W, C).

    Raises:
      ValueError: before anything is compiled, for an unknown sampler, ``num_steps``
        that is not an int ``>= 1``, an ``eta`` that is negative, non-finite or nonzero
        for a sampler other than DDIM, a non-finite ``guidance_scale``, a
        ``guidance_rescale`` outside ``[0, 1]`` (NaN included), a malformed
        ``guidance_interval``, guidance refinements without a ``guidance_scale``, bad
        or empty labels, a bad ``num_samples``, or a model that cannot be guided.
    """
    parse_sampler_name(sampler)
    num_steps = check_num_steps(num_steps)
    check_sampler_eta(sampler, eta)
    labels = check_labels(labels, model.num_classes)
    guided = guidance_scale is not None
    if guided:
        check_guidance_scale(guidance_scale)
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale must lie in [0, 1], got {guidance_rescale=}")
    if guided:
        check_guidance_supported(model, p_uncond)
    elif guidance_rescale != 0.0 or guidance_interval is not None:
        raise ValueError(
            "guidance_rescale and guidance_interval refine classifier-free guidance; "
            "give a guidance_scale too"
        )
    lo, hi = (-np.inf, np.inf) if guidance_interval is None else guidance_interval
    if not lo <= hi:
        raise ValueError(f"guidance_interval must have t_lo <= t_hi, got {guidance_interval=}")
    if labels is not None:
        batch_size = len(labels)
    elif (
        isinstance(num_samples, bool)
        or not isinstance(num_samples, int | np.integer)
        or num_samples < 1
    ):
        raise ValueError(
            f"num_samples={num_samples!r} must be an int >= 1 for an unconditional model"
        )
    else:
        batch_size = int(num_samples)
    return _generate(
        params,
        None if labels is None else jnp.asarray(labels),
        key,
        jnp.float32(0.0 if guidance_scale is None else guidance_scale),
        jnp.float32(guidance_rescale),
        jnp.asarray([lo, hi], jnp.float32),
        jnp.float32(eta),
        static_schedule=_StaticSchedule(schedule),
        model=model,
        prediction_type=prediction_type,
        sampler_name=sampler,
        num_steps=num_steps,
        guided=guided,
        clip_x0=clip_x0,
        image_shape=tuple(image_shape),
        batch_size=batch_size,
    )
