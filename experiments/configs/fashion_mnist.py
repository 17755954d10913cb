"""Class-conditional DDPM on Fashion-MNIST: the MNIST setup (mnist.py) on Fashion-MNIST.

Data: by default the Fashion-MNIST IDX files, read into memory (Debian's
``dataset-fashion-mnist`` installs them under /usr/share/datasets/fashion-mnist;
``--config.data.path`` points elsewhere). The ``tfds`` variant reads TFDS
``fashion_mnist`` (array_record) instead, with ``--config.data.path`` as its data_dir.
Both go through the same grain pipeline. No flips (the mnist.py choice; garments are
nearly mirror-symmetric, so ``--config.data.random_flip=True`` is a reasonable change).

Launch, one host:
  diffjax train --config experiments/configs/fashion_mnist.py --workdir workdirs/fashion
  diffjax train --config experiments/configs/fashion_mnist.py:tfds --workdir workdirs/fashion \\
      --config.data.path=/data/tfds
Launch, several hosts: the same command on every host, with a workdir (and data) all hosts
see (add --distributed-auto on a TPU pod or SLURM, or --coordinator-address=HOST0:8476
--num-processes=N --process-id=i elsewhere).
A teacher for consistency distillation sized for 2 CPU cores (a 32-channel UNet, (1, 2,
2), one residual block per level, attention at 7x7, no dropout, batch 64, 3,000 steps):
it trained at 76 images/s on the idle 2-core VM of 2026-12-04 (3,000 steps in about 42
min; 30 images/s while the test suite shared it), and at 25 images/s on a machine of the
same kind on 2026-12-06 (1,000 steps in 51 min, lightly shared):
  diffjax train --config experiments/configs/fashion_mnist.py:cpu --workdir workdirs/fashion_cpu
Tiny local variants (a one-level 8-channel UNet, 8 steps):
  diffjax train --config experiments/configs/fashion_mnist.py:tiny --workdir /tmp/fashion_tiny
  diffjax train --config experiments/configs/fashion_mnist.py:tfds,tiny --workdir /tmp/ft
"""

import os

import ml_collections

from diffjax.app.config import load_config, variant_flags


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Returns the Fashion-MNIST config; variants ``cpu``, ``tiny``, ``tfds``, ``tfds,tiny``."""
    flags = variant_flags(variant, ("cpu", "tfds", "tiny"))
    mnist = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist.py")
    config = load_config(mnist + (":tiny" if "tiny" in flags else ""))
    config.data.name = "tfds:fashion_mnist" if "tfds" in flags else "fashion_mnist"
    if "cpu" in flags:
        config.model.base_channels = 32
        config.model.num_res_blocks = 1
        config.model.dropout = 0.0
        config.optim.learning_rate = 1e-3
        config.optim.warmup_steps = 200
        config.training.batch_size = 64
        config.training.num_steps = 3000
        config.training.log_every = 100
        config.training.checkpoint_every = 500
    return config
