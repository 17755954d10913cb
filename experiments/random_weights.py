"""Seeded random weights for the evaluation networks, for goldens, benchmarks and tests.

Parity goldens (experiments/make_inception_golden.py) and the tests that check them
(tests/test_inception.py) must build identical networks on both sides without shipping
the real checkpoints; benchmarks (experiments/bench_features.py, bench_clip.py) need
weights of the right shapes only. Nothing in the package uses random weights, so they
live here.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diffjax.networks.clip import CLIP, CLIPConfig
from diffjax.networks.inception import pytorch_fid_state_dict_shapes

__all__ = ["init_clip_params", "random_pytorch_fid_state_dict"]


def random_pytorch_fid_state_dict(seed: int) -> dict[str, np.ndarray]:
    """A pytorch-fid state dict of random weights drawn from ``np.random.default_rng(seed)``.

    For parity tests and smoke runs without the real checkpoint: the same seed gives the
    same arrays on any machine (with the same numpy bit generator), so a torch script and
    a JAX test can build identical networks without shipping 95 MB of weights. Keys are
    visited in sorted order; conv weights are He-normal, fc weights ``N(0, 1/2048)``,
    BatchNorm weight / running_var uniform in ``[0.5, 1.5]``, bias / running_mean uniform
    in ``[-0.2, 0.2]``, which keeps activations of order one through the whole network.

    Args:
      seed: Non-negative integer seed.

    Returns:
      Mapping from pytorch-fid key to float32 array in pytorch layout.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in pytorch_fid_state_dict_shapes().items():
        if name.endswith("conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            w = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        elif name == "fc.weight":
            w = rng.standard_normal(shape, dtype=np.float32) * np.float32(1.0 / np.sqrt(shape[1]))
        elif name.endswith(("bn.weight", "running_var")):
            w = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:  # bn.bias, running_mean, fc.bias
            w = rng.uniform(-0.2, 0.2, shape).astype(np.float32)
        out[name] = w
    return out


def init_clip_params(config: CLIPConfig, seed: int = 0) -> dict[str, Any]:
    """Random CLIP params drawn with numpy (for benchmarks and smoke tests, no compilation).

    Kernels, embeddings and the class token are ``N(0, 0.02^2)``; layer norm scales one;
    biases zero; ``logit_scale`` its init value. Not transformers' init scheme: only for
    timing and shapes, never for numbers.

    Args:
      config: The model configuration.
      seed: Seed of ``np.random.default_rng``.

    Returns:
      The ``params`` pytree of :class:`~diffjax.networks.clip.CLIP` (float32 JAX arrays).
    """
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    side = config.vision.image_size
    pixels = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    tree = jax.eval_shape(lambda i, x: CLIP(config).init(jax.random.key(0), i, x), ids, pixels)
    rng = np.random.default_rng(seed)
    flat = {}
    for path, spec in traverse_util.flatten_dict(tree["params"]).items():
        if path[-1] == "scale":
            value = np.ones(spec.shape, np.float32)
        elif path[-1] == "bias":
            value = np.zeros(spec.shape, np.float32)
        elif path[-1] == "logit_scale":
            value = np.full(spec.shape, config.logit_scale_init_value, np.float32)
        else:
            value = 0.02 * rng.standard_normal(spec.shape, dtype=np.float32)
        flat[path] = jnp.asarray(value)
    return traverse_util.unflatten_dict(flat)
