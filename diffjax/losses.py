"""Diffusion training losses: targets, timestep sampling, weightings, conditioning dropout.

The loss is the denoising objective of Ho et al. (2020), Eq. (14), generalised to the
three common network parameterizations (eps, x0, v; Salimans & Ho 2022) and to the
Min-SNR-gamma weighting (Hang et al. 2023). Classifier-free guidance needs a model that
also knows the unconditional distribution: during training each label is replaced by the
null class with probability ``p_uncond`` (Ho & Salimans 2022, Algorithm 1).

Everything here is a pure function of arrays and a PRNG key.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffjax.parameterization import training_target
from diffjax.schedules import DiscreteSchedule

Array = jax.Array
PredictionType = str

PREDICTION_TYPES = ("eps", "x0", "v")
LOSS_WEIGHTINGS = ("uniform", "min_snr")


class LossAux(NamedTuple):
    """Per-batch diagnostics returned next to the scalar loss."""

    mse: Array
    timesteps: Array


def check_loss_options(
    prediction_type: str, weighting: str, min_snr_gamma: float, p_uncond: float
) -> None:
    """Raises ValueError naming the first invalid loss option."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={prediction_type!r}; expected one of {PREDICTION_TYPES}")
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r}; expected one of {LOSS_WEIGHTINGS}")
    if weighting == "min_snr" and not min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma={min_snr_gamma!r} must be > 0")
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond={p_uncond!r} must lie in [0, 1]")


def sample_timesteps(key: Array, batch_size: int, num_timesteps: int) -> Array:
    """Draws integer timesteps uniformly from {0, ..., T-1} (Ho et al. 2020, Alg. 1)."""
    return jax.random.randint(key, (batch_size,), 0, num_timesteps, dtype=jnp.int32)


def drop_labels(key: Array, labels: Array, p_uncond: float | Array, null_label: int) -> Array:
    """Replaces each label by ``null_label`` with probability ``p_uncond``.

    Deterministic for a given key, so a resumed run drops the same labels.

    Args:
      key: PRNG key.
      labels: int array of shape (B,).
      p_uncond: probability of the unconditional (null) class.
      null_label: index of the learned null class embedding.

    Returns:
      int32 labels of the same shape.
    """
    drop = jax.random.bernoulli(key, p_uncond, labels.shape)
    return jnp.where(drop, jnp.int32(null_label), labels.astype(jnp.int32))


def loss_weight(
    snr: Array, prediction_type: PredictionType, weighting: str, min_snr_gamma: float = 5.0
) -> Array:
    """Per-example weight on the squared error of the network's own target.

    ``min_snr`` gives every parameterization the x0-space weight ``min(SNR, gamma)``
    (Hang et al. 2023, Eq. 9), expressed in the space the network predicts:
    ``min(SNR, g) / SNR`` for eps, ``min(SNR, g)`` for x0 and ``min(SNR, g) / (SNR + 1)`` for v.

    Args:
      snr: alpha^2 / sigma^2 per example.
      prediction_type: 'eps', 'x0' or 'v'.
      weighting: 'uniform' or 'min_snr'.
      min_snr_gamma: the clamp gamma.

    Returns:
      Weights with the shape of ``snr``.
    """
    if weighting == "uniform":
        return jnp.ones_like(snr)
    clipped = jnp.minimum(snr, min_snr_gamma)
    if prediction_type == "eps":
        return clipped / snr
    if prediction_type == "x0":
        return clipped
    return clipped / (snr + 1.0)


