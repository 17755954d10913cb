"""The optimizer: AdamW with linear warm-up and global-norm gradient clipping."""

from __future__ import annotations

import ml_collections
import optax


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Builds ``clip_by_global_norm -> adamw`` with a linear warm-up to a constant rate.

    Args:
      optim: the ``config.optim`` section (learning_rate, warmup_steps, weight_decay,
        b1, b2, grad_clip_norm; a clip norm <= 0 disables clipping).

    Returns:
      An optax GradientTransformation.
    """
    if not optim.learning_rate > 0:
        raise ValueError(f"optim.learning_rate={optim.learning_rate!r} must be > 0")
    if optim.warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps={optim.warmup_steps!r} must be >= 0")
    schedule = optax.linear_schedule(
        0.0, optim.learning_rate, max(int(optim.warmup_steps), 1)
    )
    adamw = optax.adamw(
        schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay
    )
    if optim.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), adamw)
    return adamw
