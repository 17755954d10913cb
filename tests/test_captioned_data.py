"""Captioned data: the compositional shapes set and its detector, Fashion captions, folders."""

import json

import chex
import numpy as np
import pytest
from PIL import Image

from diffjax.data import make_dataset
from diffjax.data.captions import (
    FASHION_MNIST_NAMES,
    FASHION_MNIST_TEMPLATES,
    caption_fashion_mnist,
    load_image_folder,
    make_captioned_dataset,
)
from diffjax.data.shapes import (
    COLORS,
    RELATIONS,
    SHAPES,
    Scene,
    ShapeObject,
    all_objects,
    all_pairs,
    detect_objects,
    held_out_pairs,
    make_shapes_dataset,
    parse_caption,
    render_scene,
    score_scenes,
)
from diffjax.networks.clip_tokenizer import CLIPTokenizer, train_bpe

# --------------------------------------------------------------------------- shapes


@pytest.fixture(scope="module")
def shapes_train():
    return make_shapes_dataset(400, seed=7)


def test_the_detector_reads_back_every_rendered_scene_exactly(shapes_train):
    images, _, scenes = shapes_train
    chex.assert_shape(images, (400, 32, 32, 3))
    assert images.dtype == np.float32 and images.min() == -1.0 and images.max() == 1.0
    # Every colour, shape and relation is drawn, and all are read back.
    assert {s.relation for s in scenes} == set(RELATIONS)
    assert {o.shape for s in scenes for o in s.pair()} == set(SHAPES)
    assert {s.first.color for s in scenes} == set(COLORS)
    assert score_scenes(images, scenes) == {
        "colors": 1.0, "shapes": 1.0, "relation": 1.0, "exact": 1.0, "count": 400
    }
    for image, scene in zip(images[:50], scenes[:50], strict=True):
        found = detect_objects(image)
        assert {(o.color, o.shape) for o in found} == set(scene.pair())
        assert all(o.match == 1.0 for o in found)


def test_the_score_separates_attributes_objects_and_relations(shapes_train):
    images, captions, scenes = shapes_train
    # Captions of other images: right by chance only.
    shuffled = score_scenes(images, captions[1:] + captions[:1])
    assert shuffled["exact"] < 0.05 and shuffled["colors"] < 0.2, shuffled
    # The right colours and shapes, the relation reversed: only the relation fails.
    flipped = [s._replace(relation=s.inverse().relation) for s in scenes]
    scores = score_scenes(images, flipped)
    assert scores["colors"] == scores["shapes"] == 1.0 and scores["relation"] == 0.0
    # The same scene said the other way round is the same picture.
    assert score_scenes(images, [s.inverse() for s in scenes])["exact"] == 1.0
    # Swapped shapes (the binding of shape to colour): colours right, shapes wrong.
    swapped = [Scene(s.first._replace(shape=s.second.shape), s.relation,
                     s.second._replace(shape=s.first.shape)) for s in scenes]
    differ = [s.first.shape != s.second.shape for s in scenes]
    scores = score_scenes(images[np.asarray(differ)], [s for s, d in zip(swapped, differ,
                                                                          strict=True) if d])
    assert scores["colors"] == 1.0 and scores["shapes"] == 0.0


def test_the_detector_tolerates_sampling_noise(shapes_train):
    images, _, scenes = shapes_train
    noisy = images + 0.2 * np.random.default_rng(0).normal(size=images.shape)
    assert score_scenes(noisy.astype(np.float32), scenes)["exact"] >= 0.98
    # The second colour is missing (a third one drawn instead): nothing of the scene passes.
    scene = scenes[0]
    third = next(c for c in COLORS if c not in (scene.first.color, scene.second.color))
    other = render_scene(scene._replace(second=ShapeObject(third, scene.second.shape)),
                         np.random.default_rng(1))
    scores = score_scenes(other[None], [scene])
    assert scores["colors"] == scores["shapes"] == scores["relation"] == 0.0
    assert detect_objects(np.full((32, 32, 3), -1.0, np.float32)) == []


