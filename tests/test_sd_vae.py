"""The Flax AutoencoderKL against diffusers' torch AutoencoderKL, and the VAE loader.

Goldens (``tests/data/tiny_sd_goldens.npz``) and the tiny folders (``tests/data/tiny_sd1``,
``tests/data/tiny_sd2``) come from diffusers' own classes: ``python experiments/make_tiny_sd.py``.
No torch needed here.
"""

from __future__ import annotations

import functools
import json
import os
import shutil

import chex
import jax
import numpy as np
import pytest

from diffjax.networks.safetensors_io import read_safetensors, write_safetensors
from diffjax.nn.autoencoder import (
    AutoencoderKL,
    AutoencoderKLConfig,
    sample_latent,
    scale_latents,
    unscale_latents,
)
from diffjax.stable_diffusion.vae import load_vae, rename_deprecated_attention

DATA = os.path.join(os.path.dirname(__file__), "data")
PIPES = ("sd1", "sd2")


@functools.cache
def goldens() -> dict[str, np.ndarray]:
    with np.load(os.path.join(DATA, "tiny_sd_goldens.npz")) as g:
        return {k: g[k] for k in g.files}


@functools.cache
def vae(name: str, variant: str | None = None):
    return load_vae(os.path.join(DATA, f"tiny_{name}"), variant=variant)


@functools.cache
def _fns(config: AutoencoderKLConfig):
    model = AutoencoderKL(config)
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=AutoencoderKL.encode))
    decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method=AutoencoderKL.decode))
    return encode, decode


@pytest.mark.parametrize("name", PIPES)
def test_vae_matches_diffusers(name):
    params, config = vae(name)
    g = goldens()
    assert config.norm_num_groups == {"sd1": 4, "sd2": 2}[name]
    encode, decode = _fns(config)
    mean, logvar = encode(params, g[f"{name}/vae_x"])
    chex.assert_shape([mean, logvar], (2, 8, 8, 4))
    chex.assert_trees_all_close(mean, g[f"{name}/vae_mean"], atol=1e-5, rtol=0)
    chex.assert_trees_all_close(logvar, g[f"{name}/vae_logvar"], atol=1e-5, rtol=0)
    image = decode(params, g[f"{name}/vae_z"])
    chex.assert_shape(image, (2, 16, 16, 3))
    chex.assert_trees_all_close(image, g[f"{name}/vae_decoded"], atol=1e-5, rtol=0)


def test_fp16_variant_is_the_fp32_weights_rounded():
    p32, c32 = vae("sd1")
    p16, c16 = vae("sd1", "fp16")
    assert c16 == c32
    rounded = jax.tree.map(lambda v: np.asarray(v).astype(np.float16).astype(np.float32), p32)
    chex.assert_trees_all_equal(p16, rounded)
    # and the rounding is really there (the variant file is not a copy of the fp32 one)
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), p16, p32))
    assert max(diffs) > 0
    raw = read_safetensors(os.path.join(DATA, "tiny_sd1", "vae",
                                        "diffusion_pytorch_model.fp16.safetensors"))
    assert {v.dtype for v in raw.values()} == {np.dtype(np.float16)}


def test_bfloat16_params():
    p, _ = load_vae(os.path.join(DATA, "tiny_sd2", "vae"), dtype=jax.numpy.bfloat16)
    assert {v.dtype for v in jax.tree.leaves(p)} == {jax.numpy.dtype("bfloat16")}


def test_latent_scaling_and_sampling():
    _, config = vae("sd1")
    z = np.linspace(-2, 2, 32, dtype=np.float32).reshape(1, 2, 4, 4)
    np.testing.assert_allclose(scale_latents(z, config), z * 0.18215, rtol=1e-6)
    np.testing.assert_allclose(unscale_latents(scale_latents(z, config), config), z, rtol=1e-6)
    shifted = AutoencoderKLConfig(block_out_channels=(32,), scaling_factor=1.5,
                                  shift_factor=0.25)
    np.testing.assert_allclose(scale_latents(z, shifted), (z - 0.25) * 1.5, rtol=1e-6)
    mean, logvar = np.zeros((4000, 4), np.float32), np.full((4000, 4), np.log(4.0), np.float32)
    draws = np.asarray(sample_latent(mean, logvar, jax.random.key(0)))
    assert abs(draws.std() - 2.0) < 0.05 and abs(draws.mean()) < 0.05


def _copy_vae(tmp_path, name="sd1"):
    dst = tmp_path / "vae"
    shutil.copytree(os.path.join(DATA, f"tiny_{name}", "vae"), dst)
    return dst


def test_wrong_shape_tensor_is_named(tmp_path):
    dst = _copy_vae(tmp_path)
    path = dst / "diffusion_pytorch_model.safetensors"
    sd = read_safetensors(path)
    key = "decoder.mid_block.attentions.0.to_q.weight"
    sd[key] = np.zeros((16, 15), np.float32)
    write_safetensors(path, sd)
    with pytest.raises(ValueError, match=r"to_q\.weight.*\(16, 15\).*\(16, 16\)"):
        load_vae(dst)


def test_missing_variant_lists_files_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"diffusion_pytorch_model\.fp16\.safetensors"
                                                r".*it has diffusion_pytorch_model\.safetensors"):
        load_vae(os.path.join(DATA, "tiny_sd2"), variant="fp16")


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("norm_type", "spatial", r"\['norm_type'\] are not supported"),
        ("down_block_types", ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
         r"AttnDownEncoderBlock2D"),
        ("act_fn", "tanh", r"act_fn 'tanh' is not supported; supported: silu"),
        ("norm_num_groups", 3, r"norm_num_groups=3 does not divide"),
        ("_class_name", "AutoencoderTiny", r"'AutoencoderTiny'; only 'AutoencoderKL'"),
    ],
)
def test_bad_config(tmp_path, key, value, match):
    dst = _copy_vae(tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    cfg[key] = value
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=match):
        load_vae(dst)


def test_bad_image_shapes():
    params, config = vae("sd1")
    encode, _ = _fns(config)
    with pytest.raises(ValueError, match="multiples of 2"):
        encode(params, np.zeros((1, 15, 16, 3), np.float32))
    with pytest.raises(ValueError, match=r"NHWC images, got shape \(1, 3, 16, 16\)"):
        encode(params, np.zeros((1, 3, 16, 16), np.float32))


def test_deprecated_attention_names_are_renamed():
    sd = {"encoder.mid_block.attentions.0.query.weight": np.ones((4, 4, 1, 1)),
          "encoder.mid_block.attentions.0.proj_attn.bias": np.ones(4),
          "encoder.conv_in.weight": np.ones((4, 3, 3, 3))}
    out = rename_deprecated_attention(sd)
    assert sorted(out) == ["encoder.conv_in.weight", "encoder.mid_block.attentions.0.to_out.0.bias",
                           "encoder.mid_block.attentions.0.to_q.weight"]
    assert out["encoder.mid_block.attentions.0.to_q.weight"].shape == (4, 4)
