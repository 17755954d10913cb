"""The Flax cross-attention UNet against diffusers' UNet2DConditionModel (goldens).

``tests/data/sd_unet/{sd1,sd2,lcm,sdxl}/`` (diffusers ``unet/`` folders: ``config.json`` and
float16 safetensors; ``sd2`` as the ``fp16`` variant file) and
``tests/data/sd_unet_golden.npz`` were written by ``experiments/make_sd_unet_golden.py``
with diffusers 0.42 and torch: seeded random tiny ``UNet2DConditionModel``s, one forward
call each, and diffusers' parameter counts. Nothing here imports torch or diffusers.
"""

import dataclasses
import functools
import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.networks.safetensors_io import read_safetensors, write_safetensors
from diffjax.nn import unet_condition as U
from diffjax.stable_diffusion import unet as SU

DATA = os.path.join(os.path.dirname(__file__), "data")
MODELS = os.path.join(DATA, "sd_unet")
GOLDEN = os.path.join(DATA, "sd_unet_golden.npz")
VARIANTS = {"sd1": None, "sd2": "fp16", "lcm": None, "sdxl": None}
# Compile without XLA's backend optimizations: a third of the compile time on CPU, and the
# same float32 arithmetic.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN, allow_pickle=False) as g:
        return {k: g[k] for k in g.files}


@functools.cache
def _loaded(name: str, dtype=jnp.float32):
    return SU.load_unet(os.path.join(MODELS, name), dtype=dtype, variant=VARIANTS[name])


def _inputs(golden, name):
    p = f"{name}/"
    cond = golden.get(p + "timestep_cond")
    added = ({k: golden[p + k] for k in ("text_embeds", "time_ids")}
             if p + "text_embeds" in golden else None)
    return (golden[p + "sample"], golden[p + "timesteps"], golden[p + "encoder_hidden_states"],
            cond, added)


@functools.cache
def _compiled(name: str, dtype=jnp.float32):
    params, config = _loaded(name, dtype)
    model = U.UNet2DConditionModel(config, dtype=dtype)
    with np.load(GOLDEN) as g:
        args = _inputs({k: g[k] for k in g.files if k.startswith(name + "/")}, name)
    fn = jax.jit(lambda p, *a: model.apply({"params": p}, *a))
    return fn.lower(params, *args).compile(compiler_options=FAST_COMPILE)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parity_with_diffusers(golden, name):
    params, _ = _loaded(name)
    out = _compiled(name)(params, *_inputs(golden, name))
    expected = golden[f"{name}/output"]
    chex.assert_shape(out, expected.shape)
    assert out.dtype == jnp.float32
    assert np.abs(expected).max() > 0.5  # the golden is not trivially small
    chex.assert_trees_all_close(out, expected, atol=1e-5, rtol=0)
    assert U.param_count(params) == int(golden[f"{name}/param_count"])


def test_configs_read_as_intended():
    sd1 = _loaded("sd1")[1]
    assert sd1.num_attention_heads == (8, 8)  # attention_head_dim=8 is the head COUNT
    assert not sd1.use_linear_projection and sd1.norm_num_groups == 16
    sd2 = _loaded("sd2")[1]
    assert sd2.num_attention_heads == (2, 4) and sd2.use_linear_projection
    assert _loaded("lcm")[1].time_cond_proj_dim == 16
    sdxl = _loaded("sdxl")[1]
    assert sdxl.transformer_layers_per_block == (1, 2) and sdxl.layers_per_block == (2, 2)
    assert sdxl.addition_embed_type == "text_time"


def test_conditioning_changes_the_output(golden):
    # The golden inputs, with the text states / the LCM embedding zeroed: a different output.
    sample, t, context, cond, added = _inputs(golden, "lcm")
    params, _ = _loaded("lcm")
    f = _compiled("lcm")
    base = np.asarray(f(params, sample, t, context, cond, added))
    assert np.abs(np.asarray(f(params, sample, t, 0 * context, cond, added)) - base).max() > 1e-3
    assert np.abs(np.asarray(f(params, sample, t, context, 0 * cond, added)) - base).max() > 1e-3


def test_bfloat16_compute_stays_close(golden):
    params, _ = _loaded("sd1", jnp.bfloat16)
    assert jax.tree.leaves(params)[0].dtype == jnp.bfloat16
    out = _compiled("sd1", jnp.bfloat16)(params, *_inputs(golden, "sd1"))
    expected = golden["sd1/output"]
    assert out.dtype == jnp.float32
    err = np.abs(np.asarray(out) - expected).max()
    assert np.isfinite(out).all() and err < 0.1 * np.abs(expected).max(), err


def test_state_dict_names_follow_diffusers():
    sd = read_safetensors(os.path.join(MODELS, "sd1", "diffusion_pytorch_model.safetensors"))
    config = _loaded("sd1")[1]
    expected = {k: tuple(v.shape) for k, v in sd.items()}
    assert SU.unet_state_dict_shapes(config) == expected
    assert SU.diffusers_unet_param("down_blocks_0/attentions_0/proj_in/kernel", False) == (
        "down_blocks.0.attentions.0.proj_in.weight", "conv1x1_linear")
    assert SU.diffusers_unet_param(
        "up_blocks_1/attentions_2/transformer_blocks_0/ff/net_0/proj/kernel", True
    ) == ("up_blocks.1.attentions.2.transformer_blocks.0.ff.net.0.proj.weight", "linear")
    assert SU.diffusers_unet_param("time_embedding/linear_1/bias", True).name == (
        "time_embedding.linear_1.bias")


