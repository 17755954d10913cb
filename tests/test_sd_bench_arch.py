"""experiments/sd15_arch.py: the SD 1.5 configs the speed and memory benchmarks build.

The parameter counts are diffusers' / transformers' for runwayml/stable-diffusion-v1-5
(UNet2DConditionModel 859,520,964, AutoencoderKL 83,653,863, CLIPTextModel 123,060,480),
so a wrong key in a config dict shows here; computed with ``jax.eval_shape`` (no memory).
"""

import jax
import jax.numpy as jnp
import pytest
from repo_scripts import load_script

from diffjax.nn.unet_condition import param_count

SD15_COUNTS = {"unet": 859_520_964, "vae": 83_653_863, "text": 123_060_480}


@pytest.fixture(scope="module")
def arch():
    return load_script("experiments/sd15_arch.py")


def test_sd15_param_counts(arch):
    structs = arch.param_structs(arch.SD15, jnp.bfloat16)
    assert {k: param_count(v) for k, v in structs.items()} == SD15_COUNTS
    assert {s.dtype for s in jax.tree.leaves(structs)} == {jnp.dtype("bfloat16")}
    unet_config = arch.configs(arch.SD15)[0]
    assert unet_config.num_attention_heads == (8, 8, 8, 8)  # SD 1.x: attention_head_dim=8


def test_tiny_has_sd15_block_types(arch):
    unet, vae, _ = arch.configs(arch.TINY)
    full_unet, full_vae, _ = arch.configs(arch.SD15)
    assert set(unet.down_block_types) == set(full_unet.down_block_types)
    assert unet.sample_size * vae.downsample_factor == 64
    assert full_unet.sample_size * full_vae.downsample_factor == 512
