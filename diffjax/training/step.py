"""One training step: a pure, jittable ``train_step(state, batch, key)``.

Randomness is drawn per example: example ``i`` of the global batch at step ``n`` uses the
key ``fold_in(fold_in(key, n), i)`` for its timestep, noise, label dropout and network
dropout (a model without dropout runs the network on the whole batch at once; one with
dropout runs it per example, as the dropout masks must be per example too). The loss of
a batch is then the mean of per-example losses that do not depend on how the batch is
split, so the same global batch gives the same update (to float
rounding) on one device or many, and with or without gradient accumulation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, PartitionSpec

from diffjax.losses import check_loss_options, diffusion_loss
from diffjax.nn import UNet
from diffjax.schedules import DiscreteSchedule
from diffjax.training.sharding import DATA_AXIS
from diffjax.training.state import TrainState, ema_decay_at, update_ema

# Backends on which the microbatch loop of gradient accumulation is unrolled rather than
# run as a loop. XLA:CPU runs convolution gradients inside a while loop about 10x slower
# (docs/design.md's pitfall for scans of whole steps applies to the microbatch loop too:
# experiments/bench_allreduce.py, results in experiments/results/allreduce.txt). On GPU
# and TPU the loop stays a loop, which bounds activation memory to one microbatch; an
# unrolled one leaves the order of the microbatches to the scheduler.
UNROLLED_ACCUMULATION_BACKENDS: frozenset[str] = frozenset({"cpu"})

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
# Folded into an example's key for its latent (the autoencoder's posterior sample), a
# stream apart from the diffusion noise the same key draws.
LATENT_STREAM = 0x1A7E


def example_keys(step_key: jax.Array, batch_size: int) -> jax.Array:
    """Per-example keys ``fold_in(step_key, i)`` for ``i`` in ``range(batch_size)``."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
        step_key, jnp.arange(batch_size, dtype=jnp.uint32)
    )


def split_microbatches(tree: Any, num_microbatches: int) -> Any:
    """Splits every leaf's leading axis into ``num_microbatches`` interleaved microbatches.

    Example ``i`` goes to microbatch ``i % num_microbatches``, at position
    ``i // num_microbatches``. With the batch axis sharded in contiguous blocks over
    ``d`` devices (and ``batch_size`` divisible by ``d * num_microbatches``), every
    microbatch then keeps an equal share on every device: the split moves no data.

    Returns:
      The tree with leaves of shape ``(num_microbatches, batch // num_microbatches, ...)``.
    """

    def split(x: jax.Array) -> jax.Array:
        per = x.shape[0] // num_microbatches
        x = x.reshape((per, num_microbatches, *x.shape[1:]))
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, tree)


