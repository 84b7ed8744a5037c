"""Model stage: DenseNet factory, CAM accessors and strict ImageNet weight loading."""

from .densenet import (
    ARCHS,
    build_model,
    check_arch,
    classifier_params,
    count_parameters,
    feature_maps,
    unwrap,
)
from .weights import (
    OFFICIAL_FILES,
    WeightsError,
    load_backbone,
    load_weights,
    resolve_weights,
    torchvision_to_monai,
)

__all__ = [
    "ARCHS",
    "OFFICIAL_FILES",
    "WeightsError",
    "build_model",
    "check_arch",
    "classifier_params",
    "count_parameters",
    "feature_maps",
    "load_backbone",
    "load_weights",
    "resolve_weights",
    "torchvision_to_monai",
    "unwrap",
]
