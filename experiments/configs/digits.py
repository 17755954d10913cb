"""Class-conditional DDPM on scikit-learn's bundled 8x8 digits (the `diffjax demo` model).

Launch:
  diffjax train --config experiments/configs/digits.py --workdir workdirs/digits
Tiny local variant (seconds, for smoke tests):
  diffjax train --config experiments/configs/digits.py:tiny --workdir /tmp/digits_tiny

The values live in the package (``diffjax.config.digits_config``) so that
``diffjax demo`` works from an installed wheel without this folder.
"""

import ml_collections

from diffjax.config import digits_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Returns the digits config; ``variant='tiny'`` gives a seconds-long smoke run."""
    return digits_config(variant)