def make_train_step(
    model: UNet,
    schedule: DiscreteSchedule,
    optimizer: optax.GradientTransformation,
    diffusion: ml_collections.ConfigDict,
    ema_decay: float,
    *,
    grad_accum_steps: int = 1,
    mesh: Mesh | None = None,
    encode: Callable[[Any, jax.Array, jax.Array], jax.Array] | None = None,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """Builds the step function for one model, schedule and objective.

    The returned function is pure: the randomness of step ``n`` is
    ``fold_in(key, n)`` (then one key per example, see the module docstring), so a
    resumed run repeats exactly what an uninterrupted one does.

    Args:
      model: the UNet (class-conditional if ``model.num_classes`` is set).
      schedule: the discrete noise schedule.
      optimizer: the optax transformation whose state is in the TrainState.
      diffusion: ``config.diffusion`` (prediction_type, loss_weighting, min_snr_gamma,
        p_uncond).
      ema_decay: the maximum EMA decay.
      grad_accum_steps: number of microbatches the batch is split into; forward and
        backward run once per microbatch inside the step (a ``lax.scan``, unrolled on
        the backends in ``UNROLLED_ACCUMULATION_BACKENDS``), the gradients are
        averaged and the optimizer is applied once. The update equals that of the
        whole batch at once, with ``1/grad_accum_steps`` of the activation memory.
      mesh: the device Mesh (with a ``data`` axis) the batch is sharded over. Only
        used when ``grad_accum_steps > 1``: the microbatch loop then runs per device
        under ``shard_map`` on its slice of the batch and the gradients are
        all-reduced once after it. Without a mesh the loop is left to the compiler,
        which keeps the result the same but, on several devices, all-reduces the
        gradients once per microbatch.
      encode: latent diffusion (Rombach et al. 2022): ``encode(frozen, images, keys) ->
        latents`` maps the batch's images to what the UNet learns to denoise (e.g. a
        frozen autoencoder's scaled posterior samples), example ``i`` drawing from
        ``keys[i]`` (its own stream, :data:`LATENT_STREAM` folded into its key). It runs
        on the whole batch before the microbatch split, without gradients; ``frozen``
        is the step's fourth argument (the autoencoder's parameters, an argument so that
        they are not compiled into the step).

    Returns:
      ``train_step(state, batch, key, frozen=None) -> (state, metrics)`` with batch keys
      ``image`` and, for a conditional model, ``label``; the batch size must be
      divisible by ``grad_accum_steps`` (times the data-axis size of ``mesh``, when one
      is given).
    """
    conditional = model.num_classes is not None
    p_uncond = float(diffusion.p_uncond) if conditional else 0.0
    check_loss_options(
        diffusion.prediction_type, diffusion.loss_weighting, diffusion.min_snr_gamma, p_uncond
    )

    def keyed_loss(params: Any, images: jax.Array, labels: Any, keys: jax.Array) -> jax.Array:
        """Mean loss of a batch whose example ``i`` draws from ``keys[i]``."""

        def model_fn(x, t, labels, dropout_key):
            return model.apply(
                {"params": params}, x, t, labels, train=True, rngs={"dropout": dropout_key}
            )

        loss, _ = diffusion_loss(
            model_fn,
            schedule,
            images,
            labels,
            keys,
            prediction_type=diffusion.prediction_type,
            weighting=diffusion.loss_weighting,
            min_snr_gamma=diffusion.min_snr_gamma,
            p_uncond=p_uncond,
            null_label=model.num_classes,
        )
        return loss

    def batch_loss(params: Any, examples: tuple[jax.Array, Any, jax.Array]) -> jax.Array:
        images, labels, keys = examples
        if not model.dropout:
            # No randomness inside the network: one batched forward pass.
            return keyed_loss(params, images, labels, keys)

        # Network dropout draws per example too, so the network runs on batches of one
        # (vmapped; about 20% slower on XLA:CPU than the batched pass).
        def example_loss(image: jax.Array, label: Any, key: jax.Array) -> jax.Array:
            label = None if label is None else label[None]
            return keyed_loss(params, image[None], label, key[None])

        label_axis = None if labels is None else 0
        return jnp.mean(jax.vmap(example_loss, in_axes=(0, label_axis, 0))(images, labels, keys))

    grad_fn = make_grad_fn(
        lambda params, _, examples: batch_loss(params, examples), grad_accum_steps, mesh
    )

    def train_step(
        state: TrainState, batch: Batch, key: jax.Array, frozen: Any = None
    ) -> tuple[TrainState, Metrics]:
        examples = step_examples(batch, key, state.step, conditional, grad_fn)
        if encode is not None:
            images, labels, keys = examples
            latent_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, LATENT_STREAM)
            latents = jax.lax.stop_gradient(encode(frozen, images, latent_keys))
            examples = (latents, labels, keys)
        loss, grads = grad_fn(state.params, None, examples)
        return apply_gradients(state, grads, loss, optimizer, ema_decay)

    return train_step


def step_examples(
    batch: Batch, key: jax.Array, step: jax.Array, conditional: bool, grad_fn: GradFn
) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """``(images, labels or None, per-example keys)`` of a step's batch (see the module doc).

    Raises:
      ValueError: a batch that does not split into ``grad_fn``'s microbatches.
    """
    images = batch["image"]
    grad_fn.check_batch_size(images.shape[0])
    step_key = jax.random.fold_in(key, step)
    labels = batch.get("label") if conditional else None
    return images, labels, example_keys(step_key, images.shape[0])


class GradFn:
    """``grad_fn(params, context, examples) -> (mean loss, gradients)``, accumulated.

    Built by :func:`make_grad_fn`; ``check_batch_size`` refuses a batch that does not
    split into the microbatches on every device.
    """

    def __init__(self, fn: Callable[..., Any], grad_accum_steps: int, num_shards: int):
        self._fn = fn
        self.grad_accum_steps = grad_accum_steps
        self.num_shards = num_shards

    def __call__(self, params: Any, context: Any, examples: Any) -> tuple[jax.Array, Any]:
        """``(mean loss, gradients)`` of ``examples`` at ``params``."""
        return self._fn(params, context, examples)

    def check_batch_size(self, batch_size: int) -> None:
        """Raises ValueError unless ``batch_size`` splits into the microbatches per device."""
        if batch_size % (self.num_shards * self.grad_accum_steps):
            raise ValueError(
                f"batch size {batch_size} does not split into "
                f"grad_accum_steps={self.grad_accum_steps} microbatches on each of "
                f"{self.num_shards} device(s)"
            )


