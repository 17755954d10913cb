"""Consistency models on diffjax's VP networks: parameterization, training pairs, losses.

A consistency model (Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models") is a
function ``f(x_sigma, sigma)`` that maps any point of a probability-flow ODE trajectory
to the trajectory's origin, so one network evaluation gives a sample and a few give
better ones (:func:`diffjax.samplers.consistency_multistep`).

**The EDM view of a VP network.** diffjax's networks are VP models: they see
``x_t = alpha_t x_0 + sigma_t eps`` at model time ``t``. The consistency literature
works in the variance-exploding variable of EDM (Karras et al. 2022): the noise level
``sigma = sigma_t / alpha_t`` and the sample ``x = x_t / alpha_t = x_0 + sigma eps``.
The change of variables is exact:

    sigma(t) = exp(-log_snr(t) / 2),   t(sigma) = t_from_log_snr(-2 log sigma),
    network input x_t = c_in(sigma) x  with  c_in(sigma) = 1 / sqrt(sigma^2 + 1),

so a VP network already carries EDM's input scaling ``c_in = 1 / sqrt(sigma^2 +
sigma_data^2)`` with ``sigma_data = 1`` (:func:`c_in`; note the square root), and its
noise-level input is the model time ``t(sigma)`` (EDM's ``c_noise``; fractional times on a
:class:`~diffjax.schedules.DiscreteSchedule`, which its piecewise-linear interpolation
serves exactly). Whatever it predicts (eps, x0 or v), the network gives the denoiser
``D(x, sigma)`` (:func:`diffjax.parameterization.make_denoiser`'s ``x0``).

**The boundary condition.** The consistency function is (Song et al. 2023, Eq. 5 and
App. C)

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(x, sigma),
    c_skip(sigma) = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2),
    c_out(sigma)  = sigma_data (sigma - sigma_min) / sqrt(sigma^2 + sigma_data^2),

with ``F`` EDM's raw network output, the one that gives the denoiser as
``D = c_skip^EDM x + c_out^EDM F`` with ``c_skip^EDM = sigma_data^2 / (sigma^2 +
sigma_data^2)`` and ``c_out^EDM = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)``
(Karras et al. 2022, Table 1). Substituting ``F = (D - c_skip^EDM x) / c_out^EDM`` writes
the same function on the denoiser any diffjax network gives (:func:`boundary_coefficients`):

    f(x, sigma) = a(sigma) x + b(sigma) D(x, sigma),
    b(sigma) = c_out / c_out^EDM = (sigma - sigma_min) / sigma,
    a(sigma) = c_skip - b(sigma) c_skip^EDM.

At ``sigma = sigma_min`` it is ``a = 1``, ``b = 0`` in floating point too, so
``f(x, sigma_min) = x`` holds exactly (the boundary condition), whatever the network
says. ``sigma_min`` is the smallest noise level the VP schedule samples (``t = 0`` of a
discrete schedule: about 0.01 for DDPM's linear betas; the papers' EDM models use
0.002), and ``sigma_max`` the papers' 80 (capped at the schedule's largest, 157 for the
linear betas): :meth:`ConsistencyParameterization.for_schedule`. Because the student's function is
built on its denoiser, a student initialised from the teacher's weights starts as
``f ~ D`` away from the boundary: the initialisation of consistency distillation (Song
et al. 2023, Sec. 5) and of easy consistency tuning (Geng et al. 2024).

**Training pairs.** Every method minimises ``lambda d(f_theta(x_hi, sigma_hi),
stopgrad f_target(x_lo, sigma_lo))`` over pairs of adjacent noise levels (:func:`consistency_loss`):

* CD, consistency distillation (Song et al. 2023, Algorithm 2): ``N`` Karras levels
  (Eq. 5 of Karras et al. with ``rho = 7``; :func:`karras_levels`), ``n`` uniform in
  ``{1..N-1}``, ``x_hi = x_0 + sigma_{n+1} z`` and ``x_lo`` the teacher's one ODE step
  from ``sigma_{n+1}`` to ``sigma_n`` -- one step of a diffjax sampler
  (:func:`diffjax.samplers.ode_step`: DDIM, EDM's Heun, DPM-Solver++(2S)); the target
  network an EMA of the student (rate ``mu``) or the student itself (``mu = 0``).
* iCT, improved consistency training (Song & Dhariwal 2023): no teacher, ``x_lo = x_0 +
  sigma_n z`` with the same ``z``; the level index drawn from the discretised lognormal
  (Sec. 3.5: ``p(sigma_i) ~ erf((log sigma_{i+1} - P_mean) / (sqrt 2 P_std)) -
  erf((log sigma_i - P_mean) / (sqrt 2 P_std))`` with ``P_mean = -1.1``, ``P_std = 2.0``;
  :func:`lognormal_level_logits`), the weighting ``lambda = 1 / (sigma_{n+1} - sigma_n)``
  (Sec. 3.4), the pseudo-Huber distance with ``c = 0.00054 sqrt(d)``, ``d`` the full data
  dimension, channels included (Sec. 3.3; :func:`huber_constant`), no target EMA
  (``mu = 0``, Sec. 3.2), and the exponential step-count curriculum ``N(k) = min(s_0
  2^floor(k / K'), s_1) + 1`` with ``K' = floor(K / (log2 floor(s_1 / s_0) + 1))``,
  ``s_0 = 10``, ``s_1 = 1280`` (Sec. 3.4, Eq. 11; :func:`ict_num_levels`).
* ECT, easy consistency tuning (Geng, Pokle, Luo, Lin & Kolter 2024): from a pretrained
  diffusion model, continuous levels ``sigma_hi = t ~ lognormal(P_mean, P_std)`` and
  ``sigma_lo = r = t (1 - q^-(s+1) n(t))``, ``n(t) = 1 + k sigmoid(-b t)`` (their Eq. 18,
  "sigmoid" mapping; ``q = 2``, ``k = 8``, ``b = 1``), the stage ``s`` rising by one every
  ``d`` iterations, so that ``Delta t = t - r`` shrinks from ``t`` (the denoising loss:
  ``r`` clamps to ``sigma_min``, where ``f`` is the identity) towards 0
  (:func:`ect_lower_level`), shared noise ``z`` as in CT, the weighting ``1 / (t - r)``.

Where the public code differs from the papers (the defaults here follow the papers,
and the options reach the public code's choices):

* CD's target EMA: the paper's CIFAR-10 and ImageNet runs use ``mu = 0.95`` (Table 3),
  as openai/consistency_models' ``target_ema_mode=fixed, start_ema=0.95``; iCT (Sec. 3.2)
  argues ``mu = 0`` is the correct choice, and ECT uses none.
* Learning rates: the CM paper's Table 3 lists 4e-4 (CIFAR-10, CD) and 8e-6 (ImageNet 64,
  CD); the ImageNet launch commands of openai/consistency_models use 8e-6 for CD and
  1e-4 (CT) to 5e-5, and iCT's CIFAR-10 runs 1e-4 (RAdam, no warm-up).
* The CT curriculum: the CM paper's CT grows ``N`` as a square root
  (``N(k) = ceil(sqrt(k / K ((s_1 + 1)^2 - s_0^2) + s_0^2) - 1) + 1``, ``s_0 = 2``,
  ``s_1 = 150``) with an adaptive target EMA; iCT replaces both by the exponential
  curriculum above and ``mu = 0``. Only iCT's form is built here.
* ECT: the paper's Eq. 18 mapping and ``1 / (t - r)`` weighting; the public code's later
  default for ImageNet (EDM2) weights by ``1 / t^2 + 1 / sigma_data^2`` ("snr+k",
  ``weighting='snr_plus_k'``) and uses ``q = 4``; its ``c = 0`` distance is the L2 norm
  (``distance='l2_norm'``).
* LPIPS, the CM paper's best distance for CD, needs pretrained VGG/AlexNet weights that
  cannot ship with diffjax; ``'l2'``, ``'l1'`` and ``'pseudo_huber'`` (iCT's replacement
  for LPIPS, which it matches or beats) are built.
* Dropout: iCT trains with dropout (0.3 on CIFAR-10) and evaluates the online and the
  target network with the same dropout mask (so ``f_theta`` and ``f_target`` differ only by
  their inputs); :func:`consistency_loss` passes one dropout key to both.

Everything here is a pure function of arrays and keys; the training step that uses it
is :func:`diffjax.training.consistency_step.make_consistency_train_step`.

References:
  Song, Dhariwal, Chen & Sutskever, "Consistency Models", ICML 2023.
  Song & Dhariwal, "Improved Techniques for Training Consistency Models", ICLR 2024.
  Geng, Pokle, Luo, Lin & Kolter, "Consistency Models Made Easy", ICLR 2025.
  Karras, Aittala, Aila & Laine, "Elucidating the Design Space of Diffusion-Based
  Generative Models", NeurIPS 2022 (Table 1, Eq. 5).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from diffjax._checks import check_choice, check_int
from diffjax.parameterization import Denoised, DenoiseFn, ScheduledDenoiser, expand_to
from diffjax.samplers.consistency import DEFAULT_SIGMA_MAX, consistency_sigma_range
from diffjax.samplers.edm import karras_interpolate
from diffjax.schedules import VPSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "CONSISTENCY_DISTANCES",
    "CONSISTENCY_WEIGHTINGS",
    "ICT_HUBER_FACTOR",
    "ConsistencyParameterization",
    "LevelPair",
    "boundary_coefficients",
    "c_in",
    "c_out",
    "c_skip",
    "consistency_denoiser",
    "consistency_distance",
    "consistency_function",
    "consistency_loss",
    "dimension_matched_sigma_max",
    "ect_lower_level",
    "huber_constant",
    "ict_num_levels",
    "karras_levels",
    "lognormal_level_logits",
    "pair_weight",
    "sample_level_index",
    "sample_lognormal_level",
]

CONSISTENCY_DISTANCES = ("l2", "l1", "pseudo_huber", "l2_norm")
CONSISTENCY_WEIGHTINGS = ("uniform", "reciprocal_gap", "snr_plus_k")
ICT_HUBER_FACTOR = 0.00054
"""iCT's pseudo-Huber constant per square root of the data dimension (Sec. 3.3)."""


