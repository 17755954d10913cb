"""TFDS sources and the grain pipeline, on ``tfds.testing.mock_data`` (no files, no TF).

mock_data's USE_CODE policy makes ``tfds.data_source`` return random examples with each
dataset's real features (image shape and dtype, label classes), deterministic per index.
"""

import json
import os
import subprocess
import sys

import chex
import grain
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffjax.app import checkpoint as ckpt
from diffjax.app.config import base_config
from diffjax.data import SOURCE_NAMES, TFDS_DATASETS, load_source, training_batches
from diffjax.data.pipeline import batch_iterator, check_example
from diffjax.data.tfds_source import center_crop, resize_antialiased_bilinear

NUM_EXAMPLES = 20


@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(
        num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE
    ):
        yield


def record_image(source, index):
    return np.asarray(source.records[index]["image"])


@pytest.mark.parametrize("name", list(TFDS_DATASETS))
def test_table_agrees_with_the_tfds_dataset_metadata(name):
    features = tfds.builder(name).info.features
    spec = TFDS_DATASETS[name]
    assert tuple(features["image"].shape) == spec.image_shape
    assert features["image"].np_dtype == np.uint8
    num_classes = features["label"].num_classes if "label" in features else 0
    assert spec.num_classes == num_classes


@pytest.mark.parametrize("name", list(TFDS_DATASETS))
def test_mock_examples_decode_to_float_images_in_unit_range(mock_tfds, name):
    source = load_source("tfds:" + name)
    spec = TFDS_DATASETS[name]
    assert source.num_examples == NUM_EXAMPLES and source.num_classes == spec.num_classes
    size = spec.image_size
    assert source.image_shape == (size, size, spec.image_shape[2])
    for i in range(3):
        example = source.decode(source.records[i])
        check_example(source, example)
        chex.assert_shape(example["image"], source.image_shape)
        assert example["image"].dtype == np.float32
        if spec.num_classes:
            assert example["label"].dtype == np.int32
            assert example["label"] == source.records[i]["label"]
        else:
            assert "label" not in example
        if not spec.crop:  # stored at the training size: exactly x / 127.5 - 1
            np.testing.assert_array_equal(
                example["image"], record_image(source, i).astype(np.float32) / 127.5 - 1
            )


def test_labels_cover_the_classes_and_stay_in_range(mock_tfds):
    source = load_source("tfds:cifar10")
    batch = training_batches(source, 16, seed=0)[0]
    assert batch["label"].dtype == np.int32
    assert batch["label"].min() >= 0 and batch["label"].max() < 10
    assert len(set(batch["label"].tolist())) > 3  # random labels, not one constant


def test_center_crop_takes_the_score_sde_window():
    image = np.arange(218 * 178).reshape(218, 178, 1)
    crop = center_crop(image, 140)
    # (218 - 140) // 2 = 39 rows and (178 - 140) // 2 = 19 columns are cut at the start.
    assert crop.shape == (140, 140, 1)
    assert crop[0, 0, 0] == 39 * 178 + 19 and crop[-1, -1, 0] == 178 * 178 + 158
    with pytest.raises(ValueError, match="crop size"):
        center_crop(image, 200)


@pytest.mark.parametrize(
    ("shape", "size"), [((140, 140, 3), 64), ((28, 28, 1), 32), ((64, 48, 3), 32)]
)
def test_resize_matches_jax_image_resize_antialiased_linear(shape, size):
    image = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    expected = jax.image.resize(image, (size, size, shape[2]), "linear", antialias=True)
    np.testing.assert_allclose(resize_antialiased_bilinear(image, size), expected, atol=2e-3)


def test_celeb_a_is_center_cropped_and_resized_to_64(mock_tfds):
    source = load_source("tfds:celeb_a")
    raw = record_image(source, 0)
    assert raw.shape == (218, 178, 3)
    crop = raw[39:179, 19:159].astype(np.float32)
    expected = jax.image.resize(crop, (64, 64, 3), "linear", antialias=True) / 127.5 - 1
    np.testing.assert_allclose(source.decode(source.records[0])["image"], expected, atol=1e-5)


