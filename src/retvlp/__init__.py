"""retvlp: retinal vision-language foundation models (MaskedCLIP, KeepFIT V2) for the Hugging Face stack.

Importing the package registers every model family with transformers' Auto classes, so that
`AutoModel.from_pretrained(dir)`, `AutoProcessor.from_pretrained(dir)` and the pipelines work on our
checkpoints; each saved checkpoint also carries its own code for `trust_remote_code=True` loading.
"""

from .evaluation.finetune import install_artifact_hooks
from .hub import portability_problems
from .ibq import IBQTokenizerConfig, IBQTokenizerModel
from .keepfit import (
    KeepFitConfig,
    KeepFitForImageClassification,
    KeepFitForPreTraining,
    KeepFitModel,
    KeepFitProcessor,
    KeepFitVisionModel,
)
from .maskedclip import (
    FundusImageProcessor,
    MaskedCLIPConfig,
    MaskedCLIPForImageClassification,
    MaskedCLIPForPreTraining,
    MaskedCLIPModel,
    MaskedCLIPProcessor,
    MaskedCLIPVisionConfig,
    MaskedCLIPVisionModel,
)
from .model_card import render_finetuned_card
from .registration import register_auto_classes

register_auto_classes()
# Saved fine-tuned artifacts get their card and portability check from the layers above evaluation.
install_artifact_hooks(render_finetuned_card, portability_problems)

__version__ = "0.1.0"

__all__ = [
    "IBQTokenizerConfig",
    "IBQTokenizerModel",
    "FundusImageProcessor",
    "KeepFitConfig",
    "KeepFitForImageClassification",
    "KeepFitForPreTraining",
    "KeepFitModel",
    "KeepFitProcessor",
    "KeepFitVisionModel",
    "MaskedCLIPConfig",
    "MaskedCLIPForImageClassification",
    "MaskedCLIPForPreTraining",
    "MaskedCLIPModel",
    "MaskedCLIPProcessor",
    "MaskedCLIPVisionConfig",
    "MaskedCLIPVisionModel",
    "register_auto_classes",
]