# --------------------------------------------------------------------------------------
# The parameterization.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConsistencyParameterization:
    """The noise-level range and data scale of a consistency model (hashable, static).

    Attributes:
      sigma_min: the boundary ``epsilon``: ``f(x, sigma_min) = x`` exactly.
      sigma_max: the largest noise level (where one-step sampling starts).
      sigma_data: the data's standard deviation in ``c_skip`` and ``c_out`` (0.5 for
        images in [-1, 1], as in the papers).
    """

    sigma_min: float
    sigma_max: float
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        lo, hi, sd = float(self.sigma_min), float(self.sigma_max), float(self.sigma_data)
        if not (0.0 < lo < hi < math.inf):
            raise ValueError(
                f"need 0 < sigma_min < sigma_max < inf, got sigma_min={self.sigma_min!r}, "
                f"sigma_max={self.sigma_max!r}"
            )
        if not (0.0 < sd < math.inf):
            raise ValueError(f"sigma_data must be a finite number > 0, got {self.sigma_data!r}")
        object.__setattr__(self, "sigma_min", lo)
        object.__setattr__(self, "sigma_max", hi)
        object.__setattr__(self, "sigma_data", sd)

    @classmethod
    def for_schedule(
        cls,
        schedule: VPSchedule,
        sigma_data: float = 0.5,
        sigma_min: float | None = None,
        sigma_max: float | None = DEFAULT_SIGMA_MAX,
    ) -> ConsistencyParameterization:
        """The parameterization over a VP schedule's sampling range (EDM units).

        Args:
          schedule: the VP schedule the network was trained on.
          sigma_data: see the class.
          sigma_min: the boundary; by default the schedule's smallest sampled noise
            level (:func:`~diffjax.samplers.edm_sigma_range`). A value below it would
            ask the network about noise levels it never saw, and is refused.
          sigma_max: the largest level: by default the papers' 80 (capped at the
            schedule's largest; :func:`~diffjax.samplers.consistency_sigma_range` says
            why not always the largest); ``None`` for the schedule's largest.

        Raises:
          ValueError: naming the argument for a level outside the schedule's range.
        """
        lo, hi = consistency_sigma_range(schedule, None)
        tol = 1e-6
        if sigma_min is not None and not lo * (1 - tol) <= float(sigma_min) <= hi:
            raise ValueError(
                f"sigma_min={sigma_min!r} lies outside the schedule's noise levels "
                f"[{lo:.6g}, {hi:.6g}] (EDM units, sigma_t / alpha_t)"
            )
        if sigma_max is not None and not lo <= float(sigma_max) <= hi * (1 + tol):
            raise ValueError(
                f"sigma_max={sigma_max!r} lies outside the schedule's noise levels "
                f"[{lo:.6g}, {hi:.6g}] (EDM units, sigma_t / alpha_t)"
            )
        return cls(
            sigma_min=lo if sigma_min is None else max(float(sigma_min), lo),
            sigma_max=consistency_sigma_range(schedule, sigma_max)[1],
            sigma_data=sigma_data,
        )


