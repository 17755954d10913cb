"""The Flax CLIP, its tokenizer and the safetensors reader against transformers (goldens).

``tests/data/clip_tiny/`` (a Hugging Face CLIP directory: config.json, model.safetensors,
vocab.json, merges.txt) and ``tests/data/clip_golden.npz`` were written by
``experiments/make_clip_golden.py`` with transformers 5.24 and torch: a seeded random
``CLIPModel`` of a tiny config and its outputs, and ``CLIPTokenizer`` ids. Nothing here
imports torch or transformers.
"""

import dataclasses
import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from repo_scripts import load_script

from diffjax.networks import clip as C
from diffjax.networks import clip_tokenizer as T
from diffjax.networks.safetensors_io import (
    read_safetensors,
    read_safetensors_header,
    write_safetensors,
)

DATA = os.path.join(os.path.dirname(__file__), "data")
MODEL_DIR = os.path.join(DATA, "clip_tiny")
GOLDEN = os.path.join(DATA, "clip_golden.npz")


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN, allow_pickle=False) as g:
        return {k: g[k] for k in g.files}


@pytest.fixture(scope="module")
def clip():
    return C.load_clip(MODEL_DIR)


# --------------------------------------------------------------------------------------
# safetensors


def test_safetensors_reader_dtypes(golden):
    # Written by the safetensors package (torch tensors): F32, F16, BF16, I64, a scalar.
    t = read_safetensors(os.path.join(MODEL_DIR, "dtypes.safetensors"))
    values = golden["dtype_values"]
    assert t["f32"].dtype == np.float32 and t["f16"].dtype == np.float16
    assert t["bf16"].dtype == jnp.bfloat16 and t["i64"].dtype == np.int64
    np.testing.assert_array_equal(t["f32"], values)
    np.testing.assert_array_equal(t["f16"].astype(np.float32), values)
    np.testing.assert_array_equal(t["bf16"].astype(np.float32), golden["dtype_bf16"])
    np.testing.assert_array_equal(t["i64"], np.arange(-3, 3))
    assert t["scalar"].shape == () and t["scalar"] == 7.0
    header, start = read_safetensors_header(os.path.join(MODEL_DIR, "dtypes.safetensors"))
    assert header["__metadata__"] == {"format": "pt"} and start % 8 == 0
    assert set(read_safetensors(os.path.join(MODEL_DIR, "dtypes.safetensors"), ["i64"])) == {
        "i64"
    }