def test_held_out_pairs_are_never_trained_on_and_every_object_is():
    held = held_out_pairs()
    pairs = all_pairs()
    assert len(pairs) == 135 and len(held) == 14 and held <= set(pairs)
    _, _, train = make_shapes_dataset(600, seed=1)
    _, _, test = make_shapes_dataset(100, split="heldout", seed=1)
    assert not any(s.pair() in held for s in train)
    assert all(s.pair() in held for s in test)
    assert {o for s in train for o in s.pair()} == set(all_objects())
    assert held_out_pairs() == held  # a fixed split
    with pytest.raises(ValueError, match="fraction=1.5"):
        held_out_pairs(1.5)
    with pytest.raises(ValueError, match="holds out every pair"):
        held_out_pairs(0.97)


def test_captions_parse_back_to_their_scenes(shapes_train):
    _, captions, scenes = shapes_train
    assert [parse_caption(c) for c in captions] == scenes
    assert parse_caption("A Red Circle is to the left of a blue triangle.") == Scene(
        ShapeObject("red", "circle"), "left of", ShapeObject("blue", "triangle"))
    with pytest.raises(ValueError, match="not of the form .*colours"):
        parse_caption("a purple circle above a red square")
    with pytest.raises(ValueError, match="different colours"):
        render_scene(parse_caption("a red circle above a red square"), np.random.default_rng(0))
    with pytest.raises(ValueError, match="2 images but 1 scenes"):
        score_scenes(np.zeros((2, 32, 32, 3), np.float32), scenes[:1])


# --------------------------------------------------------------------------- Fashion-MNIST


def fashion_like(n=200, seed=0):
    rng = np.random.default_rng(seed)
    images = np.full((n, 28, 28, 1), -1.0, np.float32)
    images[:, 8:20, 8:20] = rng.uniform(-0.5, 1.0, size=(n, 1, 1, 1))
    return make_dataset(images, rng.integers(10, size=n), num_classes=10, name="fashion_like")


def test_fashion_captions_name_the_class_and_a_true_tone():
    data = fashion_like()
    captioned = caption_fashion_mnist(data)
    chex.assert_trees_all_equal(captioned.labels, data.labels)
    brightness = data.images[:, 8:20, 8:20, 0].mean((1, 2))
    for caption, label, value in zip(captioned.captions, data.labels, brightness, strict=True):
        assert FASHION_MNIST_NAMES[label] in caption
        members = brightness[data.labels == label]
        if "light" in caption:
            assert value > np.median(members)
        if "dark" in caption:
            assert value <= np.median(members)
    assert "an ankle boot" in " ".join(captioned.captions) or 9 not in data.labels
    # Several phrasings per class; the held-out ones never occur in training.
    assert len(set(captioned.captions)) > 40
    held = caption_fashion_mnist(data, templates="heldout")
    assert not set(held.captions) & set(caption_fashion_mnist(data, seed=1).captions)
    assert not set(FASHION_MNIST_TEMPLATES["train"]) & set(FASHION_MNIST_TEMPLATES["heldout"])
    with pytest.raises(ValueError, match="unknown templates='test'"):
        caption_fashion_mnist(data, templates="test")


def test_captioned_datasets_refuse_a_wrong_count_or_an_empty_caption():
    images = np.zeros((3, 4, 4, 1), np.float32)
    with pytest.raises(ValueError, match="3 images but 2 captions"):
        make_captioned_dataset(images, ["a", "b"], name="x")
    with pytest.raises(ValueError, match="caption 1 is empty"):
        make_captioned_dataset(images, ["a", " ", "c"], name="x")


# --------------------------------------------------------------------------- folders


def write_images(folder, sizes, mode="RGB"):
    folder.mkdir(exist_ok=True)
    names = []
    for i, (h, w) in enumerate(sizes):
        pixels = np.full((h, w, 3) if mode == "RGB" else (h, w), 40 * i, np.uint8)
        name = f"img{i}.png"
        Image.fromarray(pixels, mode).save(folder / name)
        names.append(name)
    return names