def dimension_matched_sigma_max(
    data_shape: tuple[int, ...], reference: float = 80.0, reference_dim: int = 3072
) -> float:
    """The ``sigma_max`` at which data of ``data_shape`` is as drowned as CIFAR-10 at 80.

    The KL divergence between the noised data ``p_data * N(0, sigma^2 I)`` and pure noise
    ``N(0, sigma^2 I)`` is about ``d sigma_data^2 / (2 sigma^2)`` for large ``sigma``;
    keeping it at the papers' value (``sigma = 80``, ``d = 3072``) gives ``sigma_max = 80
    sqrt(d / 3072)``: 11.5 for the 8x8 digits, 40 for 28x28 Fashion-MNIST, 80 for
    CIFAR-10. This is diffjax's rule, not the papers' (they use 80 throughout); a smaller
    top level keeps an eps network's ``f ~ x - sigma eps_hat`` from amplifying its error
    by more than the data needs.
    """
    d = math.prod(int(s) for s in data_shape)
    return float(reference) * math.sqrt(d / int(reference_dim))


def c_in(sigma: ArrayLike) -> Array:
    """The VP network's input scale in EDM units, ``1 / sqrt(sigma^2 + 1)`` (= ``alpha``)."""
    sigma = jnp.asarray(sigma, jnp.promote_types(jnp.result_type(sigma), jnp.float32))
    return jax.lax.rsqrt(jnp.square(sigma) + 1.0)


