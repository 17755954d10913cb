"""The latent space of a latent diffusion run: its frozen autoencoder, scale, shape, cache.

A diffusion run with ``latent.autoencoder`` set trains its UNet on ``s z``, ``z`` a
posterior sample of the frozen autoencoder (a workdir of task ``'autoencoder'``) and
``s`` the scaling factor (Rombach et al. 2022, Sec. 4.3.2: ``1 / std(z)`` over training
latents unless ``latent.scaling_factor`` sets it); samples are ``D(x_0 / s)``. The
facts a checkpoint depends on (the latent shape, the factor, a fingerprint of the
autoencoder's weights) go into ``run_info.json``, so a resumed run, or one pointed at a
retrained autoencoder, is checked against them.

Latents are encoded on the fly in the train step (the default), or once, before
training, into the cache file ``latent.cache`` names (:func:`build_latent_cache`): the
posterior's mean and log-variance of every training image, from which each step draws
its samples as the on-the-fly path does. A cache records the autoencoder's fingerprint
and the data it was built from; a cache of another autoencoder or data is refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffjax.app.features import tree_fingerprint
from diffjax.data.pipeline import ImageSource
from diffjax.files import write_npz_atomic
from diffjax.nn.autoencoder import AutoencoderKL, sample_latent
from diffjax.training.autoencoder_step import latent_scaling_factor

__all__ = [
    "LatentSpace",
    "build_latent_cache",
    "cached_latent_source",
    "check_latent_cache",
    "latent_run_info",
    "load_latent_space",
    "open_latent_space",
]


class LatentSpace(NamedTuple):
    """A frozen autoencoder and the scale of its latents.

    Attributes:
      workdir: the autoencoder's workdir.
      model: the autoencoder.
      params: its EMA parameters (frozen).
      scaling_factor: ``s``.
      latent_shape: ``(h, w, c)`` of a latent.
      fingerprint: a digest of ``params``.
    """

    workdir: str
    model: AutoencoderKL
    params: Any
    scaling_factor: float
    latent_shape: tuple[int, int, int]
    fingerprint: str

    def encode_fn(self) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
        """``encode(params, images, keys) -> s z``, one posterior sample per example's key."""
        model, scale = self.model, self.scaling_factor

        def encode(params: Any, images: jax.Array, keys: jax.Array) -> jax.Array:
            mean, logvar = model.apply({"params": params}, images, method=AutoencoderKL.encode)
            z = jax.vmap(sample_latent)(mean, logvar, keys)
            return z * scale

        return encode

    def sample_cached_fn(self) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
        """``encode(_, moments, keys) -> s z`` from cached ``concat(mean, logvar)`` moments."""
        scale = self.scaling_factor

        def encode(_: Any, moments: jax.Array, keys: jax.Array) -> jax.Array:
            mean, logvar = jnp.split(moments, 2, axis=-1)
            return jax.vmap(sample_latent)(mean, logvar, keys) * scale

        return encode

    def decode(self, latents: jax.Array, params: Any = None) -> jax.Array:
        """``D(latents / s)``: images from the UNet's latents (``params`` default: own)."""
        params = self.params if params is None else params
        return self.model.apply({"params": params}, latents / self.scaling_factor,
                                method=AutoencoderKL.decode)


def open_latent_space(
    config: ml_collections.ConfigDict,
    image_shape: tuple[int, ...],
    training_images: Callable[[int], np.ndarray] | None = None,
    *,
    measured_scale: float | None = None,
) -> LatentSpace | None:
    """The latent space ``config.latent`` names, or None for pixel diffusion.

    Args:
      config: the run's config.
      image_shape: the data's ``(H, W, C)``.
      training_images: ``training_images(n)`` gives the first ``n`` training images, to
        measure the scaling factor when ``latent.scaling_factor`` is 0 (None: the factor
        must be in the config or ``measured_scale``).
      measured_scale: the factor measured before (a resumed run's ``run_info.json``), used
        instead of measuring again when ``latent.scaling_factor`` is 0.

    Raises:
      FileNotFoundError / ValueError: naming ``latent.autoencoder`` for a folder that is
        not an autoencoder's workdir, or one trained on images of another shape.
    """
    from diffjax.app.train import load_trained

    latent = config.latent
    if not latent.autoencoder:
        return None
    where = f"latent.autoencoder={latent.autoencoder!r}"
    try:
        _, model, params, info = load_trained(
            latent.autoencoder, latent.autoencoder_step or None, task="autoencoder"
        )
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"{where}: {e}") from None
    if tuple(info["image_shape"]) != tuple(image_shape):
        raise ValueError(f"{where} was trained on {tuple(info['image_shape'])} images; this "
                         f"run's are {tuple(image_shape)}")
    shape = jax.eval_shape(lambda x: model.apply({"params": params}, x,
                                                 method=AutoencoderKL.encode),
                           jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))[0].shape[1:]
    scale = float(latent.scaling_factor) or (measured_scale or 0.0)
    if not scale:
        if training_images is None:
            raise ValueError(f"{where}: latent.scaling_factor=0 needs the training images")
        images = training_images(int(latent.scale_images))
        encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=AutoencoderKL.encode))
        batches = (images[i:i + 250] for i in range(0, images.shape[0], 250))
        scale = latent_scaling_factor(lambda x: encode(params, x), batches, jax.random.key(0))
    return LatentSpace(
        workdir=os.path.abspath(latent.autoencoder),
        model=model,
        params=params,
        scaling_factor=scale,
        latent_shape=tuple(int(d) for d in shape),
        fingerprint=tree_fingerprint(params),
    )


