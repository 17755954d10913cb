"""diffusers model folders (no torch) and the SD text encoder against transformers' goldens.

The folders ``tests/data/tiny_sd1`` / ``tiny_sd2`` and ``tests/data/tiny_sd_goldens.npz`` are
written by diffusers' and transformers' own classes: ``python experiments/make_tiny_sd.py``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil

import chex
import numpy as np
import pytest

from diffjax.networks.safetensors_io import read_safetensors, write_safetensors
from diffjax.stable_diffusion.folder import open_folder, read_component_weights
from diffjax.stable_diffusion.text_encoder import (
    encode_prompt,
    load_text_encoder,
    load_tokenizer,
    tokenize_prompts,
)
from diffjax.stable_diffusion.vae import load_vae

DATA = os.path.join(os.path.dirname(__file__), "data")
PIPES = ("sd1", "sd2")
PROMPTS = ["a photo of a cat", "the quick brown fox jumps over the lazy dog", ""]


@functools.cache
def goldens() -> dict[str, np.ndarray]:
    with np.load(os.path.join(DATA, "tiny_sd_goldens.npz")) as g:
        return {k: g[k] for k in g.files}


@functools.cache
def text_encoder(name: str):
    return load_text_encoder(os.path.join(DATA, f"tiny_{name}"))


def _folder(name: str) -> str:
    return os.path.join(DATA, f"tiny_{name}")


def test_model_index_and_configs():
    for name, scheduler in (("sd1", "PNDMScheduler"), ("sd2", "DDIMScheduler")):
        folder = open_folder(_folder(name))
        assert folder.pipeline_class == "StableDiffusionPipeline"
        assert dict(folder.components) == {
            "scheduler": ("diffusers", scheduler),
            "text_encoder": ("transformers", "CLIPTextModel"),
            "tokenizer": ("transformers", "CLIPTokenizer"),
            "unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
        }  # null entries (safety_checker, feature_extractor, image_encoder) are dropped
        sched = folder.config("scheduler")  # scheduler_config.json
        assert sched["_class_name"] == scheduler and sched["steps_offset"] == 1
        assert folder.config("unet")["use_linear_projection"] is (name == "sd2")
    assert open_folder(_folder("sd2")).config("scheduler")["prediction_type"] == "v_prediction"


@pytest.mark.parametrize("name", PIPES)
def test_text_encoder_matches_transformers(name):
    g = goldens()
    ids = tokenize_prompts(load_tokenizer(_folder(name)), PROMPTS)
    np.testing.assert_array_equal(ids, g[f"{name}/input_ids"])
    params, config = text_encoder(name)
    assert config.hidden_act == {"sd1": "quick_gelu", "sd2": "gelu"}[name]
    last = encode_prompt(params, config, ids)
    chex.assert_shape(last, (3, 77, 32))
    chex.assert_trees_all_close(last, g[f"{name}/last_hidden_state"], atol=1e-5, rtol=0)
    chex.assert_trees_all_close(last, g[f"{name}/prompt_embeds"], atol=1e-5, rtol=0)
    penultimate = encode_prompt(params, config, ids, skip=1)
    chex.assert_trees_all_close(penultimate, g[f"{name}/penultimate"], atol=1e-5, rtol=0)
    assert np.abs(np.asarray(penultimate) - g[f"{name}/last_hidden_state"]).max() > 0.1


def test_both_text_encoder_key_layouts_are_read():
    sd1 = read_component_weights(os.path.join(_folder("sd1"), "text_encoder"))
    sd2 = read_component_weights(os.path.join(_folder("sd2"), "text_encoder"))
    assert not any(k.startswith("text_model.") for k in sd1)  # transformers 5
    assert all(k.startswith("text_model.") for k in sd2)  # transformers 4 / released SD


def test_tokenizer_json_only_and_truncation_warning(tmp_path):
    src = os.path.join(_folder("sd1"), "tokenizer")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, f), tmp_path / f)
    tok = load_tokenizer(tmp_path)  # no vocab.json / merges.txt
    g = goldens()
    np.testing.assert_array_equal(tokenize_prompts(tok, PROMPTS), g["sd1/input_ids"])
    long = " ".join(["cat"] * 80)
    n = len(tok.encode(long))
    with pytest.warns(UserWarning, match=rf"has {n} tokens .* the last {n - 75} tokens"):
        ids = tokenize_prompts(tok, [long, "a dog"])
    chex.assert_shape(ids, (2, 77))
    assert ids[0, -1] == tok.eos_token_id and ids[0, 0] == tok.bos_token_id


def test_sharded_weights(tmp_path):
    dst = tmp_path / "vae"
    shutil.copytree(os.path.join(_folder("sd2"), "vae"), dst)
    full = read_safetensors(dst / "diffusion_pytorch_model.safetensors")
    os.remove(dst / "diffusion_pytorch_model.safetensors")
    names = sorted(full)
    shards = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
    for shard, keys in shards.items():
        write_safetensors(dst / shard, {k: full[k] for k in keys})
    index = {"weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (dst / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    got = read_component_weights(dst)
    assert sorted(got) == names
    chex.assert_trees_all_equal(got, full)


def _partial_copy(tmp_path, name, parts):
    dst = tmp_path / name
    dst.mkdir()
    shutil.copy(os.path.join(_folder(name), "model_index.json"), dst / "model_index.json")
    for part in parts:
        shutil.copytree(os.path.join(_folder(name), part), dst / part)
    return dst


def test_missing_component_is_named(tmp_path):
    dst = _partial_copy(tmp_path, "sd1", ["text_encoder"])
    with pytest.raises(FileNotFoundError, match=r"component 'vae' \(AutoencoderKL\).*"
                                                + r"folder '.*sd1/vae' is missing"):
        load_vae(dst)
    with pytest.raises(FileNotFoundError, match=r"'tokenizer' \(CLIPTokenizer\)"):
        load_tokenizer(dst)
    with pytest.raises(FileNotFoundError, match=r"no 'safety_checker' component"):
        open_folder(dst).component_dir("safety_checker")
    with pytest.raises(FileNotFoundError, match=r"model_index\.json' does not exist"):
        open_folder(dst / "text_encoder")


def test_missing_weights_file_lists_names(tmp_path):
    dst = _partial_copy(tmp_path, "sd2", ["text_encoder"])
    os.remove(dst / "text_encoder" / "model.safetensors")
    (dst / "text_encoder" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match=r"looked for diffusion_pytorch_model\.safetensors"
                                                r".*model\.safetensors\.index\.json.*"
                                                r"pytorch_model\.bin.*not read"):
        load_text_encoder(dst)


def test_unsupported_class_lists_supported(tmp_path):
    dst = _partial_copy(tmp_path, "sd1", ["vae", "text_encoder"])
    index = json.loads((dst / "model_index.json").read_text())
    index["vae"] = ["diffusers", "AutoencoderTiny"]
    index["text_encoder"] = ["transformers", "T5EncoderModel"]
    (dst / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"vae class 'AutoencoderTiny' is not supported; "
                                         r"supported: AutoencoderKL"):
        load_vae(dst)
    with pytest.raises(ValueError, match=r"'T5EncoderModel' is not supported; supported: "
                                         r"CLIPTextModel"):
        load_text_encoder(dst)


def test_text_encoder_bad_inputs(tmp_path):
    dst = _partial_copy(tmp_path, "sd1", ["text_encoder"])
    path = dst / "text_encoder" / "model.safetensors"
    sd = read_safetensors(path)
    sd["encoder.layers.1.mlp.fc1.weight"] = np.zeros((36, 32), np.float32)
    write_safetensors(path, sd)
    with pytest.raises(ValueError, match=r"'encoder\.layers\.1\.mlp\.fc1\.weight' has shape "
                                         r"\(36, 32\), but the config needs \(37, 32\)"):
        load_text_encoder(dst)
    params, config = text_encoder("sd1")
    ids = goldens()["sd1/input_ids"]
    with pytest.raises(ValueError, match=r"skip \(clip_skip\) must be in \[0, 3\]"):
        encode_prompt(params, config, ids, skip=4)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        encode_prompt(params, config, ids + 1000)
