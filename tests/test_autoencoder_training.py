"""The KL autoencoder: its objective and step (formulas, split invariance, scale), its runs."""

import dataclasses
import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffjax.app.autoencoder_eval import reconstruct
from diffjax.app.cli import main
from diffjax.app.train import distill_config, load_trained
from diffjax.data import load_digits
from diffjax.metrics import psnr
from diffjax.networks.classifier import save_classifier, train_classifier
from diffjax.nn.autoencoder import AutoencoderKL, AutoencoderKLConfig
from diffjax.stable_diffusion.vae import load_vae, save_vae
from diffjax.training.autoencoder_step import (
    autoencoder_loss,
    kl_to_standard_normal,
    latent_scaling_factor,
    make_autoencoder_train_step,
    reconstruction_error,
)
from diffjax.training.state import create_train_state

TINY = AutoencoderKLConfig(in_channels=1, out_channels=1, block_out_channels=(4, 8),
                           layers_per_block=1, latent_channels=2, norm_num_groups=4,
                           mid_block_add_attention=False)


@pytest.fixture(scope="module")
def tiny():
    model = AutoencoderKL(TINY)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    return model, params


def test_the_kl_term_is_the_gaussian_kl_to_the_standard_normal():
    mean = jnp.asarray([[0.5, -1.0, 0.0]])
    logvar = jnp.asarray([[np.log(0.25), 0.0, np.log(2.0)]])
    # A Monte Carlo estimate of E_q[log q - log p], 400k draws.
    draws = np.random.default_rng(0).normal(size=(400_000, 3))
    std = np.exp(0.5 * np.asarray(logvar))
    z = np.asarray(mean) + std * draws
    log_q = -0.5 * draws**2 - np.log(std)
    log_p = -0.5 * z**2
    estimate = float(np.mean(np.sum(log_q - log_p, axis=1)))
    assert float(kl_to_standard_normal(mean, logvar)[0]) == pytest.approx(estimate, abs=5e-3)
    assert float(kl_to_standard_normal(jnp.zeros((1, 4)), jnp.zeros((1, 4)))[0]) == 0.0


def test_the_reconstruction_error_sums_over_pixels():
    x = jnp.zeros((2, 2, 2, 1))
    y = jnp.asarray([0.5, -0.5, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0]).reshape(2, 2, 2, 1)
    chex.assert_trees_all_close(reconstruction_error(x, y, "l1"), jnp.asarray([2.0, 2.0]))
    chex.assert_trees_all_close(reconstruction_error(x, y, "l2"), jnp.asarray([1.5, 4.0]))
    with pytest.raises(ValueError, match="unknown reconstruction='l3'"):
        reconstruction_error(x, y, "l3")


# Momentum SGD: linear in the gradients, so equal gradients give equal updates (Adam's
# first step, g / |g|, would turn rounding in near-zero gradients into sign flips).
OPTIMIZER = optax.chain(optax.clip_by_global_norm(10.0), optax.sgd(3e-3, momentum=0.9))


@pytest.fixture(scope="module")
def whole_step(tiny):
    return jax.jit(make_autoencoder_train_step(tiny[0], OPTIMIZER, kl_weight=1e-3))


def test_a_split_batch_gives_the_same_update(tiny, whole_step):
    model, params = tiny
    images = jnp.asarray(load_digits("train").images[:16])
    state = create_train_state(params, OPTIMIZER)
    split = jax.jit(make_autoencoder_train_step(model, OPTIMIZER, kl_weight=1e-3,
                                                grad_accum_steps=2))
    a, metrics_a = whole_step(state, {"image": images}, jax.random.key(5))
    b, metrics_b = split(state, {"image": images}, jax.random.key(5))
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(metrics_a, metrics_b, rtol=1e-5)
    # The loss is its two terms; the KL is weighted.
    assert float(metrics_a["loss"]) == pytest.approx(
        float(metrics_a["reconstruction"]) + 1e-3 * float(metrics_a["kl"]), rel=1e-6)


def test_training_lowers_the_held_out_reconstruction(tiny, whole_step):
    model, params = tiny
    train, held = load_digits("train").images, jnp.asarray(load_digits("heldout").images[:128])
    state = create_train_state(params, OPTIMIZER)
    keys = jax.random.split(jax.random.key(1), len(held))

    def held_out(p):
        return float(autoencoder_loss(model, p, held, keys, kl_weight=0.0)[1]["reconstruction"])

    before = held_out(state.params)
    rng = np.random.default_rng(0)
    for _ in range(40):
        batch = {"image": jnp.asarray(train[rng.choice(len(train), 16)])}
        state, metrics = whole_step(state, batch, jax.random.key(2))
    assert bool(metrics["finite"])
    assert held_out(state.params) < 0.5 * before, (before, held_out(state.params))


def test_psnr_is_ten_log_ten_of_the_range_squared_over_the_mse():
    x = np.zeros((2, 4, 4, 1))
    y = x + np.asarray([0.1, 0.2])[:, None, None, None]
    np.testing.assert_allclose(psnr(x, y), 10 * np.log10(4 / np.asarray([0.01, 0.04])))
    assert psnr(x, x)[0] == np.inf
    with pytest.raises(ValueError, match="same"):
        psnr(x, y[:1])


