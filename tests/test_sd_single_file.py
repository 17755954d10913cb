"""Original CompVis single-file checkpoints (diffjax.stable_diffusion.single_file).

``tests/data/compvis_tiny_sd1.safetensors`` / ``compvis_tiny_sd2.safetensors`` hold the
weights of ``tests/data/tiny_sd1`` / ``tiny_sd2`` in the CompVis layout (SD 2.x's text
encoder as OpenCLIP with fused ``in_proj``), written by
``experiments/make_compvis_checkpoint.py`` and verified there with diffusers'
``StableDiffusionPipeline.from_single_file``: every tensor diffusers reads from them equals
the folder's. No torch needed except for the ``.ckpt`` test.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.nn.autoencoder import AutoencoderKL, AutoencoderKLConfig
from diffjax.nn.unet_condition import UNet2DConditionModel, UNetConditionConfig
from diffjax.stable_diffusion import single_file as S
from diffjax.stable_diffusion.folder import open_folder
from diffjax.stable_diffusion.text_encoder import (
    encode_prompt,
    load_text_encoder,
    load_tokenizer,
    text_config_from_dict,
    tokenize_prompts,
)
from diffjax.stable_diffusion.unet import load_unet, unet_state_dict_shapes
from diffjax.stable_diffusion.vae import load_vae

DATA = os.path.join(os.path.dirname(__file__), "data")
PIPES = ("sd1", "sd2")
# Compile without XLA's backend optimizations (a third of the CPU compile time, same math).
FAST_COMPILE = {"xla_backend_optimization_level": 0}
PROMPTS = ["a photo of a cat", "the quick brown fox jumps over the lazy dog", ""]


def _folder(name):
    return os.path.join(DATA, f"tiny_{name}")


def _file(name):
    return os.path.join(DATA, f"compvis_tiny_{name}.safetensors")


@functools.cache
def goldens():
    with np.load(os.path.join(DATA, "tiny_sd_goldens.npz")) as g:
        return {k: g[k] for k in g.files}


@functools.cache
def from_folder(name):
    path = _folder(name)
    return load_unet(os.path.join(path, "unet")), load_vae(path), load_text_encoder(path)


@functools.cache
def from_file(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no schedule or left-over warning for these files
        return S.load_single_file(_file(name), config=_folder(name))


@functools.cache
def checkpoint(name):
    return S.read_checkpoint(_file(name))


def _assert_same(tree_a, tree_b):
    assert jax.tree.structure(tree_a) == jax.tree.structure(tree_b)
    for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", PIPES)
def test_file_gives_the_folders_params_exactly(name):
    c = from_file(name)
    (unet, unet_config), (vae, vae_config), (text, text_config) = from_folder(name)
    _assert_same(c.unet_params, unet)
    _assert_same(c.vae_params, vae)
    _assert_same(c.text_params, text)
    assert (c.unet_config, c.vae_config, c.text_config) == (unet_config, vae_config, text_config)
    assert c.scheduler_config == open_folder(_folder(name)).config("scheduler")
    ids = tokenize_prompts(c.tokenizer, PROMPTS)
    np.testing.assert_array_equal(ids, goldens()[f"{name}/input_ids"])
    keys = checkpoint(name)
    assert (S.OPENCLIP_PREFIX + "transformer.resblocks.0.attn.in_proj_weight" in keys) is (
        name == "sd2")


@pytest.mark.parametrize("name", PIPES)
def test_text_encoder_and_vae_match_torch(name):
    c, g = from_file(name), goldens()
    hidden = encode_prompt(c.text_params, c.text_config, g[f"{name}/input_ids"])
    chex.assert_trees_all_close(hidden, g[f"{name}/last_hidden_state"], atol=1e-5, rtol=0)
    model = AutoencoderKL(c.vae_config)
    image = jax.jit(lambda p, z: model.apply({"params": p}, z, method=AutoencoderKL.decode))(
        c.vae_params, g[f"{name}/vae_z"])
    chex.assert_shape(image, (2, 16, 16, 3))
    chex.assert_trees_all_close(image, g[f"{name}/vae_decoded"], atol=1e-5, rtol=0)


def test_unet_forward_equals_the_folders():
    c = from_file("sd2")
    (params, _), _, _ = from_folder("sd2")
    model = UNet2DConditionModel(c.unet_config)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 8, 4)).astype(np.float32)
    ctx = rng.standard_normal((1, 5, 32)).astype(np.float32)
    t = np.asarray([500.0], np.float32)
    fn = jax.jit(lambda p, x, t, ctx: model.apply({"params": p}, x, t, ctx)).lower(
        params, x, t, ctx).compile(compiler_options=FAST_COMPILE)
    out = fn(c.unet_params, x, t, ctx)
    chex.assert_shape(out, x.shape)
    assert float(jnp.abs(out).max()) > 0.1
    np.testing.assert_array_equal(np.asarray(out), np.asarray(fn(params, x, t, ctx)))


def test_tables_round_trip_and_are_one_to_one():
    for name in PIPES:
        folder = open_folder(_folder(name))
        for component, table in (("unet", S.unet_compvis_names), ("vae", S.vae_compvis_names)):
            weights = folder.weights(component)
            names = table(weights)
            assert len({t.key for t in names.values()}) == len(names)  # no key used twice
            back = S.to_diffusers_state_dict(
                S.to_compvis_state_dict(weights, names), names,
                {k: v.shape for k, v in weights.items()}, what=component)
            chex.assert_trees_all_equal(back, weights)
    # OpenCLIP: q, k and v share one in_proj tensor per layer, the rest is one to one.
    text = {k.removeprefix("text_model."): v
            for k, v in open_folder(_folder("sd2")).weights("text_encoder").items()}
    names = S.openclip_compvis_names(text)
    fused = [t for t in names.values() if t.part in "qkv"]
    assert len(fused) == 2 * 3 * 3 and len({t.key for t in fused}) == 2 * 3
    assert names["encoder.layers.2.self_attn.v_proj.weight"] == S.CompVisTensor(
        S.OPENCLIP_PREFIX + "transformer.resblocks.2.attn.in_proj_weight", "v")
    assert S.unet_compvis_names(["up_blocks.1.upsamplers.0.conv.weight",
                                 "up_blocks.1.attentions.1.norm.weight",
                                 "up_blocks.1.resnets.1.conv1.weight",
                                 "up_blocks.0.resnets.2.norm1.bias"])[
        "up_blocks.1.upsamplers.0.conv.weight"].key == (
        S.UNET_PREFIX + "output_blocks.4.2.conv.weight")  # 3 + 1: after its attention


def _standard_shapes(unet_dict, vae_dict, text_dict, openclip):
    """The CompVis key -> shape set of a real-size checkpoint (eval_shape, no memory)."""
    from diffjax.networks.torch_layout import state_dict_shapes
    from diffjax.stable_diffusion.text_encoder import _param_shapes, _text_param
    from diffjax.stable_diffusion.vae import diffusers_vae_param, vae_param_shapes

    def compvis(names, shapes):
        return {t.key: S.compvis_shape(shapes[d], t.part) for d, t in names.items()}

    u = unet_state_dict_shapes(UNetConditionConfig.from_diffusers_dict(unet_dict))
    flax_vae = vae_param_shapes(AutoencoderKLConfig.from_diffusers(vae_dict))
    v = state_dict_shapes(flax_vae, lambda p: diffusers_vae_param(p, flax_vae[p]))
    t = state_dict_shapes(_param_shapes(text_config_from_dict(text_dict)), _text_param(""))
    table = S.openclip_compvis_names if openclip else S.clip_compvis_names
    return {**compvis(S.unet_compvis_names(u), u), **compvis(S.vae_compvis_names(v), v),
            **compvis(table(t), t)}


SD_VAE = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
          "down_block_types": ["DownEncoderBlock2D"] * 4,
          "up_block_types": ["UpDecoderBlock2D"] * 4}


@pytest.mark.parametrize("release", ["sd15", "sd21"])
def test_standard_architectures_are_inferred_from_shapes(release):
    sd2 = release == "sd21"
    unet = {  # runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1 unet/config.json
        "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "cross_attention_dim": 1024 if sd2 else 768,
        "attention_head_dim": [5, 10, 20, 20] if sd2 else 8, "use_linear_projection": sd2,
        "sample_size": 96 if sd2 else 64,
    }
    width = 1024 if sd2 else 768
    text = {"vocab_size": 49408, "hidden_size": width, "intermediate_size": 4 * width,
            "num_hidden_layers": 24 if sd2 else 12, "num_attention_heads": width // 64,
            "hidden_act": "gelu" if sd2 else "quick_gelu", "eos_token_id": 2}
    shapes = _standard_shapes(unet, SD_VAE, text, openclip=sd2)
    inferred = S.infer_configs(shapes)
    assert inferred["vae"]["sample_size"] == (768 if sd2 else 512)
    assert S.infer_configs(shapes, "epsilon")["unet"]["sample_size"] == 64  # SD 2.x 512-base
    assert UNetConditionConfig.from_diffusers_dict(inferred["unet"]) == (
        UNetConditionConfig.from_diffusers_dict(unet))
    assert AutoencoderKLConfig.from_diffusers(inferred["vae"]) == (
        AutoencoderKLConfig.from_diffusers(SD_VAE))
    # SD 2.x conditions on OpenCLIP's penultimate block: 24 in the file, 23 in the encoder.
    want = {**text, "num_hidden_layers": 23 if sd2 else 12}
    assert text_config_from_dict(inferred["text_encoder"]) == text_config_from_dict(want)
    assert S.compvis_scheduler_config("epsilon", sd2)["_class_name"] == (
        "DDIMScheduler" if sd2 else "PNDMScheduler")


def test_tiny_file_without_config_names_what_cannot_be_inferred():
    with pytest.raises(ValueError, match=r"cross_attention_dim=32.*block_out_channels=\[8, 16\]"
                                         r".*config="):
        S.load_single_file(_file("sd1"), tokenizer=_folder("sd1"))


def test_config_dict_tokenizer_and_prediction_type():
    folder = open_folder(_folder("sd2"))
    configs = {n: folder.config(n) for n in ("unet", "vae", "text_encoder")}
    with pytest.raises(ValueError, match="holds no tokenizer.*tokenizer="):
        S.components_from_state_dict(checkpoint("sd2"), config=configs)
    with pytest.raises(ValueError, match="weights cannot tell.*prediction_type="):
        S.components_from_state_dict(checkpoint("sd2"), config=configs,
                                     tokenizer=_folder("sd2"))
    c = S.components_from_state_dict(checkpoint("sd2"), config=configs,
                                     tokenizer=load_tokenizer(_folder("sd2")),
                                     prediction_type="v_prediction", dtype=jnp.bfloat16)
    assert c.scheduler_config == S.compvis_scheduler_config("v_prediction", sd2=True)
    assert {leaf.dtype for leaf in jax.tree.leaves(c.unet_params)} == {jnp.dtype(jnp.bfloat16)}
    override = S.load_single_file(_file("sd1"), config=_folder("sd1"),
                                  prediction_type="v_prediction")
    assert override.scheduler_config["prediction_type"] == "v_prediction"
    assert override.scheduler_config["_class_name"] == "PNDMScheduler"
    with pytest.raises(ValueError, match="lacks vae"):
        S.components_from_state_dict(checkpoint("sd2"), config={"unet": {}, "text_encoder": {}})


def _load(ckpt, name="sd1", **kw):
    return S.components_from_state_dict(ckpt, config=_folder(name), what="bad.ckpt", **kw)


def test_missing_renamed_misshaped_and_extra_tensors_are_named():
    good = checkpoint("sd1")
    key = S.UNET_PREFIX + "output_blocks.3.1.proj_out.weight"
    missing = {k: v for k, v in good.items() if k != key}
    with pytest.raises(KeyError, match=r"1 tensors missing: model\.diffusion_model\.output_blo"
                                       r"cks\.3\.1\.proj_out\.weight \(diffusers up_blocks\.1"
                                       r"\.attentions\.1\.proj_out\.weight\)"):
        _load(missing)
    renamed = {**missing, key.replace("proj_out", "proj_outt"): good[key]}
    with pytest.raises(KeyError, match=r"missing: .*proj_out\.weight.*no place for: "
                                       r"model\.diffusion_model\.output_blocks\.3\.1\.proj_outt"):
        _load(renamed)
    vae_key = S.VAE_PREFIX + "decoder.mid.attn_1.k.weight"
    shaped = {**good, vae_key: np.zeros((16, 16, 3, 3), np.float32)}
    with pytest.raises(ValueError, match=r"'first_stage_model\.decoder\.mid\.attn_1\.k\.weight"
                                         r"' \(diffusers 'decoder\.mid_block\.attentions\.0\."
                                         r"to_k\.weight'\) has shape \(16, 16, 3, 3\).*needs "
                                         r"\(16, 16, 1, 1\)"):
        _load(shaped)
    linear = {**good, vae_key: good[vae_key][:, :, 0, 0]}  # VAEs saved with Linear attention
    _assert_same(_load(linear).vae_params, from_file("sd1").vae_params)
    text_key = S.CLIP_PREFIX + "text_model.encoder.layers.0.mlp.fc1.weight"
    extra = {**good, S.CLIP_PREFIX + "text_model.encoder.layers.3.mlp.fc1.weight": good[text_key]}
    with pytest.raises(KeyError, match=r"text encoder.*no place for: cond_stage_model\."
                                       r"transformer\.text_model\.encoder\.layers\.3"):
        _load(extra)
    with pytest.raises(KeyError, match=r"no text encoder tensors"):
        _load({k: v for k, v in good.items() if not k.startswith("cond_stage_model.")})


def test_openclip_last_block_is_skipped_as_sd2_does():
    good = checkpoint("sd2")
    block = S.OPENCLIP_PREFIX + "transformer.resblocks."
    layer2 = {k[len(block) + 2:]: v for k, v in good.items() if k.startswith(block + "2.")}
    plus_one = {**good, **{f"{block}3.{k}": v + 1 for k, v in layer2.items()}}
    _assert_same(_load(plus_one, "sd2").text_params, from_file("sd2").text_params)
    plus_two = {**plus_one, **{f"{block}4.{k}": v for k, v in layer2.items()}}
    with pytest.raises(KeyError, match=r"no place for: cond_stage_model\.model\.transformer\."
                                       r"resblocks\.3\.attn\.in_proj_bias"):
        _load(plus_two, "sd2")
    in_proj = block + "0.attn.in_proj_weight"
    with pytest.raises(ValueError, match=r"in_proj_weight' \(diffusers 'encoder\.layers\.0\."
                                         r"self_attn\.[qkv]_proj\.weight'\) has shape \(64, 32\)"):
        _load({**good, in_proj: good[in_proj][:64]}, "sd2")


def test_ema_schedule_and_unknown_tensors():
    good = checkpoint("sd1")
    ema = {S._ema_key(k): v + 1 for k, v in good.items() if k.startswith(S.UNET_PREFIX)}
    c = _load({**good, **ema, "model_ema.decay": np.float32(0.9999)}, ema=True)
    chex.assert_trees_all_equal(c.unet_params,
                                jax.tree.map(lambda v: v + 1, from_file("sd1").unet_params))
    with pytest.raises(KeyError, match=r"EMA.*missing: model_ema\.diffusion_modelinput_blocks00"):
        _load(good, ema=True)
    other = {**good, "alphas_cumprod": good["alphas_cumprod"] ** 1.1,
             "depth_model.w": good["betas"]}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _load(other)
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2, messages
    assert "1 tensors outside the UNet, VAE and text encoder were not loaded: depth_model.w" in (
        messages[0])
    assert "alphas_cumprod buffer differs from the scheduler config's schedule" in messages[1]


def test_bad_paths(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        S.load_single_file(tmp_path / "nope.safetensors", config=_folder("sd1"))
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"unknown suffix '\.bin'"):
        S.read_checkpoint(tmp_path / "model.bin")
    (tmp_path / "model.ckpt").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(ImportError, match=r"needs torch: pip install 'diffjax\[convert\]'"):
        S.read_checkpoint(tmp_path / "model.ckpt")
    with pytest.raises(FileNotFoundError, match="not a diffusers folder"):
        S.load_single_file(_file("sd1"), config=str(tmp_path))


def test_pickled_ckpt_through_torch(tmp_path):
    torch = pytest.importorskip("torch")
    state = {k: torch.from_numpy(np.array(v)) for k, v in checkpoint("sd2").items()}
    key = S.UNET_PREFIX + "out.2.weight"
    state[key] = state[key].to(torch.bfloat16)
    path = tmp_path / "v2.ckpt"
    torch.save({"state_dict": state, "global_step": 875000}, path)
    c = S.load_single_file(path, config=_folder("sd2"))
    want = jax.tree.map(np.asarray, from_file("sd2").unet_params)
    want["conv_out"]["kernel"] = np.asarray(
        want["conv_out"]["kernel"].astype(jnp.bfloat16).astype(np.float32))
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, c.unet_params), want)
    _assert_same(c.text_params, from_file("sd2").text_params)
    torch.save({"state_dict": {}, "callback": _NotATensor()}, tmp_path / "code.ckpt")
    with pytest.raises(ValueError, match=r"weights_only=True\) refused it"):
        S.read_checkpoint(tmp_path / "code.ckpt")


class _NotATensor:
    """An object weights_only unpickling refuses (as it would refuse code)."""


def test_load_pipeline_reads_a_single_file_as_the_folder():
    from diffjax.stable_diffusion.pipeline import load_pipeline

    a = load_pipeline(_file("sd1"), config=_folder("sd1"))
    b = load_pipeline(_folder("sd1"))
    for field in ("unet_params", "vae_params", "text_params"):
        _assert_same(getattr(a, field), getattr(b, field))
    assert (a.unet_config, a.vae_config, a.scheduler_config) == (
        b.unet_config, b.vae_config, b.scheduler_config)
    with pytest.raises(ValueError, match="single-file"):
        load_pipeline(_folder("sd1"), prediction_type="epsilon")
    with pytest.raises(ValueError, match="variant"):
        load_pipeline(_file("sd1"), config=_folder("sd1"), variant="fp16")
