"""Registration of retvlp's classes with transformers' Auto API (there is no plugin entry point, so this
runs when `retvlp` is imported)."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)
from transformers.models.auto.image_processing_auto import AutoImageProcessor
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

from .ibq import IBQTokenizerConfig, IBQTokenizerModel
from .keepfit import (
    KeepFitConfig,
    KeepFitForImageClassification,
    KeepFitForPreTraining,
    KeepFitModel,
    KeepFitProcessor,
)
from .maskedclip import (
    FundusImageProcessor,
    MaskedCLIPConfig,
    MaskedCLIPForImageClassification,
    MaskedCLIPForPreTraining,
    MaskedCLIPImageClassificationLoader,
    MaskedCLIPModel,
    MaskedCLIPProcessor,
    MaskedCLIPVisionConfig,
    MaskedCLIPVisionModel,
)

_registered = False
FUNDUS_IMAGE_PROCESSORS = {"torchvision": FundusImageProcessor, "pil": FundusImageProcessor}


def register_auto_classes() -> None:
    """Register configs, models and processors with the Auto classes (idempotent), and mark the classes
    whose code `save_pretrained` copies next to the weights for `trust_remote_code` loading."""
    global _registered
    if _registered:
        return
    # MaskedCLIP: the dual-encoder config loads the released model, the pretraining model and (through its
    # vision part) the classifier; the vision config loads the vision model and the classifier.
    AutoConfig.register(MaskedCLIPConfig.model_type, MaskedCLIPConfig, exist_ok=True)
    AutoConfig.register(MaskedCLIPVisionConfig.model_type, MaskedCLIPVisionConfig, exist_ok=True)
    AutoModel.register(MaskedCLIPConfig, MaskedCLIPModel, exist_ok=True)
    AutoModel.register(MaskedCLIPVisionConfig, MaskedCLIPVisionModel, exist_ok=True)
    AutoModelForPreTraining.register(MaskedCLIPConfig, MaskedCLIPForPreTraining, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(MaskedCLIPConfig, MaskedCLIPModel, exist_ok=True)
    AutoModelForImageClassification.register(
        MaskedCLIPVisionConfig, MaskedCLIPForImageClassification, exist_ok=True
    )
    # A MaskedCLIP checkpoint's config is the dual-encoder one; the loader class declares it and builds the
    # classifier from its vision part (also what its remote-code auto_map names).
    AutoModelForImageClassification.register(
        MaskedCLIPConfig, MaskedCLIPImageClassificationLoader, exist_ok=True
    )
    for config_class in (MaskedCLIPConfig, MaskedCLIPVisionConfig, KeepFitConfig):
        AutoImageProcessor.register(
            config_class, image_processor_classes=FUNDUS_IMAGE_PROCESSORS, exist_ok=True
        )
        # Pipelines also probe for a video processor, guessing one from the image processor's auto_map; with no
        # local entry for our configs they prompt "Do you wish to run the custom code?". An empty registration
        # answers "none" locally, so the probe fails quietly as for any image model.
        AutoVideoProcessor.register(config_class, video_processor_classes={}, exist_ok=True)
    AutoProcessor.register(MaskedCLIPConfig, MaskedCLIPProcessor, exist_ok=True)

    AutoConfig.register(IBQTokenizerConfig.model_type, IBQTokenizerConfig, exist_ok=True)
    AutoModel.register(IBQTokenizerConfig, IBQTokenizerModel, exist_ok=True)

    AutoConfig.register(KeepFitConfig.model_type, KeepFitConfig, exist_ok=True)
    AutoModel.register(KeepFitConfig, KeepFitModel, exist_ok=True)
    AutoModelForPreTraining.register(KeepFitConfig, KeepFitForPreTraining, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(KeepFitConfig, KeepFitModel, exist_ok=True)
    AutoModelForImageClassification.register(KeepFitConfig, KeepFitForImageClassification, exist_ok=True)
    AutoProcessor.register(KeepFitConfig, KeepFitProcessor, exist_ok=True)

    # Code export for trust_remote_code (save_pretrained writes auto_map and copies the code files).
    MaskedCLIPConfig.register_for_auto_class()
    MaskedCLIPVisionConfig.register_for_auto_class()
    MaskedCLIPModel.register_for_auto_class("AutoModel")
    MaskedCLIPForPreTraining.register_for_auto_class("AutoModelForPreTraining")
    MaskedCLIPVisionModel.register_for_auto_class("AutoModel")
    MaskedCLIPForImageClassification.register_for_auto_class("AutoModelForImageClassification")
    FundusImageProcessor.register_for_auto_class("AutoImageProcessor")
    MaskedCLIPProcessor.register_for_auto_class("AutoProcessor")
    _registered = True
