"""A small CNN classifier used as a class-fidelity check for conditional samples.

Train it on the real data (:func:`train_classifier`), then measure how often generated
images are assigned the class they were conditioned on (:func:`class_agreement`). On real
held-out data the agreement is simply the classifier's accuracy, which bounds what a
perfect generator can score; shuffled labels score about ``1 / num_classes``.

The network is a plain Flax Linen CNN: per stage a 3x3 convolution and ReLU, followed by
2x2 average pooling while the feature map is larger than 4x4, then a hidden dense layer.
It has no batch statistics or dropout, so parameters are a single pytree.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, struct

from diffjax.data.dataset import ImageDataset, iterate_batches, validate_dataset
from diffjax.files import write_bytes_atomic
from diffjax.networks._batching import map_padded_batches

__all__ = [
    "ClassifierParams",
    "SmallCNN",
    "accuracy",
    "class_agreement",
    "classifier_features",
    "classify",
    "init_classifier",
    "load_classifier",
    "predict",
    "save_classifier",
    "train_classifier",
]

_FORMAT = "diffjax.classifier"
_VERSION = 1


class SmallCNN(nn.Module):
    """Conv(3x3)-ReLU stages with 2x2 average pooling, then Dense-ReLU-Dense logits.

    Attributes:
      num_classes: Number of output logits.
      features: Channels of each convolution stage.
      hidden: Width of the hidden dense layer.
    """

    num_classes: int
    features: Sequence[int] = (32, 64)
    hidden: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, *, penultimate: bool = False) -> jax.Array:
        """Maps ``(B, H, W, C)`` images to ``(B, num_classes)`` float32 logits.

        With ``penultimate=True`` it returns the ``(B, hidden)`` activations of the hidden
        dense layer (after its ReLU) instead: the embedding used as a feature extractor
        for FID / KID / precision-recall (:func:`classifier_features`).
        """
        x = x.astype(jnp.float32)
        for f in self.features:
            x = nn.relu(nn.Conv(f, (3, 3))(x))
            if x.shape[1] > 4 and x.shape[2] > 4:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden)(x))
        if penultimate:
            return x
        return nn.Dense(self.num_classes)(x)


@struct.dataclass
class ClassifierParams:
    """A trained classifier: the parameter pytree plus the static network configuration.

    It is a pytree whose only leaves are the parameters, so it can be passed to jitted
    functions; the configuration fields are static (part of the tree structure).

    Attributes:
      params: The Flax parameter pytree of :class:`SmallCNN`.
      num_classes: Number of classes.
      image_shape: ``(H, W, C)`` of the images it was built for.
      features: Channels of each convolution stage.
      hidden: Width of the hidden dense layer.
    """

    params: Any
    num_classes: int = struct.field(pytree_node=False)
    image_shape: tuple[int, int, int] = struct.field(pytree_node=False)
    features: tuple[int, ...] = struct.field(pytree_node=False, default=(32, 64))
    hidden: int = struct.field(pytree_node=False, default=128)

    @property
    def module(self) -> SmallCNN:
        """The Flax module these parameters belong to."""
        return SmallCNN(self.num_classes, self.features, self.hidden)


def _check_config(
    num_classes: int, image_shape: Sequence[int], features: Sequence[int], hidden: int
) -> tuple[int, tuple[int, int, int], tuple[int, ...], int]:
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes=}.")
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) != 3 or min(image_shape) < 1 or not 1 <= image_shape[2] <= 4:
        raise ValueError(f"image_shape must be (H, W, C) with C in 1..4, got {image_shape=}.")
    features = tuple(int(f) for f in features)
    if not features or min(features) < 1:
        raise ValueError(f"features must be a non-empty sequence of positive ints, {features=}.")
    if int(hidden) < 1:
        raise ValueError(f"hidden must be positive, got {hidden=}.")
    return int(num_classes), image_shape, features, int(hidden)  # type: ignore[return-value]


def _host_rng(key: jax.Array, stream: int) -> np.random.Generator:
    """A numpy Generator determined by the JAX ``key`` and a stream id (no XLA compilation)."""
    data = np.asarray(jax.random.key_data(key)).astype(np.uint64).ravel()
    return np.random.default_rng([*data.tolist(), stream])


def _param_shapes(
    num_classes: int, image_shape: tuple[int, int, int], features: tuple[int, ...], hidden: int
) -> Any:
    module = SmallCNN(num_classes, features, hidden)
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    # The key is made inside the trace: no eager op, no compilation.
    return jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)["params"]


def init_classifier(
    key: jax.Array,
    num_classes: int,
    image_shape: Sequence[int],
    *,
    features: Sequence[int] = (32, 64),
    hidden: int = 128,
) -> ClassifierParams:
    """Initializes an untrained classifier.

    Kernels are drawn from LeCun normal, ``N(0, 1 / fan_in)``, and biases are zero. The draw
    is made on the host by a numpy generator seeded from ``key``'s data: compiling Flax's
    jitted ``init`` costs seconds on XLA:CPU, far more than training this network.

    Args:
      key: PRNG key (concrete, not traced) for the initial parameters.
      num_classes: Number of classes (>= 2).
      image_shape: ``(H, W, C)`` of the input images.
      features: Channels of each convolution stage.
      hidden: Width of the hidden dense layer.

    Returns:
      Freshly initialized :class:`ClassifierParams`.
    """
    num_classes, image_shape, features, hidden = _check_config(
        num_classes, image_shape, features, hidden
    )
    rng = _host_rng(key, 0)

    def init_leaf(path: Any, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        name = path[-1].key
        if name == "bias":
            return jnp.zeros(leaf.shape, jnp.float32)
        if name != "kernel":
            raise AssertionError(f"unexpected parameter {jax.tree_util.keystr(path)}")
        fan_in = int(np.prod(leaf.shape[:-1]))
        w = rng.standard_normal(leaf.shape, dtype=np.float32) / np.float32(np.sqrt(fan_in))
        return jnp.asarray(w)

    shapes = _param_shapes(num_classes, image_shape, features, hidden)
    params = jax.tree_util.tree_map_with_path(init_leaf, shapes)
    return ClassifierParams(params, num_classes, image_shape, features, hidden)


@jax.jit
def _logits(clf: ClassifierParams, images: jax.Array) -> jax.Array:
    return clf.module.apply({"params": clf.params}, images)


@jax.jit
def _penultimate(clf: ClassifierParams, images: jax.Array) -> jax.Array:
    return clf.module.apply({"params": clf.params}, images, penultimate=True)


def _check_images(clf: ClassifierParams, images: Any) -> None:
    shape = tuple(np.shape(images))
    if len(shape) != 4 or shape[1:] != clf.image_shape:
        raise ValueError(
            f"images must have shape (N, *{clf.image_shape}) for this classifier, got {shape}."
        )


def classify(clf: ClassifierParams, images: Any) -> jax.Array:
    """Returns the ``(N, num_classes)`` float32 logits for NHWC ``images`` (jitted).

    Images are expected on the data scale, ``[-1, 1]``; generated samples slightly outside it
    are accepted as they are (clip them first if the sampler does not).

    Args:
      clf: A (trained) classifier.
      images: ``(N, H, W, C)`` array with ``(H, W, C) == clf.image_shape``.

    Returns:
      The logits.
    """
    _check_images(clf, images)
    return _logits(clf, jnp.asarray(images, jnp.float32))


def predict(clf: ClassifierParams, images: Any, *, batch_size: int = 1024) -> np.ndarray:
    """Returns the predicted class of each image as an ``(N,)`` int32 numpy array.

    Evaluates in chunks of ``batch_size`` (the last one padded, so at most one compilation
    per chunk size).
    """
    out = _map_chunks(clf, images, batch_size, lambda x: jnp.argmax(_logits(clf, x), axis=-1), ())
    return out.astype(np.int32)


def classifier_features(
    clf: ClassifierParams, images: Any, *, batch_size: int = 1024
) -> np.ndarray:
    """The ``(N, clf.hidden)`` penultimate activations of ``images`` (float32 numpy).

    These are the hidden dense layer's ReLU outputs, the classifier's embedding of an
    image: an offline feature extractor for FID / KID / precision-recall on the dataset
    the classifier was trained on ("FID on classifier features", which needs no
    Inception weights). Numbers computed on them are comparable only with numbers from
    the same classifier.

    Args:
      clf: A trained classifier.
      images: ``(N, H, W, C)`` images on the data scale ``[-1, 1]``.
      batch_size: Images per compiled call (the last chunk is padded: one compilation).

    Returns:
      The features.
    """
    return _map_chunks(clf, images, batch_size, lambda x: _penultimate(clf, x), (clf.hidden,))


def _map_chunks(
    clf: ClassifierParams, images: Any, batch_size: int, fn: Any, row_shape: tuple[int, ...]
) -> np.ndarray:
    """Checks ``images`` and applies ``fn`` to fixed-size chunks of them (one compilation)."""
    _check_images(clf, images)
    return map_padded_batches(fn, np.asarray(images, np.float32), batch_size, row_shape)


def class_agreement(
    clf: ClassifierParams, images: Any, labels: Any, *, batch_size: int = 1024
) -> float:
    """Fraction of ``images`` that the classifier assigns to the corresponding ``labels``.

    For samples of a class-conditional generator, ``labels`` are the requested classes.

    Args:
      clf: A trained classifier.
      images: ``(N, H, W, C)`` images.
      labels: ``(N,)`` integer labels in ``[0, clf.num_classes)``.
      batch_size: Evaluation chunk size.

    Returns:
      The agreement, a Python float in ``[0, 1]``.
    """
    labels = np.asarray(labels)
    n = int(np.shape(images)[0]) if np.ndim(images) else -1
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be an integer array of shape ({n},), got {labels.dtype} {labels.shape}."
        )
    if n == 0:
        raise ValueError("images must hold at least one image.")
    if labels.min() < 0 or labels.max() >= clf.num_classes:
        raise ValueError(
            f"labels must be in [0, {clf.num_classes}), got min {labels.min()} max {labels.max()}."
        )
    return float(np.mean(predict(clf, images, batch_size=batch_size) == labels))


def accuracy(clf: ClassifierParams, dataset: ImageDataset, *, batch_size: int = 1024) -> float:
    """Classification accuracy on ``dataset`` (= agreement with its true labels)."""
    return class_agreement(clf, dataset.images, dataset.labels, batch_size=batch_size)


def _shift_images(images: jax.Array, key: jax.Array, max_shift: int) -> jax.Array:
    """Translates each image by up to ``max_shift`` pixels, filling with the background -1."""
    b, h, w, _ = images.shape
    padded = jnp.pad(
        images, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)), constant_values=-1.0
    )
    offsets = jax.random.randint(key, (b, 2), 0, 2 * max_shift + 1)

    def crop(img: jax.Array, off: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


def train_classifier(
    dataset: ImageDataset,
    *,
    key: jax.Array,
    num_steps: int = 500,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    max_shift: int = 1,
    features: Sequence[int] = (32, 64),
    hidden: int = 128,
) -> ClassifierParams:
    """Trains a :class:`SmallCNN` on ``dataset`` with Adam and cross-entropy.

    The learning rate decays from ``learning_rate`` to zero on a cosine schedule. Batches come
    from :func:`diffjax.data.iterate_batches` with a seed derived from ``key``, so training is
    reproducible. One jitted step is called per batch (a ``lax.scan`` over training steps is
    much slower on XLA:CPU for convolution gradients).

    Args:
      dataset: Training data; its ``num_classes`` and image shape fix the network.
      key: PRNG key (initialization, batch order, augmentation).
      num_steps: Number of optimizer steps.
      batch_size: Batch size (at most the dataset size).
      learning_rate: Peak Adam learning rate.
      max_shift: Random translation of each training image by up to this many pixels, the
        border filled with the background value -1 (0 disables it). On the digits held-out
        split the default 1 gave 97.5-98.9% over five seeds, against 96.9-97.8% without it.
      features: Channels of each convolution stage.
      hidden: Width of the hidden dense layer.

    Returns:
      The trained :class:`ClassifierParams`.
    """
    validate_dataset(dataset)
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps=}.")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift=}.")
    clf = init_classifier(
        key, dataset.num_classes, dataset.image_shape, features=features, hidden=hidden
    )
    # Cosine decay from learning_rate to 0, precomputed on the host (optax's
    # cosine_decay_schedule with alpha=0).
    lrs = (0.5 * learning_rate * (1 + np.cos(np.pi * np.arange(num_steps) / num_steps))).astype(
        np.float32
    )
    opt_state = _ADAM.init(clf.params)
    seed = int(_host_rng(key, 1).integers(0, 2**31 - 1))
    batches = iterate_batches(dataset, batch_size, seed, num_steps=num_steps)
    for step, (images, labels) in enumerate(batches):
        clf, opt_state = _train_step(
            clf, opt_state, images, labels, key, np.int32(step), lrs[step], max_shift
        )
    return jax.block_until_ready(clf)


_ADAM = optax.scale_by_adam()


@functools.partial(jax.jit, static_argnums=(7,))
def _train_step(
    clf: ClassifierParams,
    opt_state: optax.OptState,
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    step: jax.Array,
    lr: jax.Array,
    max_shift: int,
) -> tuple[ClassifierParams, optax.OptState]:
    """One Adam step on the mean softmax cross-entropy (``lr`` is traced: no recompiles)."""
    if max_shift:
        images = _shift_images(images, jax.random.fold_in(key, step), max_shift)

    def loss_fn(params: Any) -> jax.Array:
        logits = clf.module.apply({"params": params}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grads = jax.grad(loss_fn)(clf.params)
    updates, opt_state = _ADAM.update(grads, opt_state)
    params = jax.tree_util.tree_map(lambda p, u: p - lr * u, clf.params, updates)
    return clf.replace(params=params), opt_state


def _config_dict(clf: ClassifierParams) -> dict[str, Any]:
    return {
        "num_classes": clf.num_classes,
        "image_shape": list(clf.image_shape),
        "features": list(clf.features),
        "hidden": clf.hidden,
    }


def save_classifier(path: str | os.PathLike[str], clf: ClassifierParams) -> None:
    """Writes ``clf`` (configuration and parameters) to a msgpack file.

    Args:
      path: Destination file (conventionally ``*.msgpack``).
      clf: The classifier to save.
    """
    payload = {
        "format": _FORMAT,
        "version": _VERSION,
        "config": _config_dict(clf),
        "params": serialization.to_state_dict(jax.device_get(clf.params)),
    }
    write_bytes_atomic(path, serialization.msgpack_serialize(payload))


def _tree_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): tuple(np.shape(v)) for p, v in flat}


def load_classifier(
    path: str | os.PathLike[str],
    *,
    num_classes: int | None = None,
    image_shape: Sequence[int] | None = None,
) -> ClassifierParams:
    """Reads a classifier written by :func:`save_classifier`.

    The stored parameters are checked against the shapes the stored configuration implies,
    and optionally against the expected ``num_classes`` / ``image_shape``.

    Args:
      path: The file.
      num_classes: If given, the classifier must have this many classes.
      image_shape: If given, the classifier must take images of this ``(H, W, C)``.

    Returns:
      The classifier.

    Raises:
      ValueError: If the file is not a diffjax classifier, its parameter names or shapes do
        not match its configuration, or it does not match the expectations.
    """
    with open(path, "rb") as f:
        payload = serialization.msgpack_restore(f.read())
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a diffjax classifier file (format {_FORMAT!r}).")
    if payload.get("version") != _VERSION:
        raise ValueError(f"{path}: unsupported classifier file version {payload.get('version')}.")
    cfg = payload["config"]
    n, shape, features, hidden = _check_config(
        cfg["num_classes"], cfg["image_shape"], cfg["features"], cfg["hidden"]
    )
    if num_classes is not None and n != num_classes:
        raise ValueError(f"{path}: classifier has {n} classes, expected {num_classes}.")
    if image_shape is not None and shape != tuple(image_shape):
        raise ValueError(f"{path}: classifier takes images {shape}, expected {tuple(image_shape)}.")
    template = _param_shapes(n, shape, features, hidden)
    want, got = _tree_shapes(template), _tree_shapes(payload["params"])
    if want != got:
        diffs = sorted(
            f"{k}: expected {want.get(k)}, found {got.get(k)}"
            for k in set(want) | set(got)
            if want.get(k) != got.get(k)
        )
        raise ValueError(
            f"{path}: stored parameters do not match the stored configuration: "
            + "; ".join(diffs[:8])
        )
    params = jax.tree_util.tree_map(jnp.asarray, payload["params"])
    return ClassifierParams(params, n, shape, features, hidden)
