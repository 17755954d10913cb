"""Latent diffusion: the step's encode hook, and runs on a frozen autoencoder's latents."""

import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffjax.app import builders
from diffjax.app.cli import main
from diffjax.app.config import apply_overrides, digits_config
from diffjax.app.latent import check_latent_cache, open_latent_space
from diffjax.app.train import load_trained, load_training_data, train
from diffjax.data import load_digits
from diffjax.training.state import create_train_state
from diffjax.training.step import LATENT_STREAM, make_train_step


def test_the_step_trains_on_what_encode_returns():
    config = digits_config("tiny")
    apply_overrides(config, ["model.base_channels=8", "model.channel_mults=(1,)"])
    model = builders.build_unet(config.model, 10)
    schedule = builders.build_schedule(config.diffusion)
    optimizer = optax.sgd(1e-2)
    params = builders.init_params(model, jax.random.key(0), (8, 8, 1))
    state = create_train_state(params, optimizer)
    data = load_digits("train")
    batch = {"image": jnp.asarray(data.images[:8]), "label": jnp.asarray(data.labels[:8])}
    seen = {}

    def encode(frozen, images, keys):
        seen["keys"] = keys
        return frozen * images  # a stand-in latent: the images scaled by the frozen input

    latent = jax.jit(make_train_step(model, schedule, optimizer, config.diffusion, 0.9,
                                     encode=encode))
    pixel = jax.jit(make_train_step(model, schedule, optimizer, config.diffusion, 0.9))
    a, metrics_a = latent(state, batch, jax.random.key(1), jnp.float32(0.5))
    b, metrics_b = pixel(state, {**batch, "image": 0.5 * batch["image"]}, jax.random.key(1))
    chex.assert_trees_all_equal(a.params, b.params)  # the same noise, the same update
    chex.assert_trees_all_equal(metrics_a, metrics_b)
    # Each example's latent draws from its own stream, apart from its diffusion noise.
    assert seen["keys"].shape == (8,) and LATENT_STREAM != 0


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("ae") / "vae")
    assert main(["train", "--config", "experiments/configs/digits_vae.py:tiny",
                 "--workdir", workdir, "--config.training.progress_bar=False"]) == 0
    return workdir


def latent_config(autoencoder, *overrides):
    config = digits_config("tiny")
    apply_overrides(config, [f"latent.autoencoder={autoencoder}", "training.num_steps=4",
                             "training.log_every=2", "training.checkpoint_every=2",
                             "training.progress_bar=False", *overrides])
    return config


@pytest.fixture(scope="module")
def latent_run(autoencoder, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("latent") / "run")
    train(latent_config(autoencoder), run)
    return run


def test_a_latent_run_trains_resumes_and_samples_decoded_images(autoencoder, latent_run,
                                                                tmp_path):
    with open(os.path.join(latent_run, "run_info.json")) as f:
        info = json.load(f)
    assert info["image_shape"] == [8, 8, 1] and info["latent_shape"] == [4, 4, 2]
    assert info["latent_scaling_factor"] > 0 and len(info["autoencoder_fingerprint"]) == 16
    # The UNet is built for the latents; a resumed run is the uninterrupted one.
    params = load_trained(latent_run)[2]
    chex.assert_shape(params["conv_in"]["kernel"], (3, 3, 2, 16))
    resumed = str(tmp_path / "resumed")
    shutil.copytree(latent_run, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))
    train(latent_config(autoencoder), resumed)
    chex.assert_trees_all_equal(load_trained(resumed)[2], params)
    # `diffjax sample` decodes: images of the data's shape.
    out = str(tmp_path / "s.png")
    assert main(["sample", "--workdir", latent_run, "--steps", "3", "--labels", "1,2",
                 "--num-per-label", "1", "--out", out]) == 0
    images = np.load(str(tmp_path / "s.npz"))["images"]
    chex.assert_shape(images, (2, 8, 8, 1))
    assert np.all(np.isfinite(images))
    # The factor measured is 1/std of the posterior samples; a given one is used as given.
    config = latent_config(autoencoder)
    space = open_latent_space(config, (8, 8, 1), lambda n: load_digits("train").images[:n])
    assert space.scaling_factor == info["latent_scaling_factor"]
    config.latent.scaling_factor = 0.25
    assert open_latent_space(config, (8, 8, 1)).scaling_factor == 0.25