def make_grad_fn(
    batch_loss: Callable[[Any, Any, Any], Any],
    grad_accum_steps: int = 1,
    mesh: Mesh | None = None,
    *,
    has_aux: bool = False,
) -> GradFn:
    """The gradient of a batch loss, over ``grad_accum_steps`` microbatches.

    Args:
      batch_loss: ``batch_loss(params, context, examples) -> scalar`` mean loss of a batch
        of per-example inputs ``examples`` (a batch-first pytree whose example ``i``
        carries its own randomness, so the mean does not depend on the split);
        ``context`` holds what every example shares (the step, frozen parameters) and is
        not differentiated.
      grad_accum_steps: microbatches per call (see :func:`make_train_step`).
      mesh: the device Mesh the batch is sharded over (see :func:`make_train_step`).
      has_aux: ``batch_loss`` returns ``(loss, aux)`` with ``aux`` a pytree of batch means
        (metrics); the GradFn then returns ``((loss, aux), gradients)``.

    Returns:
      A :class:`GradFn`; the loss (and aux) and gradients are the means over the
      microbatches.
    """
    if grad_accum_steps < 1:
        raise ValueError(f"{grad_accum_steps=} must be >= 1")
    value_and_grad = jax.value_and_grad(batch_loss, has_aux=has_aux)
    if grad_accum_steps == 1:
        return GradFn(value_and_grad, 1, 1)
    platform = jax.default_backend() if mesh is None else mesh.devices.flat[0].platform

    def accumulated(params: Any, context: Any, examples: Any, axis: str | None) -> Any:
        """Mean loss and gradient over the microbatches of ``examples``.

        With ``axis`` (inside shard_map) the parameters are marked device-varying, so
        each microbatch's gradient stays local, and the mean is all-reduced once.
        """
        microbatches = split_microbatches(examples, grad_accum_steps)
        first = jax.tree.map(lambda x: x[0], microbatches)
        value_shape = jax.eval_shape(value_and_grad, params, context, first)[0]  # loss (, aux)
        loss_zero = jax.tree.map(lambda v: jnp.zeros(v.shape, v.dtype), value_shape)
        if axis is not None:
            params, loss_zero = jax.lax.pcast((params, loss_zero), axis, to="varying")

        def accumulate(carry, microbatch):
            loss_sum, grad_sum = carry
            loss, grads = value_and_grad(params, context, microbatch)
            return (jax.tree.map(jnp.add, loss_sum, loss),
                    jax.tree.map(jnp.add, grad_sum, grads)), None

        zeros = (loss_zero, jax.tree.map(jnp.zeros_like, params))
        (loss_sum, grad_sum), _ = jax.lax.scan(
            accumulate,
            zeros,
            microbatches,
            unroll=grad_accum_steps if platform in UNROLLED_ACCUMULATION_BACKENDS else 1,
        )
        mean = jax.tree.map(lambda x: x / grad_accum_steps, (loss_sum, grad_sum))
        return mean if axis is None else jax.lax.pmean(mean, axis)

    if mesh is None:
        return GradFn(functools.partial(accumulated, axis=None), grad_accum_steps, 1)
    sharded = jax.shard_map(
        functools.partial(accumulated, axis=DATA_AXIS),
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec(DATA_AXIS)),
        out_specs=PartitionSpec(),
    )
    return GradFn(sharded, grad_accum_steps, mesh.shape[DATA_AXIS])


def apply_gradients(
    state: TrainState, grads: Any, loss: jax.Array, optimizer: optax.GradientTransformation,
    ema_decay: float,
) -> tuple[TrainState, Metrics]:
    """One optimizer update and the EMA after it (other fields of ``state`` are kept).

    Returns:
      ``(state at step + 1, metrics)`` with ``loss``, ``grad_norm`` and ``finite``.
    """
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = update_ema(state.ema_params, params, ema_decay_at(state.step, ema_decay))
    new_state = state.replace(
        step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state
    )
    grad_norm = optax.tree.norm(grads)
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        # A NaN or Inf in any gradient makes the norm non-finite too.
        "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm),
    }
    return new_state, metrics