def c_skip(sigma: ArrayLike, sigma_min: float, sigma_data: float) -> Array:
    """``sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)`` (Song et al. 2023, App. C)."""
    sd2 = sigma_data**2
    return sd2 / (jnp.square(sigma - sigma_min) + sd2)


def c_out(sigma: ArrayLike, sigma_min: float, sigma_data: float) -> Array:
    """``sigma_data (sigma - sigma_min) / sqrt(sigma^2 + sigma_data^2)`` (App. C)."""
    return sigma_data * (sigma - sigma_min) * jax.lax.rsqrt(jnp.square(sigma) + sigma_data**2)


def boundary_coefficients(
    sigma: ArrayLike, sigma_min: float, sigma_data: float
) -> tuple[Array, Array]:
    """``(a, b)`` with ``f(x, sigma) = a x + b D(x, sigma)`` (see the module docstring).

    ``b = (sigma - sigma_min) / sigma`` and ``a = c_skip - b sigma_data^2 / (sigma^2 +
    sigma_data^2)``; at ``sigma = sigma_min`` exactly ``(1, 0)``.
    """
    sigma = jnp.asarray(sigma, jnp.promote_types(jnp.result_type(sigma), jnp.float32))
    b = (sigma - sigma_min) / sigma
    a = c_skip(sigma, sigma_min, sigma_data) - b * sigma_data**2 / (
        jnp.square(sigma) + sigma_data**2
    )
    return a, b


def network_time(schedule: VPSchedule, sigma: ArrayLike) -> Array:
    """The model time of noise level ``sigma``: ``t_from_log_snr(-2 log sigma)``."""
    return schedule.t_from_log_snr(-2.0 * jnp.log(sigma))


ConsistencyFn = Callable[[Array, Array, Any], Array]
"""``f(x, sigma, cond) -> x_0 estimate``, in EDM units, with ``sigma`` of shape ``(B,)``."""


