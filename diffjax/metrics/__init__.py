"""Sample-quality metrics. For now: a small CNN classifier for class-fidelity checks."""

from diffjax.metrics.classifier import (
    ClassifierParams,
    SmallCNN,
    accuracy,
    class_agreement,
    classify,
    init_classifier,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
)

__all__ = [
    "ClassifierParams",
    "SmallCNN",
    "accuracy",
    "class_agreement",
    "classify",
    "init_classifier",
    "load_classifier",
    "predict",
    "save_classifier",
    "train_classifier",
]
