"""Neural networks: the DDPM/ADM UNet and a CPU-friendly convolution."""

from diffjax.nn.conv import (
    AUTO_MATMUL_BACKENDS,
    CONV_WEIGHT_GRAD_MODES,
    conv_general_dilated,
    select_conv_general_dilated,
)
from diffjax.nn.unet import UNet, group_count, timestep_embedding

__all__ = [
    "AUTO_MATMUL_BACKENDS",
    "CONV_WEIGHT_GRAD_MODES",
    "UNet",
    "conv_general_dilated",
    "group_count",
    "select_conv_general_dilated",
    "timestep_embedding",
]
