"""Chunked attention equals whole attention; the SD pipeline's UNet with chunks equals it."""

import dataclasses
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.nn.attention import chunked_dot_product_attention
from diffjax.stable_diffusion import pipeline as P

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.mark.parametrize(("length", "chunk"), [(37, 8), (37, 37), (32, 8), (5, 64), (9, 1)])
def test_chunks_give_the_whole_attention(length, chunk):
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (2, length, 3, 16))
    k = jax.random.normal(kk, (2, 11, 3, 16))
    v = jax.random.normal(kv, (2, 11, 3, 16))
    out = chunked_dot_product_attention(q, k, v, chunk)
    chex.assert_shape(out, (2, length, 3, 16))
    whole = jax.nn.dot_product_attention(q, k, v)
    chex.assert_trees_all_close(out, whole, atol=1e-6, rtol=1e-6)
    scores = jnp.einsum("blhd,bshd->bhls", q, k) / np.sqrt(16.0)
    ref = jnp.einsum("bhls,bshd->blhd", jax.nn.softmax(scores, axis=-1), v)
    chex.assert_trees_all_close(out, ref, atol=1e-5, rtol=1e-5)


def test_bad_chunk_size_is_named():
    q = jnp.zeros((1, 4, 1, 2))
    with pytest.raises(ValueError, match="query_chunk_size must be >= 1"):
        chunked_dot_product_attention(q, q, q, 0)
    with pytest.raises(ValueError, match="attention_chunk"):
        P.load_pipeline(os.path.join(DATA, "tiny_sd1"), attention_chunk=0)


def test_pipeline_unet_with_chunks_equals_whole():
    pipe = P.load_pipeline(os.path.join(DATA, "tiny_sd1"), attention_chunk=5)
    whole = dataclasses.replace(pipe, attention_chunk=None)
    assert pipe.spec.attention_chunk == 5 and pipe.spec != whole.spec
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, pipe.unet_config.in_channels))
    t = jnp.asarray([999.0, 500.0])
    ctx = jax.random.normal(jax.random.key(2), (2, 77, pipe.text_config.hidden_size))
    outs = [jax.jit(P.guided_model_fn(p.spec, True, pipe.unet_params, 7.5))(
        x, t, (ctx, jnp.zeros_like(ctx))) for p in (pipe, whole)]
    chex.assert_trees_all_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
