"""Class-conditional DDPM on scikit-learn's bundled 8x8 digits (the `diffjax demo` model).

Launch, one host:
  diffjax train --config experiments/configs/digits.py --workdir workdirs/digits
Launch, several hosts (a 1,438-image set needs none, but the command is the same as for
the big configs): run it on every host with a workdir all hosts see, adding
--distributed-auto on a TPU pod or SLURM, or --coordinator-address=HOST0:8476
--num-processes=N --process-id=i elsewhere.
Tiny local variant (seconds, for smoke tests):
  diffjax train --config experiments/configs/digits.py:tiny --workdir /tmp/digits_tiny

The values live in the package (``diffjax.app.config.digits_config``) so that
``diffjax demo`` works from an installed wheel without this folder.
"""

import ml_collections

from diffjax.app.config import digits_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Returns the digits config; ``variant='tiny'`` gives a seconds-long smoke run."""
    return digits_config(variant)
