"""DDPM on CIFAR-10: the setup of Ho, Jain & Abbeel (2020), Appendix B.

T = 1000 steps, betas linear from 1e-4 to 0.02, eps-prediction with the simple
(unweighted) loss; the 35.7M-parameter UNet (35,746,307 parameters here): 128 base
channels, multipliers (1, 2, 2, 2), two residual blocks per level, self-attention at
16x16, dropout 0.1, unconditional. Adam at 2e-4 with a 5000-step linear warm-up,
gradient norm clipped to 1, batch 128, EMA 0.9999, 800k steps, random horizontal flips.
The paper reports 21 steps/s on a TPU v3-8 and FID 3.17.

Data: TFDS ``cifar10`` prepared in the array_record format (see
``diffjax/data/tfds_source.py``); ``--config.data.path`` is the TFDS data_dir.

Launch, one host (all its accelerators):
  diffjax train --config experiments/configs/cifar10_ddpm.py --workdir workdirs/cifar10_ddpm \\
      --config.data.path=/data/tfds
Launch, several hosts: the same command on every host, with a workdir and data_dir all
hosts see; each host reads only its slice of every global batch. On a TPU pod or SLURM:
  diffjax train --config experiments/configs/cifar10_ddpm.py --workdir /shared/cifar10_ddpm \\
      --config.data.path=/shared/tfds --distributed-auto
elsewhere (host i of N; host 0 runs the coordinator):
  diffjax train --config experiments/configs/cifar10_ddpm.py --workdir /shared/cifar10_ddpm \\
      --config.data.path=/shared/tfds --coordinator-address=HOST0:8476 \\
      --num-processes=N --process-id=i
Tiny local variant (a one-level 8-channel UNet, 8 steps; same data):
  diffjax train --config experiments/configs/cifar10_ddpm.py:tiny --workdir /tmp/cifar10_tiny
"""

import ml_collections

from diffjax.app.config import base_config, make_tiny, variant_flags


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Returns the DDPM CIFAR-10 config; ``variant='tiny'`` gives a seconds-long local run."""
    flags = variant_flags(variant, ("tiny",))
    config = base_config()
    config.data.name = "tfds:cifar10"
    config.data.random_flip = True

    config.model.base_channels = 128
    config.model.channel_mults = (1, 2, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attention_resolutions = (16,)
    config.model.dropout = 0.1
    config.model.num_heads = 1
    config.model.class_conditional = False
    config.model.scale_shift_norm = False  # DDPM's block: the embedding added before GroupNorm

    config.diffusion.schedule = "linear"
    config.diffusion.num_timesteps = 1000
    config.diffusion.beta_start = 1e-4
    config.diffusion.beta_end = 0.02
    config.diffusion.prediction_type = "eps"
    config.diffusion.loss_weighting = "uniform"
    config.diffusion.p_uncond = 0.0

    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 5000
    config.optim.weight_decay = 0.0
    config.optim.grad_clip_norm = 1.0

    config.training.batch_size = 128
    config.training.num_steps = 800_000
    config.training.ema_decay = 0.9999
    config.training.checkpoint_every = 10_000

    config.sampling.sampler = "ddim"
    config.sampling.num_steps = 100
    config.sampling.guidance_scale = 0.0
    if "tiny" in flags:
        make_tiny(config)
    return config
