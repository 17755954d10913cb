"""Training machinery: state, optimizer, steps, sharding, integrity, lock, preemption.

The steps: diffusion (:mod:`~diffjax.training.step`), consistency
(:mod:`~diffjax.training.consistency_step`) and the KL autoencoder
(:mod:`~diffjax.training.autoencoder_step`).

The loop over a workdir (``train``, ``load_trained``) and its checkpoints are in
:mod:`diffjax.app.train` and :mod:`diffjax.app.checkpoint`.

The names below are imported on first use, so that a light submodule
(:mod:`diffjax.training.preemption`) can be imported without JAX, orbax or grain.
"""

from typing import TYPE_CHECKING

from diffjax._lazy import lazy_attributes

if TYPE_CHECKING:  # the names, for type checkers and IDEs
    from diffjax.training.autoencoder_step import make_autoencoder_train_step
    from diffjax.training.optimizer import make_optimizer
    from diffjax.training.state import (
        TrainState,
        create_train_state,
        ema_decay_at,
        update_ema,
    )
    from diffjax.training.step import make_train_step

_LAZY = {
    "make_autoencoder_train_step": "diffjax.training.autoencoder_step",
    "make_optimizer": "diffjax.training.optimizer",
    "TrainState": "diffjax.training.state",
    "create_train_state": "diffjax.training.state",
    "ema_decay_at": "diffjax.training.state",
    "update_ema": "diffjax.training.state",
    "make_train_step": "diffjax.training.step",
}


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)


__all__ = [
    "TrainState",
    "create_train_state",
    "ema_decay_at",
    "make_autoencoder_train_step",
    "make_optimizer",
    "make_train_step",
    "update_ema",
]