def latent_run_info(space: LatentSpace) -> dict[str, Any]:
    """The latent facts a latent run's checkpoint depends on (merged into run_info.json)."""
    return {
        "latent_shape": list(space.latent_shape),
        "latent_scaling_factor": space.scaling_factor,
        "autoencoder_fingerprint": space.fingerprint,
    }


def load_latent_space(
    config: ml_collections.ConfigDict, info: dict[str, Any]
) -> LatentSpace | None:
    """A trained latent run's latent space, for sampling (None for a pixel run).

    The factor is the one the run trained with (``run_info.json``); the autoencoder must
    still be the one it trained with.

    Raises:
      ValueError: naming ``latent.autoencoder`` when its weights changed since.
    """
    if not config.latent.autoencoder:
        return None
    space = open_latent_space(config, tuple(info["image_shape"]),
                              measured_scale=info.get("latent_scaling_factor"))
    if space.fingerprint != info.get("autoencoder_fingerprint"):
        raise ValueError(
            f"latent.autoencoder={config.latent.autoencoder!r} holds other weights than the "
            f"run trained with (fingerprint {space.fingerprint} vs "
            f"{info.get('autoencoder_fingerprint')}); its latents mean something else"
        )
    return space


_CACHE_KEYS = ("moments", "labels", "fingerprint", "source", "count")


def _read_cache(path: str) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in _CACHE_KEYS if k not in f.files]
        if missing:
            raise ValueError(f"latent.cache={path!r} is not a latent cache (it lacks {missing})")
        return {k: f[k] for k in _CACHE_KEYS}


def check_latent_cache(path: str, space: LatentSpace, source: ImageSource) -> bool:
    """Whether the cache at ``path`` exists (False: it is to be built); reads only.

    Raises:
      ValueError: naming ``latent.cache`` for a file built with another autoencoder, from
        other data, or of another shape.
    """
    if not os.path.exists(path):
        return False
    cache = _read_cache(path)
    problems = []
    if str(cache["fingerprint"]) != space.fingerprint:
        problems.append(f"built with another autoencoder (fingerprint {cache['fingerprint']}, "
                        f"the run's is {space.fingerprint})")
    if str(cache["source"]) != source.name or int(cache["count"]) != source.num_examples:
        problems.append(f"built from {int(cache['count'])} images of {str(cache['source'])!r}, "
                        f"the run trains on {source.num_examples} of {source.name!r}")
    expected = (*space.latent_shape[:2], 2 * space.latent_shape[2])
    if tuple(cache["moments"].shape[1:]) != expected:
        problems.append(f"moments of shape {cache['moments'].shape[1:]}, expected {expected}")
    if problems:
        raise ValueError(f"latent.cache={path!r} does not belong to this run: "
                         + "; ".join(problems) + " (delete it or name another file)")
    return True


def build_latent_cache(
    path: str, space: LatentSpace, source: ImageSource, *, batch_size: int = 250
) -> None:
    """Encodes every training image once: ``concat(mean, logvar)`` to ``path`` (atomic)."""
    encode = jax.jit(lambda p, x: jnp.concatenate(
        space.model.apply({"params": p}, x, method=AutoencoderKL.encode), axis=-1))
    moments, labels = [], []
    for start in range(0, source.num_examples, batch_size):
        examples = [source.decode(source.records[i])
                    for i in range(start, min(start + batch_size, source.num_examples))]
        images = np.stack([np.asarray(e["image"], np.float32) for e in examples])
        moments.append(np.asarray(encode(space.params, images), np.float32))
        labels.append(np.asarray([int(e.get("label", 0)) for e in examples], np.int32))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_npz_atomic(path, moments=np.concatenate(moments), labels=np.concatenate(labels),
                     fingerprint=np.asarray(space.fingerprint), source=np.asarray(source.name),
                     count=np.asarray(source.num_examples))


class _MomentRecords:
    def __init__(self, moments: np.ndarray, labels: np.ndarray):
        self._moments, self._labels = moments, labels

    def __len__(self) -> int:
        return int(self._moments.shape[0])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"image": self._moments[index], "label": self._labels[index]}


def cached_latent_source(path: str, source: ImageSource) -> ImageSource:
    """The cache as a training source: record ``i`` holds image ``i``'s moments and label."""
    cache = _read_cache(path)
    moments = cache["moments"]
    return ImageSource(
        records=_MomentRecords(moments, cache["labels"]),
        decode=lambda record: record,
        image_shape=tuple(int(d) for d in moments.shape[1:]),
        num_classes=source.num_classes,
        name=source.name,
    )
