"""Unconditional DDPM on CelebA 64x64: the DDIM paper's CelebA model (Song, Meng & Ermon 2021).

Data: TFDS ``celeb_a``, the central 140x140 of each 178x218 image resized to 64x64
(antialiased bilinear), the NCSNv2 / score_sde preprocessing; DDIM's own code crops
128x128 around (x=89, y=121) instead (see ``diffjax/data/tfds_source.py``). Random
horizontal flips.
Model and training as DDIM's CelebA config: the DDPM UNet with 128 base channels,
multipliers (1, 2, 2, 2, 4), two residual blocks per level, attention at 16x16, dropout
0.1; T = 1000, linear betas 1e-4..0.02, eps-prediction; Adam 2e-4 (5000-step warm-up),
gradient clipping at 1, batch 128, EMA 0.9999. The number of steps (500k) is our
choice.

Launch, one host:
  diffjax train --config experiments/configs/celeba64.py --workdir workdirs/celeba64 \\
      --config.data.path=/data/tfds
Launch, several hosts: the same command on every host, with a workdir and data_dir all
hosts see (add --distributed-auto on a TPU pod or SLURM, or --coordinator-address=HOST0:8476
--num-processes=N --process-id=i elsewhere).
Tiny local variant (a one-level 8-channel UNet on 32x32 images, 8 steps):
  diffjax train --config experiments/configs/celeba64.py:tiny --workdir /tmp/celeba_tiny
"""

import ml_collections

from diffjax.app.config import base_config, make_tiny, variant_flags


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Returns the CelebA 64x64 config; ``variant='tiny'`` gives a seconds-long local run."""
    flags = variant_flags(variant, ("tiny",))
    config = base_config()
    config.data.name = "tfds:celeb_a"
    config.data.image_size = 64
    config.data.random_flip = True

    config.model.base_channels = 128
    config.model.channel_mults = (1, 2, 2, 2, 4)
    config.model.num_res_blocks = 2
    config.model.attention_resolutions = (16,)
    config.model.dropout = 0.1
    config.model.class_conditional = False

    config.diffusion.schedule = "linear"
    config.diffusion.beta_start = 1e-4
    config.diffusion.beta_end = 0.02
    config.diffusion.p_uncond = 0.0

    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 5000
    config.optim.grad_clip_norm = 1.0

    config.training.batch_size = 128
    config.training.num_steps = 500_000
    config.training.ema_decay = 0.9999
    config.training.checkpoint_every = 10_000

    config.sampling.sampler = "ddim"
    config.sampling.num_steps = 100
    if "tiny" in flags:
        make_tiny(config, image_size=32)
    return config
