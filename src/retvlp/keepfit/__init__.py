"""KeepFIT V2 model family: configuration, model, losses, processor, FLAIR / KeepFIT V1 converter.

The folder is flat so that a saved checkpoint carries runnable code. Five of its files are symlinks to the
files they share with the other families (`contrastive.py`, `image_processing_fundus.py`, `modeling_common.py`,
`processing_maskedclip.py` from MaskedCLIP and `quantization_ibq.py` from the IBQ tokenizer): `save_pretrained`
copies their content next to the weights. Inside the installed package the symlinked names are bound to the
original modules first, so there is one `FundusImageProcessor` class (and one of each), not two look-alikes.
"""

import sys

from ..ibq import quantization_ibq
from ..maskedclip import contrastive, image_processing_fundus, modeling_common, processing_maskedclip

for _shared in (
    contrastive,
    image_processing_fundus,
    modeling_common,
    processing_maskedclip,
    quantization_ibq,
):
    sys.modules.setdefault(f"{__name__}.{_shared.__name__.rsplit('.', 1)[-1]}", _shared)

from .configuration_keepfit import KeepFitConfig  # noqa: E402
from .convert_flair import convert_flair_state_dict, load_flair_checkpoint  # noqa: E402
from .loss_keepfit import image_text_contrastive_loss, knowledge_refinement_loss, total_loss  # noqa: E402
from .modeling_keepfit import (  # noqa: E402
    KeepFitAppearanceQuantizer,
    KeepFitForImageClassification,
    KeepFitForPreTraining,
    KeepFitForPreTrainingOutput,
    KeepFitKnowledgeAttention,
    KeepFitModel,
    KeepFitOutput,
    KeepFitPreTrainedModel,
    KeepFitVisionModel,
)
from .processing_keepfit import KeepFitProcessor, keepfit_image_processor  # noqa: E402

KeepFitConfig.register_for_auto_class()
KeepFitModel.register_for_auto_class("AutoModel")
KeepFitForPreTraining.register_for_auto_class("AutoModelForPreTraining")
# A fine-tuned classifier saved with save_pretrained carries its code too (loadable with trust_remote_code).
KeepFitForImageClassification.register_for_auto_class("AutoModelForImageClassification")
KeepFitProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "KeepFitAppearanceQuantizer",
    "KeepFitConfig",
    "KeepFitForImageClassification",
    "KeepFitForPreTraining",
    "KeepFitForPreTrainingOutput",
    "KeepFitKnowledgeAttention",
    "KeepFitModel",
    "KeepFitOutput",
    "KeepFitPreTrainedModel",
    "KeepFitProcessor",
    "KeepFitVisionModel",
    "convert_flair_state_dict",
    "image_text_contrastive_loss",
    "keepfit_image_processor",
    "knowledge_refinement_loss",
    "load_flair_checkpoint",
    "total_loss",
]