def diffusion_loss(
    model_fn: Callable[..., Array],
    schedule: DiscreteSchedule,
    x0: Array,
    labels: Array | None,
    key: Array,
    *,
    prediction_type: PredictionType = "eps",
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    p_uncond: float = 0.0,
    null_label: int | None = None,
) -> tuple[Array, LossAux]:
    """The denoising loss on one batch.

    Args:
      model_fn: ``model_fn(x_t, t, labels, dropout_key) -> prediction``, the network
        with its parameters bound (t is float32 model time, the timestep index).
      schedule: the discrete VP schedule (``alpha``, ``sigma``, ``num_timesteps``).
      x0: clean images (B, H, W, C) in [-1, 1].
      labels: int labels (B,) or None for an unconditional model.
      key: one PRNG key, split here into timestep, noise, label-dropout and dropout keys;
        or one key per example, shape (B,): example ``i`` then draws its timestep, noise
        and label dropout from ``key[i]`` exactly as a batch of one with that key would,
        so the loss does not depend on how a batch is split into parts. The network's
        dropout (if any) still draws once for the batch, from ``key[0]``.
      prediction_type: what the network predicts: 'eps', 'x0' or 'v'.
      weighting: 'uniform' (plain MSE on the target) or 'min_snr'.
      min_snr_gamma: gamma of the Min-SNR weighting.
      p_uncond: conditioning dropout probability (needs ``null_label``).
      null_label: index of the null class of a class-conditional model.

    Returns:
      (scalar loss, LossAux with the unweighted per-example MSE and the timesteps).
    """
    check_loss_options(prediction_type, weighting, min_snr_gamma, p_uncond)
    if labels is not None and p_uncond > 0 and null_label is None:
        raise ValueError("p_uncond > 0 needs null_label (a model with a null class)")
    x0 = x0.astype(jnp.float32)
    batch = x0.shape[0]
    per_example = key.shape == (batch,)
    if key.shape == ():
        timesteps, eps, drop_key, dropout_key = _draw(key, x0.shape, schedule.num_timesteps)
    elif per_example:
        draw = functools.partial(
            _draw, shape=(1, *x0.shape[1:]), num_timesteps=schedule.num_timesteps
        )
        timesteps, eps, drop_key, _ = jax.vmap(draw)(key)
        timesteps, eps = timesteps[:, 0], eps[:, 0]
        dropout_key = jax.random.split(key[0], 4)[3]
    else:
        raise ValueError(f"key must be one key or one per example ({batch},), got {key.shape}")
    t = timesteps.astype(jnp.float32)
    alpha = _expand(schedule.alpha(t), x0)
    sigma = _expand(schedule.sigma(t), x0)
    x_t = alpha * x0 + sigma * eps
    if labels is not None and p_uncond > 0:
        if per_example:  # each example's label from its own key, as a batch of one
            drop_one = lambda k, y: drop_labels(k, y[None], p_uncond, null_label)[0]  # noqa: E731
            labels = jax.vmap(drop_one)(drop_key, labels)
        else:
            labels = drop_labels(drop_key, labels, p_uncond, null_label)
    prediction = model_fn(x_t, t, labels, dropout_key).astype(jnp.float32)
    target = training_target(prediction_type, x0, eps, alpha, sigma)
    mse = jnp.mean(jnp.square(prediction - target), axis=tuple(range(1, x0.ndim)))
    snr = jnp.square(schedule.alpha(t) / schedule.sigma(t))
    weights = loss_weight(snr, prediction_type, weighting, min_snr_gamma)
    return jnp.mean(weights * mse), LossAux(mse=mse, timesteps=timesteps)


def _draw(
    key: Array, shape: tuple[int, ...], num_timesteps: int
) -> tuple[Array, Array, Array, Array]:
    """Timesteps, noise, the label-dropout key (of :func:`drop_labels`), a dropout key."""
    t_key, noise_key, drop_key, dropout_key = jax.random.split(key, 4)
    timesteps = sample_timesteps(t_key, shape[0], num_timesteps)
    eps = jax.random.normal(noise_key, shape, jnp.float32)
    return timesteps, eps, drop_key, dropout_key


def _expand(per_example: Array, like: Array) -> Array:
    """Reshapes a (B,) array to broadcast against ``like`` (B, ...)."""
    return jnp.reshape(per_example, per_example.shape + (1,) * (like.ndim - per_example.ndim))
