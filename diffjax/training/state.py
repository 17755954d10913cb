"""The training state: a plain pytree of step, parameters, EMA parameters, optimizer state."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a training run carries from one step to the next.

    Attributes:
      step: number of optimizer updates applied so far (int32 scalar).
      params: the network parameters being optimized (float32).
      ema_params: exponential moving average of ``params``, used for sampling.
      opt_state: the optax optimizer state.
    """

    step: jax.Array
    params: PyTree
    ema_params: PyTree
    opt_state: optax.OptState


def create_train_state(params: PyTree, optimizer: optax.GradientTransformation) -> TrainState:
    """Builds the state at step 0; the EMA starts as a copy of the parameters."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=optimizer.init(params),
    )


def ema_decay_at(step: jax.Array, max_decay: float) -> jax.Array:
    """EMA decay with the usual warm-up, ``min(max_decay, (1 + step) / (10 + step))``.

    Early in training the average follows the parameters closely, so short runs
    (the digits demo, tests) still get a useful EMA.
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(max_decay), (1.0 + step) / (10.0 + step))


def update_ema(ema_params: PyTree, params: PyTree, decay: jax.Array) -> PyTree:
    """Returns ``decay * ema + (1 - decay) * params`` leaf by leaf."""
    return optax.incremental_update(params, ema_params, 1.0 - decay)
