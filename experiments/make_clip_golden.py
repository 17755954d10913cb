"""Golden outputs of transformers' torch CLIPModel (tiny random config) for our Flax CLIP.

Writes, under ``tests/data/``:

- ``clip_tiny/``: a Hugging Face CLIP directory: ``config.json`` and ``model.safetensors``
  (``save_pretrained`` of a seeded random ``CLIPModel``: vision 32x32 images, 8x8 patches,
  width 16, 2 layers, 2 heads, quick_gelu; text width 12, 2 layers, 3 heads, gelu, 16
  positions; projection 10; layer norms and biases perturbed away from their 1/0 init),
  and a tiny byte-level BPE vocabulary (``vocab.json``, ``merges.txt``): the 512 byte
  tokens, 48 merges fitted to a few captions, then ``<|startoftext|>``,
  ``<|endoftext|>``. The model's vocabulary has 6 more ids than the tokenizer's (added
  tokens), so that the legacy (``eos_token_id == 2``, argmax) and the new (first EOS)
  pooling disagree on rows that contain them.
- ``clip_tiny/dtypes.safetensors``: F32/F16/BF16/I64 tensors written by the
  ``safetensors`` package, for the reader test.
- ``clip_golden.npz``: token ids of transformers' ``CLIPTokenizer`` (padding to 16,
  truncation) for captions with punctuation, digits, uppercase, contractions, NFC,
  non-Latin scripts, emoji and a too-long one; image and text features, hidden states and
  logits in float32 and float64; both poolings; the preprocessing of
  ``CLIPImageProcessor`` in float (torch bicubic antialiased resize, width then height,
  each pass clipped to [0, 1] as PIL's uint8 resampling; center crop; OpenAI
  normalization) on a wide and a tall image; the PIL-backend processor on uint8 pixels;
  per-pair CLIP scores of raw images and captions.

Needs torch and transformers (the ``parity`` extra):

    python experiments/make_clip_golden.py
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import itertools
import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from diffjax.networks.clip import CLIPConfig as OurConfig
from diffjax.networks.clip import clip_hf_state_dict_shapes

SEED = 2021
MAX_LENGTH = 16
EXTRA_IDS = 6  # model vocabulary beyond the tokenizer's: "added tokens"
CORPUS = [
    "a photo of a cat",
    "a photo of a dog",
    "the quick brown fox jumps over the lazy dog",
    "a painting of the ocean at sunset",
]
CAPTIONS = [
    "a photo of a cat",
    "A  Photo\tof a DOG!!",
    "it's 2024, don't worry -- we'll see...",
    "caf\u00e9 cafe\u0301 na\u00efve",
    "a <|endoftext|> b",
    "\u03a3\u0391\u03a3 \u0130stanbul \u00df \u4e00\u4e8c\u4e09 \u00bd \u00b2 \u216b",
    "a\x1cb x\u00a0y\u3000z 'S 'LL ''s x_y",
    "hello\U0001f600world",
    "the quick brown fox jumps over the lazy dog and the cat sleeps all day",
    "",
    "   lead trail  ",
]
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def build_vocab(num_merges: int = 48) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte tokens, byte</w> tokens, merges fitted greedily to CORPUS, then the specials."""
    base = list(bytes_to_unicode().values())
    tokens = base + [c + "</w>" for c in base]
    counts = collections.Counter(w for s in CORPUS for w in s.split())
    splits = {w: (*w[:-1], w[-1] + "</w>") for w in counts}
    merges = []
    for _ in range(num_merges):
        pairs = collections.Counter()
        for w, c in counts.items():
            s = splits[w]
            for pair in itertools.pairwise(s):
                pairs[pair] += c
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        tokens.append(a + b)
        for w, s in splits.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            splits[w] = tuple(out)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def perturb_(model: CLIPModel, gen: torch.Generator) -> None:
    """Moves layer norms and biases away from their 1 / 0 init (so a swap would show)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif "embedding" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        model.logit_scale.fill_(math.log(30.0))


def preprocess_float(x: np.ndarray, size: int) -> np.ndarray:
    """CLIPImageProcessor's steps in float: NHWC [0, 1] -> normalized NHWC."""
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    h, w = t.shape[-2:]
    short, long = min(h, w), max(h, w)
    new = (size, int(size * long / short))
    new = new if h <= w else new[::-1]
    for size_hw in ((h, new[1]), new):  # width pass, then height, clipped as PIL's uint8
        if tuple(t.shape[-2:]) != size_hw:
            t = F.interpolate(t, size=size_hw, mode="bicubic", antialias=True,
                              align_corners=False).clamp(0.0, 1.0)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    t = t[..., top : top + size, left : left + size].permute(0, 2, 3, 1).numpy()
    return (t - MEAN) / STD


