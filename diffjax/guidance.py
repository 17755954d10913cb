"""Classifier-free guidance as a denoiser wrapper.

Guided prediction (Ho & Salimans, 2021, Eq. 6):
``eps_guided = (1 + w) eps(x, c) - w eps(x, null)``, applied identically to ``x0``
(both are affine in the network output, so guiding either gives the same sampler).
The conditional and unconditional halves are evaluated in one batched call on
``concat([x, x])``, so the network runs once per step.

``guidance_scale`` may be a traced scalar: changing it never recompiles.

References:
  Ho & Salimans, "Classifier-Free Diffusion Guidance", 2021.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from diffjax.parameterization import Denoised, DenoiseFn

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = ["classifier_free_guidance"]


def _null_like(cond: Any, null_cond: Any) -> Any:
    """Broadcasts ``null_cond`` (a pytree prefix-compatible with ``cond``) to ``cond``."""

    def one(c: Any, n: Any) -> Array:
        c = jnp.asarray(c)
        return jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape)

    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(null_cond)):
        return jax.tree_util.tree_map(lambda c: one(c, null_cond), cond)
    return jax.tree_util.tree_map(one, cond, null_cond)


def classifier_free_guidance(
    denoise_fn: DenoiseFn, guidance_scale: ArrayLike, null_cond: Any
) -> DenoiseFn:
    """Wraps a conditional denoiser with classifier-free guidance.

    Args:
      denoise_fn: ``denoise_fn(x, t, cond) -> Denoised`` trained with conditioning
        dropout (so ``null_cond`` gives the unconditional model).
      guidance_scale: ``w`` (``w = 0`` is the plain conditional model); may be traced.
      null_cond: the "no conditioning" value, e.g. the null class id. It is broadcast
        to the shape and dtype of each leaf of ``cond`` (a scalar label, a ``(B,)``
        vector, or a per-leaf pytree for structured conditioning).

    Returns:
      A guided ``denoise_fn(x, t, cond) -> Denoised``.
    """

    def guided(x: Array, t: ArrayLike, cond: Any) -> Denoised:
        if cond is None:
            raise ValueError("cond must not be None under classifier_free_guidance")
        x = jnp.asarray(x, jnp.float32)
        batch = x.shape[0]
        t_vec = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
        null = _null_like(cond, null_cond)
        both_cond = jax.tree_util.tree_map(
            lambda c, n: jnp.concatenate([jnp.asarray(c), n], axis=0), cond, null
        )
        out = denoise_fn(
            jnp.concatenate([x, x], axis=0), jnp.concatenate([t_vec, t_vec], axis=0), both_cond
        )
        w = jnp.asarray(guidance_scale, jnp.float32)

        def blend(o: Array) -> Array:
            o = jnp.asarray(o, jnp.float32)
            c, u = o[:batch], o[batch:]
            return c + w * (c - u)

        return Denoised(eps=blend(out.eps), x0=blend(out.x0))

    return guided