def test_latent_runs_refuse_an_autoencoder_that_is_not_theirs(autoencoder, latent_run,
                                                              tiny_trained_workdir, tmp_path,
                                                              capsys):
    run = str(tmp_path / "latent")
    shutil.copytree(latent_run, run)
    # The autoencoder's weights are not those the run trained with (as after training it
    # on; the fingerprint recorded is what tells): sampling and resuming refuse.
    info = load_json(run, "run_info.json")
    info["autoencoder_fingerprint"] = "0123456789abcdef"
    with open(os.path.join(run, "run_info.json"), "w") as f:
        json.dump(info, f)
    capsys.readouterr()
    assert main(["sample", "--workdir", run, "--steps", "2", "--out",
                 str(tmp_path / "s.png")]) == 2
    assert "holds other weights than the run trained with" in capsys.readouterr().err
    before = sorted(os.listdir(os.path.join(run, "checkpoints")))
    with pytest.raises(ValueError, match="autoencoder_fingerprint: checkpoint has "
                                         "'0123456789abcdef', run has"):
        train(latent_config(autoencoder, "training.num_steps=6"), run)
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == before
    # A diffusion workdir, a relative path, a latent consistency model: refused by name.
    with pytest.raises(ValueError, match="latent.autoencoder=.*holds a 'diffusion' model"):
        train(latent_config(tiny_trained_workdir), str(tmp_path / "x"))
    with pytest.raises(ValueError, match="latent.autoencoder='vae': expected an absolute path"):
        train(latent_config("vae"), str(tmp_path / "y"))
    with pytest.raises(ValueError, match="consistency models of latents are not built"):
        train(latent_config(autoencoder, "consistency.method=ict"), str(tmp_path / "z"))
    assert not any(os.path.exists(tmp_path / n) for n in "xyz")


def test_latents_cached_once_train_as_the_on_the_fly_ones(autoencoder, latent_run, tmp_path):
    cache = str(tmp_path / "cache" / "digits_latents.npz")
    cached = str(tmp_path / "cached")
    train(latent_config(autoencoder, f"latent.cache={cache}"), cached)
    with np.load(cache) as f:
        chex.assert_shape(f["moments"], (1438, 4, 4, 4))  # every image's mean and log-variance
        assert str(f["fingerprint"]) == load_json(latent_run, "run_info.json")[
            "autoencoder_fingerprint"]
    # The same samples of the same posteriors: the run of the cache is the on-the-fly run's.
    chex.assert_trees_all_close(load_trained(cached)[2], load_trained(latent_run)[2],
                                rtol=1e-5, atol=1e-6)
    # A later run reads the cache (it matches); one of another autoencoder is refused.
    config = latent_config(autoencoder, f"latent.cache={cache}")
    source = load_training_data(config)
    space = open_latent_space(config, (8, 8, 1), measured_scale=0.5)
    assert check_latent_cache(cache, space, source)
    with np.load(cache) as f:
        arrays = dict(f)
    arrays["fingerprint"] = np.asarray("0123456789abcdef")
    np.savez(cache, **arrays)
    built = os.path.getmtime(cache)
    with pytest.raises(ValueError, match="does not belong to this run: built with another "
                                         "autoencoder"):
        train(config, str(tmp_path / "refused"))
    assert not os.path.exists(tmp_path / "refused") and os.path.getmtime(cache) == built
    with pytest.raises(ValueError, match="a flipped latent is not the latent"):
        train(latent_config(autoencoder, f"latent.cache={cache}", "data.random_flip=True"),
              str(tmp_path / "flipped"))


def load_json(workdir, name):
    with open(os.path.join(workdir, name)) as f:
        return json.load(f)
