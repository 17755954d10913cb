"""Evaluation networks: the FID InceptionV3, a small digits classifier and CLIP.

Each loads its weights from a file (no downloads) and maps images to features or
logits for the formulas in :mod:`diffjax.metrics`.
Names are imported on first use, so that ``diffjax.networks.clip`` (the Stable Diffusion
text encoder's model) does not load the digits classifier's data pipeline.
"""

from typing import TYPE_CHECKING

from diffjax._lazy import lazy_attributes

if TYPE_CHECKING:  # the names, for type checkers and IDEs
    from diffjax.networks.classifier import (
        ClassifierParams,
        SmallCNN,
        accuracy,
        class_agreement,
        classifier_features,
        classify,
        init_classifier,
        load_classifier,
        predict,
        save_classifier,
        train_classifier,
    )
    from diffjax.networks.clip import (
        CLIP,
        CLIPConfig,
        CLIPTextConfig,
        CLIPVisionConfig,
        clip_image_features,
        clip_score,
        clip_scores,
        clip_text_features,
        load_clip,
        load_clip_tokenizer,
        preprocess_clip_images,
    )
    from diffjax.networks.clip_tokenizer import CLIPTokenizer
    from diffjax.networks.inception import (
        WEIGHTS_ENV_VAR,
        FIDInceptionV3,
        convert_pytorch_fid_checkpoint,
        inception_apply,
        inception_features,
        load_inception_weights,
        preprocess_images,
        save_inception_weights,
        variables_from_pytorch_fid_state_dict,
    )

_LAZY = {
    "CLIP": "diffjax.networks.clip",
    "CLIPConfig": "diffjax.networks.clip",
    "CLIPTextConfig": "diffjax.networks.clip",
    "CLIPTokenizer": "diffjax.networks.clip_tokenizer",
    "CLIPVisionConfig": "diffjax.networks.clip",
    "ClassifierParams": "diffjax.networks.classifier",
    "FIDInceptionV3": "diffjax.networks.inception",
    "SmallCNN": "diffjax.networks.classifier",
    "WEIGHTS_ENV_VAR": "diffjax.networks.inception",
    "accuracy": "diffjax.networks.classifier",
    "class_agreement": "diffjax.networks.classifier",
    "classifier_features": "diffjax.networks.classifier",
    "classify": "diffjax.networks.classifier",
    "clip_image_features": "diffjax.networks.clip",
    "clip_score": "diffjax.networks.clip",
    "clip_scores": "diffjax.networks.clip",
    "clip_text_features": "diffjax.networks.clip",
    "convert_pytorch_fid_checkpoint": "diffjax.networks.inception",
    "inception_apply": "diffjax.networks.inception",
    "inception_features": "diffjax.networks.inception",
    "init_classifier": "diffjax.networks.classifier",
    "load_classifier": "diffjax.networks.classifier",
    "load_clip": "diffjax.networks.clip",
    "load_clip_tokenizer": "diffjax.networks.clip",
    "load_inception_weights": "diffjax.networks.inception",
    "predict": "diffjax.networks.classifier",
    "preprocess_clip_images": "diffjax.networks.clip",
    "preprocess_images": "diffjax.networks.inception",
    "save_classifier": "diffjax.networks.classifier",
    "save_inception_weights": "diffjax.networks.inception",
    "train_classifier": "diffjax.networks.classifier",
    "variables_from_pytorch_fid_state_dict": "diffjax.networks.inception",
}

__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)

__all__ = [
    "CLIP",
    "WEIGHTS_ENV_VAR",
    "CLIPConfig",
    "CLIPTextConfig",
    "CLIPTokenizer",
    "CLIPVisionConfig",
    "ClassifierParams",
    "FIDInceptionV3",
    "SmallCNN",
    "accuracy",
    "class_agreement",
    "classifier_features",
    "classify",
    "clip_image_features",
    "clip_score",
    "clip_scores",
    "clip_text_features",
    "convert_pytorch_fid_checkpoint",
    "inception_apply",
    "inception_features",
    "init_classifier",
    "load_classifier",
    "load_clip",
    "load_clip_tokenizer",
    "load_inception_weights",
    "predict",
    "preprocess_clip_images",
    "preprocess_images",
    "save_classifier",
    "save_inception_weights",
    "train_classifier",
    "variables_from_pytorch_fid_state_dict",
]