# --------------------------------------------------------------------------------------
# Bad input.


def test_wrong_shape_names_tensor_and_shapes():
    sd = read_safetensors(os.path.join(MODELS, "sd1", "diffusion_pytorch_model.safetensors"))
    name = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert sd[name].shape == (32, 32)
    sd[name] = np.zeros((32, 48), np.float16)
    with pytest.raises(ValueError, match=r"to_k\.weight.*\(32, 48\).*\(32, 32\)"):
        SU.unet_params_from_state_dict(sd, _loaded("sd1")[1])


def test_missing_and_unexpected_tensors_are_listed():
    sd = read_safetensors(os.path.join(MODELS, "sd1", "diffusion_pytorch_model.safetensors"))
    del sd["conv_out.bias"]
    sd["extra.weight"] = np.zeros(3, np.float16)
    with pytest.raises(KeyError, match=r"conv_out\.bias.*extra\.weight"):
        SU.unet_params_from_state_dict(sd, _loaded("sd1")[1])


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        SU.load_unet(tmp_path)
    for f in ("config.json", "diffusion_pytorch_model.fp16.safetensors"):
        shutil.copy(os.path.join(MODELS, "sd2", f), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"diffusion_pytorch_model\.safetensors.*fp16"):
        SU.load_unet(tmp_path)  # only the fp16 variant exists for sd2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SU.load_unet(tmp_path / "absent")


def test_sharded_weights_load(tmp_path):
    src = os.path.join(MODELS, "sd1")
    sd = read_safetensors(os.path.join(src, "diffusion_pytorch_model.safetensors"))
    names = sorted(sd)
    halves = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2:]}
    for shard, keys in halves.items():
        write_safetensors(tmp_path / shard, {k: sd[k] for k in keys})
    index = {"weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(os.path.join(src, "config.json"), tmp_path)
    params, _ = SU.load_unet(tmp_path)
    chex.assert_trees_all_equal(params, _loaded("sd1")[0])


@pytest.mark.parametrize(
    ("key", "value", "pattern"),
    [
        ("down_block_types", ["SimpleCrossAttnDownBlock2D", "DownBlock2D"],
         "SimpleCrossAttnDownBlock2D.*supported: CrossAttnDownBlock2D, DownBlock2D"),
        ("up_block_types", ["UpBlock2D", "AttnUpBlock2D"], "AttnUpBlock2D.*CrossAttnUpBlock2D"),
        ("addition_embed_type", "image", "addition_embed_type='image'.*text_time"),
        ("class_embed_type", "timestep", "class_embed_type='timestep'"),
        ("only_cross_attention", True, "only_cross_attention=True"),
        ("act_fn", "gelu", "act_fn='gelu'"),
    ],
)
def test_unsupported_config_is_a_clear_error(key, value, pattern):
    with open(os.path.join(MODELS, "sd1", "config.json")) as f:
        d = json.load(f)
    d[key] = value
    with pytest.raises(NotImplementedError, match=pattern):
        U.UNetConditionConfig.from_diffusers_dict(d)


def test_inconsistent_config_is_a_clear_error():
    with pytest.raises(ValueError, match="norm_num_groups=32 does not divide.*16"):
        dataclasses.replace(_loaded("sd1")[1], norm_num_groups=32)
    with pytest.raises(ValueError, match="width 16 cannot have 3 attention heads"):
        dataclasses.replace(_loaded("sd1")[1], num_attention_heads=(3, 4))
    with pytest.raises(ValueError, match="_class_name is 'AutoencoderKL'"):
        U.UNetConditionConfig.from_diffusers_dict({"_class_name": "AutoencoderKL"})


def test_bad_inputs_are_named(golden):
    params, config = _loaded("lcm")
    model = U.UNet2DConditionModel(config)
    sample, t, context, cond, _ = _inputs(golden, "lcm")

    def call(*args):
        return model.apply({"params": params}, *args)

    with pytest.raises(ValueError, match=r"cross_attention_dim=32.*\(2, 7, 16\)"):
        call(sample, t, context[..., :16], cond)
    with pytest.raises(ValueError, match="multiples of 2.*6x7"):
        call(np.zeros((2, 6, 7, 4), np.float32), t, context, cond)
    with pytest.raises(ValueError, match=r"\(B, H, W, 4\).*\(2, 8, 8, 3\)"):
        call(sample[..., :3], t, context, cond)
    with pytest.raises(ValueError, match=r"timesteps.*\(2,\).*\(3,\)"):
        call(sample, np.zeros(3), context, cond)
    with pytest.raises(ValueError, match=r"timestep_cond.*time_cond_proj_dim=16.*\(2, 8\)"):
        call(sample, t, context, cond[:, :8])
    sd1_params, sd1_config = _loaded("sd1")
    with pytest.raises(ValueError, match="no time_cond_proj_dim"):
        U.UNet2DConditionModel(sd1_config).apply({"params": sd1_params}, sample, t, context,
                                                 cond)
