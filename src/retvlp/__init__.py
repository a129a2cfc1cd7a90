"""retvlp: retinal vision-language foundation models (MaskedCLIP, KeepFIT V2) for the Hugging Face stack.

Importing the package registers every model family with transformers' Auto classes, so that
`AutoModel.from_pretrained(dir)`, `AutoProcessor.from_pretrained(dir)` and the pipelines work on our
checkpoints; each saved checkpoint also carries its own code for `trust_remote_code=True` loading.

The import itself is light (no torch, no evaluation code): the names below are imported when first used
(`retvlp.lazy.lazy_package`), and the registration runs as soon as transformers' Auto API or one of our
families is imported (`retvlp.registration.register_auto_classes_when_used`), before anything can look our
model types up.
"""

from .artifact_hooks import install_artifact_hooks
from .lazy import lazy_package
from .registration import register_auto_classes, register_auto_classes_when_used

__version__ = "0.1.0"

# name → the module it comes from, imported on first use
_EXPORTS = {
    "IBQTokenizerConfig": ".ibq",
    "IBQTokenizerModel": ".ibq",
    "FundusImageProcessor": ".maskedclip",
    "KeepFitConfig": ".keepfit",
    "KeepFitForImageClassification": ".keepfit",
    "KeepFitForPreTraining": ".keepfit",
    "KeepFitModel": ".keepfit",
    "KeepFitProcessor": ".keepfit",
    "KeepFitVisionModel": ".keepfit",
    "MaskedCLIPConfig": ".maskedclip",
    "MaskedCLIPForImageClassification": ".maskedclip",
    "MaskedCLIPForPreTraining": ".maskedclip",
    "MaskedCLIPModel": ".maskedclip",
    "MaskedCLIPProcessor": ".maskedclip",
    "MaskedCLIPVisionConfig": ".maskedclip",
    "MaskedCLIPVisionModel": ".maskedclip",
    "LoraTargetError": ".lora",
    "check_lora_targets": ".lora",
    "lora_targets": ".lora",
    # read by the artifact hooks, and importable from the root before the package became lazy
    "portability_problems": ".hub",
    "render_finetuned_card": ".model_card",
}
_SUBMODULES = (
    "artifact_hooks",
    "benchmarks",
    "cli",
    "common",
    "data",
    "evaluation",
    "export",
    "families",
    "hub",
    "ibq",
    "keepfit",
    "lazy",
    "lora",
    "maskedclip",
    "model_card",
    "prompts",
    "registration",
    "run",
    "runtime",
    "synthetic",
    "tokenization",
    "training",
)
lazy_package(__name__, _EXPORTS, _SUBMODULES)


def _render_finetuned_card(directory):
    from .model_card import render_finetuned_card

    return render_finetuned_card(directory)


def _portability_problems(directory):
    from .hub import portability_problems

    return portability_problems(directory)


# Saved fine-tuned artifacts get their card and portability check from the layers above evaluation; the two
# layers are imported when an artifact is saved, not now.
install_artifact_hooks(_render_finetuned_card, _portability_problems)
register_auto_classes_when_used()

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
    "LoraTargetError",
    "check_lora_targets",
    "lora_targets",
    "register_auto_classes",
]
