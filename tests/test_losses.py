import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import losses
from diffjax.schedules import make_schedule


def test_drop_labels_is_deterministic_and_has_the_right_rate():
    labels = jnp.arange(20000) % 10
    key = jax.random.key(3)
    a = losses.drop_labels(key, labels, 0.1, null_label=10)
    b = losses.drop_labels(key, labels, 0.1, null_label=10)
    chex.assert_trees_all_equal(a, b)
    dropped = np.asarray(a == 10)
    assert abs(dropped.mean() - 0.1) < 0.01
    np.testing.assert_array_equal(np.asarray(a)[~dropped], np.asarray(labels)[~dropped])
    assert not np.array_equal(a, losses.drop_labels(jax.random.key(4), labels, 0.1, 10))


def test_min_snr_weights_agree_across_parameterizations():
    """Each weight times the MSE in its own space equals min(SNR, gamma) * MSE in x0 space."""
    rng = np.random.default_rng(0)
    x0, eps, x0_hat = (rng.normal(size=(6, 5)) for _ in range(3))
    alpha = rng.uniform(0.05, 0.99, size=(6, 1))
    sigma = np.sqrt(1 - alpha**2)
    snr = (alpha / sigma) ** 2
    x_t = alpha * x0 + sigma * eps
    eps_hat = (x_t - alpha * x0_hat) / sigma
    v, v_hat = alpha * eps - sigma * x0, alpha * eps_hat - sigma * x0_hat
    gamma = 5.0
    want = np.minimum(snr, gamma)[:, 0] * np.mean((x0_hat - x0) ** 2, axis=1)
    pairs = {"eps": (eps_hat, eps), "x0": (x0_hat, x0), "v": (v_hat, v)}
    for prediction_type, (pred, target) in pairs.items():
        weight = losses.loss_weight(jnp.asarray(snr[:, 0]), prediction_type, "min_snr", gamma)
        got = np.asarray(weight) * np.mean((pred - target) ** 2, axis=1)
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=prediction_type)
    np.testing.assert_array_equal(losses.loss_weight(jnp.asarray(snr[:, 0]), "eps", "uniform"), 1)


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_zero_network_loss_is_the_target_second_moment(prediction_type):
    """A network that outputs 0 scores E[target^2]; for eps that is 1, for x0 it is E[x0^2]."""
    schedule = make_schedule("linear", 1000)
    x0 = jnp.full((4096, 2, 2, 1), 0.5)
    seen = {}

    def zero_model(x, t, labels, dropout_key):
        seen["labels"] = labels
        return jnp.zeros_like(x)

    loss, aux = losses.diffusion_loss(
        zero_model, schedule, x0, None, jax.random.key(0), prediction_type=prediction_type
    )
    chex.assert_shape(aux.mse, (4096,))
    t = aux.timesteps.astype(jnp.float32)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    expected = {
        "eps": jnp.ones_like(t),
        "x0": jnp.full_like(t, 0.25),
        "v": alpha**2 + 0.25 * sigma**2,
    }[prediction_type]
    np.testing.assert_allclose(float(loss), float(jnp.mean(expected)), rtol=0.05)
    assert seen["labels"] is None


def test_conditioning_dropout_reaches_the_network():
    schedule = make_schedule("linear", 1000)
    seen = {}

    def model(x, t, labels, dropout_key):
        seen["labels"] = labels
        return jnp.zeros_like(x)

    labels = jnp.arange(1000) % 10
    losses.diffusion_loss(
        model, schedule, jnp.zeros((1000, 2, 2, 1)), labels, jax.random.key(1),
        p_uncond=0.5, null_label=10,
    )
    frac = float(jnp.mean(seen["labels"] == 10))
    assert 0.4 < frac < 0.6
    # The loss drops labels with the exported drop_labels, on the third split of its key.
    drop_key = jax.random.split(jax.random.key(1), 4)[2]
    chex.assert_trees_all_equal(
        seen["labels"], losses.drop_labels(drop_key, labels, 0.5, null_label=10)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prediction_type": "score"}, "prediction_type"),
        ({"weighting": "snr+1"}, "weighting"),
        ({"p_uncond": 1.5}, "p_uncond"),
        ({"weighting": "min_snr", "min_snr_gamma": 0.0}, "min_snr_gamma"),
    ],
)
def test_bad_loss_options(kwargs, message):
    schedule = make_schedule("linear", 1000)
    with pytest.raises(ValueError, match=message):
        losses.diffusion_loss(
            lambda x, t, y, k: x, schedule, jnp.zeros((2, 2, 2, 1)), None, jax.random.key(0),
            **kwargs,
        )


def test_p_uncond_without_null_label_is_an_error():
    schedule = make_schedule("linear", 1000)
    with pytest.raises(ValueError, match="null_label"):
        losses.diffusion_loss(
            lambda x, t, y, k: x, schedule, jnp.zeros((2, 2, 2, 1)), jnp.zeros(2, jnp.int32),
            jax.random.key(0), p_uncond=0.1,
        )


def test_per_example_keys_make_the_loss_independent_of_the_batch_split():
    schedule = make_schedule("linear", 1000)
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.uniform(-1, 1, (6, 4, 4, 2)), jnp.float32)
    labels = jnp.arange(6, dtype=jnp.int32) % 3
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(7), jnp.arange(6))
    seen = []

    def model_fn(x, t, labels, dropout_key):
        seen.append(labels)
        return 0.5 * x + 1e-3 * t[:, None, None, None] + 0.1 * labels[:, None, None, None]

    kw = dict(prediction_type="v", weighting="min_snr", p_uncond=0.5, null_label=3)
    whole, aux = losses.diffusion_loss(model_fn, schedule, x0, labels, keys, **kw)

    def one(x, label, key):
        return losses.diffusion_loss(model_fn, schedule, x[None], label[None], key[None], **kw)
    singles, single_aux = jax.vmap(one)(x0, labels, keys)

    chex.assert_trees_all_close(whole, jnp.mean(singles), rtol=1e-6)
    np.testing.assert_array_equal(aux.timesteps, single_aux.timesteps[:, 0])
    # Different keys per example: the timesteps are not all the same, some labels dropped.
    assert len(set(np.asarray(aux.timesteps).tolist())) > 1
    assert 3 in np.asarray(seen[0]).tolist()
    with pytest.raises(ValueError, match=r"one per example \(6,\)"):
        losses.diffusion_loss(model_fn, schedule, x0, labels, keys[:5], **kw)
