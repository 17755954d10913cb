"""The shared padded-batch loop of the feature extractors (diffjax.networks._batching)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.networks._batching import map_padded_batches


def test_ragged_tail_is_padded_and_compiled_once():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def row_sums(x):
        return jnp.stack([x.sum(axis=1), x.max(axis=1)], axis=1)

    x = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    got = map_padded_batches(row_sums, x, batch_size=3, row_shape=(2,))
    chex.assert_shape(got, (7, 2))
    np.testing.assert_array_equal(got, np.stack([x.sum(1), x.max(1)], axis=1))


def test_batch_larger_than_input_uses_one_call():
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        return x * 2

    got = map_padded_batches(fn, np.ones((5, 2), np.float32), batch_size=64, row_shape=(2,))
    assert calls == [5]
    np.testing.assert_array_equal(got, np.full((5, 2), 2.0, np.float32))


def test_empty_input_and_bad_batch_size():
    got = map_padded_batches(lambda x: x, np.zeros((0, 4)), batch_size=8, row_shape=(4,))
    assert got.shape == (0, 4) and got.dtype == np.float32
    with pytest.raises(ValueError, match="batch_size must be positive"):
        map_padded_batches(lambda x: x, np.zeros((3, 4)), batch_size=0, row_shape=(4,))
