"""Evaluating a trained KL autoencoder: PSNR, reconstruction FID@N, the latent scale.

``diffjax evaluate --workdir W`` on a workdir of task ``'autoencoder'`` runs
:func:`evaluate_autoencoder`: the held-out images are encoded to their posterior means
and decoded, and their reconstructions scored by

* PSNR (dB, pixels on ``[-1, 1]``, so ``R = 2``) per image, averaged;
* the mean absolute pixel error;
* reconstruction FID@N: the Frechet distance between the evaluation classifier's
  features of the reconstructions and of the same N originals (the dataset's offline
  feature space, as ``diffjax evaluate`` uses for samples);

and the latent scaling factor ``1 / std(z)`` of posterior samples of training images
(Rombach et al. 2022, Sec. 4.3.2), which a latent diffusion run multiplies its latents by.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from diffjax.app.evaluate import evaluation_classifier, feature_extractor
from diffjax.app.train import load_trained
from diffjax.data import load_dataset
from diffjax.files import write_text_atomic
from diffjax.metrics.fid import fid_from_features
from diffjax.metrics.reconstruction import psnr
from diffjax.nn.autoencoder import AutoencoderKL
from diffjax.training.autoencoder_step import latent_scaling_factor

__all__ = ["evaluate_autoencoder", "format_autoencoder_evaluation", "reconstruct"]


def _batches(images: np.ndarray, batch_size: int):
    for start in range(0, images.shape[0], batch_size):
        yield images[start:start + batch_size]


def reconstruct(
    model: AutoencoderKL, params: Any, images: np.ndarray, *, batch_size: int = 250
) -> np.ndarray:
    """``decode(mean(q(z | x)))`` of every image, batched; ``(N, H, W, C)`` float32."""
    @jax.jit
    def fn(p, x):
        mean, _ = model.apply({"params": p}, x, method=AutoencoderKL.encode)
        return model.apply({"params": p}, mean, method=AutoencoderKL.decode)

    return np.concatenate(
        [np.asarray(fn(params, b), np.float32) for b in _batches(images, batch_size)]
    )


def evaluate_autoencoder(
    workdir: str,
    *,
    num_images: int = 1000,
    scale_images: int = 10_000,
    seed: int = 0,
    step: int | None = None,
    batch_size: int = 250,
    out: str | None = None,
) -> dict[str, Any]:
    """Scores the autoencoder of ``workdir`` (see the module docstring) and saves the result.

    Args:
      workdir: a workdir of task ``'autoencoder'``.
      num_images: N, the held-out images reconstructed (the first N of the split).
      scale_images: training images whose latents set the scaling factor.
      seed: the evaluation classifier's seed (first use) and the posterior samples'.
      step: the checkpoint (default: the newest).
      batch_size: images per encoder/decoder call.
      out: where to write the JSON (default ``workdir/eval/autoencoder_N<N>.json``).

    Returns:
      The numbers (also written to ``out``).
    """
    if num_images < 2:
        raise ValueError(f"num_images={num_images} must be >= 2 (FID needs a covariance)")
    if scale_images < 1 or batch_size < 1:
        raise ValueError(f"scale_images={scale_images} and batch_size={batch_size} must be >= 1")
    config, model, params, info = load_trained(workdir, step, task="autoencoder")
    dataset = str(config.data.name)
    kwargs = {"path": config.data.path} if config.data.path else {}
    held_out = load_dataset(dataset, split="heldout", **kwargs)
    images = held_out.images[:num_images]
    recon = reconstruct(model, params, images, batch_size=batch_size)
    classifier, _ = evaluation_classifier(workdir, config, seed=seed)
    extractor = feature_extractor("classifier", dataset, classifier=classifier)
    rfid = fid_from_features(extractor.fn(np.clip(recon, -1.0, 1.0)), extractor.fn(images))
    train = load_dataset(dataset, split=str(config.data.split), **kwargs).images[:scale_images]
    encode_jit = jax.jit(lambda p, x: model.apply({"params": p}, x, method=AutoencoderKL.encode))

    def encode(x):
        return encode_jit(params, x)

    scale = latent_scaling_factor(encode, _batches(train, batch_size), jax.random.key(seed))
    latent_shape = encode(images[:1])[0].shape[1:]
    result = {
        "workdir": os.path.abspath(workdir),
        "step": int(_checkpoint_step(workdir, step)),
        "dataset": dataset,
        "num_images": int(images.shape[0]),
        "psnr_db": float(np.mean(psnr(images, recon))),
        "mean_abs_error": float(np.mean(np.abs(images - recon))),
        "rfid": float(rfid),
        "rfid_label": f"rFID@{images.shape[0]} ({extractor.name} features, reconstructions vs "
                      "the same held-out originals)",
        "latent_scaling_factor": scale,
        "latent_scale_images": int(train.shape[0]),
        "image_shape": list(info["image_shape"]),
        "latent_shape": [int(d) for d in latent_shape],
        "compression": float(np.prod(images.shape[1:]) / np.prod(latent_shape)),
    }
    out = out or os.path.join(workdir, "eval", f"autoencoder_N{images.shape[0]}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    result["out"] = out
    return result


def _checkpoint_step(workdir: str, step: int | None) -> int:
    if step is not None:
        return step
    from diffjax.app import checkpoint as ckpt

    manager = ckpt.checkpoint_manager(workdir, read_only=True)
    try:
        return int(manager.latest_step())
    finally:
        manager.close()


def format_autoencoder_evaluation(result: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    shape = "x".join(map(str, result["latent_shape"]))
    return "\n".join([
        f"autoencoder {result['workdir']} (step {result['step']}), {result['dataset']} "
        f"held-out N={result['num_images']}",
        f"  PSNR {result['psnr_db']:.2f} dB, mean |error| {result['mean_abs_error']:.4f}",
        f"  {result['rfid_label']}: {result['rfid']:.3f}",
        f"  latents {shape} ({result['compression']:.2f}x fewer numbers than pixels); "
        f"scaling factor 1/std = {result['latent_scaling_factor']:.5f} "
        f"({result['latent_scale_images']} training images)",
    ])