def test_batches_are_deterministic_and_each_epoch_is_a_fresh_permutation(mock_tfds):
    source = load_source("tfds:cifar10")
    batches = training_batches(source, 8, seed=0)
    again = training_batches(source, 8, seed=0)
    chex.assert_shape(batches[0]["image"], (8, 32, 32, 3))
    chex.assert_shape(batches[0]["label"], (8,))
    chex.assert_trees_all_equal(batches[5], again[5])
    assert not np.array_equal(batches[0]["image"], training_batches(source, 8, seed=1)[0]["image"])

    # Records are told apart by their raw pixels; 20 records make 2 batches of 8 per epoch.
    ids = {record_image(source, i).tobytes(): i for i in range(NUM_EXAMPLES)}

    def epoch(e):
        images = np.concatenate([batches[2 * e + s]["image"] for s in range(2)])
        raw = np.round((images + 1) * 127.5).astype(np.uint8)
        return [ids[x.tobytes()] for x in raw]

    e0, e1 = epoch(0), epoch(1)
    assert len(set(e0)) == 16 and len(set(e1)) == 16
    assert e0 != e1


def test_each_of_two_processes_reads_its_half_of_every_global_batch(mock_tfds):
    source = load_source("tfds:cifar10")
    whole = training_batches(source, 8, seed=3, random_flip=True)
    shards = [
        training_batches(
            source, 8, seed=3, random_flip=True, shard=grain.sharding.ShardOptions(p, 2)
        )
        for p in range(2)
    ]
    for step in (0, 1, 2, 7):  # across epoch boundaries too
        parts = [shard[step] for shard in shards]
        chex.assert_shape(parts[0]["image"], (4, 32, 32, 3))
        stacked = jax.tree.map(lambda *x: np.concatenate(x), *parts)
        chex.assert_trees_all_equal(stacked, whole[step])


def test_flips_mirror_about_half_of_the_images_reproducibly(mock_tfds):
    source = load_source("tfds:cifar10")
    plain = training_batches(source, 8, seed=0)
    flipped = training_batches(source, 8, seed=0, random_flip=True)
    mirrored = 0
    for step in range(8):
        a, b = plain[step]["image"], flipped[step]["image"]
        np.testing.assert_array_equal(plain[step]["label"], flipped[step]["label"])
        for x, y in zip(a, b, strict=True):
            if np.array_equal(x, y):
                continue
            np.testing.assert_array_equal(y, x[:, ::-1])
            mirrored += 1
    assert 16 <= mirrored <= 48, mirrored  # 64 fair coin flips
    np.testing.assert_array_equal(
        flipped[3]["image"], training_batches(source, 8, seed=0, random_flip=True)[3]["image"]
    )


def test_iterator_state_saved_with_a_checkpoint_resumes_the_same_batches(mock_tfds, tmp_path):
    source = load_source("tfds:cifar10")

    def iterator():
        batches = training_batches(source, 8, seed=5, random_flip=True)
        return batch_iterator(batches, num_threads=2, prefetch_batches=2)

    straight = iterator()
    expected = [next(straight) for _ in range(7)]
    straight.close()

    state = {"w": jax.numpy.arange(3.0)}
    config = base_config()
    first = iterator()
    seen = [next(first) for _ in range(3)]
    manager = ckpt.checkpoint_manager(str(tmp_path), async_checkpointing=True)
    ckpt.save(manager, 3, state, config, first)
    seen.append(next(first))  # the iterator moves on while the arrays are written
    manager.wait_until_finished()
    manager.close()
    first.close()
    saved = tmp_path / ckpt.CHECKPOINT_DIR / "3" / ckpt.DATA_ITERATOR_ITEM / "process_0-of-1.json"
    assert json.loads(saved.read_text()) == {"next_index": 3}

    resumed = iterator()
    manager = ckpt.checkpoint_manager(str(tmp_path), async_checkpointing=False)
    restored = ckpt.restore(manager, jax.eval_shape(lambda: state), data_iterator=resumed)
    manager.close()
    chex.assert_trees_all_equal(restored, state)
    rest = [next(resumed) for _ in range(4)]
    resumed.close()
    chex.assert_trees_all_equal(seen[:3] + rest, expected)

    # A run resumed with another process count finds no state of its own.
    manager = ckpt.checkpoint_manager(str(tmp_path), async_checkpointing=False)
    assert ckpt.has_data_iterator(manager, 3)
    saved.rename(saved.with_name("process_0-of-2.json"))
    assert not ckpt.has_data_iterator(manager, 3)
    manager.close()


