"""`diffjax evaluate`: classifier features, cached reference statistics, metrics, bad input."""

import json
import math
import os

import chex
import numpy as np
import pytest

from diffjax.app import evaluate
from diffjax.app.cli import main
from diffjax.app.config import digits_config
from diffjax.app.evaluate import (
    evaluate_samples,
    evaluation_classifier,
    feature_extractor,
    load_evaluation_context,
)
from diffjax.app.features import check_images
from diffjax.data import load_digits
from diffjax.metrics.fid import load_statistics, save_statistics
from diffjax.networks.classifier import (
    accuracy,
    classifier_features,
    classify,
    init_classifier,
)
from diffjax.networks.inception import WEIGHTS_ENV_VAR

REFERENCE_FILE = os.path.join("eval", "reference_digits_train_digits-classifier.npz")


@pytest.fixture(scope="module")
def ctx(eval_workdir):
    return load_evaluation_context(eval_workdir)


def _metrics(ctx, images, labels=None, **kwargs):
    return evaluate_samples(
        images, labels, image_shape=ctx.image_shape, extractor=ctx.extractor,
        reference=ctx.reference, classifier=ctx.classifier, kid_subsets=5, **kwargs,
    )


def test_penultimate_features_are_what_the_logits_read(ctx):
    clf = ctx.classifier
    x = load_digits("heldout").images[:13]
    feats = classifier_features(clf, x, batch_size=5)  # 3 chunks, the last one padded
    chex.assert_shape(feats, (13, clf.hidden))
    assert np.all(feats >= 0)  # after the ReLU
    head = clf.params["Dense_1"]
    logits = feats @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
    np.testing.assert_allclose(logits, np.asarray(classify(clf, x)), rtol=1e-5, atol=1e-5)


