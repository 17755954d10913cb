"""Training: state, optimizer, the jitted step, sharding, checkpoints, the loop."""

from diffjax.training.loop import load_trained, load_training_data, train
from diffjax.training.optimizer import make_optimizer
from diffjax.training.state import TrainState, create_train_state, ema_decay_at, update_ema
from diffjax.training.step import make_train_step

__all__ = [
    "TrainState",
    "create_train_state",
    "ema_decay_at",
    "load_trained",
    "load_training_data",
    "make_optimizer",
    "make_train_step",
    "train",
    "update_ema",
]
