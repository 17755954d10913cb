"""A KL autoencoder of the 8x8 digits (task 'autoencoder'): the small case, for tests.

Two levels of 16 and 32 channels (f = 2): an 8x8x1 digit becomes a 4x4x2 latent; L1
reconstruction plus 1e-6 KL (diffjax.training.autoencoder_step). Adam 1e-3, batch 64,
1,000 steps. Variant ``tiny``: 8-channel levels, 4 steps (seconds).

Launch:
  diffjax train --config experiments/configs/digits_vae.py --workdir workdirs/digits_vae
  diffjax train --config experiments/configs/digits_vae.py:tiny --workdir /tmp/digits_vae_tiny
"""

import ml_collections

from diffjax.app.config import digits_config, make_tiny_autoencoder, variant_flags


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Returns the digits autoencoder config; ``variant='tiny'`` gives a seconds-long run."""
    flags = variant_flags(variant, ("tiny",))
    config = digits_config()
    config.task = "autoencoder"
    ae = config.autoencoder
    ae.block_out_channels = (16, 32)
    ae.latent_channels = 2
    ae.norm_num_groups = 8
    ae.kl_weight = 1e-6
    config.optim.learning_rate = 1e-3
    config.training.batch_size = 64
    config.training.num_steps = 1000
    if "tiny" in flags:
        make_tiny_autoencoder(config, num_levels=2)
    return config