def test_safetensors_writer_roundtrip_and_errors(tmp_path):
    tensors = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3).T,  # non-contiguous
        "b": np.array([1.5, -2.0], dtype=jnp.bfloat16),
        "s": np.float64(3.0),
        "e": np.zeros((0, 4), np.int32),
    }
    path = tmp_path / "x.safetensors"
    write_safetensors(path, tensors, metadata={"k": "v"})
    back = read_safetensors(path)
    assert list(back) == list(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == np.asarray(v).dtype and back[k].shape == np.shape(v)
        np.testing.assert_array_equal(back[k], v)
    with pytest.raises(KeyError, match="no tensors named"):
        read_safetensors(path, ["zz"])
    with pytest.raises(TypeError, match="unsupported dtype complex64"):
        write_safetensors(tmp_path / "c.safetensors", {"c": np.zeros(2, np.complex64)})
    raw = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[:-8])
    with pytest.raises(ValueError, match="'s'.*truncated or corrupt"):
        read_safetensors(tmp_path / "trunc.safetensors")
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="shorter than 8 bytes"):
        read_safetensors(tmp_path / "short.safetensors")
    (tmp_path / "len.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="header length"):
        read_safetensors(tmp_path / "len.safetensors")
    head = json.dumps({"x": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}})
    head = head.encode() + b" " * (-len(head) % 8)
    (tmp_path / "f8.safetensors").write_bytes(len(head).to_bytes(8, "little") + head + b"\0")
    with pytest.raises(ValueError, match="dtype 'F8_E4M3'"):
        read_safetensors(tmp_path / "f8.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_safetensors(tmp_path / "absent.safetensors")


def test_safetensors_writer_matches_the_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    tensors = {"w": np.arange(12, dtype=np.float16).reshape(3, 4), "s": np.float32(2.0)}
    write_safetensors(tmp_path / "ours.safetensors", tensors)
    loaded = st.load_file(str(tmp_path / "ours.safetensors"))
    chex.assert_trees_all_equal(loaded, {k: np.asarray(v) for k, v in tensors.items()})


# --------------------------------------------------------------------------------------
# Config and weights


def test_config_from_hf_json(clip):
    _, config = clip
    assert config.vision == C.CLIPVisionConfig(
        hidden_size=16, intermediate_size=21, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    assert config.text == C.CLIPTextConfig(
        vocab_size=566, hidden_size=12, intermediate_size=19, num_hidden_layers=2,
        num_attention_heads=3, max_position_embeddings=16, hidden_act="gelu",
        layer_norm_eps=1e-5, eos_token_id=559,
    )
    assert config.projection_dim == 10 and config.vision.num_positions == 17
    assert config.text.pooling == "first_eos"
    # Defaults are transformers' (ViT-B/32); OpenAI's legacy configs carry eos_token_id 2.
    legacy = C.CLIPConfig.from_hf_dict(
        {"text_config": {"eos_token_id": 2}, "text_config_dict": {"hidden_size": 64,
                                                                  "num_attention_heads": 4},
         "vision_config": {"image_size": [224, 224]}}
    )
    assert legacy.text.pooling == "legacy_argmax" and legacy.text.hidden_size == 64
    assert legacy.vision == C.CLIPVisionConfig() and legacy.projection_dim == 512
    with pytest.raises(ValueError, match="model_type"):
        C.CLIPConfig.from_hf_dict({"model_type": "siglip"})
    with pytest.raises(ValueError, match="square"):
        C.CLIPConfig.from_hf_dict({"vision_config": {"image_size": [224, 256]}})
    with pytest.raises(ValueError, match="not a multiple of num_attention_heads"):
        C.CLIPTextConfig(hidden_size=10, num_attention_heads=4)
    with pytest.raises(ValueError, match="unsupported hidden_act 'relu'"):
        C.CLIPVisionConfig(hidden_act="relu")


def test_hf_state_dict_keys_and_shapes(golden, clip):
    params, config = clip
    shapes = C.clip_hf_state_dict_shapes(config)
    assert sorted(shapes) == golden["hf_keys"].tolist()  # transformers' CLIPModel keys
    assert shapes["vision_model.embeddings.patch_embedding.weight"] == (16, 3, 8, 8)
    assert shapes["visual_projection.weight"] == (10, 16)
    assert shapes["text_projection.weight"] == (10, 12)
    assert shapes["text_model.encoder.layers.1.mlp.fc1.weight"] == (19, 12)
    assert shapes["logit_scale"] == ()
    chex.assert_shape(params["vision_model"]["embeddings"]["patch_embedding"]["kernel"],
                      (8, 8, 3, 16))
    chex.assert_shape(params["text_model"]["encoder"]["layers_1"]["mlp"]["fc1"]["kernel"],
                      (12, 19))
    np.testing.assert_allclose(params["logit_scale"], np.log(30.0), rtol=1e-6)
    random_weights = load_script("experiments/random_weights.py")
    chex.assert_trees_all_equal_shapes_and_dtypes(
        random_weights.init_clip_params(config, seed=1), params
    )


# --------------------------------------------------------------------------------------
# Parity with transformers' CLIPModel


def _normalized(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _check_parity(out, golden, suffix, atol):
    n = len(golden["pixels"])
    checks = {
        "vision_hidden": out["vision_model_output"]["last_hidden_state"],
        "text_hidden": out["text_model_output"]["last_hidden_state"],
        "image_features": out["image_embeds"],
        "text_features": out["text_embeds"],
        "logits_per_image": out["logits_per_image"][:, :n],
    }
    for name, value in checks.items():
        key = f"{name}_{suffix}"
        if key not in golden:
            continue
        want = _normalized(golden[key]) if name.endswith("features") else golden[key]
        np.testing.assert_allclose(value, want, rtol=0, atol=atol, err_msg=name)
    np.testing.assert_allclose(out["logits_per_text"], out["logits_per_image"].T)


def test_parity_with_transformers_float32(golden, clip):
    params, config = clip
    run = jax.jit(lambda p, i, x: C.CLIP(config).apply({"params": p}, i, x))
    out = run(params, golden["input_ids"], golden["pixels"])
    assert out["logits_per_image"].dtype == jnp.float32
    n_text = len(golden["captions"])
    chex.assert_shape([out["logits_per_image"], out["text_embeds"]], [(3, n_text), (n_text, 10)])
    _check_parity(out, golden, "f32", atol=1e-5)


def test_parity_with_transformers_float64(golden, clip):
    # A faithful port agrees to round-off in float64.
    params, config = clip
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
        pixels = jnp.asarray(golden["pixels"], jnp.float64)
        run = jax.jit(lambda p, i, x: C.CLIP(config).apply({"params": p}, i, x))
        out = run(p64, golden["input_ids"], pixels)
        assert out["logits_per_image"].dtype == jnp.float64
        _check_parity(out, golden, "f64", atol=1e-12)


def test_eos_pooling_legacy_argmax_and_first_eos(golden, clip):
    params, config = clip
    ids = golden["pool_ids"]  # rows with "added" ids above EOS, and a plain row
    legacy = dataclasses.replace(config, text=dataclasses.replace(config.text, eos_token_id=2))
    assert legacy.text.pooling == "legacy_argmax"
    new = C.clip_text_features(params, config, ids, batch_size=2)  # shape shared below
    old = C.clip_text_features(params, legacy, ids, batch_size=2)
    np.testing.assert_allclose(new, golden["pool_first_eos"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(old, golden["pool_legacy"], rtol=0, atol=1e-5)
    assert np.abs(new[0] - old[0]).max() > 1e-3  # the two rules differ on row 0 ...
    np.testing.assert_allclose(new[2], old[2], atol=1e-6)  # ... and agree without added ids
    hidden = jnp.arange(2 * 4 * 1.0).reshape(2, 4, 1)
    ids = jnp.array([[0, 9, 5, 9], [0, 3, 7, 1]])
    np.testing.assert_array_equal(C.pool_legacy_argmax(hidden, ids)[:, 0], [1.0, 6.0])
    np.testing.assert_array_equal(C.pool_first_eos(hidden, ids, 5)[:, 0], [2.0, 4.0])


# --------------------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_reproduces_transformers_ids(golden):
    tok = C.load_clip_tokenizer(MODEL_DIR)
    assert tok.max_length == 16  # the text tower's max_position_embeddings
    captions = golden["captions"].tolist()
    ids = tok(captions)
    chex.assert_shape(ids, (len(captions), 16))
    np.testing.assert_array_equal(ids, golden["input_ids"])
    longest = max(range(len(captions)), key=lambda i: len(tok.encode(captions[i])))
    assert len(tok.encode(captions[longest])) > 14  # truncated to BOS + 14 + EOS
    assert ids[longest, -1] == tok.eos_token_id
    np.testing.assert_array_equal(tok(captions[0]), ids[:1])


def test_tokenizer_pieces():
    assert T.normalize_text("A\u00a0 B\tC\u0301\x1c") == "a b \u0107\x1c"
    assert T.normalize_text("\u03a3\u0391\u03a3") == "\u03c3\u03b1\u03c3"  # no final sigma
    assert T.pre_tokenize("it's 42nd!! \u00bd\x1cok''s") == [
        "it", "'s", "4", "2", "nd", "!!", "\u00bd", "\x1c", "ok", "''", "s"]
    table = T.bytes_to_unicode()
    assert len(set(table.values())) == 256 and table[ord("a")] == "a"
    assert table[0] == "\u0100" and table[ord(" ")] == "\u0120"
    with pytest.raises(ValueError, match="special tokens"):
        T.CLIPTokenizer({"a": 0}, [])


def test_tokenizer_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        T.CLIPTokenizer.from_directory(tmp_path)
    shutil.copy(os.path.join(MODEL_DIR, "vocab.json"), tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(ValueError, match="line 2"):
        T.CLIPTokenizer.from_directory(tmp_path)
    (tmp_path / "merges.txt").write_text("t h\n")
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"pad_token": {"content": "!"}, "model_max_length": 8}))
    tok = T.CLIPTokenizer.from_directory(tmp_path)
    assert tok.max_length == 8 and tok.pad_token_id == 0  # "!" is byte token 0
    np.testing.assert_array_equal(tok("the")[0, 4:], 0)  # <bos> th e</w> <eos> ! ...


# --------------------------------------------------------------------------------------
# Preprocessing and the CLIP score


def test_preprocessing_matches_clip_image_processor(golden):
    pre = jax.jit(C.preprocess_clip_images, static_argnums=(1, 2))
    for name in ("wide", "tall"):  # downsample 36x45 -> 32x40; upsample 12x10 -> 38x32
        x = pre(golden[f"raw_{name}"], 32, (0.0, 1.0))
        chex.assert_shape(x, (2, 32, 32, 3))
        np.testing.assert_allclose(x, golden[f"pre_{name}"], rtol=0, atol=1e-5)
    # transformers' processor itself on uint8 pixels (PIL backend): within a grey level.
    x = pre(golden["u8_image"], 32, (0, 255))
    level = 1.1 / 255 / min(C.OPENAI_CLIP_STD)
    np.testing.assert_allclose(x, golden["u8_processed"], rtol=0, atol=level)
    gray = C.preprocess_clip_images(jnp.full((1, 32, 32, 1), 0.5), 32, (0, 1))
    np.testing.assert_allclose(
        gray[0, 0, 0], (0.5 - np.array(C.OPENAI_CLIP_MEAN)) / C.OPENAI_CLIP_STD, rtol=1e-6)


def test_clip_score_end_to_end(golden, clip):
    params, config = clip
    tok = C.load_clip_tokenizer(MODEL_DIR)
    images = 2.0 * golden["raw_wide"] - 1.0  # diffjax's [-1, 1]
    captions = golden["captions"][:2].tolist()
    # Raw images + strings vs transformers' preprocessing + CLIPModel (torch, float64 cos).
    scores = C.clip_scores(images, captions, params, config, tokenizer=tok)
    np.testing.assert_allclose(scores, golden["score_pairs"], rtol=0, atol=1e-4)
    assert C.clip_score(images, captions, params, config, tokenizer=tok) == pytest.approx(
        float(np.mean(golden["score_pairs"])), abs=1e-4)
    # The formula on our own features, over every image/caption pairing (ids as input),
    # batched with a padded last batch: no new compilation for the same batch shape.
    ids = golden["input_ids"][:5]
    img = C.clip_image_features(params, config, images, batch_size=2)
    before = C._text_features._cache_size()
    txt = C.clip_text_features(params, config, ids, batch_size=2)
    assert C._text_features._cache_size() == before
    chex.assert_shape([img, txt], [(2, 10), (5, 10)])
    np.testing.assert_allclose(txt, golden["text_features_f32"][:5], atol=1e-5)
    cos = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (
        txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
    assert cos.min() < 0 < cos.max()  # the clamp at 0 is exercised
    for i in range(2):
        pairs = C.clip_scores(np.repeat(images[i : i + 1], 5, axis=0), ids, params, config,
                              batch_size=2)
        np.testing.assert_allclose(pairs, np.maximum(100 * cos[i], 0), rtol=0, atol=1e-4)


def test_bad_inputs_are_clear_errors(tmp_path, monkeypatch, golden, clip):
    params, config = clip
    monkeypatch.delenv(C.WEIGHTS_ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match="DIFFJAX_CLIP_WEIGHTS.*never downloads"):
        C.load_clip()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        C.load_clip(tmp_path / "absent")
    monkeypatch.setenv(C.WEIGHTS_ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        C.load_clip()
    shutil.copy(os.path.join(MODEL_DIR, "config.json"), tmp_path)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        C.load_clip()

    sd = read_safetensors(os.path.join(MODEL_DIR, "model.safetensors"))
    key = "text_model.encoder.layers.1.mlp.fc2.weight"
    write_safetensors(tmp_path / "model.safetensors", {**sd, key: sd[key].T})
    with pytest.raises(ValueError,
                       match=rf"tensor '{key}' has shape \(19, 12\), but the config "
                       r"needs \(12, 19\)"):
        C.load_clip()
    write_safetensors(tmp_path / "model.safetensors", {k: v for k, v in sd.items() if k != key})
    with pytest.raises(KeyError, match=rf"1 tensors missing: {key}'$"):
        C.load_clip()
    extra = {**sd, "text_model.embeddings.position_ids": np.arange(16)[None],
             "text_model.pooler.weight": np.zeros(3, np.float32)}
    write_safetensors(tmp_path / "model.safetensors", extra)
    with pytest.raises(KeyError,
                       match=r"1 tensors the config has no place for: text_model.pooler.weight'$"):
        C.load_clip()  # position_ids buffers (old checkpoints) are ignored, others are not
    # float16 checkpoints load as float32.
    write_safetensors(tmp_path / "model.safetensors",
                      {k: v.astype(np.float16) for k, v in sd.items()})
    half, _ = C.load_clip()
    assert half["logit_scale"].dtype == jnp.float32

    images = 2.0 * golden["raw_wide"] - 1.0
    ids = golden["input_ids"][:2]
    with pytest.raises(ValueError, match=r"outside input_range=\(-1, 1\).*\(0, 255\)"):
        C.clip_score(255 * golden["raw_wide"], ids, params, config)
    with pytest.raises(ValueError, match="NCHW"):
        C.clip_score(images.transpose(0, 3, 1, 2), ids, params, config)
    with pytest.raises(ValueError, match="non-finite"):
        C.clip_score(np.full_like(images, np.nan), ids, params, config)
    with pytest.raises(ValueError, match="pass tokenizer="):
        C.clip_score(images, ["a", "b"], params, config)
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        C.clip_text_features(params, config, np.zeros((1, 17), np.int32))
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 566\)"):
        C.clip_text_features(params, config, np.full((1, 4), 566))
    with pytest.raises(ValueError, match="2 images and 1 texts"):
        C.clip_scores(images, ids[:1], params, config)
    with pytest.raises(ValueError, match="input_range"):
        C.clip_image_features(params, config, images, input_range=(1, 1))
