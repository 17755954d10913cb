"""Class-conditional DDPM on MNIST (28x28 grey digits), guidable (p_uncond 0.1).

A small DDPM UNet for 28x28 images: 64 base channels, multipliers (1, 2, 2) (28, 14
and 7 pixels), two residual blocks per level, attention at 7x7, dropout 0.1; T = 1000,
linear betas 1e-4..0.02, eps-prediction; label dropout 0.1 for classifier-free
guidance; Adam 2e-4, batch 128, 50k steps, EMA 0.999. No flips (digits are not
mirror-symmetric). These are our choices, not a paper's.

Data: TFDS ``mnist`` prepared in the array_record format; ``--config.data.path`` is the
TFDS data_dir.

Launch, one host:
  diffjax train --config experiments/configs/mnist.py --workdir workdirs/mnist \\
      --config.data.path=/data/tfds
Launch, several hosts: the same command on every host, with a workdir and data_dir all
hosts see (add --distributed-auto on a TPU pod or SLURM, or --coordinator-address=HOST0:8476
--num-processes=N --process-id=i elsewhere).
Tiny local variant (a one-level 8-channel UNet, 8 steps):
  diffjax train --config experiments/configs/mnist.py:tiny --workdir /tmp/mnist_tiny
"""

import ml_collections

from diffjax.app.config import base_config, make_tiny, variant_flags


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Returns the MNIST config; ``variant='tiny'`` gives a seconds-long local run."""
    flags = variant_flags(variant, ("tiny",))
    config = base_config()
    config.data.name = "tfds:mnist"
    config.data.random_flip = False

    config.model.base_channels = 64
    config.model.channel_mults = (1, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attention_resolutions = (7,)
    config.model.dropout = 0.1
    config.model.class_conditional = True

    config.diffusion.schedule = "linear"
    config.diffusion.beta_start = 1e-4
    config.diffusion.beta_end = 0.02
    config.diffusion.p_uncond = 0.1

    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 1000
    config.optim.grad_clip_norm = 1.0

    config.training.batch_size = 128
    config.training.num_steps = 50_000
    config.training.ema_decay = 0.999
    config.training.checkpoint_every = 5000

    config.sampling.sampler = "dpm++2m"
    config.sampling.num_steps = 20
    config.sampling.guidance_scale = 2.0
    if "tiny" in flags:
        make_tiny(config)
    return config
