"""Evaluation networks: the FID InceptionV3, a small digits classifier and CLIP.

Each loads its weights from a file (no downloads) and maps images to features or
logits for the formulas in :mod:`diffjax.metrics`.
"""

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
