"""The Flax FID InceptionV3 against pytorch-fid's (golden outputs), weights I/O and errors.

``tests/data/inception_golden.npz`` was written by ``experiments/make_inception_golden.py``
with torch 2.14.1 and pytorch-fid 0.3.0: pytorch-fid's own ``InceptionV3`` wrapper (its
resize and scaling included) run on random weights that both sides regenerate from one
numpy seed. Only two 32x32 images go through the full network at 299x299 (CPU time).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from repo_scripts import load_script

from diffjax.networks import inception as inc

random_weights = load_script("experiments/random_weights.py")

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "inception_golden.npz")


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN, allow_pickle=False) as g:
        return {k: g[k] for k in g.files}


@pytest.fixture(scope="module")
def random_variables(golden):
    sd = random_weights.random_pytorch_fid_state_dict(int(golden["seed"]))
    return sd, inc.variables_from_pytorch_fid_state_dict(sd)


def test_variables_match_pytorch_fid_names_and_counts(golden):
    shapes = inc.pytorch_fid_state_dict_shapes()
    assert list(shapes) == golden["keys"].tolist()  # the keys of pytorch-fid's state dict
    assert len(shapes) == 472
    assert sum(k.endswith("conv.weight") for k in shapes) == 94
    assert not any(k.endswith("conv.bias") for k in shapes)  # convolutions have no bias
    assert not any(k.startswith("AuxLogits") for k in shapes)
    trainable = sum(
        int(np.prod(s))
        for k, s in shapes.items()
        if not k.endswith(("running_mean", "running_var"))
    )
    assert trainable == 23_850_960
    assert sum(int(np.prod(s)) for s in shapes.values()) == 23_885_392
    assert shapes["fc.weight"] == (1008, 2048)
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)


def test_random_weights_match_the_golden_checksums(golden, random_variables):
    sd, _ = random_variables
    sums = np.array([np.sum(sd[k], dtype=np.float64) for k in golden["keys"]])
    np.testing.assert_array_equal(sums, golden["checksums"])


def test_parity_with_pytorch_fid_float32(golden, random_variables):
    _, variables = random_variables
    images = golden["images"]  # NHWC in [0, 1]: pytorch-fid's input convention
    out = inc.inception_apply(variables, images, input_range=(0.0, 1.0))
    assert out["pool3"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    scale = np.abs(golden["pool3_f32"]).max()
    np.testing.assert_allclose(out["pool3"], golden["pool3_f32"], rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(out["logits"], golden["logits_f32"], rtol=1e-4, atol=1e-4 * scale)
    # inception_features: same compiled function; a padded last batch changes nothing.
    three = np.concatenate([images, images[:1]])
    feats = inc.inception_features(variables, three, batch_size=2, input_range=(0.0, 1.0))
    assert feats.shape == (3, 2048) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats[:2], np.asarray(out["pool3"]))
    np.testing.assert_array_equal(feats[2], feats[0])


def test_parity_with_pytorch_fid_float64(golden, random_variables):
    # A faithful port agrees to round-off in float64 (block outputs included).
    _, variables = random_variables
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), variables)
        x = jnp.asarray(golden["images"], jnp.float64)

        @jax.jit
        def run(v, x):
            x = jax.image.resize(x, (x.shape[0], 299, 299, 3), "bilinear", antialias=False)
            return inc.FIDInceptionV3().apply(v, 2.0 * x - 1.0, mutable=["intermediates"])

        out, state = run(v64, x)
        assert out["pool3"].dtype == jnp.float64
        np.testing.assert_allclose(out["pool3"], golden["pool3_f64"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["logits"], golden["logits_f64"], rtol=0, atol=1e-10)
        for i in range(3):
            block = np.asarray(state["intermediates"][f"block{i}"][0]).mean(axis=(1, 2))
            np.testing.assert_allclose(block, golden[f"block{i}_mean_f64"], rtol=0, atol=1e-11)


def test_resize_matches_torch_interpolate(golden):
    with jax.enable_x64(True):
        for i in range(2):
            x, y = golden[f"resize{i}_in"], golden[f"resize{i}_out"]
            got = jax.image.resize(jnp.asarray(x), y.shape, "bilinear", antialias=False)
            np.testing.assert_allclose(got, y, rtol=0, atol=1e-12)


def test_preprocess_images():
    gray = jnp.linspace(0.0, 255.0, 2 * 5 * 5).reshape(2, 5, 5, 1)
    x = inc.preprocess_images(gray, resize=False, input_range=(0, 255))
    assert x.shape == (2, 5, 5, 3) and x.dtype == jnp.float32
    np.testing.assert_allclose(x[..., 0], x[..., 2])
    np.testing.assert_allclose([x.min(), x.max()], [-1.0, 1.0], atol=1e-6)
    y = inc.preprocess_images(jnp.zeros((1, 8, 8, 3)) + 0.5, input_range=(0, 1))
    assert y.shape == (1, 299, 299, 3)
    np.testing.assert_allclose(y, 0.0, atol=1e-6)
    z = jnp.full((1, 4, 4, 3), 0.25)
    np.testing.assert_array_equal(inc.preprocess_images(z, resize=False), z)  # [-1, 1] default
    with pytest.raises(ValueError, match="NCHW"):
        inc.preprocess_images(jnp.zeros((1, 3, 8, 8)))
    with pytest.raises(ValueError, match="input_range"):
        inc.preprocess_images(z, input_range=(1, 1))


def test_weights_roundtrip_and_env_var(tmp_path, monkeypatch, random_variables):
    _, variables = random_variables
    path = tmp_path / "fid_inception.npz"
    inc.save_inception_weights(path, variables)
    loaded = inc.load_inception_weights(path)
    flat_a = dict(jax.tree_util.tree_leaves_with_path(variables))
    flat_b = dict(jax.tree_util.tree_leaves_with_path(loaded))
    assert flat_a.keys() == flat_b.keys()
    for k, v in flat_a.items():
        np.testing.assert_array_equal(np.asarray(flat_b[k]), v)
    monkeypatch.setenv(inc.WEIGHTS_ENV_VAR, str(path))
    from_env = inc.load_inception_weights()
    assert jax.tree.structure(from_env) == jax.tree.structure(loaded)

    # A shape that does not fit is refused on load.
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["params/fc/bias"] = np.zeros((1000,), np.float32)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match=r"params/fc/bias: \(1000,\) \(expected \(1008,\)\)"):
        inc.load_inception_weights(bad)
    del arrays["params/fc/bias"]
    np.savez(bad, **arrays)
    with pytest.raises(KeyError, match="1 missing variables.*params/fc/bias"):
        inc.load_inception_weights(bad)


def test_missing_weights_are_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(inc.WEIGHTS_ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match="DIFFJAX_INCEPTION_WEIGHTS.*never downloads"):
        inc.load_inception_weights()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inc.load_inception_weights(tmp_path / "absent.npz")
    monkeypatch.setenv(inc.WEIGHTS_ENV_VAR, str(tmp_path / "absent.npz"))
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        inc.load_inception_weights()


def test_state_dict_conversion_errors(random_variables):
    sd, variables = random_variables
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    prefixed["module.fc.num_batches_tracked"] = np.zeros(())  # ignored
    again = inc.variables_from_pytorch_fid_state_dict(prefixed)
    np.testing.assert_array_equal(
        again["params"]["Mixed_7c"]["branch_pool"]["conv"]["kernel"],
        variables["params"]["Mixed_7c"]["branch_pool"]["conv"]["kernel"],
    )
    # Layout: torch (out, in, kh, kw) -> Flax (kh, kw, in, out).
    np.testing.assert_array_equal(
        variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
        sd["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0),
    )
    with pytest.raises(KeyError, match=r"1 missing keys \['fc.bias'\]"):
        inc.variables_from_pytorch_fid_state_dict({k: v for k, v in sd.items() if k != "fc.bias"})
    with pytest.raises(KeyError, match=r"1 unexpected keys \['AuxLogits.fc.weight'\]"):
        inc.variables_from_pytorch_fid_state_dict({**sd, "AuxLogits.fc.weight": np.zeros((1, 1))})
    with pytest.raises(ValueError, match=r"fc.weight: expected shape \(1008, 2048\)"):
        inc.variables_from_pytorch_fid_state_dict({**sd, "fc.weight": np.zeros((1000, 2048))})


def test_converter_from_a_torch_checkpoint(tmp_path, random_variables):
    torch = pytest.importorskip("torch")
    sd, variables = random_variables
    src = tmp_path / "pt_inception.pth"
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, src)
    dst = tmp_path / "converted.npz"
    inc.main(["convert", str(src), str(dst)])
    loaded = inc.load_inception_weights(dst)
    np.testing.assert_array_equal(
        loaded["params"]["fc"]["kernel"], variables["params"]["fc"]["kernel"]
    )
