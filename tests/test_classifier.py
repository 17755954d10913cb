import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from diffjax.data import load_digits, make_dataset
from diffjax.networks.classifier import (
    ClassifierParams,
    _shift_images,
    accuracy,
    class_agreement,
    classify,
    init_classifier,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits("train"), load_digits("heldout")


@pytest.fixture(scope="module")
def trained(digits):
    train, _ = digits
    start = time.perf_counter()
    clf = train_classifier(train, key=jax.random.key(0))
    elapsed = time.perf_counter() - start
    print(f"train_classifier on digits: {elapsed:.2f} s")
    return clf


def test_heldout_accuracy_at_least_95_percent(trained, digits):
    _, heldout = digits
    acc = accuracy(trained, heldout)
    print(f"digits held-out accuracy: {acc:.4f}")
    assert acc >= 0.95


def test_agreement_equals_accuracy_and_shuffled_labels_are_near_chance(trained, digits):
    _, heldout = digits
    acc = accuracy(trained, heldout)
    assert class_agreement(trained, heldout.images, heldout.labels) == acc
    shuffled = np.random.default_rng(0).permutation(heldout.labels)
    chance = class_agreement(trained, heldout.images, shuffled)
    # Expected about sum_c p_c^2 = 0.1 for balanced classes; std about 0.016 at N = 359.
    assert chance < 0.2
    rotated = (heldout.labels + 1) % 10  # always the wrong class
    assert class_agreement(trained, heldout.images, rotated) <= 1 - acc + 1e-9


def test_classify_shapes_and_chunked_predict(trained, digits):
    _, heldout = digits
    logits = classify(trained, heldout.images[:7])
    chex.assert_shape(logits, (7, 10))
    assert logits.dtype == jnp.float32
    full = predict(trained, heldout.images)
    np.testing.assert_array_equal(predict(trained, heldout.images, batch_size=100), full)
    np.testing.assert_array_equal(full[:7], np.asarray(jnp.argmax(logits, -1)))
    assert full.dtype == np.int32 and full.shape == (359,)


def test_classify_input_errors(trained, digits):
    _, heldout = digits
    with pytest.raises(ValueError, match=r"shape \(N, \*\(8, 8, 1\)\)"):
        classify(trained, np.zeros((2, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match=r"shape \(N, \*\(8, 8, 1\)\)"):
        classify(trained, np.zeros((8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"shape \(359,\)"):
        class_agreement(trained, heldout.images, heldout.labels[:10])
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        class_agreement(trained, heldout.images[:2], np.array([0, 10]))


def test_save_load_roundtrip(trained, digits, tmp_path):
    _, heldout = digits
    path = tmp_path / "clf.msgpack"
    save_classifier(path, trained)
    loaded = load_classifier(path, num_classes=10, image_shape=(8, 8, 1))
    assert isinstance(loaded, ClassifierParams)
    assert loaded.image_shape == (8, 8, 1) and loaded.features == trained.features
    chex.assert_trees_all_close(loaded.params, trained.params)
    np.testing.assert_allclose(
        classify(loaded, heldout.images), classify(trained, heldout.images), atol=1e-6
    )
    with pytest.raises(ValueError, match="10 classes, expected 5"):
        load_classifier(path, num_classes=5)
    with pytest.raises(ValueError, match=r"takes images \(8, 8, 1\), expected \(28, 28, 1\)"):
        load_classifier(path, image_shape=(28, 28, 1))


def test_load_rejects_mismatched_or_foreign_files(trained, tmp_path):
    path = tmp_path / "clf.msgpack"
    save_classifier(path, trained)
    payload = serialization.msgpack_restore(path.read_bytes())
    payload["config"]["hidden"] = 64  # parameters no longer fit the configuration
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(serialization.msgpack_serialize(payload))
    with pytest.raises(ValueError, match=r"do not match.*Dense_0.*expected \(1024, 64\)"):
        load_classifier(bad)
    other = tmp_path / "other.msgpack"
    other.write_bytes(serialization.msgpack_serialize({"params": {}}))
    with pytest.raises(ValueError, match="not a diffjax classifier"):
        load_classifier(other)


def test_training_is_reproducible_and_augmentation_runs(digits):
    train, _ = digits
    a = train_classifier(train, key=jax.random.key(5), num_steps=3)
    b = train_classifier(train, key=jax.random.key(5), num_steps=3)
    chex.assert_trees_all_equal(a.params, b.params)
    c = train_classifier(train, key=jax.random.key(5), num_steps=3, max_shift=0)
    assert jax.tree_util.tree_structure(c.params) == jax.tree_util.tree_structure(a.params)
    assert not np.array_equal(c.params["Dense_1"]["kernel"], a.params["Dense_1"]["kernel"])
    d = train_classifier(train, key=jax.random.key(6), num_steps=3)
    assert not np.array_equal(d.params["Dense_1"]["kernel"], a.params["Dense_1"]["kernel"])


def test_shift_images_translates_with_background_fill():
    x = jnp.arange(2 * 5 * 5, dtype=jnp.float32).reshape(2, 5, 5, 1) / 50.0
    out = jax.jit(_shift_images, static_argnums=2)(x, jax.random.key(0), 1)
    chex.assert_shape(out, x.shape)
    for i in range(2):
        matches = []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ref = np.full((7, 7), -1.0, np.float32)
                ref[1:6, 1:6] = np.asarray(x[i, ..., 0])
                matches.append(
                    np.array_equal(ref[1 + dy : 6 + dy, 1 + dx : 6 + dx], out[i, ..., 0])
                )
        assert any(matches)


@pytest.mark.parametrize("shape", [(28, 28, 1), (16, 16, 3)])
def test_other_image_shapes(shape):
    clf = init_classifier(jax.random.key(0), 4, shape)
    chex.assert_shape(classify(clf, jnp.zeros((3, *shape))), (3, 4))


def test_train_on_rgb_images():
    shape = (12, 12, 3)
    ds = make_dataset(
        np.zeros((8, *shape), np.float32), np.arange(8) % 4, num_classes=4, name="tiny"
    )
    trained = train_classifier(ds, key=jax.random.key(1), num_steps=2, batch_size=4)
    assert trained.image_shape == shape and trained.num_classes == 4
    assert 0.0 <= accuracy(trained, ds) <= 1.0


def test_bad_training_arguments(digits):
    train, _ = digits
    with pytest.raises(ValueError, match="num_steps"):
        train_classifier(train, key=jax.random.key(0), num_steps=0)
    with pytest.raises(ValueError, match="batch_size must be <= num_examples"):
        train_classifier(train, key=jax.random.key(0), batch_size=5000)
    with pytest.raises(ValueError, match="image_shape"):
        init_classifier(jax.random.key(0), 10, (8, 8))