def consistency_function(
    denoise_fn: DenoiseFn, schedule: VPSchedule, param: ConsistencyParameterization
) -> ConsistencyFn:
    """The consistency function ``f(x, sigma, cond)`` of a VP denoiser.

    Args:
      denoise_fn: ``denoise_fn(x_t, t, cond) -> Denoised`` of a VP network
        (:func:`~diffjax.parameterization.make_denoiser`).
      schedule: its schedule.
      param: the boundary and data scale.

    Returns:
      ``f(x, sigma, cond)`` for EDM samples ``x = x_0 + sigma z`` (batch-first) and
      per-example levels ``sigma`` of shape ``(B,)`` (or a scalar): the network runs on
      ``alpha(t) x`` at ``t = t(sigma)``, and ``f = a x + b D`` (float32, or float64 for
      float64 input).
    """

    def f(x: Array, sigma: ArrayLike, cond: Any = None) -> Array:
        dtype = jnp.promote_types(jnp.result_type(x), jnp.float32)
        x = jnp.asarray(x, dtype)
        sigma = jnp.broadcast_to(jnp.asarray(sigma, dtype), (x.shape[0],))
        t = jnp.asarray(network_time(schedule, sigma), dtype)
        alpha = expand_to(schedule.alpha(t), x).astype(dtype)
        x0 = jnp.asarray(denoise_fn(alpha * x, t, cond).x0, dtype)
        a, b = boundary_coefficients(sigma, param.sigma_min, param.sigma_data)
        return expand_to(a, x).astype(dtype) * x + expand_to(b, x).astype(dtype) * x0

    return f


def consistency_denoiser(
    denoise_fn: DenoiseFn, schedule: VPSchedule, param: ConsistencyParameterization
) -> ScheduledDenoiser:
    """A sampler-facing denoiser whose ``x0`` is the consistency function's output.

    At model time ``t`` with ``sigma = exp(-log_snr(t) / 2)``, the VP sample ``x_t`` is
    ``alpha_t x``; the returned ``x0`` is ``f(x_t / alpha_t, sigma)`` and ``eps`` the noise
    that makes ``x_t = alpha_t x0 + sigma_t eps``. Any diffjax sampler then runs on the
    consistency model; :func:`~diffjax.samplers.consistency_multistep` is its own
    (Algorithm 1).
    """
    f = consistency_function(denoise_fn, schedule, param)

    def fn(x: Array, t: ArrayLike, cond: Any = None) -> Denoised:
        x = jnp.asarray(x, jnp.float32)
        t_vec = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
        alpha = expand_to(schedule.alpha(t_vec), x)
        sigma_vp = expand_to(schedule.sigma(t_vec), x)
        sigma = jnp.exp(-0.5 * schedule.log_snr(t_vec))
        x0 = f(x / alpha, sigma, cond)
        return Denoised(eps=(x - alpha * x0) / sigma_vp, x0=x0)

    return ScheduledDenoiser(fn, schedule)


# --------------------------------------------------------------------------------------
# Noise levels: the Karras discretisation, iCT's curriculum, ECT's mapping.
# --------------------------------------------------------------------------------------


def karras_levels(
    index: ArrayLike, num_levels: ArrayLike, sigma_min: float, sigma_max: float, rho: float = 7.0
) -> Array:
    """The ``index``-th of ``num_levels`` Karras noise levels, ascending (both may be traced).

    ``sigma_i = (sigma_min^(1/rho) + i / (N - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``
    for ``i = 0..N-1`` (Song et al. 2023, Sec. 4, with 0-based ``i``): the same levels as
    :func:`~diffjax.samplers.karras_sigmas` in the opposite order.
    """
    index = jnp.asarray(index, jnp.float32)
    n = jnp.asarray(num_levels, jnp.float32)
    return karras_interpolate((n - 1.0 - index) / (n - 1.0), sigma_min, sigma_max, rho)


