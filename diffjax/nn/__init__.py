"""Neural networks: the DDPM/ADM UNet noise predictor."""

from diffjax.nn.unet import UNet, group_count, timestep_embedding

__all__ = ["UNet", "group_count", "timestep_embedding"]
