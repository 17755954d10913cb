"""Memorization probes: exact NN search, the Gu and Carlini ratios, NN distances, gallery."""

import matplotlib.image
import numpy as np
import pytest

from diffjax.data import load_digits
from diffjax.metrics import memorization as mem


@pytest.fixture(scope="module")
def digits():
    return load_digits("train").images, load_digits("heldout").images


@pytest.mark.parametrize("chunks", [{}, {"query_chunk": 33, "ref_chunk": 70}])
def test_nearest_neighbors_match_brute_force(chunks):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((90, 12)) + 50.0  # far from the origin: cancellation-prone
    r = rng.standard_normal((250, 12)) + 50.0
    nn = mem.nearest_neighbors(q, r, 4, **chunks)
    d = np.sqrt(((q[:, None] - r[None]) ** 2).sum(-1))
    np.testing.assert_array_equal(nn.indices, np.argsort(d, axis=1)[:, :4])
    np.testing.assert_allclose(nn.distances, np.sort(d, axis=1)[:, :4], rtol=1e-13)


def test_copies_are_flagged_and_heldout_is_not(digits):
    train, heldout = digits
    rng = np.random.default_rng(1)
    src = rng.choice(train.shape[0], 40, replace=False)
    copies = np.clip(train[src] + 0.01 * rng.standard_normal(train[src].shape), -1, 1)

    rep = mem.memorization_report(copies, train)
    np.testing.assert_array_equal(rep.neighbors.indices[:, 0], src)
    assert rep.memorized.all() and rep.fraction_memorized == 1.0
    assert rep.gu_ratio.max() < 0.1
    assert rep.carlini_ratio.max() < 0.2
    assert rep.carlini_flagged is None
    assert rep.neighbors.distances.shape == (40, 50)

    held = mem.memorization_report(heldout, train, carlini_threshold=0.5)
    assert held.fraction_memorized == 0.0
    assert held.gu_ratio.min() > 1 / 3
    assert np.median(held.carlini_ratio) > 1.0
    assert held.carlini_flagged.mean() < 0.01

    # A mixed set: exactly the copies are flagged.
    mixed = np.concatenate([heldout[:60], copies])
    flags = mem.memorization_report(mixed, train).memorized
    np.testing.assert_array_equal(flags, np.arange(100) >= 60)


def test_ratios_by_definition():
    rng = np.random.default_rng(2)
    train = rng.standard_normal((80, 6))
    samples = rng.standard_normal((10, 6))
    d = np.sort(np.sqrt(((samples[:, None] - train[None]) ** 2).sum(-1)), axis=1)
    np.testing.assert_allclose(mem.gu_ratio(samples, train), d[:, 0] / d[:, 1], rtol=1e-12)
    want = d[:, 0] / (0.5 * d[:, :50].mean(axis=1))
    np.testing.assert_allclose(mem.carlini_ratio(samples, train), want, rtol=1e-12)
    nn = mem.nearest_neighbors(samples, train, 10)
    want10 = d[:, 0] / (0.25 * d[:, :10].mean(axis=1))
    np.testing.assert_allclose(
        mem.carlini_ratio(samples, num_neighbors=10, alpha=0.25, neighbors=nn), want10, rtol=1e-12
    )
    with pytest.raises(ValueError, match="needs 50"):
        mem.carlini_ratio(samples, neighbors=nn)


def test_exact_copy_of_a_duplicated_training_image():
    train = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    ratio = mem.gu_ratio(np.array([[0.0, 0.0]]), train)
    assert ratio[0] == 0.0  # 0 / 0: an exact copy


def test_nn_distance_distribution(digits):
    train, heldout = digits
    rng = np.random.default_rng(3)
    copies = np.clip(train[:100] + 0.01 * rng.standard_normal(train[:100].shape), -1, 1)
    fair = mem.nn_distance_distribution(heldout[:150], heldout[150:], train)
    assert fair.generated.shape == (150,) and fair.heldout.shape == (209,)
    assert 0.35 < fair.summary["auc"] < 0.65
    assert 0.8 < fair.summary["median_ratio"] < 1.25
    assert fair.summary["frac_below_heldout_p01"] < 0.05
    copied = mem.nn_distance_distribution(copies, heldout, train)
    assert copied.summary["auc"] == 1.0
    assert copied.summary["frac_below_heldout_p01"] == 1.0
    assert copied.summary["generated_median"] < 0.1 < copied.summary["heldout_p05"]


def test_gallery_png(tmp_path, digits):
    train, heldout = digits
    samples = np.concatenate([heldout[:5], np.clip(train[7:10] + 0.01, -1, 1)])
    path = tmp_path / "sub" / "gallery.png"
    shown = mem.save_nearest_neighbor_gallery(path, samples, train, num_pairs=6, ncols=3)
    assert sorted(shown[:3].tolist()) == [5, 6, 7]  # the copies come first
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 100
    with pytest.raises(ValueError, match="for a gallery"):
        mem.save_nearest_neighbor_gallery(tmp_path / "x.png", np.zeros((4, 10)), np.zeros((4, 10)))


def test_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        mem.nearest_neighbors(np.zeros((3, 4, 4, 1)), np.zeros((3, 16)))
    with pytest.raises(ValueError, match="exceeds"):
        mem.nearest_neighbors(np.zeros((3, 2)), np.zeros((3, 2)), k=4)
    with pytest.raises(ValueError, match="at least 2 rows"):
        mem.memorization_report(np.zeros((3, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="training set or precomputed"):
        mem.gu_ratio(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        mem.nearest_neighbors(np.full((3, 2), np.nan), np.zeros((3, 2)))
