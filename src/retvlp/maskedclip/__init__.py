"""MaskedCLIP model family: configuration, model, losses, processor."""

from .configuration_maskedclip import MaskedCLIPConfig, MaskedCLIPVisionConfig
from .image_processing_fundus import FundusImageProcessor
from .modeling_maskedclip import (
    MaskedCLIPForImageClassification,
    MaskedCLIPForPreTraining,
    MaskedCLIPForPreTrainingOutput,
    MaskedCLIPImageClassificationLoader,
    MaskedCLIPModel,
    MaskedCLIPOutput,
    MaskedCLIPPreTrainedModel,
    MaskedCLIPVisionModel,
)
from .processing_maskedclip import MaskedCLIPProcessor

__all__ = [
    "FundusImageProcessor",
    "MaskedCLIPProcessor",
    "MaskedCLIPConfig",
    "MaskedCLIPForImageClassification",
    "MaskedCLIPForPreTraining",
    "MaskedCLIPForPreTrainingOutput",
    "MaskedCLIPImageClassificationLoader",
    "MaskedCLIPModel",
    "MaskedCLIPOutput",
    "MaskedCLIPPreTrainedModel",
    "MaskedCLIPVisionConfig",
    "MaskedCLIPVisionModel",
]
