"""The KL autoencoder of a latent diffusion model of Fashion-MNIST (task 'autoencoder').

Rombach et al. 2022's KL-f4 recipe at Fashion-MNIST's size: three levels of 32, 64 and
64 channels (two halvings, f = 4), so a 28x28x1 image becomes a 7x7x3 latent (c = 3 as
in the paper's KL-f4; 147 numbers for 784 pixels), one ResNet block per level, the
mid-block attention, L1 reconstruction summed over pixels plus 1e-6 times the KL to
N(0, I) (diffjax.training.autoencoder_step); no perceptual or adversarial term (LPIPS
needs weights this project cannot ship). Adam 1e-3, batch 64, 3,000 steps, EMA 0.999.
Variant ``f2``: two levels (f = 2), 14x14x2 latents. Variant ``tiny``: a seconds-long run.

Launch:
  diffjax train --config experiments/configs/fashion_mnist_vae.py --workdir workdirs/fashion_vae
  diffjax train --config experiments/configs/fashion_mnist_vae.py:f2 --workdir workdirs/vae_f2
  diffjax train --config experiments/configs/fashion_mnist_vae.py:tiny --workdir /tmp/vae_tiny
"""

import os

import ml_collections

from diffjax.app.config import load_config, make_tiny_autoencoder, variant_flags


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Returns the Fashion-MNIST autoencoder config; variants ``f2``, ``tiny``."""
    flags = variant_flags(variant, ("f2", "tiny"))
    fashion = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion_mnist.py")
    config = load_config(fashion)
    config.task = "autoencoder"
    ae = config.autoencoder
    ae.block_out_channels = (32, 64) if "f2" in flags else (32, 64, 64)
    ae.latent_channels = 2 if "f2" in flags else 3
    ae.layers_per_block = 1
    ae.norm_num_groups = 32
    ae.mid_block_attention = True
    ae.kl_weight = 1e-6
    ae.reconstruction = "l1"
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 200
    config.training.batch_size = 64
    config.training.num_steps = 3000
    config.training.ema_decay = 0.999
    config.training.log_every = 100
    config.training.checkpoint_every = 500
    if "tiny" in flags:
        make_tiny_autoencoder(config, num_levels=len(ae.block_out_channels))
    return config