def test_image_folders_with_metadata_or_sidecar_captions(tmp_path):
    meta = tmp_path / "meta"
    names = write_images(meta, [(8, 8)] * 3)
    records = [{"file_name": n, "text": f"picture {i}"} for i, n in enumerate(names)]
    (meta / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    data = load_image_folder(meta)
    chex.assert_shape(data.images, (3, 8, 8, 3))
    assert data.captions == ("picture 0", "picture 1", "picture 2")
    np.testing.assert_allclose(data.images[1], 40 / 127.5 - 1, rtol=1e-6)

    side = tmp_path / "side"
    names = write_images(side, [(6, 10), (10, 6)], mode="L")
    for i, n in enumerate(names):
        (side / n.replace(".png", ".txt")).write_text(f"  grey {i}\n")
    with pytest.raises(ValueError, match=r"2 sizes: 6x10 \(e.g. img0.png\).*image_size=S"):
        load_image_folder(side)
    data = load_image_folder(side, image_size=4)
    chex.assert_shape(data.images, (2, 4, 4, 1))
    assert data.captions == ("grey 0", "grey 1")


def test_image_folders_refuse_captions_that_do_not_match(tmp_path):
    folder = tmp_path / "f"
    names = write_images(folder, [(8, 8)] * 3)
    (folder / "metadata.jsonl").write_text(
        json.dumps({"file_name": names[0], "text": "a"}) + "\n"
        + json.dumps({"file_name": "gone.png", "text": "b"}) + "\n"
    )
    with pytest.raises(ValueError, match=r"2 captions for 3 images; captions of no image: "
                                         r"\['gone.png'\]; images without a caption"):
        load_image_folder(folder)
    (folder / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": n, "caption": "" if i else "x"}) + "\n"
                for i, n in enumerate(names)))
    with pytest.raises(ValueError, match=r"empty captions for \['img1.png', 'img2.png'\]"):
        load_image_folder(folder)
    (folder / "metadata.jsonl").unlink()
    (folder / "img0.txt").write_text("only one")
    with pytest.raises(ValueError, match="2 of 3 images have no .txt caption"):
        load_image_folder(folder)
    with pytest.raises(FileNotFoundError, match="holds no image"):
        load_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")


# --------------------------------------------------------------------------- a vocabulary


def test_a_bpe_vocabulary_learned_from_captions(shapes_train, tmp_path):
    _, captions, _ = shapes_train
    tok = train_bpe(captions, max_length=16)
    words = {w for c in captions for w in c.split()}
    # Every caption word became one token; BOS, then the words, then EOS (the largest id).
    ids = tok(captions, max_length=16)
    lengths = (ids != tok.pad_token_id).sum(1) + 1  # + the EOS that equals the pad id
    assert list(lengths) == [len(c.split()) + 2 for c in captions]
    assert tok.eos_token_id == len(tok.encoder) - 1 and len(tok.encoder) == 512 + len(
        tok.merges) + 2
    assert all(len(tok.encode(w)) == 1 for w in words)
    # Unseen words still encode (as bytes); the folder round-trips.
    assert len(tok.encode("a purple hexagon")) > 3
    tok.save(tmp_path / "tokenizer")
    again = CLIPTokenizer.from_directory(tmp_path / "tokenizer")
    assert again.max_length == 16
    chex.assert_trees_all_equal(again([*captions, "a purple hexagon!"]),
                                tok([*captions, "a purple hexagon!"]))
    with pytest.raises(ValueError, match="non-empty sequence"):
        train_bpe([])
    # A caption longer than the text window: cut by default, refused on request.
    long = " ".join(captions[:3])
    assert tok([long], max_length=16).shape == (1, 16)
    with pytest.raises(ValueError, match=r"text 1 \('a .*has 2\d tokens; the text window holds 14"):
        tok([captions[0], long], max_length=16, truncate=False)


def test_the_learned_vocabulary_reads_the_same_in_transformers(shapes_train, tmp_path):
    transformers = pytest.importorskip("transformers")
    _, captions, _ = shapes_train
    tok = train_bpe(captions)
    tok.save(tmp_path / "tokenizer")
    theirs = transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
    texts = [*captions[:50], "A purple Hexagon, 42 times!"]
    ids = theirs(texts, padding="max_length", max_length=77, truncation=True)["input_ids"]
    chex.assert_trees_all_equal(np.asarray(ids, np.int32), tok(texts))
