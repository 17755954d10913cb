"""KID, precision/recall and density/coverage against direct references and planted cases."""

import numpy as np
import pytest

from diffjax.metrics import kid, prdc


def _direct_mmd2(x, y):
    """O(n^2) loops, straight from the definition (unbiased, polynomial kernel)."""
    m, d = x.shape

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / (m * m)


def test_mmd2_matches_direct_loops():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((25, 6))
    y = rng.standard_normal((25, 6)) * 1.3 + 0.2
    np.testing.assert_allclose(kid.polynomial_mmd2_unbiased(x, y), _direct_mmd2(x, y), rtol=1e-10)


def test_kid_subsets_clamped_to_set_size():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 5))
    y = rng.standard_normal((40, 5)) + 0.3
    res = kid.kernel_inception_distance(x, y, num_subsets=7, subset_size=1000, seed=3)
    assert res.subset_size == 30 and res.values.shape == (7,)
    np.testing.assert_allclose(res.mean, res.values.mean())
    np.testing.assert_allclose(res.std, res.values.std())
    # With subsets of all of x (any order), each value is the direct estimate on a 30-row
    # subset of y: check the first against the same draw.
    draw = np.random.default_rng(3)
    xi = x[draw.choice(30, 30, replace=False)]
    yi = y[draw.choice(40, 30, replace=False)]
    np.testing.assert_allclose(res.values[0], _direct_mmd2(xi, yi), rtol=1e-10)
    # Reproducible.
    again = kid.kernel_inception_distance(x, y, num_subsets=7, subset_size=1000, seed=3)
    np.testing.assert_array_equal(again.values, res.values)


def test_kid_near_zero_for_same_distribution_and_positive_for_shift():
    rng = np.random.default_rng(2)
    d = 16
    x = rng.standard_normal((600, d))
    y = rng.standard_normal((600, d))
    same = kid.kernel_inception_distance(x, y, num_subsets=20, subset_size=200)
    shifted = kid.kernel_inception_distance(x, y + 0.5, num_subsets=20, subset_size=200)
    assert abs(same.mean) < 3 * same.std + 1e-3
    assert abs(same.mean) < 0.01
    assert shifted.mean > 0.1
    assert shifted.mean > 10 * shifted.std
    assert shifted.mean > 20 * abs(same.mean)


def test_kid_errors():
    with pytest.raises(ValueError, match="different dimensions"):
        kid.kernel_inception_distance(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        kid.kernel_inception_distance(np.zeros((1, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="same size"):
        kid.polynomial_mmd2_unbiased(np.zeros((3, 2)), np.zeros((4, 2)))


# ----------------------------------------------------------------------------------------


def _ref_prdc(real, fake, k):
    """Direct numpy reference of the four metrics (squared distances, float64)."""

    def d2(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    r_rad = np.sort(d2(real, real), axis=1)[:, k]
    f_rad = np.sort(d2(fake, fake), axis=1)[:, k]
    rf = d2(real, fake)  # (N, M)
    precision = np.mean((rf <= r_rad[:, None]).any(axis=0))
    recall = np.mean((rf <= f_rad[None, :]).any(axis=1))
    density = (rf < r_rad[:, None]).sum() / (k * fake.shape[0])
    coverage = np.mean(rf.min(axis=1) < r_rad)
    return precision, recall, density, coverage


@pytest.mark.parametrize("chunks", [{}, {"query_chunk": 37, "ref_chunk": 50}])
def test_prdc_match_direct_reference(chunks):
    rng = np.random.default_rng(5)
    real = rng.standard_normal((160, 5))
    fake = rng.standard_normal((130, 5)) * 1.2 + 0.3
    p, r, _, _ = _ref_prdc(real, fake, 3)
    _, _, dens, cov = _ref_prdc(real, fake, 5)
    pr = prdc.precision_recall(real, fake, k=3, **chunks)
    dc = prdc.density_coverage(real, fake, k=5, **chunks)
    assert 0.0 < pr.precision < 1.0 and 0.0 < pr.recall < 1.0
    np.testing.assert_allclose(pr, (p, r), atol=1e-12)
    np.testing.assert_allclose(dc, (dens, cov), atol=1e-12)
    radii = np.sqrt(np.sort(((real[:, None] - real[None]) ** 2).sum(-1), axis=1)[:, 3])
    np.testing.assert_allclose(prdc.knn_radii(real, 3, **chunks), radii, rtol=1e-5)


def test_prdc_identical_sets():
    x = np.random.default_rng(6).standard_normal((200, 8))
    assert prdc.precision_recall(x, x) == (1.0, 1.0)
    dc = prdc.density_coverage(x, x)
    assert dc.coverage == 1.0
    assert 0.8 < dc.density < 1.2


def test_prdc_disjoint_far_sets():
    rng = np.random.default_rng(7)
    real = rng.standard_normal((150, 8))
    fake = rng.standard_normal((150, 8)) + 100.0
    assert prdc.precision_recall(real, fake) == (0.0, 0.0)
    assert prdc.density_coverage(real, fake) == (0.0, 0.0)


def test_prdc_mode_dropping():
    # Real data: 4 separated modes. Generated: only 2 of them, well covered.
    rng = np.random.default_rng(8)
    centers = np.array([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0]])
    real = np.concatenate([c + 0.5 * rng.standard_normal((250, 2)) for c in centers])
    fake = np.concatenate([c + 0.5 * rng.standard_normal((250, 2)) for c in centers[:2]])
    pr = prdc.precision_recall(real, fake)
    dc = prdc.density_coverage(real, fake)
    assert pr.precision > 0.95
    assert abs(pr.recall - 0.5) < 0.03
    assert abs(dc.coverage - 0.5) < 0.03
    assert 0.8 < dc.density < 1.2


def test_prdc_on_images_and_errors():
    imgs = np.random.default_rng(9).uniform(-1, 1, (20, 4, 4, 1))
    assert prdc.precision_recall(imgs, imgs) == (1.0, 1.0)
    with pytest.raises(ValueError, match="different dimensions"):
        prdc.precision_recall(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="needs at least 6"):
        prdc.density_coverage(np.zeros((5, 3)), np.zeros((10, 3)))
    with pytest.raises(ValueError, match="k must be"):
        prdc.precision_recall(np.zeros((10, 3)), np.zeros((10, 3)), k=0)
