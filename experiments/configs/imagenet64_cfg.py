"""Class-conditional ImageNet 64x64 with classifier-free guidance (Ho & Salimans 2022).

What it keeps from the guidance paper: class-conditional ImageNet downsampled to 64x64
(TFDS ``imagenet_resized/64x64``, 1000 classes), one network trained for both the
conditional and the unconditional model by dropping the label with p_uncond = 0.1, and
guided sampling eps = (1 + w) eps(x, c) - w eps(x, null) (Eq. 6), where w = 0.1 gave
their best FID (1.55) and larger w trades diversity for Inception score.

The UNet follows the ADM ImageNet-64 hyperparameters (Dhariwal & Nichol 2021, Table
11), on which the guidance paper's networks are based: 192 base channels, multipliers
(1, 2, 3, 4), three residual blocks per level, attention at 32, 16 and 8, dropout 0.1;
Adam 3e-4, batch 2048, 540k steps, EMA 0.9999; cosine noise schedule. The architecture
values were checked against the flags of the released 64x64 model in the README of
openai/guided-diffusion (``--num_channels 192 --num_res_blocks 3 --attention_resolutions
32,16,8 --num_head_channels 64 --dropout 0.1 --noise_schedule cosine --diffusion_steps
1000``); the training values (batch, steps, learning rate) are the paper's table's and
were not re-checked against a copy of it.

What differs, as far as our UNet allows:
- Time is discrete (T = 1000, the cosine schedule of Nichol & Dhariwal) where the paper
  trains in continuous time on log-SNR in [-20, 20].
- The residual blocks are the DDPM ones (the embedding is added, no adaptive group-norm
  scale and shift) and resampling is by strided/nearest convolutions, not the BigGAN
  residual up/down blocks.
- Attention has 6 heads at every resolution (64 channels per head at 32x32, 96 at
  16x16, 128 at 8x8) where ADM fixes 64 channels per head.
- The network predicts eps only (no learned variances, no hybrid loss).

Launch, one host:
  diffjax train --config experiments/configs/imagenet64_cfg.py --workdir workdirs/imagenet64 \\
      --config.data.path=/data/tfds
Launch, several hosts (the intended setup: a batch of 2048): the same command on every
host, with a workdir and data_dir all hosts see, adding --distributed-auto on a TPU pod
or SLURM, or --coordinator-address=HOST0:8476 --num-processes=N --process-id=i elsewhere.
Tiny local variant (a one-level 8-channel UNet on 32x32 images, 8 steps):
  diffjax train --config experiments/configs/imagenet64_cfg.py:tiny --workdir /tmp/in64_tiny
"""

import ml_collections

from diffjax.app.config import base_config, make_tiny, variant_flags


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Returns the ImageNet 64x64 guidance config; ``variant='tiny'`` gives a local run."""
    flags = variant_flags(variant, ("tiny",))
    config = base_config()
    config.data.name = "tfds:imagenet_resized/64x64"
    config.data.random_flip = True

    config.model.base_channels = 192
    config.model.channel_mults = (1, 2, 3, 4)
    config.model.num_res_blocks = 3
    config.model.attention_resolutions = (32, 16, 8)
    config.model.num_heads = 6
    config.model.dropout = 0.1
    config.model.class_conditional = True

    config.diffusion.schedule = "cosine"
    config.diffusion.num_timesteps = 1000
    config.diffusion.prediction_type = "eps"
    config.diffusion.p_uncond = 0.1

    config.optim.learning_rate = 3e-4
    config.optim.warmup_steps = 5000
    config.optim.grad_clip_norm = 1.0

    config.training.batch_size = 2048
    config.training.num_steps = 540_000
    config.training.ema_decay = 0.9999
    config.training.checkpoint_every = 10_000

    config.sampling.sampler = "dpm++2m"
    config.sampling.num_steps = 50
    config.sampling.guidance_scale = 0.1
    if "tiny" in flags:
        make_tiny(config, image_size=32)
    return config