def ict_num_levels(
    step: ArrayLike, total_steps: int, s0: int = 10, s1: int = 1280
) -> Array:
    """The iCT number of levels at training step ``k``: ``min(s0 2^floor(k/K'), s1) + 1``.

    ``K' = floor(K / (log2 floor(s1 / s0) + 1))`` (Song & Dhariwal 2023, Eq. 11): the
    count doubles ``log2(s1 / s0)`` times over the run and stays at ``s1 + 1`` for the
    last ``K'`` steps.

    Args:
      step: the training step ``k`` (may be traced).
      total_steps: ``K``, the run's number of steps.
      s0: the initial count (10 in the paper).
      s1: the final count (1280).

    Returns:
      int32 ``N(k)``.
    """
    total_steps = check_int("total_steps", total_steps, minimum=1)
    s0 = check_int("s0", s0, minimum=1)
    s1 = check_int("s1", s1, minimum=s0)
    k_prime = max(1, math.floor(total_steps / (math.log2(s1 // s0) + 1)))
    doublings = jnp.minimum(jnp.asarray(step, jnp.int32) // k_prime, 30)
    return jnp.minimum(s0 * jnp.left_shift(jnp.int32(1), doublings), s1) + 1


def lognormal_level_logits(
    num_levels: ArrayLike, max_levels: int, sigma_min: float, sigma_max: float,
    p_mean: float = -1.1, p_std: float = 2.0, rho: float = 7.0,
) -> Array:
    """Log-probabilities of the pair index ``i`` (levels ``i``, ``i + 1``) under iCT's lognormal.

    ``p(i) ~ erf((log sigma_{i+1} - P_mean) / (sqrt 2 P_std)) - erf((log sigma_i - P_mean)
    / (sqrt 2 P_std))`` for ``i = 0..N-2`` (Song & Dhariwal 2023, Sec. 3.5); indices from
    ``N - 1`` to ``max_levels - 2`` get ``-inf``, so a traced ``N`` works with a static
    array length.

    Returns:
      float32 ``(max_levels - 1,)``.
    """
    i = jnp.arange(max_levels - 1, dtype=jnp.float32)
    lo = karras_levels(i, num_levels, sigma_min, sigma_max, rho)
    hi = karras_levels(i + 1.0, num_levels, sigma_min, sigma_max, rho)
    scale = math.sqrt(2.0) * p_std
    mass = jax.scipy.special.erf((jnp.log(hi) - p_mean) / scale) - jax.scipy.special.erf(
        (jnp.log(lo) - p_mean) / scale
    )
    valid = i < jnp.asarray(num_levels, jnp.float32) - 1.0
    return jnp.where(valid, jnp.log(jnp.maximum(mass, 1e-30)), -jnp.inf)


def sample_level_index(
    key: Array, num_levels: ArrayLike, max_levels: int, sampling: str, sigma_min: float,
    sigma_max: float, p_mean: float = -1.1, p_std: float = 2.0,
) -> Array:
    """One pair index ``i`` in ``[0, N - 2]``: ``'uniform'`` (CM) or ``'lognormal'`` (iCT)."""
    if sampling == "uniform":
        return jax.random.randint(key, (), 0, jnp.asarray(num_levels, jnp.int32) - 1)
    logits = lognormal_level_logits(num_levels, max_levels, sigma_min, sigma_max, p_mean, p_std)
    return jax.random.categorical(key, logits).astype(jnp.int32)


def sample_lognormal_level(
    key: Array, sigma_min: float, sigma_max: float, p_mean: float = -1.1, p_std: float = 2.0
) -> Array:
    """One level ``sigma = exp(P_mean + P_std xi)``, ``xi ~ N(0, 1)``, clipped to the range.

    ECT's ``t`` (Geng et al. 2024, after EDM's training distribution): the median of
    ``log sigma`` is ``P_mean = -1.1``.
    """
    log_sigma = p_mean + p_std * jax.random.normal(key, (), jnp.float32)
    return jnp.clip(jnp.exp(log_sigma), sigma_min, sigma_max)


def ect_lower_level(
    t: ArrayLike, stage: ArrayLike, q: float = 2.0, k: float = 8.0, b: float = 1.0
) -> Array:
    """ECT's lower level ``r = max(t (1 - q^-(stage+1) (1 + k sigmoid(-b t))), 0)`` (Eq. 18)."""
    t = jnp.asarray(t, jnp.float32)
    decay = jnp.power(jnp.float32(q), -(jnp.asarray(stage, jnp.float32) + 1.0))
    return jnp.maximum(t * (1.0 - decay * (1.0 + k * jax.nn.sigmoid(-b * t))), 0.0)


# --------------------------------------------------------------------------------------
# Distances and weights.
# --------------------------------------------------------------------------------------


def huber_constant(data_shape: tuple[int, ...]) -> float:
    """The iCT pseudo-Huber ``c = 0.00054 sqrt(d)``, ``d`` the full data dimension (H W C)."""
    return ICT_HUBER_FACTOR * math.sqrt(math.prod(int(s) for s in data_shape))


def consistency_distance(a: Array, b: Array, distance: str, huber_c: float = 0.0) -> Array:
    """Per-example distance ``d(a, b)`` over all non-batch axes.

    ``'l2'``: ``||a - b||^2`` (the CM paper's L2); ``'l1'``: ``||a - b||_1``;
    ``'pseudo_huber'``: ``sqrt(||a - b||^2 + c^2) - c`` (iCT; needs ``c > 0``);
    ``'l2_norm'``: ``||a - b||`` (ECT's ``c = 0``).
    """
    check_choice("distance", distance, CONSISTENCY_DISTANCES)
    axes = tuple(range(1, a.ndim))
    diff = (a - b).astype(jnp.float32)
    if distance == "l1":
        return jnp.sum(jnp.abs(diff), axis=axes)
    squared = jnp.sum(jnp.square(diff), axis=axes)
    if distance == "l2":
        return squared
    if distance == "l2_norm":
        return jnp.sqrt(squared + 1e-20)
    if not huber_c > 0:
        raise ValueError(f"the pseudo-Huber distance needs huber_c > 0, got {huber_c!r}")
    return jnp.sqrt(squared + huber_c**2) - huber_c


def pair_weight(
    weighting: str, sigma_hi: Array, sigma_lo: Array, sigma_data: float = 0.5
) -> Array:
    """The per-pair loss weight ``lambda(sigma_hi, sigma_lo)``.

    ``'uniform'`` 1, ``'reciprocal_gap'`` ``1 / (sigma_hi - sigma_lo)`` (iCT, ECT),
    ``'snr_plus_k'`` ``1 / sigma_hi^2 + 1 / sigma_data^2`` (ECT's EDM2 code).
    """
    check_choice("weighting", weighting, CONSISTENCY_WEIGHTINGS)
    if weighting == "uniform":
        return jnp.ones_like(sigma_hi)
    if weighting == "reciprocal_gap":
        return 1.0 / jnp.maximum(sigma_hi - sigma_lo, 1e-12)
    return 1.0 / jnp.square(sigma_hi) + 1.0 / sigma_data**2


# --------------------------------------------------------------------------------------
# The loss of a batch of pairs.
# --------------------------------------------------------------------------------------


class LevelPair(NamedTuple):
    """A training pair per example: the online point and the target point.

    Attributes:
      x_hi: the online network's input, ``x_0 + sigma_hi z`` (EDM units).
      sigma_hi: its level, ``(B,)``.
      x_lo: the target network's input (the teacher's ODE step for CD, ``x_0 + sigma_lo
        z`` for CT).
      sigma_lo: its level, ``(B,)``.
    """

    x_hi: Array
    sigma_hi: Array
    x_lo: Array
    sigma_lo: Array


def consistency_loss(
    online_fn: Callable[[Array, Array, Any, Array], Array],
    target_fn: Callable[[Array, Array, Any, Array], Array],
    pair: LevelPair,
    cond: Any,
    dropout_key: Array,
    *,
    distance: str,
    weighting: str,
    huber_c: float = 0.0,
    sigma_data: float = 0.5,
) -> tuple[Array, Array]:
    """``mean lambda d(f_online(x_hi, sigma_hi), stopgrad f_target(x_lo, sigma_lo))``.

    Args:
      online_fn: ``f(x, sigma, cond, dropout_key)`` with the trained parameters.
      target_fn: the same with the target parameters (EMA, or the trained ones).
      pair: the per-example points (:class:`LevelPair`).
      cond: the conditioning both networks see (labels after dropout).
      dropout_key: one key for both passes: they share the dropout mask.
      distance: one of :data:`CONSISTENCY_DISTANCES`.
      weighting: one of :data:`CONSISTENCY_WEIGHTINGS`.
      huber_c: the pseudo-Huber constant.
      sigma_data: for ``'snr_plus_k'``.

    Returns:
      ``(loss, per-example unweighted distance)``.
    """
    online = online_fn(pair.x_hi, pair.sigma_hi, cond, dropout_key)
    target = jax.lax.stop_gradient(target_fn(pair.x_lo, pair.sigma_lo, cond, dropout_key))
    dist = consistency_distance(online, target, distance, huber_c)
    weight = pair_weight(weighting, pair.sigma_hi, pair.sigma_lo, sigma_data)
    return jnp.mean(weight * dist), dist
