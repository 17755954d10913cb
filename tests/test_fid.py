"""FID statistics, the Frechet distance and pytorch-fid stats files."""

import numpy as np
import pytest
import scipy.linalg

from diffjax.metrics import fid


def _random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d + (0.0 if rank else 0.1) * np.eye(d)


def _scipy_fid(mu1, s1, mu2, s2):
    """pytorch-fid's formula: tr(sqrtm(S1 S2)) with scipy's complex Schur sqrtm."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("d", [4, 32, 64])
def test_frechet_distance_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    want = _scipy_fid(mu1, s1, mu2, s2)
    got = fid.frechet_distance(mu1, s1, mu2, s2)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    # Symmetric in its two arguments.
    np.testing.assert_allclose(fid.frechet_distance(mu2, s2, mu1, s1), got, rtol=1e-9)


def test_frechet_distance_closed_form_with_singular_covariances():
    # Commuting (diagonal) covariances: FID = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2, zeros
    # included (rank-deficient, as with N < d).
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 2, 16)
    b = rng.uniform(0, 2, 16)
    a[:5] = 0.0
    b[3:8] = 0.0
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), want, rtol=1e-9)


def test_frechet_distance_exact_for_fewer_samples_than_dimensions():
    # With centred data X1, X2: tr sqrt(S1^1/2 S2 S1^1/2) = ||X2 X1^T||_* / sqrt((n1-1)(n2-1)).
    rng = np.random.default_rng(5)
    x1 = rng.standard_normal((30, 64))
    x2 = rng.standard_normal((25, 64)) * 1.5 + 0.1
    c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
    nuc = np.linalg.svd(c2 @ c1.T, compute_uv=False).sum() / np.sqrt(29 * 24)
    mu1, s1 = fid.compute_statistics(x1)
    mu2, s2 = fid.compute_statistics(x2)
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * nuc
    np.testing.assert_allclose(fid.fid_from_features(x1, x2), want, rtol=1e-12)


@pytest.mark.parametrize("n,d", [(500, 32), (20, 64)])
def test_fid_of_a_set_against_itself_is_zero(n, d):
    feats = np.random.default_rng(1).standard_normal((n, d)) * 3 + 5
    assert abs(fid.fid_from_features(feats, feats)) < 1e-6


def test_fid_grows_with_a_mean_shift():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2000, 8))
    y = rng.standard_normal((2000, 8))
    near = fid.fid_from_features(x, y)
    far = fid.fid_from_features(x, y + 1.0)
    assert near < 0.05
    np.testing.assert_allclose(far, 8.0, rtol=0.05)  # |dmu|^2 = 8


def test_streaming_statistics_equal_batch_statistics():
    rng = np.random.default_rng(3)
    # A large offset: E[xx^T] - mu mu^T would lose most digits here; the merge update does not.
    feats = rng.standard_normal((1003, 24)) * 0.1 + 1e4
    stats = fid.init_statistics(24)
    for lo, hi in [(0, 1), (1, 1), (1, 300), (300, 301), (301, 1003)]:
        stats = stats.update(feats[lo:hi])
    assert stats.count == 1003
    mu, sigma = stats.finalize()
    mu_b, sigma_b = fid.compute_statistics(feats)
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-14)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(sigma_b, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(mu_b, mu, rtol=1e-14)
    # Merging per-host statistics gives the same result.
    a = fid.init_statistics(24).update(feats[:500])
    b = fid.init_statistics(24).update(feats[500:])
    np.testing.assert_allclose(a.merge(b).finalize()[1], sigma, rtol=1e-9, atol=1e-11)
    assert a.merge(fid.init_statistics(24)) is a


def test_statistics_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"N=1.*2048-d|2048-d.*N=1"):
        fid.init_statistics(2048).update(np.zeros((1, 2048))).finalize()
    with pytest.raises(ValueError, match="N=0"):
        fid.init_statistics(5).finalize()
    with pytest.raises(ValueError, match=r"N=1.*16-d|16-d.*N=1"):
        fid.compute_statistics(np.zeros((1, 16)))
    with pytest.raises(ValueError, match=r"dimension 3 .* 4-d"):
        fid.init_statistics(4).update(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2-D"):
        fid.init_statistics(4).update(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        fid.init_statistics(2).update(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="dim must be"):
        fid.init_statistics(0)
    with pytest.raises(ValueError, match="different feature dimensions"):
        fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="sigma1 must have shape"):
        fid.frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="not symmetric"):
        fid.frechet_distance(
            np.zeros(2), np.array([[1.0, 1.0], [0.0, 1.0]]), np.zeros(2), np.eye(2)
        )
    with pytest.raises(ValueError, match="different dimensions"):
        fid.fid_from_features(np.zeros((3, 2)), np.zeros((3, 4)))


def test_stats_file_roundtrip_in_pytorch_fid_layout(tmp_path):
    rng = np.random.default_rng(4)
    feats = rng.standard_normal((300, 16))
    mu, sigma = fid.compute_statistics(feats)
    path = tmp_path / "ref.npz"
    fid.save_statistics(path, mu, sigma)
    with np.load(path) as data:  # the layout pytorch-fid reads
        assert sorted(data.files) == ["mu", "sigma"]
        np.testing.assert_array_equal(data["mu"], mu)
    mu2, sigma2 = fid.load_statistics(path, dim=16)
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)
    other = rng.standard_normal((400, 16)) + 0.5
    want = fid.fid_from_features(other, feats)
    np.testing.assert_allclose(fid.fid_to_reference(other, path), want, rtol=1e-12)
    stats = fid.init_statistics(16).update(other[:123]).update(other[123:])
    np.testing.assert_allclose(fid.fid_to_reference(stats, path), want, rtol=1e-9)


def test_stats_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        fid.load_statistics(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, mean=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(KeyError, match=r"lacks \['mu'\].*'mean'"):
        fid.load_statistics(bad)
    malformed = tmp_path / "malformed.npz"
    np.savez(malformed, mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(ValueError, match="Malformed"):
        fid.load_statistics(malformed)
    good = tmp_path / "good.npz"
    fid.save_statistics(good, np.zeros(8), np.eye(8))
    with pytest.raises(ValueError, match=r"8-d features, but the features are 4-d"):
        fid.fid_to_reference(np.random.default_rng(0).standard_normal((10, 4)), good)
