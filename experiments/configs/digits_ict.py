"""A consistency model of the digits trained from scratch with iCT (no teacher).

Improved consistency training (Song & Dhariwal 2023), as diffjax.consistency builds it:
pseudo-Huber distance with c = 0.00054 sqrt(8 * 8 * 1), lognormal level sampling (P_mean
-1.1, P_std 2.0), the 1 / (sigma_{i+1} - sigma_i) weighting, the step-count curriculum
from 10 to 1280 levels, the online network as the target (mu = 0). The network is the
digits demo's UNet (experiments/configs/digits.py) with v-prediction: at the largest
levels (sigma = 157 on the linear schedule) an eps-network's x0 = x - sigma eps
amplifies its error by sigma, v's does not (v is EDM's raw output F up to sign).
Adam 5e-4 (the paper's CIFAR-10 RAdam 1e-4 is for batch 1024 and 400k steps), batch
128, 2,400 steps (the curriculum's 8 stages of 300), EMA 0.999 for sampling. These
lengths are ours, sized for the 2-core CPU.

Launch, one host:
  diffjax train --config experiments/configs/digits_ict.py --workdir workdirs/digits_ict
  diffjax sample --workdir workdirs/digits_ict --sampler cm --steps 2 --out ict2.png
Launch, several hosts: the same command on every host, with a workdir all hosts see
(add --distributed-auto on a TPU pod or SLURM, or --coordinator-address=HOST0:8476
--num-processes=N --process-id=i elsewhere).
Tiny local variant (seconds):
  diffjax train --config experiments/configs/digits_ict.py:tiny --workdir /tmp/ict_tiny
"""

import ml_collections

from diffjax.app.config import digits_config, variant_flags


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Returns the digits iCT config; ``variant='tiny'`` gives a seconds-long run."""
    flags = variant_flags(variant, ("tiny",))
    config = digits_config("tiny" if "tiny" in flags else "")
    config.diffusion.prediction_type = "v"
    config.consistency.method = "ict"
    config.optim.learning_rate = 5e-4
    config.optim.warmup_steps = 100
    config.training.batch_size = 128
    config.training.num_steps = 2400
    config.training.checkpoint_every = 400
    config.sampling.sampler = "cm"
    config.sampling.num_steps = 2
    config.sampling.guidance_scale = 0.0
    if "tiny" in flags:
        config.training.batch_size = 16
        config.training.num_steps = 4
        config.training.checkpoint_every = 2
        config.training.log_every = 2
    return config
