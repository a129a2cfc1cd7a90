"""IBQ visual tokenizer (KeepFIT V2's appearance codebook, METHODS.md §2): configuration, model, quantiser.

Importing this package marks the config and model for ``trust_remote_code`` export (``save_pretrained``
writes ``auto_map`` and copies the three code files next to the weights); `retvlp.registration` registers
them with `AutoConfig` / `AutoModel` for local loading.
"""

from .configuration_ibq import IBQTokenizerConfig
from .modeling_ibq import IBQTokenizerModel, IBQTokenizerOutput, IBQTokenizerPreTrainedModel
from .quantization_ibq import (
    IBQLosses,
    IBQQuantization,
    code_histogram,
    codebook_perplexity,
    codebook_usage,
    entropy_loss,
    ibq_losses,
    ibq_quantize,
    perplexity_from_histogram,
    usage_from_histogram,
)

IBQTokenizerConfig.register_for_auto_class()
IBQTokenizerModel.register_for_auto_class("AutoModel")

__all__ = [
    "IBQLosses",
    "IBQQuantization",
    "IBQTokenizerConfig",
    "IBQTokenizerModel",
    "IBQTokenizerOutput",
    "IBQTokenizerPreTrainedModel",
    "code_histogram",
    "codebook_perplexity",
    "codebook_usage",
    "entropy_loss",
    "ibq_losses",
    "ibq_quantize",
    "perplexity_from_histogram",
    "usage_from_histogram",
]
