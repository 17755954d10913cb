"""One training step: a pure, jittable ``train_step(state, batch, key)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffjax.losses import check_loss_options, diffusion_loss
from diffjax.nn import UNet
from diffjax.training.state import TrainState, ema_decay_at, update_ema

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def make_train_step(
    model: UNet,
    schedule: Any,
    optimizer: optax.GradientTransformation,
    diffusion: ml_collections.ConfigDict,
    ema_decay: float,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """Builds the step function for one model, schedule and objective.

    The returned function is pure: the randomness of step ``n`` is
    ``fold_in(key, n)``, so a resumed run repeats exactly what an uninterrupted one does.

    Args:
      model: the UNet (class-conditional if ``model.num_classes`` is set).
      schedule: the discrete noise schedule.
      optimizer: the optax transformation whose state is in the TrainState.
      diffusion: ``config.diffusion`` (prediction_type, loss_weighting, min_snr_gamma,
        p_uncond).
      ema_decay: the maximum EMA decay.

    Returns:
      ``train_step(state, batch, key) -> (state, metrics)`` with batch keys ``image``
      and, for a conditional model, ``label``.
    """
    conditional = model.num_classes is not None
    p_uncond = float(diffusion.p_uncond) if conditional else 0.0
    check_loss_options(
        diffusion.prediction_type, diffusion.loss_weighting, diffusion.min_snr_gamma, p_uncond
    )

    def train_step(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, Metrics]:
        step_key = jax.random.fold_in(key, state.step)

        def loss_fn(params: Any) -> tuple[jax.Array, Any]:
            def model_fn(x, t, labels, dropout_key):
                return model.apply(
                    {"params": params}, x, t, labels, train=True, rngs={"dropout": dropout_key}
                )

            return diffusion_loss(
                model_fn,
                schedule,
                batch["image"],
                batch.get("label") if conditional else None,
                step_key,
                prediction_type=diffusion.prediction_type,
                weighting=diffusion.loss_weighting,
                min_snr_gamma=diffusion.min_snr_gamma,
                p_uncond=p_uncond,
                null_label=model.num_classes,
            )

        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = update_ema(state.ema_params, params, ema_decay_at(state.step, ema_decay))
        new_state = TrainState(
            step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state
        )
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "finite": jnp.isfinite(loss),
        }
        return new_state, metrics

    return train_step
