import json
import os

import chex
import jax
import numpy as np
import pytest

from diffjax.app.checkpoint import CHECKPOINT_DIR
from diffjax.app.config import digits_config
from diffjax.app.train import load_trained, train


def tiny_config(num_steps=6, **training):
    config = digits_config("tiny")
    config.training.num_steps = num_steps
    config.training.checkpoint_every = 2
    config.training.log_every = 2
    config.training.progress_bar = False
    for key, value in training.items():
        config.training[key] = value
    return config


def listing(workdir):
    out = {}
    for root, _, files in os.walk(os.path.join(workdir, CHECKPOINT_DIR)):
        for name in files:
            path = os.path.join(root, name)
            out[path] = os.path.getmtime(path)
    return out


def test_runs_on_two_devices():
    assert jax.device_count() == 2


def test_tiny_run_writes_config_metrics_and_checkpoints(tmp_path):
    workdir = str(tmp_path / "run")
    state = train(tiny_config(num_steps=4), workdir)
    assert int(state.step) == 4
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [2, 4]
    assert all(np.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in records)
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["base_channels"] == 16
    steps = sorted(os.listdir(os.path.join(workdir, CHECKPOINT_DIR)))
    assert steps == ["2", "4"]
    # The state is replicated over the data axis.
    leaf = jax.tree.leaves(state.params)[0]
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 2


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    straight = train(tiny_config(num_steps=6), str(tmp_path / "a"))
    workdir = str(tmp_path / "b")
    train(tiny_config(num_steps=4), workdir)
    resumed = train(tiny_config(num_steps=6), workdir)
    assert int(resumed.step) == 6
    chex.assert_trees_all_equal(jax.device_get(straight.params), jax.device_get(resumed.params))
    chex.assert_trees_all_equal(
        jax.device_get(straight.ema_params), jax.device_get(resumed.ema_params)
    )


def test_checkpoint_from_another_config_is_refused_and_kept(tmp_path):
    workdir = str(tmp_path / "run")
    train(tiny_config(num_steps=2), workdir)
    before = listing(workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        config_before = f.read()
    other = tiny_config(num_steps=4)
    other.model.base_channels = 32
    with pytest.raises(ValueError, match="(?s)another configuration.*model.base_channels"):
        train(other, workdir)
    assert listing(workdir) == before
    with open(os.path.join(workdir, "config.json")) as f:
        assert f.read() == config_before


def test_batch_must_split_over_devices(tmp_path):
    with pytest.raises(ValueError, match="batch_size=3 is not divisible by the 2 devices"):
        train(tiny_config(num_steps=1, batch_size=3), str(tmp_path / "run"))


def test_load_trained_returns_the_ema_params(tmp_path):
    workdir = str(tmp_path / "run")
    state = train(tiny_config(num_steps=2), workdir)
    _, model, params, info = load_trained(workdir)
    assert info == {"image_shape": [8, 8, 1], "num_classes": 10}
    assert model.num_classes == 10
    chex.assert_trees_all_equal(jax.device_get(params), jax.device_get(state.ema_params))


def test_missing_workdir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a diffjax training workdir"):
        load_trained(str(tmp_path / "nothing"))


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    train(tiny_config(num_steps=2), workdir)
    before = listing(workdir)
    diverging = tiny_config(num_steps=4)
    diverging.optim.learning_rate = 1e30
    with pytest.raises(FloatingPointError, match="at step 4.*step 2"):
        train(diverging, workdir)
    assert listing(workdir) == before
    diverging.training.num_steps = 3  # a fresh run that diverges before its first save
    diverging.training.checkpoint_every = 10
    with pytest.raises(FloatingPointError, match="no checkpoint had been written yet"):
        train(diverging, str(tmp_path / "fresh"))


def test_bfloat16_compute_keeps_float32_params_and_optimizer_state():
    # Traced, not compiled (a bf16 train step takes ~50 s to compile on XLA:CPU); the
    # bf16 forward pass itself is checked against float32 in tests/test_unet.py.
    from diffjax.app import builders
    from diffjax.training.optimizer import make_optimizer
    from diffjax.training.state import create_train_state
    from diffjax.training.step import make_train_step

    config = digits_config("tiny")
    config.model.dtype = "bfloat16"
    model = builders.build_unet(config.model, 10)
    optimizer = make_optimizer(config.optim)
    state = jax.eval_shape(lambda key: create_train_state(
        builders.init_params(model, key, (8, 8, 1)), optimizer), jax.random.key(0))
    step = make_train_step(model, builders.build_schedule(config.diffusion), optimizer,
                           config.diffusion, config.training.ema_decay)
    batch = {"image": jax.ShapeDtypeStruct((8, 8, 8, 1), np.float32),
             "label": jax.ShapeDtypeStruct((8,), np.int32)}
    new_state, metrics = jax.eval_shape(step, state, batch, jax.random.key(1))
    leaves = jax.tree.leaves((new_state.params, new_state.ema_params, new_state.opt_state))
    assert all(leaf.dtype in (np.float32, np.int32) for leaf in leaves)
    assert metrics["loss"].dtype == np.float32
    # The network really computes in bfloat16.
    jaxpr = str(jax.make_jaxpr(step)(state, batch, jax.random.key(1)))
    assert "bf16" in jaxpr


def test_first_non_finite_step_names_the_first_bad_step():
    from diffjax.app.train import first_non_finite_step

    assert first_non_finite_step([True, True], 5) is None
    assert first_non_finite_step([True, False, False], 5) == 6
