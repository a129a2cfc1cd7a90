"""Registration of retvlp's classes with transformers' Auto API (there is no plugin entry point, so this
runs when `retvlp` is imported)."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from .ibq import IBQTokenizerConfig, IBQTokenizerModel
from .keepfit import KeepFitConfig, KeepFitForImageClassification, KeepFitModel, KeepFitProcessor
from .maskedclip import (
    FundusImageProcessor,
    MaskedCLIPConfig,
    MaskedCLIPForImageClassification,
    MaskedCLIPModel,
    MaskedCLIPProcessor,
    MaskedCLIPVisionConfig,
    MaskedCLIPVisionModel,
)

_registered = False


def register_auto_classes() -> None:
    """Register configs, models and processors with the Auto classes (idempotent), and mark the classes
    whose code `save_pretrained` copies next to the weights for `trust_remote_code` loading."""
    global _registered
    if _registered:
        return
    AutoConfig.register(MaskedCLIPConfig.model_type, MaskedCLIPConfig, exist_ok=True)
    AutoConfig.register(MaskedCLIPVisionConfig.model_type, MaskedCLIPVisionConfig, exist_ok=True)
    AutoModel.register(MaskedCLIPConfig, MaskedCLIPModel, exist_ok=True)
    AutoModel.register(MaskedCLIPVisionConfig, MaskedCLIPVisionModel, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(MaskedCLIPConfig, MaskedCLIPModel, exist_ok=True)
    AutoModelForImageClassification.register(
        MaskedCLIPVisionConfig, MaskedCLIPForImageClassification, exist_ok=True
    )
    for config_class in (MaskedCLIPConfig, MaskedCLIPVisionConfig):
        AutoImageProcessor.register(
            config_class,
            image_processor_classes={"torchvision": FundusImageProcessor, "pil": FundusImageProcessor},
            exist_ok=True,
        )
    AutoProcessor.register(MaskedCLIPConfig, MaskedCLIPProcessor, exist_ok=True)
    AutoConfig.register(IBQTokenizerConfig.model_type, IBQTokenizerConfig, exist_ok=True)
    AutoModel.register(IBQTokenizerConfig, IBQTokenizerModel, exist_ok=True)
    AutoConfig.register(KeepFitConfig.model_type, KeepFitConfig, exist_ok=True)
    AutoModel.register(KeepFitConfig, KeepFitModel, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(KeepFitConfig, KeepFitModel, exist_ok=True)
    AutoModelForImageClassification.register(KeepFitConfig, KeepFitForImageClassification, exist_ok=True)
    AutoImageProcessor.register(
        KeepFitConfig,
        image_processor_classes={"torchvision": FundusImageProcessor, "pil": FundusImageProcessor},
        exist_ok=True,
    )
    AutoProcessor.register(KeepFitConfig, KeepFitProcessor, exist_ok=True)

    MaskedCLIPConfig.register_for_auto_class()
    MaskedCLIPModel.register_for_auto_class("AutoModel")
    FundusImageProcessor.register_for_auto_class("AutoImageProcessor")
    MaskedCLIPProcessor.register_for_auto_class("AutoProcessor")
    _registered = True
