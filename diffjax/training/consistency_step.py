"""One consistency-model training step: CD, iCT or ECT, jittable and data-parallel.

The step is :func:`make_consistency_train_step`'s ``train_step(state, batch, key,
teacher_params)``; the losses and noise levels are :mod:`diffjax.consistency`'s. As in
:mod:`diffjax.training.step`, example ``i`` of the global batch at step ``n`` draws
everything (label dropout, its noise levels, its noise, the network's dropout mask, the
teacher step's noise) from ``fold_in(fold_in(key, n), i)``, so the update does not
depend on how the batch is split over devices or microbatches, and a resumed run
repeats an uninterrupted one.

The networks are diffjax VP UNets; the consistency function of the student is built on
its denoiser (:func:`diffjax.consistency.consistency_function`), so a student initialised
from a diffusion model's weights (CD, ECT) starts as that model's denoiser.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from diffjax._checks import check_choice, check_int
from diffjax.consistency import (
    CONSISTENCY_DISTANCES,
    CONSISTENCY_WEIGHTINGS,
    ConsistencyParameterization,
    LevelPair,
    consistency_function,
    consistency_loss,
    ect_lower_level,
    huber_constant,
    ict_num_levels,
    karras_levels,
    network_time,
    sample_level_index,
    sample_lognormal_level,
)
from diffjax.guidance import classifier_free_guidance
from diffjax.losses import drop_labels
from diffjax.nn import UNet
from diffjax.parameterization import expand_to, make_denoiser
from diffjax.samplers import ddim, dpm_solver_singlestep, edm_heun, ode_step
from diffjax.samplers.driver import Sampler
from diffjax.samplers.edm import karras_interpolate
from diffjax.schedules import VPSchedule
from diffjax.training.state import PyTree, TrainState, update_ema
from diffjax.training.step import (
    Batch,
    Metrics,
    apply_gradients,
    make_grad_fn,
    step_examples,
)

CONSISTENCY_METHODS = ("cd", "ict", "ect")
TEACHER_SAMPLERS = ("heun", "ddim", "dpm++")
"""The teacher's one ODE step in CD: EDM's Heun (the CM paper's), DDIM, DPM-Solver++(2S)."""

__all__ = [
    "CONSISTENCY_METHODS",
    "TEACHER_SAMPLERS",
    "ConsistencyObjective",
    "ConsistencyTrainState",
    "create_consistency_train_state",
    "make_consistency_train_step",
    "student_consistency_fn",
    "teacher_sampler",
]


@flax.struct.dataclass
class ConsistencyTrainState(TrainState):
    """A :class:`TrainState` with the target network of CD's EMA target (``mu > 0``).

    Attributes:
      target_params: ``theta^-``, updated after each step as ``mu theta^- + (1 - mu)
        theta`` (Song et al. 2023, Algorithm 2).
    """

    target_params: PyTree = None


def create_consistency_train_state(
    params: PyTree, optimizer: optax.GradientTransformation, target_ema: float
) -> TrainState:
    """The state at step 0: a :class:`ConsistencyTrainState` when ``target_ema > 0``.

    With ``target_ema = 0`` (iCT, ECT, CD with the online target) the target network is
    the online one and no copy is kept: the state is a plain :class:`TrainState`.
    """
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731
    common = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "ema_params": copy(params),
        "opt_state": optimizer.init(params),
    }
    if target_ema > 0:
        return ConsistencyTrainState(**common, target_params=copy(params))
    return TrainState(**common)