def test_reference_statistics_cached_in_pytorch_fid_layout(ctx, eval_workdir):
    path = os.path.join(eval_workdir, REFERENCE_FILE)
    mu, sigma = load_statistics(path, dim=ctx.extractor.dim)
    train = load_digits("train").images
    feats = classifier_features(ctx.classifier, train).astype(np.float64)
    np.testing.assert_allclose(mu, feats.mean(axis=0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-8, atol=1e-8)
    with np.load(path) as data:
        assert int(data["num_images"]) == len(train) == 1438
        assert str(data["feature"]) == "digits-classifier"
    mtime = os.path.getmtime(path)
    again = load_evaluation_context(eval_workdir)
    assert os.path.getmtime(path) == mtime  # read from the cache, not recomputed
    np.testing.assert_array_equal(again.reference.sigma, ctx.reference.sigma)
    assert ctx.reference_description == "digits train split, N=1438"


def test_real_data_scores(ctx):
    train = load_digits("train")
    same = _metrics(ctx, train.images, train.labels)
    assert abs(same["fid"]) < 1e-6 * np.trace(ctx.reference.sigma)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert abs(same["kid_mean"]) < 3 * same["kid_std"] + 1e-12
    assert same["class_agreement"] == accuracy(ctx.classifier, train)
    assert same["fid_label"] == "FID@1438 (digits-classifier features)"

    heldout = load_digits("heldout")
    real = _metrics(ctx, heldout.images, heldout.labels)
    noise = np.random.default_rng(0).uniform(-1, 1, heldout.images.shape).astype(np.float32)
    fake = _metrics(ctx, noise, heldout.labels)
    assert real["fid"] < 0.1 * fake["fid"], (real["fid"], fake["fid"])
    assert real["precision"] > fake["precision"] and real["recall"] > fake["recall"]
    assert real["class_agreement"] > 0.5 > fake["class_agreement"]


def test_cli_evaluate_prints_and_writes_numbers_with_their_n(eval_workdir, tmp_path, capsys):
    out = str(tmp_path / "eval.json")
    assert main(["evaluate", "--workdir", eval_workdir, "--sampler", "ddim", "--steps", "3",
                 "--guidance", "2", "--num-samples", "24", "--batch-size", "12",
                 "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "FID@24 (digits-classifier features)" in printed
    with open(out) as f:
        result = json.load(f)
    assert result["fid_label"] == "FID@24 (digits-classifier features)"
    assert result["kid_label"] == "KID@24 (digits-classifier features)"
    assert (result["sampler"], result["num_steps"], result["nfe"]) == ("ddim", 3, 3)
    assert result["guidance_scale"] == 2.0 and result["num_samples"] == 24
    assert math.isfinite(result["fid"]) and result["fid"] > 0
    assert 0 <= result["precision"] <= 1 and 0 <= result["class_agreement"] <= 1
    assert result["seconds_per_image"] > 0 and result["compile_seconds"] >= 0
    assert result["timing_batches"] == "2 x 12" and result["num_nonfinite"] == 0


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (lambda x: x.transpose(0, 3, 1, 2), r"NCHW: transpose"),
        (lambda x: (x + 1) * 127.5, r"must lie on \[-1, 1\]"),
        (lambda x: (x + 1) / 2, r"looks like \[0, 1\] data"),
        (lambda x: ((x + 1) * 127.5).astype(np.uint8), r"dtype uint8"),
        (lambda x: np.where(np.arange(len(x))[:, None, None, None] == 2, np.nan, x),
         r"1 of 8 images hold NaN"),
        (lambda x: x[0], r"batch of NHWC images"),
    ],
)
def test_images_in_the_wrong_layout_or_range_are_refused(ctx, transform, message):
    images = transform(load_digits("heldout").images[:8])
    with pytest.raises(ValueError, match=message):
        check_images(images, (8, 8, 1))
    with pytest.raises(ValueError, match=message):
        _metrics(ctx, images)


def test_too_few_samples_names_n_and_the_feature_dimension(ctx):
    with pytest.raises(ValueError, match=r"num_samples=3 is too few.*128-d digits-classifier"):
        _metrics(ctx, load_digits("heldout").images[:3])


def test_stats_file_of_another_dimension_is_refused(ctx, tmp_path):
    path = str(tmp_path / "stats64.npz")
    save_statistics(path, np.zeros(64), np.eye(64))
    with pytest.raises(ValueError, match=r"64-d features, but the features are 128-d"):
        _metrics(ctx, load_digits("heldout").images[:20], reference_stats=path)


def test_missing_feature_extractors_are_clear_errors(ctx, eval_workdir, monkeypatch, tmp_path):
    config = digits_config()
    config.data.name = "cifar10"
    with pytest.raises(ValueError, match=r"no classifier feature extractor exists for .*cifar10"):
        evaluation_classifier(str(tmp_path), config)
    with pytest.raises(ValueError, match=r"no classifier feature extractor exists for .*cifar10"):
        feature_extractor("classifier", "cifar10", classifier=ctx.classifier)
    with pytest.raises(ValueError, match=r"unknown features='clip'"):
        feature_extractor("clip", "digits")
    monkeypatch.delenv(WEIGHTS_ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=r"No FID Inception weights"):
        feature_extractor("inception", "digits")
    assert not os.listdir(tmp_path)  # nothing trained or written before the error


def test_cli_missing_inception_weights_exits_2(eval_workdir, capsys):
    assert main(["evaluate", "--workdir", eval_workdir, "--features", "inception",
                 "--inception-weights", "/nonexistent/fid_inception.npz"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_fashion_mnist_gets_the_same_classifier_recipe_trained_once(tmp_path, monkeypatch):
    from test_data import _write_fashion

    (tmp_path / "fm").mkdir()
    _write_fashion(tmp_path / "fm", n_train=12)
    config = digits_config()
    config.data.name, config.data.path = "fashion_mnist", str(tmp_path / "fm")
    calls = []

    def untrained(data, *, key):  # the recipe's entry point, minus the optimization
        calls.append(data.images.shape)
        return init_classifier(key, data.num_classes, data.images.shape[1:])

    monkeypatch.setattr(evaluate, "train_classifier", untrained)
    workdir = str(tmp_path / "run")
    clf, path = evaluation_classifier(workdir, config)
    assert calls == [(12, 28, 28, 1)]
    assert path == os.path.join(workdir, "eval", "fashion_mnist_classifier.msgpack")
    assert (clf.num_classes, clf.image_shape) == (10, (28, 28, 1))
    again, _ = evaluation_classifier(workdir, config)
    assert len(calls) == 1  # read from the workdir, not trained again
    chex.assert_trees_all_close(again.params, clf.params)
    extractor = feature_extractor("classifier", "fashion_mnist", classifier=clf)
    images = np.zeros((3, 28, 28, 1), np.float32) - 1
    assert extractor.name == "fashion_mnist-classifier"
    chex.assert_shape(extractor.fn(images), (3, extractor.dim))