def test_the_latent_scale_is_one_over_the_latent_std():
    spread = np.random.default_rng(0).normal(scale=4.0, size=(3, 64, 2, 2, 1))

    def encode(images):  # a posterior with no variance: z = mean
        return images, jnp.full(images.shape, -30.0)

    factor = latent_scaling_factor(encode, list(spread), jax.random.key(0))
    assert factor == pytest.approx(1.0 / spread.std(), rel=1e-4)
    with pytest.raises(ValueError, match="at least one batch"):
        latent_scaling_factor(encode, [], jax.random.key(0))
    with pytest.raises(ValueError, match="kl_weight=-1"):
        make_autoencoder_train_step(AutoencoderKL(TINY), optax.sgd(1.0), kl_weight=-1)


# --------------------------------------------------------------------------- the run


def test_an_autoencoder_run_trains_resumes_and_refuses_other_runs(tiny_trained_workdir,
                                                                    tmp_path, capsys):
    vae = str(tmp_path / "vae")
    argv = ["train", "--config", "experiments/configs/digits_vae.py:tiny",
            "--config.training.progress_bar=False"]
    assert main([*argv, "--workdir", vae]) == 0
    with open(os.path.join(vae, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [2, 4]
    assert all(r["loss"] == pytest.approx(r["reconstruction"] + 1e-6 * r["kl"], rel=1e-5)
               for r in records)
    # Resumed from its step-2 checkpoint, the run ends where the uninterrupted one did.
    resumed = str(tmp_path / "resumed")
    shutil.copytree(vae, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))
    assert main([*argv, "--workdir", resumed]) == 0
    config, model, params, _ = load_trained(vae, task="autoencoder")
    assert isinstance(model, AutoencoderKL) and config.autoencoder.latent_channels == 2
    chex.assert_trees_all_equal(load_trained(resumed, task="autoencoder")[2], params)
    # `diffjax evaluate` on it: PSNR, rFID@N and the latent scale (a 30-step classifier
    # put in place, as tests/conftest.py does for samples).
    clf = train_classifier(load_digits("train"), key=jax.random.key(0), num_steps=30)
    os.makedirs(os.path.join(vae, "eval"))
    save_classifier(os.path.join(vae, "eval", "digits_classifier.msgpack"), clf)
    assert main(["evaluate", "--workdir", vae, "--num-samples", "64"]) == 0
    with open(os.path.join(vae, "eval", "autoencoder_N64.json")) as f:
        result = json.load(f)
    assert result["step"] == 4 and result["latent_shape"] == [4, 4, 2]
    assert result["compression"] == 2.0 and result["latent_scaling_factor"] > 0
    recon = reconstruct(model, params, load_digits("heldout").images[:64])
    assert result["psnr_db"] == pytest.approx(
        float(np.mean(psnr(load_digits("heldout").images[:64], recon))), rel=1e-6)
    assert np.isfinite(result["rfid"]) and result["rfid"] > 0
    # Where a diffusion model is needed, the autoencoder is refused by name.
    capsys.readouterr()
    assert main(["sample", "--workdir", vae, "--out", str(tmp_path / "s.png")]) == 2
    assert "holds a 'autoencoder' model (config.task); this needs a 'diffusion' model" in (
        capsys.readouterr().err)
    with pytest.raises(ValueError, match="holds a 'autoencoder' model .*not a diffusion model"):
        distill_config(vae, "cd")
    # A diffusion workdir does not take an autoencoder run (nor the reverse).
    other = str(tmp_path / "diffusion")
    shutil.copytree(tiny_trained_workdir, other)
    before = sorted(os.listdir(os.path.join(other, "checkpoints")))
    assert main([*argv, "--workdir", other]) == 2
    assert "task: checkpoint has 'diffusion', config has 'autoencoder'" in capsys.readouterr().err
    assert sorted(os.listdir(os.path.join(other, "checkpoints"))) == before


# --------------------------------------------------------------------------- export


def test_an_autoencoder_saves_as_a_diffusers_vae_folder(tiny, tmp_path):
    model, params = tiny
    config = dataclasses.replace(model.config, scaling_factor=0.7)
    save_vae(tmp_path / "vae", params, config)
    loaded, loaded_config = load_vae(tmp_path / "vae")
    assert loaded_config == config
    chex.assert_trees_all_equal(loaded, params)
    with pytest.raises(ValueError, match="params do not match"):
        save_vae(tmp_path / "other", params, dataclasses.replace(config, latent_channels=3))


def test_diffusers_reads_the_saved_vae_to_the_same_outputs(tiny, tmp_path):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    model, params = tiny
    save_vae(tmp_path / "vae", params, model.config)
    theirs = diffusers.AutoencoderKL.from_pretrained(str(tmp_path / "vae")).eval()
    x = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)
    with torch.no_grad():
        mean_t = theirs.encode(torch.from_numpy(x.transpose(0, 3, 1, 2))).latent_dist.mean
        decoded_t = theirs.decode(mean_t).sample.numpy().transpose(0, 2, 3, 1)
    mean, _ = model.apply({"params": params}, x, method=AutoencoderKL.encode)
    decoded = model.apply({"params": params}, mean, method=AutoencoderKL.decode)
    np.testing.assert_allclose(mean_t.numpy().transpose(0, 2, 3, 1), mean, atol=1e-5)
    np.testing.assert_allclose(decoded_t, decoded, atol=1e-5)