def test_reading_and_decoding_never_import_tensorflow(mock_tfds):
    # TensorFlow is not installed here; this keeps the pipeline from starting to import
    # it where it is.
    for name in TFDS_DATASETS:
        source = load_source("tfds:" + name)
        labels = bool(source.num_classes)
        batches = training_batches(source, 4, seed=0, random_flip=True, labels=labels)
        iterator = batch_iterator(batches)
        next(iterator)
        iterator.close()
    assert "tensorflow" not in sys.modules


def test_unlabelled_data_refuses_a_class_conditional_pipeline(mock_tfds):
    source = load_source("tfds:celeb_a")
    with pytest.raises(ValueError, match=r"celeb_a.*no class labels.*class_conditional=False"):
        training_batches(source, 8, seed=0)
    assert set(training_batches(source, 8, seed=0, labels=False)[0]) == {"image"}


def test_batch_sizes_that_do_not_fit_are_refused(mock_tfds):
    source = load_source("tfds:mnist")
    with pytest.raises(ValueError, match="global_batch_size=9 is not divisible by the 2"):
        training_batches(source, 9, seed=0, shard=grain.sharding.ShardOptions(0, 2))
    with pytest.raises(ValueError, match="batch_size must be <= num_examples"):
        training_batches(source, 21, seed=0)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown dataset.*tfds:svhn.*'digits'.*'tfds:cifar10'"):
        load_source("tfds:svhn")
    with pytest.raises(ValueError, match="Unknown dataset"):
        load_source("cifar10")
    assert "tfds:imagenet_resized/64x64" in SOURCE_NAMES


def test_a_dataset_missing_offline_says_where_and_how_to_prepare_it(tmp_path):
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(FileNotFoundError) as info:
        load_source("tfds:cifar10", path=data_dir)
    message = str(info.value)
    assert "'cifar10'" in message and data_dir in message
    assert f"tfds build cifar10 --data_dir={data_dir} --file_format=array_record" in message


# Writes a small MNIST-format dataset (random PNG digits) with TFDS's own builder, in the
# array_record format, without TensorFlow: images are encoded with PIL beforehand. In a
# child process because TFDS's preparation code imports `importlib_resources`, which is
# not installed here; the standard library's `importlib.resources` stands in for it.
PREPARE_FAKE_MNIST = r"""
import importlib.resources, io, sys
sys.modules.setdefault("importlib_resources", importlib.resources)
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

data_dir = sys.argv[1]
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (24, 28, 28), dtype=np.uint8)
labels = rng.integers(0, 10, 24)
np.savez(data_dir + "/written.npz", images=images, labels=labels)


class WrittenMnist(tfds.image_classification.MNIST, skip_registration=True):
    name = "mnist"

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, (image, label) in enumerate(zip(images, labels)):
            png = io.BytesIO()
            Image.fromarray(image).save(png, format="PNG")
            png.seek(0)
            yield i, {"image": png, "label": int(label)}


WrittenMnist(data_dir=data_dir, file_format="array_record").download_and_prepare()
assert "tensorflow" not in sys.modules
"""


def test_a_prepared_array_record_dataset_is_read_without_tensorflow(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", PREPARE_FAKE_MNIST, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = np.load(tmp_path / "written.npz")
    source = load_source("tfds:mnist", path=str(tmp_path))
    assert source.num_examples == 24 and source.name == "tfds:mnist/train"
    for i in (0, 5, 23):  # TFDS keeps its own record order; match records by label+pixels
        example = source.decode(source.records[i])
        pixels = np.round((example["image"][..., 0] + 1) * 127.5).astype(np.uint8)
        (match,) = [j for j in range(24) if np.array_equal(written["images"][j], pixels)]
        assert example["label"] == written["labels"][match]
    batch = training_batches(source, 8, seed=0)[2]
    chex.assert_shape(batch["image"], (8, 28, 28, 1))
    assert "tensorflow" not in sys.modules
