"""Neural networks: the DDPM/ADM UNet, Stable Diffusion's autoencoder and cross-attention UNet.

Names are imported on first use.
"""

from typing import TYPE_CHECKING

from diffjax._lazy import lazy_attributes

if TYPE_CHECKING:  # the names, for type checkers and IDEs
    from diffjax.nn.autoencoder import (
        AutoencoderKL,
        AutoencoderKLConfig,
        sample_latent,
        scale_latents,
        unscale_latents,
    )
    from diffjax.nn.groups import embedding_erasing_widths, group_count
    from diffjax.nn.unet import UNet, timestep_embedding
    from diffjax.nn.unet_condition import UNet2DConditionModel, UNetConditionConfig

_LAZY = {
    "AutoencoderKL": "diffjax.nn.autoencoder",
    "AutoencoderKLConfig": "diffjax.nn.autoencoder",
    "UNet": "diffjax.nn.unet",
    "UNet2DConditionModel": "diffjax.nn.unet_condition",
    "UNetConditionConfig": "diffjax.nn.unet_condition",
    "embedding_erasing_widths": "diffjax.nn.groups",
    "group_count": "diffjax.nn.groups",
    "sample_latent": "diffjax.nn.autoencoder",
    "scale_latents": "diffjax.nn.autoencoder",
    "timestep_embedding": "diffjax.nn.unet",
    "unscale_latents": "diffjax.nn.autoencoder",
}

__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)

__all__ = [
    "AutoencoderKL",
    "AutoencoderKLConfig",
    "UNet",
    "UNet2DConditionModel",
    "UNetConditionConfig",
    "embedding_erasing_widths",
    "group_count",
    "sample_latent",
    "scale_latents",
    "timestep_embedding",
    "unscale_latents",
]