@dataclasses.dataclass(frozen=True)
class ConsistencyObjective:
    """What a consistency run trains: the method and its options (hashable, static).

    Attributes:
      method: ``'cd'`` (distillation from a teacher), ``'ict'`` (training from
        scratch) or ``'ect'`` (tuning a pretrained diffusion model).
      param: the boundary and data scale
        (:class:`~diffjax.consistency.ConsistencyParameterization`).
      distance: one of :data:`~diffjax.consistency.CONSISTENCY_DISTANCES`.
      huber_c: the pseudo-Huber constant; ``0`` for iCT's ``0.00054 sqrt(d)``.
      weighting: one of :data:`~diffjax.consistency.CONSISTENCY_WEIGHTINGS`.
      num_scales: CD's number of Karras levels ``N`` (18 in the CM paper's CIFAR-10 CD).
      rho: the Karras exponent.
      target_ema: the target network's EMA rate ``mu`` (CD only; 0 = the online network).
      p_mean: the lognormal's mean of ``log sigma`` (iCT's level sampling, ECT's ``t``).
      p_std: its standard deviation.
      total_steps: the run's length ``K`` (iCT's curriculum).
      s0: iCT's initial number of levels.
      s1: iCT's final number of levels.
      ect_q: ECT's ``q``.
      ect_k: ECT's ``k``.
      ect_b: ECT's ``b``.
      ect_stage_steps: ECT's ``d``: the iterations per stage of ``Delta t`` shrinking.
      teacher_sampler: CD's teacher step, one of :data:`TEACHER_SAMPLERS`.
      guidance_scale: CD's fixed classifier-free guidance ``w`` of the teacher, distilled
        into the student (0: unguided).
    """

    method: str
    param: ConsistencyParameterization
    distance: str = "pseudo_huber"
    huber_c: float = 0.0
    weighting: str = "reciprocal_gap"
    num_scales: int = 18
    rho: float = 7.0
    target_ema: float = 0.0
    p_mean: float = -1.1
    p_std: float = 2.0
    total_steps: int = 1
    s0: int = 10
    s1: int = 1280
    ect_q: float = 2.0
    ect_k: float = 8.0
    ect_b: float = 1.0
    ect_stage_steps: int = 1000
    teacher_sampler: str = "heun"
    guidance_scale: float = 0.0

    def __post_init__(self) -> None:
        check_choice("method", self.method, CONSISTENCY_METHODS)
        check_choice("distance", self.distance, CONSISTENCY_DISTANCES)
        check_choice("weighting", self.weighting, CONSISTENCY_WEIGHTINGS)
        check_choice("teacher_sampler", self.teacher_sampler, TEACHER_SAMPLERS)
        check_int("num_scales", self.num_scales, minimum=2)
        check_int("total_steps", self.total_steps, minimum=1)
        check_int("s0", self.s0, minimum=1)
        check_int("s1", self.s1, minimum=self.s0)
        check_int("ect_stage_steps", self.ect_stage_steps, minimum=1)
        for name in ("rho", "p_std"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not float(self.ect_q) > 1:
            raise ValueError(f"ect_q must be > 1 (Delta t shrinks by it), got {self.ect_q!r}")
        if not 0.0 <= float(self.target_ema) < 1.0:
            raise ValueError(f"target_ema must lie in [0, 1), got {self.target_ema!r}")
        if self.method != "cd" and self.target_ema > 0:
            raise ValueError(
                f"target_ema={self.target_ema!r} is CD's: {self.method} trains against the "
                "online network (mu = 0)"
            )
        if self.method != "cd" and self.guidance_scale:
            raise ValueError(f"guidance_scale distils a teacher's guidance: CD only, not "
                             f"{self.method}")
        if not float(self.huber_c) >= 0:
            raise ValueError(f"huber_c must be >= 0 (0: iCT's 0.00054 sqrt(d)), got "
                             f"{self.huber_c!r}")

    def huber_c_for(self, image_shape: tuple[int, ...]) -> float:
        """The pseudo-Huber constant for images of ``image_shape`` (H, W, C)."""
        return float(self.huber_c) if self.huber_c > 0 else huber_constant(image_shape)

    def karras_grid(self) -> np.ndarray:
        """CD's ``N`` Karras levels, descending (the teacher's sampler grid)."""
        ramp = np.linspace(0.0, 1.0, self.num_scales)
        return karras_interpolate(ramp, self.param.sigma_min, self.param.sigma_max, self.rho)


def teacher_sampler(objective: ConsistencyObjective, schedule: VPSchedule) -> Sampler:
    """The diffjax sampler whose one step is CD's teacher step, over the Karras levels.

    Grid point ``j`` is level ``sigma_{N-1-j}`` (descending), so a step from grid point
    ``N - 2 - n`` goes from ``sigma_{n+1}`` to ``sigma_n``.
    """
    levels = objective.karras_grid()
    if objective.teacher_sampler == "heun":
        return edm_heun(schedule, levels)
    with jax.ensure_compile_time_eval():
        times = np.asarray(network_time(schedule, jnp.asarray(levels)), np.float64)
    times = np.clip(times, float(schedule.t_min_noise), float(schedule.t_max))
    if objective.teacher_sampler == "ddim":
        return ddim(schedule, times)
    return dpm_solver_singlestep(schedule, times, order=2, prediction="data")


def student_consistency_fn(
    model: UNet,
    params: PyTree,
    schedule: VPSchedule,
    param: ConsistencyParameterization,
    prediction_type: str,
) -> Callable[[jax.Array, jax.Array, Any, jax.Array], jax.Array]:
    """The student's ``f(x, sigma, cond, dropout_keys)`` in training mode.

    Args:
      model: the UNet.
      params: its parameters.
      schedule: the VP schedule.
      param: the boundary and data scale.
      prediction_type: what the network predicts.

    Returns:
      ``f`` over a batch: EDM samples ``x``, levels ``sigma`` ``(B,)``, conditioning, and
      one dropout key per example ``(B,)``: a network with dropout runs per example with
      its own mask (the same keys give the same masks, so the online and the target pass
      of :func:`~diffjax.consistency.consistency_loss` share them); one without runs on
      the whole batch and ignores the keys.
    """

    def model_fn(x: jax.Array, t: jax.Array, cond: Any, keys: jax.Array) -> jax.Array:
        if not model.dropout:
            return model.apply({"params": params}, x, t, cond, train=True)

        def one(xi, ti, ci, ki):
            ci = None if ci is None else ci[None]
            return model.apply(
                {"params": params}, xi[None], ti[None], ci, train=True, rngs={"dropout": ki}
            )[0]

        return jax.vmap(one, in_axes=(0, 0, None if cond is None else 0, 0))(x, t, cond, keys)

    def f(x: jax.Array, sigma: jax.Array, cond: Any, dropout_keys: jax.Array) -> jax.Array:
        denoise = make_denoiser(
            lambda xb, t, cb: model_fn(xb, t, cb, dropout_keys), schedule, prediction_type
        )
        return consistency_function(denoise, schedule, param)(x, sigma, cond)

    return f


def make_consistency_train_step(
    model: UNet,
    schedule: VPSchedule,
    optimizer: optax.GradientTransformation,
    objective: ConsistencyObjective,
    *,
    prediction_type: str,
    image_shape: tuple[int, ...],
    p_uncond: float = 0.0,
    ema_decay: float = 0.9999,
    teacher_model: UNet | None = None,
    teacher_prediction_type: str | None = None,
    grad_accum_steps: int = 1,
    mesh: Mesh | None = None,
) -> Callable[[TrainState, Batch, jax.Array, PyTree], tuple[TrainState, Metrics]]:
    """Builds the step function of a consistency run.

    Args:
      model: the student UNet (class-conditional if ``model.num_classes`` is set).
      schedule: the VP schedule its noise-level input is the model time of.
      optimizer: the optax transformation whose state is in the state.
      objective: the method and its options.
      prediction_type: what the student's network predicts (``'eps'``, ``'x0'``, ``'v'``).
      image_shape: ``(H, W, C)`` (the pseudo-Huber constant's data dimension).
      p_uncond: the conditioning dropout, so the student also learns the null class.
      ema_decay: the maximum decay of the sampling EMA (``state.ema_params``).
      teacher_model: CD's teacher network (evaluated without dropout).
      teacher_prediction_type: what the teacher predicts (default: ``prediction_type``).
      grad_accum_steps: microbatches per step (as :func:`~diffjax.training.step.make_train_step`).
      mesh: the device Mesh the batch is sharded over.

    Returns:
      ``train_step(state, batch, key, teacher_params) -> (state, metrics)``;
      ``teacher_params`` is ``None`` except for CD. The metrics are those of the
      diffusion step plus ``num_levels`` (CD's and iCT's ``N``, ECT's stage).

    Raises:
      ValueError: CD without a teacher model, or a teacher for another method.
    """
    if objective.method == "cd" and teacher_model is None:
        raise ValueError("consistency distillation (method 'cd') needs a teacher_model")
    if objective.method != "cd" and teacher_model is not None:
        raise ValueError(f"method {objective.method!r} trains without a teacher at run time")
    param = objective.param
    conditional = model.num_classes is not None
    p_uncond = float(p_uncond) if conditional else 0.0
    huber_c = objective.huber_c_for(tuple(image_shape))
    sampler = teacher_sampler(objective, schedule) if objective.method == "cd" else None
    teacher_prediction_type = teacher_prediction_type or prediction_type
    max_levels = objective.s1 + 1

    def student(params: PyTree) -> Callable[[jax.Array, jax.Array, Any, jax.Array], jax.Array]:
        return student_consistency_fn(model, params, schedule, param, prediction_type)

    def teacher_step(teacher_params, x_hi, sigma_hi, sigma_lo, n, cond, keys) -> jax.Array:
        """CD's ``x_lo``: the teacher sampler's step from level ``n + 1`` to ``n`` (EDM units)."""

        def teacher_fn(xb: jax.Array, t: jax.Array, cb: Any) -> jax.Array:
            return teacher_model.apply({"params": teacher_params}, xb, t, cb, train=False)

        denoise = make_denoiser(teacher_fn, schedule, teacher_prediction_type)
        if objective.guidance_scale:
            denoise = classifier_free_guidance(
                denoise, objective.guidance_scale, teacher_model.num_classes
            )
        alpha_hi = expand_to(schedule.alpha(network_time(schedule, sigma_hi)), x_hi)
        alpha_lo = expand_to(schedule.alpha(network_time(schedule, sigma_lo)), x_hi)
        grid_index = objective.num_scales - 2 - n
        x_vp = ode_step(sampler, denoise, alpha_hi * x_hi, grid_index, keys, cond)
        return x_vp / alpha_lo

    def levels(step: jax.Array, level_keys: jax.Array) -> tuple[jax.Array, jax.Array, Any, Any]:
        """Per-example ``(sigma_hi, sigma_lo, n)`` and ``N`` (ECT: its stage, no ``n``)."""
        if objective.method == "ect":
            t = jax.vmap(
                lambda k: sample_lognormal_level(
                    k, param.sigma_min, param.sigma_max, objective.p_mean, objective.p_std
                )
            )(level_keys)
            stage = step // objective.ect_stage_steps
            r = ect_lower_level(t, stage, objective.ect_q, objective.ect_k, objective.ect_b)
            return t, jnp.maximum(r, param.sigma_min), None, stage
        if objective.method == "cd":
            num_levels, sampling = jnp.int32(objective.num_scales), "uniform"
        else:
            num_levels = ict_num_levels(step, objective.total_steps, objective.s0, objective.s1)
            sampling = "lognormal"
        n = jax.vmap(
            lambda k: sample_level_index(
                k, num_levels, max_levels, sampling, param.sigma_min, param.sigma_max,
                objective.p_mean, objective.p_std,
            )
        )(level_keys)
        sigma_lo = karras_levels(n, num_levels, param.sigma_min, param.sigma_max, objective.rho)
        sigma_hi = karras_levels(n + 1, num_levels, param.sigma_min, param.sigma_max,
                                 objective.rho)
        return sigma_hi, sigma_lo, n, num_levels

    def batch_loss(params: PyTree, context: Any, examples: Any) -> jax.Array:
        step, target_params, teacher_params = context
        images, labels, keys = examples
        x0 = images.astype(jnp.float32)
        drop_key, level_key, noise_key, dropout_key, teacher_key = jnp.moveaxis(
            jax.vmap(lambda k: jax.random.split(k, 5))(keys), 1, 0
        )
        if labels is not None and p_uncond > 0:
            labels = jax.vmap(
                lambda k, y: drop_labels(k, y[None], p_uncond, model.num_classes)[0]
            )(drop_key, labels)
        sigma_hi, sigma_lo, n, _ = levels(step, level_key)
        z = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], jnp.float32))(noise_key)
        x_hi = x0 + expand_to(sigma_hi, x0) * z
        if objective.method == "cd":
            x_lo = teacher_step(teacher_params, x_hi, sigma_hi, sigma_lo, n, labels, teacher_key)
        else:
            x_lo = x0 + expand_to(sigma_lo, x0) * z  # the same noise: consistency training
        online = student(params)
        target = student(params if target_params is None else target_params)
        loss, _ = consistency_loss(
            online, target, LevelPair(x_hi, sigma_hi, x_lo, sigma_lo), labels, dropout_key,
            distance=objective.distance, weighting=objective.weighting, huber_c=huber_c,
            sigma_data=param.sigma_data,
        )
        return loss

    grad_fn = make_grad_fn(batch_loss, grad_accum_steps, mesh)

    def train_step(
        state: TrainState, batch: Batch, key: jax.Array, teacher_params: PyTree = None
    ) -> tuple[TrainState, Metrics]:
        if (teacher_params is None) != (objective.method != "cd"):
            raise ValueError("teacher_params: CD needs the teacher's; the other methods none")
        examples = step_examples(batch, key, state.step, conditional, grad_fn)
        target_params = getattr(state, "target_params", None)
        context = (state.step, target_params, teacher_params)
        loss, grads = grad_fn(state.params, context, examples)
        new_state, metrics = apply_gradients(state, grads, loss, optimizer, ema_decay)
        if target_params is not None:
            new_state = new_state.replace(
                target_params=update_ema(
                    target_params, new_state.params, jnp.float32(objective.target_ema)
                )
            )
        metrics["num_levels"] = levels(state.step, examples[2][:1])[3]
        return new_state, metrics

    return train_step
