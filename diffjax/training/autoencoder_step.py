r"""Training the KL autoencoder of latent diffusion: the loss, the step, the latent scale.

The objective of Rombach et al. 2022 (Sec. 3.1 and App. G; the ``LPIPSWithDiscriminator``
loss of the public code), for an image ``x`` with posterior
``q(z | x) = N(mu(x), diag(sigma^2(x)))`` and decoder ``D``:

    L(x) = sum_pixels d(x, D(z)) + beta * KL(q(z | x) || N(0, I)),   z ~ q(z | x),
    KL = 1/2 sum_latents (mu^2 + sigma^2 - 1 - log sigma^2),

summed over pixels and latent elements and averaged over the batch, as the public code
does (so its KL weights carry over: ``beta = 1e-6`` for the KL-f4/f8 models), with ``d``
the absolute error (``"l1"``, the paper's choice) or the squared error (``"l2"``). Not
built: the perceptual term (LPIPS needs VGG weights this project cannot ship) and the
learned output log-variance (initialised at 0 it leaves the loss above unchanged).

Each example draws its posterior noise from its own key (``fold_in(fold_in(key, step),
i)``, as :mod:`diffjax.training.step` does), so the update does not depend on how the batch
is split over devices or microbatches.

The diffusion model then sees ``z * scaling_factor`` with the factor set to ``1 / std(z)``
over training latents (Sec. 4.3.2 of the paper; the public code takes the standard
deviation of one batch of posterior samples): :func:`latent_scaling_factor`.

References:
  Rombach, Blattmann, Lorenz, Esser, Ommer, "High-Resolution Image Synthesis with Latent
  Diffusion Models", CVPR 2022 (https://arxiv.org/abs/2112.10752).
  Kingma, Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from diffjax._checks import check_choice
from diffjax.nn.autoencoder import AutoencoderKL, sample_latent
from diffjax.training.state import TrainState
from diffjax.training.step import Batch, Metrics, apply_gradients, make_grad_fn, step_examples

__all__ = [
    "RECONSTRUCTION_LOSSES",
    "autoencoder_loss",
    "kl_to_standard_normal",
    "latent_scaling_factor",
    "make_autoencoder_train_step",
    "reconstruction_error",
]

RECONSTRUCTION_LOSSES = ("l1", "l2")


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """``KL(N(mean, exp(logvar)) || N(0, I))`` per example, summed over all but the first axis."""
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(kl.reshape(kl.shape[0], -1), axis=-1)


def reconstruction_error(images: jax.Array, reconstructions: jax.Array, kind: str) -> jax.Array:
    """Per-example ``sum |x - x_hat|`` (``"l1"``) or ``sum (x - x_hat)^2`` (``"l2"``)."""
    check_choice("reconstruction", kind, RECONSTRUCTION_LOSSES)
    diff = (images - reconstructions).astype(jnp.float32)
    err = jnp.abs(diff) if kind == "l1" else jnp.square(diff)
    return jnp.sum(err.reshape(err.shape[0], -1), axis=-1)


def autoencoder_loss(
    model: AutoencoderKL,
    params: Any,
    images: jax.Array,
    keys: jax.Array,
    *,
    kl_weight: float,
    reconstruction: str = "l1",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The batch mean of ``L(x)`` (module docstring) and its two terms.

    Args:
      model: the autoencoder.
      params: its parameters.
      images: ``(B, H, W, C)`` in ``[-1, 1]``.
      keys: ``(B,)`` keys, one per example (its posterior sample).
      kl_weight: ``beta``.
      reconstruction: ``"l1"`` or ``"l2"``.

    Returns:
      ``(loss, {"reconstruction": mean d-sum, "kl": mean KL})``.
    """
    variables = {"params": params}
    mean, logvar = model.apply(variables, images, method=AutoencoderKL.encode)
    z = jax.vmap(lambda m, lv, k: sample_latent(m, lv, k))(mean, logvar, keys)
    recon = model.apply(variables, z, method=AutoencoderKL.decode)
    rec = jnp.mean(reconstruction_error(images, recon, reconstruction))
    kl = jnp.mean(kl_to_standard_normal(mean.astype(jnp.float32), logvar.astype(jnp.float32)))
    return rec + kl_weight * kl, {"reconstruction": rec, "kl": kl}


def make_autoencoder_train_step(
    model: AutoencoderKL,
    optimizer: optax.GradientTransformation,
    *,
    kl_weight: float,
    reconstruction: str = "l1",
    ema_decay: float = 0.0,
    grad_accum_steps: int = 1,
    mesh: Mesh | None = None,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """``train_step(state, batch, key) -> (state, metrics)`` for the autoencoder.

    Args:
      model: the autoencoder.
      optimizer: the optax transformation whose state is in the TrainState.
      kl_weight: ``beta`` of the module docstring (``>= 0``).
      reconstruction: ``"l1"`` or ``"l2"``.
      ema_decay: the EMA of the parameters (0 keeps the EMA equal to the parameters).
      grad_accum_steps: microbatches per step (see :func:`diffjax.training.make_train_step`).
      mesh: the device Mesh the batch is sharded over.

    Returns:
      The step; its batch has key ``image``; metrics add ``reconstruction`` and ``kl``.
    """
    check_choice("reconstruction", reconstruction, RECONSTRUCTION_LOSSES)
    if not kl_weight >= 0:
        raise ValueError(f"kl_weight={kl_weight} must be >= 0.")

    def batch_loss(params: Any, _: Any, examples: tuple[jax.Array, Any, jax.Array]) -> Any:
        images, _, keys = examples
        return autoencoder_loss(model, params, images, keys, kl_weight=kl_weight,
                                reconstruction=reconstruction)

    grad_fn = make_grad_fn(batch_loss, grad_accum_steps, mesh, has_aux=True)

    def train_step(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, Metrics]:
        examples = step_examples(batch, key, state.step, False, grad_fn)
        (loss, terms), grads = grad_fn(state.params, None, examples)
        new_state, metrics = apply_gradients(state, grads, loss, optimizer, ema_decay)
        return new_state, {**metrics, **terms}

    return train_step


def latent_scaling_factor(
    encode: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
    batches: Iterable[np.ndarray],
    key: jax.Array,
) -> float:
    """``1 / std(z)`` over posterior samples ``z`` of the images in ``batches``.

    The paper's rescaling of the latents to unit variance (Sec. 4.3.2); computed in
    float64 over every element of every batch (the public code uses one batch).

    Args:
      encode: ``encode(images) -> (mean, logvar)`` (e.g. a jitted ``model.apply``).
      batches: image batches ``(B, H, W, C)``.
      key: draws the posterior samples.

    Returns:
      The factor, a Python float.

    Raises:
      ValueError: for no batches, or latents with zero spread.
    """
    total = total_sq = count = 0.0
    for i, images in enumerate(batches):
        mean, logvar = encode(jnp.asarray(images))
        z = np.asarray(sample_latent(mean, logvar, jax.random.fold_in(key, i)), np.float64)
        total += z.sum()
        total_sq += np.square(z).sum()
        count += z.size
    if not count:
        raise ValueError("latent_scaling_factor needs at least one batch of images.")
    variance = total_sq / count - (total / count) ** 2
    if not variance > 0:
        raise ValueError(f"the latents have variance {variance}: no scale can be set.")
    return float(1.0 / np.sqrt(variance))