def features(model: CLIPModel, ids: np.ndarray, pixels: np.ndarray, dtype: torch.dtype) -> dict:
    """Image/text features, hidden states and logits (pixels NHWC)."""
    model = model.to(dtype)
    pv = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(dtype)
    ii = torch.from_numpy(ids).long()
    with torch.no_grad():
        vis = model.vision_model(pixel_values=pv)
        txt = model.text_model(input_ids=ii)
        out = model(input_ids=ii[: len(pixels)], pixel_values=pv)
        return {
            "image_features": model.visual_projection(vis.pooler_output).numpy(),
            "vision_hidden": vis.last_hidden_state.numpy(),
            "text_features": model.text_projection(txt.pooler_output).numpy(),
            "text_hidden": txt.last_hidden_state.numpy(),
            "logits_per_image": out.logits_per_image.numpy(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="tests/data")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model_dir = os.path.join(args.data, "clip_tiny")
    os.makedirs(model_dir, exist_ok=True)

    vocab, merges = build_vocab()
    with open(os.path.join(model_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(model_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer.from_pretrained(model_dir)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        bos, eos, eos)
    enc = tokenizer(CAPTIONS, padding="max_length", max_length=MAX_LENGTH, truncation=True)
    ids = np.array(enc["input_ids"], np.int32)
    assert max(len(tokenizer(c)["input_ids"]) for c in CAPTIONS) > MAX_LENGTH  # truncation

    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab) + EXTRA_IDS, hidden_size=12, intermediate_size=19,
            num_hidden_layers=2, num_attention_heads=3, max_position_embeddings=MAX_LENGTH,
            hidden_act="gelu", bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
        ),
        vision_config=dict(
            hidden_size=16, intermediate_size=21, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=8, hidden_act="quick_gelu",
        ),
        projection_dim=10,
    )
    torch.manual_seed(SEED)
    model = CLIPModel(config).eval()
    perturb_(model, torch.Generator().manual_seed(SEED))
    model.save_pretrained(model_dir, safe_serialization=True)
    for extra in os.listdir(model_dir):
        if extra not in ("config.json", "model.safetensors", "vocab.json", "merges.txt"):
            os.remove(os.path.join(model_dir, extra))
    hf_keys = sorted(model.state_dict())
    ours = OurConfig.from_json(os.path.join(model_dir, "config.json"))
    assert sorted(clip_hf_state_dict_shapes(ours)) == hf_keys, "state-dict keys differ"

    rng = np.random.default_rng(SEED)
    pixels = rng.standard_normal((3, 32, 32, 3)).astype(np.float32)
    golden: dict[str, np.ndarray] = {
        "captions": np.array(CAPTIONS),
        "input_ids": ids,
        "attention_mask": np.array(enc["attention_mask"], np.int32),
        "pixels": pixels,
        "hf_keys": np.array(hf_keys),
        "torch_version": np.array(torch.__version__),
        "transformers_version": np.array(importlib.metadata.version("transformers")),
    }
    for name, value in features(model, ids, pixels, torch.float32).items():
        golden[f"{name}_f32"] = value
    for name, value in features(model, ids, pixels.astype(np.float64), torch.float64).items():
        if "hidden" not in name:  # hidden states: float32 only (file size)
            golden[f"{name}_f64"] = value
    model = model.to(torch.float32)

    # Right padding does not change the pooled output (causal mask) with or without a mask.
    with torch.no_grad():
        masked = model.get_text_features(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(golden["attention_mask"]).long(),
        )
    masked = getattr(masked, "pooler_output", masked).numpy()
    assert np.abs(masked - golden["text_features_f32"]).max() < 1e-5

    # Pooling: rows with "added" ids above EOS; legacy argmax vs first EOS.
    added = len(vocab) + np.arange(EXTRA_IDS)
    pool_ids = np.full((3, MAX_LENGTH), eos, np.int32)
    pool_ids[0, :6] = [bos, 70, int(added[2]), 80, 90, eos]
    pool_ids[1, :4] = [bos, int(added[5]), 5, eos]
    pool_ids[2, :5] = [bos, 320, 514, 66, eos]  # no added ids: both poolings agree
    with torch.no_grad():
        ii = torch.from_numpy(pool_ids).long()
        golden["pool_ids"] = pool_ids
        golden["pool_first_eos"] = model.text_projection(
            model.text_model(input_ids=ii).pooler_output).numpy()
        model.text_model.eos_token_id = 2
        golden["pool_legacy"] = model.text_projection(
            model.text_model(input_ids=ii).pooler_output).numpy()
        model.text_model.eos_token_id = eos
    assert np.abs(golden["pool_first_eos"][0] - golden["pool_legacy"][0]).max() > 1e-3

    # Preprocessing (float path) and end-to-end CLIP scores of raw images and captions.
    wide = rng.random((2, 36, 45, 3)).astype(np.float32)  # to 32x40, cropped at column 4
    tall = rng.random((2, 12, 10, 3)).astype(np.float32)  # to 38x32, cropped at row 3
    golden["raw_wide"], golden["raw_tall"] = wide.astype(np.float32), tall.astype(np.float32)
    golden["pre_wide"] = preprocess_float(wide.astype(np.float64), 32).astype(np.float32)
    golden["pre_tall"] = preprocess_float(tall.astype(np.float64), 32).astype(np.float32)
    with torch.no_grad():
        pv = torch.from_numpy(golden["pre_wide"]).permute(0, 3, 1, 2)
        img = model.get_image_features(pixel_values=pv)
        img = getattr(img, "pooler_output", img)
        txt = model.get_text_features(input_ids=torch.from_numpy(ids[:2]).long())
        txt = getattr(txt, "pooler_output", txt)
        cos = F.cosine_similarity(img.double(), txt.double(), dim=-1)
    golden["score_pairs"] = torch.clamp(100 * cos, min=0).numpy()

    # The processor itself (PIL backend here: no torchvision) on uint8 pixels.
    u8 = (rng.random((1, 36, 45, 3)) * 255).round().astype(np.uint8)
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    golden["u8_image"] = u8
    golden["u8_processed"] = proc(images=list(u8), return_tensors="np")["pixel_values"].transpose(
        0, 2, 3, 1)

    # Reader test file: dtypes the safetensors package writes.
    values = np.array([[1.5, -2.25, 0.0078125], [65504.0, -0.5, 3.0]], np.float32)
    save_file(
        {
            "f32": torch.from_numpy(values),
            "f16": torch.from_numpy(values).half(),
            "bf16": torch.from_numpy(values[:, :2].copy()).bfloat16(),
            "i64": torch.arange(-3, 3),
            "scalar": torch.tensor(7.0),
        },
        os.path.join(model_dir, "dtypes.safetensors"),
        metadata={"format": "pt"},
    )
    golden["dtype_values"] = values
    golden["dtype_bf16"] = torch.from_numpy(values[:, :2].copy()).bfloat16().float().numpy()
    np.savez_compressed(os.path.join(args.data, "clip_golden.npz"), **golden)
    print(
        f"wrote {model_dir} and clip_golden.npz; vocab {len(vocab)}, "
        f"f32-f64 image max diff "
        f"{np.abs(golden['image_features_f32'] - golden['image_features_f64']).max():.3g}, "
        f"scores {golden['score_pairs']}"
    )


if __name__ == "__main__":
    main()
